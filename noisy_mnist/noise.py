"""
Label noise: the distribution p(noisy label | image) of each noise type, drawing one label
per image from it, and the pickle that holds both: a list, in training-set order, of
(noisy_label int, p float64 array of 10).
"""

import hashlib
import math
import os
import re

import numpy as np
import torch as th

from runkit import UserError
from runkit.fileio import load_pickle, save_pickle

from .model import NUM_CLASSES

NOISE_TYPES = ("uniform", "fix", "model")  # the paper's uniform, biased, generated noise
NOISE_FILE_RE = re.compile(r"^(uniform|fix|model)_noisy_label_(.+)\.pkl$")


def noise_file_name(noise_type, alpha):
    """`{type}_noisy_label_{alpha}.pkl`, alpha written as Python writes a float (the original's names)."""
    return f"{noise_type}_noisy_label_{float(alpha)}.pkl"


MODEL_NOISE_VARIANTS = ("original", "precise")
# The original code's guard against 1 - q[c] = 0 (GenNoisyLabelLoop in classification/utils.py).
ORIGINAL_EPSILON = 1e-6


def noise_distribution(noise_type, alpha, labels, logits=None, model_noise="original"):
    """
    p [N, 10] float64 for clean labels [N] (numpy int); each row sums to 1:
      uniform: p[c] = alpha, every other class (1 - alpha) / 9;
      fix:     p[c] = alpha, p[(c + 1) % 10] = 1 - alpha;
      model:   from the clean model's logits [N, 10] (`model_noise_distribution`).
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
        return model_noise_distribution(logits, labels, alpha, model_noise)
    else:
        raise UserError(f"--noise_type {noise_type!r} is not one of: {', '.join(NOISE_TYPES)}")
    return p / p.sum(axis=1, keepdims=True)  # as the original normalises every row


def model_noise_distribution(logits, labels, alpha, variant="original"):
    """
    The paper's "generated" noise from the clean model's logits [N, 10], p [N, 10] float64.

    original (the default; the original code's arithmetic): q = softmax(logits) in float32;
      beta = (1 - q[c] alpha) / (1 - q[c] + 1e-6); p[k] = q[k] beta for k != c;
      p[c] = q[c] alpha; p /= sum(p). Where the model is saturated (1 - q[c] below about
      1e-6; in float32 q[c] is often exactly 1) the epsilon dominates and p stays near the
      clean label: p[c] is then well above alpha q[c].
    precise: p[c] = q[c] alpha and the rest, 1 - q[c] alpha, shared in q's proportions:
      p[k] = (1 - q[c] alpha) q[k] / (1 - q[c]), with 1 - q[c] taken as the sum of the other
      classes' softmax and every ratio computed in log space (float64), so it stays defined
      for a saturated model; no epsilon and no fallback.
    """
    labels = np.asarray(labels)
    rows = np.arange(len(labels))
    if variant == "original":
        # torch's float32 softmax, as the original computed q (on the logits it saw).
        q = th.softmax(th.as_tensor(np.asarray(logits), dtype=th.float32), dim=1).numpy().astype(np.float64)
        q_true = q[rows, labels]
        beta = (1.0 - q_true * alpha) / (1.0 - q_true + ORIGINAL_EPSILON)
        p = q * beta[:, None]
        p[rows, labels] = q_true * alpha
        return p / p.sum(axis=1, keepdims=True)
    if variant == "precise":
        log_q = th.log_softmax(th.as_tensor(np.asarray(logits), dtype=th.float64), dim=1)
        true = th.zeros_like(log_q, dtype=th.bool)
        true[rows, labels] = True
        log_rest = th.logsumexp(log_q.masked_fill(true, -math.inf), dim=1)  # log(1 - q[c]), precisely
        q_true, rest = log_q[true].exp(), log_rest.exp()
        kept = (1.0 - alpha) + alpha * rest  # 1 - q[c] alpha, without cancellation
        p = (log_q - log_rest[:, None]).exp() * kept[:, None]
        p[true] = q_true * alpha
        p = p.numpy()
        return p / p.sum(axis=1, keepdims=True)
    raise UserError(f"--model_noise {variant!r} is not one of: {', '.join(MODEL_NOISE_VARIANTS)}")


def expected_correct_ratio(noise_type, alpha, labels, logits=None, model_noise="original"):
    """The mean of p[c] over the images: the correct-label ratio that the draw has in expectation."""
    p = noise_distribution(noise_type, alpha, labels, logits, model_noise)
    return float(p[np.arange(len(labels)), labels].mean())


def alpha_for_ratio(target, noise_type, labels, logits=None, model_noise="original", digits=5):
    """
    The alpha whose expected correct-label ratio is `target`, to `digits` significant digits
    (it names the noise file; a saturated clean model makes the ratio steep in small alphas).
    For uniform and fix noise p[c] = alpha, so it is the target itself;
    for model noise the mean p[c](alpha) is increasing in alpha and is solved by bisection.
    When even alpha = 1 falls short of the target, 1 is returned.
    """
    if noise_type != "model":
        return float(target)
    ratio = lambda a: expected_correct_ratio("model", a, labels, logits, model_noise)  # noqa: E731
    if ratio(1.0) <= target:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(40):  # 1e-12 in alpha, far below the rounding
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ratio(mid) < target else (lo, mid)
    return float(f"{(lo + hi) / 2:.{digits}g}")


def label_rng(seed, noise_type, alpha, draw=0):
    """
    The random stream of one noise file: its own for each (seed, type, alpha), so that the
    files of a sweep are independent draws (as the original, which drew each file unseeded)
    and a rerun draws the same labels. draw >= 1: another independent draw of the same p
    (the second run of a floor); draw 0 is the stream every earlier file was drawn from.
    """
    key = f"{int(seed)}/{noise_type}/{float(alpha)!r}" + (f"/draw{int(draw)}" if draw else "")
    digest = hashlib.sha256(key.encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


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
    check_distributions(p, path, flag)
    return labels, p


def check_distributions(p, path, flag):
    """A UserError naming the first row of p [N, 10] that is not a distribution."""
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (np.abs(p.sum(axis=1) - 1) > 1e-6)
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(f"{path!r} (--{flag}): p of image {i} is not a distribution (entries 0 or more, "
                        f"summing to 1: got sum {p[i].sum():.6g}, min {p[i].min():.3g})")


def heldout_noise_path(noise_file):
    """
    The noise distribution p on the test images, beside a noise file: `{stem}.test_p.pkl`
    (written by generate_noisy_label; for model noise the clean model's softmax on the test
    images through the same formula). It is what a held-out comparison with p needs.
    """
    return os.path.splitext(noise_file)[0] + ".test_p.pkl"


def save_heldout_noise(path, p):
    save_pickle(np.asarray(p, dtype=np.float64), path)


def load_heldout_noise(path, num_test, flag="noise_label_file"):
    """p float64 [num_test, 10] of a `.test_p.pkl` file, checked against the test set."""
    p = load_pickle(path, flag, what="held-out noise distribution")
    if not isinstance(p, np.ndarray) or p.shape != (num_test, NUM_CLASSES):
        shape = list(p.shape) if isinstance(p, np.ndarray) else type(p).__name__
        raise UserError(f"{path!r} (beside --{flag}) should hold p for the {num_test} test images as an array "
                        f"[{num_test}, {NUM_CLASSES}], not {shape}; generate the labels for this --data_dir again "
                        f"(--task generate_noisy_label)")
    p = p.astype(np.float64)
    check_distributions(p, path, flag)
    return p


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
