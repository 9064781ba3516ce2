"""
Label noise: the distribution p(noisy label | image) of each noise type, drawing one label
per image from it, and the pickle that holds both: a list, in training-set order, of
(noisy_label int, p float64 array of 10).
"""

import os
import re

import numpy as np

from guided_diffusion.cli import UserError
from guided_diffusion.io_util import load_pickle, save_pickle

from .model import NUM_CLASSES

NOISE_TYPES = ("uniform", "fix", "model")  # the paper's uniform, biased, generated noise
NOISE_FILE_RE = re.compile(r"^(uniform|fix|model)_noisy_label_(.+)\.pkl$")


def noise_file_name(noise_type, alpha):
    """`{type}_noisy_label_{alpha}.pkl`, alpha written as Python writes a float (the original's names)."""
    return f"{noise_type}_noisy_label_{float(alpha)}.pkl"


def check_alpha(alpha):
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha {alpha} is outside [0, 1] (it is the probability kept on the true class)")
    return alpha


def noise_distribution(noise_type, alpha, labels, q=None):
    """
    p [N, 10] float64 for clean labels [N] (numpy int):
      uniform: p[c] = alpha, every other class (1 - alpha) / 9;
      fix:     p[c] = alpha, p[(c + 1) % 10] = 1 - alpha;
      model:   q = the clean model's softmax [N, 10] (float64); p[c] = q[c] * alpha, every
               other k: q[k] * (1 - q[c] * alpha) / (1 - q[c]).
    Each row is then divided by its sum. When q[c] is exactly 1 (a confident model in float64),
    1 - q[c] is 0 and the ratio is undefined; those rows spread 1 - alpha uniformly over the
    other nine classes instead.
    """
    n = len(labels)
    rows = np.arange(n)
    if noise_type == "uniform":
        p = np.full((n, NUM_CLASSES), (1.0 - alpha) / (NUM_CLASSES - 1))
        p[rows, labels] = alpha
    elif noise_type == "fix":
        p = np.zeros((n, NUM_CLASSES))
        p[rows, labels] = alpha
        p[rows, (labels + 1) % NUM_CLASSES] = 1.0 - alpha
    elif noise_type == "model":
        q = np.asarray(q, dtype=np.float64)
        q_true = q[rows, labels]
        rest = 1.0 - q_true
        certain = rest == 0
        scale = (1.0 - q_true * alpha) / np.where(certain, 1.0, rest)
        p = q * scale[:, None]
        p[certain] = (1.0 - alpha) / (NUM_CLASSES - 1)
        p[rows, labels] = q_true * alpha
    else:
        raise UserError(f"--noise_type {noise_type!r} is not one of: {', '.join(NOISE_TYPES)}")
    return p / p.sum(axis=1, keepdims=True)


def draw_labels(p, rng):
    """
    One label per row of p by inverse CDF (vectorised). u is scaled by the row's total, so a
    label k is drawn only when cdf[k] > cdf[k - 1], i.e. never a class of probability 0.
    """
    cdf = np.cumsum(p, axis=1)
    u = rng.random(len(p)) * cdf[:, -1]
    return (cdf <= u[:, None]).sum(axis=1)


def noise_summary(noisy_labels, p, clean_labels):
    """The correct-label ratio and the share of images whose most likely noisy label is wrong."""
    return dict(correct_label_ratio=float(np.mean(noisy_labels == clean_labels)),
                argmax_wrong_ratio=float(np.mean(p.argmax(axis=1) != clean_labels)))


def save_noisy_labels(path, noisy_labels, p):
    save_pickle([(int(label), row) for label, row in zip(noisy_labels, p)], path)


def load_noisy_labels(path, num_train, flag="noise_label_file"):
    """(noisy labels int64 [N], p float64 [N, 10]) from a noise pickle, checked against the training set."""
    items = load_pickle(path, flag, what="noisy-label pickle")
    if not isinstance(items, list):
        raise UserError(f"{path!r} (--{flag}) should hold a list of (label, p) pairs, not {type(items).__name__}")
    if len(items) != num_train:
        raise UserError(f"{path!r} (--{flag}) has {len(items)} noisy labels but the training set has "
                        f"{num_train} images; generate the labels for this --data_dir "
                        f"(--task generate_noisy_label)")
    try:
        labels = np.array([int(label) for label, _ in items], dtype=np.int64)
        p = np.stack([np.asarray(row, dtype=np.float64) for _, row in items])
    except (TypeError, ValueError) as e:
        raise UserError(f"{path!r} (--{flag}) is not a list of (label, p) pairs: {e}") from None
    if p.shape != (num_train, NUM_CLASSES) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise UserError(f"{path!r} (--{flag}) should pair labels in 0..9 with p arrays of {NUM_CLASSES}")
    return labels, p


def resolve_noise_file(noise_label_file, data_dir, log_dir):
    """
    The noisy-label pickle that --noise_label_file names: a file inside data_dir (as the
    original reads it) or any path. Missing: say how to generate it, or where it already is.
    """
    for path in (os.path.join(data_dir, noise_label_file), noise_label_file):
        if os.path.isfile(path):
            return path
    wanted = os.path.join(data_dir, noise_label_file)
    message = f"noisy-label file {wanted!r} (--noise_label_file) does not exist"
    generated = os.path.join(log_dir, os.path.basename(noise_label_file))
    match = NOISE_FILE_RE.match(os.path.basename(noise_label_file))
    if os.path.isfile(generated):
        message += f"; did you mean {generated!r}?"
    elif match:
        message += (f"; generate it with: python mnist_classification.py --task generate_noisy_label "
                    f"--noise_type {match.group(1)} --alpha {match.group(2)} --log_dir {log_dir} "
                    f"(it is written to {generated}), then pass that path")
    else:
        message += "; generate one with --task generate_noisy_label"
    raise UserError(message)
