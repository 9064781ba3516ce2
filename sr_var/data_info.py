"""
Building the data-info pickles of an image folder: `to_sample_data_info.pkl` (the images
to evaluate on: DDPM-SR samples, mean/variance tests) and `train_data_info.pkl` (every
other image), both `{synset: {"y": class index, "file_names": [...]}}`.
"""

import numpy as np

from runkit import logger

from .data import index_data_dir


def synset_of(file_name):
    """ImageNet training images are named {synset}_{number}."""
    return file_name.split("_")[0]


def class_indices(synsets, known=None):
    """
    Class index per synset: ImageNet's (from `known`, e.g. the shipped evaluation list, which
    covers all 1,000 classes) when every synset is known there, else the sorted order.
    """
    if known and all(s in known for s in synsets):
        return {s: known[s] for s in synsets}
    return {s: i for i, s in enumerate(sorted(synsets))}


def _info(names, y_of):
    info = {}
    for name in names:
        s = synset_of(name)
        info.setdefault(s, {"y": y_of[s], "file_names": []})["file_names"].append(name)
    return dict(sorted(info.items()))


def build_data_info(data_dir, num_per_class=2, seed=0, exclude=(), eval_info=None, known_classes=None):
    """
    Returns (train_info, eval_info). The evaluation set is `eval_info` when given (kept as
    is, restricted to the images present), else `num_per_class` images per synset drawn
    with `seed`; training takes every other image not in `exclude`.
    """
    exclude = set(exclude)
    names = sorted(n for n in index_data_dir(data_dir) if n not in exclude)
    synsets = sorted({synset_of(n) for n in names})
    y_of = class_indices(synsets, known_classes)
    if eval_info is not None:
        present = set(names)
        listed = [n for v in eval_info.values() for n in v["file_names"]]
        eval_names = [n for n in listed if n in present]
        if len(eval_names) < len(listed):
            logger.log(f"{len(listed) - len(eval_names)} of {len(listed)} evaluation images are not in {data_dir}")
        y_of.update({s: v["y"] for s, v in eval_info.items()})
    else:
        rng = np.random.default_rng(seed)
        eval_names = []
        for s in synsets:
            members = [n for n in names if synset_of(n) == s]
            take = rng.choice(len(members), size=min(num_per_class, len(members)), replace=False)
            eval_names += [members[i] for i in sorted(take)]
    held_out = set(eval_names)
    train_names = [n for n in names if n not in held_out]
    return _info(train_names, y_of), _info(eval_names, y_of)
