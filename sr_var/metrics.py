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


def average(per_image):
    """Average a list of {name: value} dicts key by key (nested dicts too)."""
    first = per_image[0]
    if isinstance(first, dict):
        return {k: average([d[k] for d in per_image]) for k in first}
    return float(np.mean(per_image))
