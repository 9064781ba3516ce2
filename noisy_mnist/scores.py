"""
The one scorer of a model's softmax against a distribution over the classes (the noise
distribution p, an exact target, another run's softmax): per image, then the mean over
images with its 95% interval. Every TV, CE and floor that the analysis and the studies
report comes from here (float64 numpy).
"""

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def as_array(values):
    """A float64 numpy array of a tensor or an array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def tv(a, b):
    """Total-variation distance per image between distributions a, b [N, K]: [N]."""
    return 0.5 * np.abs(as_array(a) - as_array(b)).sum(axis=-1)


def cross_entropy(p, q, tiny=1e-300):
    """-sum_k p_k log q_k per image: [N]. (q is a softmax; tiny only guards an exact 0.)"""
    p = as_array(p)
    return -(p * np.log(np.maximum(as_array(q), tiny))).sum(axis=-1)


def entropy(p):
    """-sum_k p_k log p_k per image (0 log 0 = 0): [N]."""
    p = as_array(p)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)


def mean_interval(values):
    """
    (mean, [low, high]): the mean over images and its 95% interval from the normal
    approximation, mean +- 1.96 sd / sqrt(n) (n is in the thousands here).
    """
    values = as_array(values).ravel()
    mean = float(values.mean())
    half = Z95 * float(values.std(ddof=1)) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, [mean - half, mean + half]


def summary(values):
    """{"mean": ..., "ci95": [low, high]} of per-image values."""
    mean, ci = mean_interval(values)
    return dict(mean=mean, ci95=ci)


def pairwise_tv(softmaxes):
    """
    The TV between every pair of runs' softmaxes [R, N, K], averaged over the pairs per
    image: [N] (the floor: what runs on independent draws reach between themselves).
    """
    runs = [as_array(s) for s in softmaxes]
    pairs = [tv(runs[i], runs[j]) for i in range(len(runs)) for j in range(i + 1, len(runs))]
    return np.mean(pairs, axis=0)


def fmt_ci(entry, digits=3):
    """A summary as text: "0.123 [0.120, 0.126]"."""
    low, high = entry["ci95"]
    return f"{entry['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
