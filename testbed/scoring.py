"""
The one scorer against the exact posterior: per image in [0, 255] units (variances
[0, 255]^2) for a mean, a variance (with its calibration against fresh exact samples) and
principal components, then averaged over images with 95% bootstrap intervals and, where the
images' mixture components are known, per scale.
"""

import hashlib

import numpy as np

from imaging import VAR_SCALE, area_downsample, low_res_input, metrics, pc_metrics, to_255, to_float

from .gaussian_scale_mixture import quantize
from .oracles import ExactCovariance

COVERAGE_KS = (1, 2, 3)
FRESH_SAMPLES = 20  # exact posterior draws per image that the intervals are checked against


class ExactScorer:
    """
    Images of a testbed (uint8 [N, C, H, W], their names and mixture components `ks`) with
    their exact posterior moments and fresh exact samples, against which the functions below
    score any estimate.
    """

    def __init__(self, testbed, uint8, names, ks, small_size, seed=12345):
        self.testbed, self.uint8, self.names, self.ks = testbed, uint8, list(names), list(ks)
        self.small_size = small_size
        high_res = to_float(self.uint8)
        self.low_res_up = low_res_input(high_res, small_size)
        y = area_downsample(high_res, small_size).double().numpy()
        tb = self.testbed
        self.exact_mean = to_255(tb.posterior_mean(y))  # [N, C, H, W]
        self.exact_var = tb.posterior_variance(y) * VAR_SCALE
        rng = np.random.default_rng(seed)
        self.fresh = np.stack([to_255(tb.sample_posterior(yi, FRESH_SAMPLES, rng)) for yi in y])  # [N, S, ...]
        self.y = y
        self._covariances = {}

    def covariance(self, i):
        """The exact Cov[x | y] of image i (testbed.ExactCovariance, HWC-flat vectors)."""
        if i not in self._covariances:
            self._covariances[i] = ExactCovariance(self.testbed, self.y[i])
        return self._covariances[i]


def hwc_flat(chw):
    """[..., K, C, H, W] -> [..., K, H*W*C], the verification's layout of a direction."""
    hwc = np.moveaxis(chw, -3, -1)
    return hwc.reshape(*hwc.shape[:-3], -1)


def mean_scores(images, mean):
    per_image = []
    for i in range(len(mean)):
        per_image.append(metrics.mean_metrics(images.exact_mean[i], mean[i]))
    return per_image


def var_scores(images, mean, var):
    """Var model (or any variance estimate) against Var, against Var + (m - E)^2, ratio, calibration."""
    per_image = []
    for i in range(len(var)):
        target = images.exact_var[i] + (mean[i] - images.exact_mean[i]) ** 2
        std = np.sqrt(np.maximum(var[i], 0))
        dev = np.abs(images.fresh[i] - mean[i][None])
        per_image.append(dict(
            vs_var=metrics.var_metrics(images.exact_var[i], var[i]),
            vs_target=metrics.var_metrics(target, var[i]),
            var_ratio=metrics.variance_ratio(images.exact_var[i], var[i]),
            coverage={str(k): float(np.mean(dev <= k * std[None])) for k in COVERAGE_KS},
        ))
    return per_image


def summarize(per_image, ks=None, scales=None):
    """Means with intervals; with the images' components, the variance ratio (or captured variance) per scale."""
    summary = {**metrics.average(per_image), "ci95": metrics.bootstrap_interval(per_image)}
    for key in ("var_ratio", "captured"):
        if ks is not None and key in per_image[0]:
            groups = group_by_scale([r[key] for r in per_image], ks, scales)
            summary[f"{key}_by_scale"] = {label: float(np.mean(group)) for label, group in groups.items()}
    return summary


def pc_scores(images, mean, directions, variances, idx=None):
    """
    A PC model's directions [N, K, C, H, W] and variances [N, K] against the exact covariance:
    pc_metrics.compare (overlap with the exact top K, captured variance, each variance against the
    variance along its direction and against the exact eigenvalue), and the captured share
    of what it learns, Cov + b b^T with b = E[x | y] - m(y). With variances None (a sample
    PCA): overlap and captured only. idx: the study images the rows belong to.
    """
    idx = range(len(directions)) if idx is None else idx
    return [pc_metrics.vs_exact(images.covariance(i), hwc_flat(directions[row]),
                         None if variances is None else variances[row],
                         None if mean is None else hwc_flat((images.exact_mean[i] - mean[row])[None])[0])
            for row, i in enumerate(idx)]


def sample_pcs_chw(samples, k):
    """The top-k PCs [K, C, H, W] of samples [S, C, H, W]."""
    dirs, _ = pc_metrics.sample_pcs(hwc_flat(samples), k)
    return np.moveaxis(dirs.reshape(k, *samples.shape[-2:], samples.shape[-3]), -1, -3)


def scale_label(scales, k):
    """The name of mixture component k in results: "s=0.08" (or "class k" for an image of no component)."""
    return f"s={scales[k]:g}" if 0 <= k < len(scales) else f"class {k}"


def group_by_scale(values, ks, scales):
    """{scale label: the values of the images of that component}, in the components' order."""
    return {scale_label(scales, k): [v for v, kk in zip(values, ks) if kk == k] for k in sorted(set(ks))}


# -- one image at a time, HWC (the verification's and the sampler study's layout) -----------------

def exact_posterior(testbed, truth_uint8_chw, small_size, num_samples=0, seed=0):
    """
    Exact posterior mean / variance and the bilinear input, HWC in [0, 255] units, and the
    covariance ("cov", ExactCovariance); with num_samples, also the Monte Carlo floor:
    the samples ("mc_samples"), their mean ("mc_mean") and variance ("mc_var"), stored as
    the DDPM-SR samples are (uint8) and reduced the same way.
    """
    high_res = to_float(truth_uint8_chw[None])
    y = area_downsample(high_res, small_size).double().numpy()[0]
    hwc = lambda a: np.moveaxis(a, -3, -1)  # noqa: E731  [..., C, H, W] -> [..., H, W, C]
    result = {
        "mean": hwc(to_255(testbed.posterior_mean(y))),
        "var": hwc(testbed.posterior_variance(y) * VAR_SCALE),
        "bilinear": hwc(to_255(low_res_input(high_res, small_size)[0].double().numpy())),
    }
    if num_samples:
        draws = quantize(testbed.sample_posterior(y, num_samples, np.random.default_rng(seed)))
        exact_samples = hwc(draws).astype(np.float64)
        result.update(mc_mean=np.clip(exact_samples.mean(axis=0), 0, 255), mc_var=exact_samples.var(axis=0),
                      mc_samples=exact_samples)
    result["cov"] = ExactCovariance(testbed, y)
    return result


def name_seed(name):
    """A fixed seed per image name (the Monte Carlo floor's draws are reproducible)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
