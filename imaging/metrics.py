"""
The verification metrics, in float64 on [0, 255] images (HWC arrays). The original code
subtracted uint8 arrays, which wraps around (3 - 5 = 254); every function here converts
to float64 first.
"""

import math

import numpy as np

GAUSSIAN_COVERAGE = {1: 0.6827, 2: 0.9545, 3: 0.9973}


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def mse(reference, estimate):
    return float(np.mean((_f64(reference) - _f64(estimate)) ** 2))


def psnr(reference, estimate):
    """PSNR with data_range = the reference image's maximum (as the original code)."""
    err = mse(reference, estimate)
    data_range = float(_f64(reference).max())
    return math.inf if err == 0 else 10 * math.log10(data_range ** 2 / err)


def nmse(reference, estimate):
    """||reference - estimate||^2 / ||reference||^2."""
    reference = _f64(reference)
    return float(np.sum((reference - _f64(estimate)) ** 2) / np.sum(reference ** 2))


def var_error(reference_var, estimate_var):
    """mean |v_ref - max(v, 0)| (a variance model may output negative values)."""
    return float(np.mean(np.abs(_f64(reference_var) - np.maximum(_f64(estimate_var), 0))))


def std_error(reference_var, estimate_var):
    """mean |sqrt(v_ref) - sqrt(max(v, 0))|."""
    return float(np.mean(np.abs(np.sqrt(_f64(reference_var)) - np.sqrt(np.maximum(_f64(estimate_var), 0)))))


def coverage(truth, mean, var, ks=(1, 2, 3)):
    """Share of pixels with |truth - mean| <= k * std (a calibrated Gaussian gives 68/95/99.7%)."""
    dev = np.abs(_f64(truth) - _f64(mean))
    std = np.sqrt(np.maximum(_f64(var), 0))
    return {str(k): float(np.mean(dev <= k * std)) for k in ks}


def mean_metrics(reference, estimate):
    return {"mse": mse(reference, estimate), "psnr": psnr(reference, estimate), "nmse": nmse(reference, estimate)}


def var_metrics(reference_var, estimate_var):
    return {"var_error": var_error(reference_var, estimate_var), "std_error": std_error(reference_var, estimate_var)}


# -- against exact truth (the testbeds): relative errors, so that images of a small posterior
#    variance count as much as those of a large one ------------------------------------------

def unbiased_variance(samples, axis=0):
    """The sample variance with ddof 1: what every ratio or error against an exact variance uses (np.var's
    ddof 0, which the paper's files keep, is (N - 1) / N of it: 1% low at N = 100)."""
    return np.var(_f64(samples), axis=axis, ddof=1)


def exact_mean_metrics(exact_mean, exact_var, estimate):
    """A mean estimate against the exact posterior mean: mse, psnr, nmse, and rel_mse = mse / mean(exact var)
    (the mean of N exact posterior samples has rel_mse 1 / N in expectation, plus uint8 rounding's share)."""
    result = mean_metrics(exact_mean, estimate)
    result["rel_mse"] = result["mse"] / float(np.mean(_f64(exact_var)))
    return result


def exact_var_metrics(exact_var, estimate_var):
    """
    A variance estimate against the exact posterior variance: var and std error (absolute,
    the paper's), their relative forms mean |v - v*| / v* and mean |sqrt v - sqrt v*| / sqrt v*,
    and the variance ratio sum v / sum v*.
    """
    ref, est = _f64(exact_var), np.maximum(_f64(estimate_var), 0)
    return {**var_metrics(ref, est), "rel_var_error": float(np.mean(np.abs(est - ref) / ref)),
            "rel_std_error": float(np.mean(np.abs(np.sqrt(est) - np.sqrt(ref)) / np.sqrt(ref))),
            "var_ratio": variance_ratio(ref, est)}


def paired_difference(a, b, level=0.95, num_resamples=2000, seed=0):
    """
    Two estimates scored on the same images: the mean of a - b over images and its percentile
    bootstrap interval (the images resampled together, so that what the images share cancels).
    """
    a, b = _f64(a), _f64(b)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs the same images: {a.shape} against {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(num_resamples, len(d)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail]) if len(d) > 1 else (d[0], d[0])
    return {"difference": float(d.mean()), "ci95": [float(low), float(high)]}


def paired_text(paired, fmt=".4f"):
    """A paired_difference as the reports print it: "+0.0012 [-0.0003, +0.0026]"."""
    low, high = paired["ci95"]
    return f"{paired['difference']:+{fmt}} [{low:+{fmt}}, {high:+{fmt}}]"


def average(per_image):
    """Average a list of {name: value} dicts key by key (nested dicts too)."""
    first = per_image[0]
    if isinstance(first, dict):
        return {k: average([d[k] for d in per_image]) for k in first}
    return float(np.mean(per_image))


def split_half(samples):
    """
    The error that N samples carry, measured from the samples alone (any data): the mean and
    variance of the first N/2 against those of the second N/2, scaled to N. Each half's
    estimate has twice the sampling variance of N samples and their difference twice that
    again, so mean-square metrics are divided by 4 and absolute ones (var and std error) by 2.
    samples: [N, H, W, C] float64 in [0, 255]; means are clipped as the verification clips them.
    """
    half = len(samples) // 2
    first, second = samples[:half], samples[half:2 * half]
    mean_a, mean_b = np.clip(first.mean(axis=0), 0, 255), np.clip(second.mean(axis=0), 0, 255)
    mse_scaled = mse(mean_a, mean_b) / 4
    data_range = float(mean_a.max())
    return {
        "mean": {"mse": mse_scaled,
                 "psnr": math.inf if mse_scaled == 0 else 10 * math.log10(data_range ** 2 / mse_scaled),
                 "nmse": nmse(mean_a, mean_b) / 4},
        "var": {k: v / 2 for k, v in var_metrics(first.var(axis=0), second.var(axis=0)).items()},
    }


def variance_ratio(reference_var, estimate_var):
    """sum max(v, 0) / sum v_ref: how much of the reference's variance an estimate has (1: all)."""
    return float(np.sum(np.maximum(_f64(estimate_var), 0)) / np.sum(_f64(reference_var)))


def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, path + (k,))
    else:
        yield path, tree


def bootstrap_interval(per_image, level=0.95, num_resamples=2000, seed=0):
    """
    A percentile-bootstrap interval over images for the mean of every metric: the same
    nesting as one image's dict, with [low, high] in place of each number. The images are
    resampled together (one set of resamples for all metrics), with a fixed seed.
    """
    n = len(per_image)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(num_resamples, n))
    tail = (1 - level) / 2
    result = {}
    for path, _ in _leaves(per_image[0]):
        values = np.array([_get(d, path) for d in per_image], dtype=np.float64)
        means = values[picks].mean(axis=1)
        low, high = np.quantile(means, [tail, 1 - tail]) if n > 1 else (values[0], values[0])
        node = result
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = [float(low), float(high)]
    return result


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree
