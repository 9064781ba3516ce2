"""
What every exact testbed offers (both are Gaussian mixtures over a component k), and the
parts they share: the downsampling, per-pixel posterior quantiles from the per-pixel mixture
marginals, and the class posterior's labels.

A testbed class provides: `params` (large_size, small_size, channels, ...), `kind`,
`num_components`, `component_labels`, `sample_prior`, `prior_component_posterior`,
`component_posterior`, `posterior_mean`, `posterior_variance`, `pixel_marginals`,
`sample_posterior`, `covariance` (oracles.ExactCovariance or MixtureCovariance),
`denoise` and `sample_exact_chain` (the teachers), `to_json` / `from_json`.
"""

import numpy as np
from scipy.special import ndtr, ndtri


class ExactTestbed:
    """The shared part of the exact testbeds."""

    kind = ""

    def downsample(self, x):
        """y = D x for images [..., C, H, W]: area (box) averaging by the SR factor."""
        return np.einsum("ih,...chw,jw->...cij", self.A, x, self.A, optimize=True)

    def posterior_quantiles(self, y, levels):
        """
        The tau-quantiles of every pixel's posterior marginal, a mixture over k of
        N(mean_k, std_k^2) with weights p(k | y): [L, ..., C, H, W] for low-res images
        y [..., C, h, w], in [-1, 1] units (an increasing affine map, such as to [0, 255],
        carries quantiles over).
        """
        weights, means, stds = self.pixel_marginals(y)
        return np.stack([mixture_quantile(weights, means, stds, tau) for tau in np.atleast_1d(levels)])


def mixture_quantile(weights, means, stds, tau, iterations=60):
    """
    The tau-quantile of mixtures of normals, one per pixel: weights [..., K], means and stds
    [..., K, C, H, W] -> [..., C, H, W]. The quantile lies between the components' own
    quantiles (the mixture CDF is their weighted average), and bisection there halves the
    bracket each time: 60 halvings leave it below 1e-15 of its width.
    """
    if not 0 < tau < 1:
        raise ValueError(f"quantile level {tau} must lie in (0, 1)")
    w = np.asarray(weights, np.float64)[..., None, None, None]
    means, stds = np.asarray(means, np.float64), np.asarray(stds, np.float64)
    own = means + stds * ndtri(tau)
    present = w > 1e-15
    low = np.where(present, own, np.inf).min(axis=-4)
    high = np.where(present, own, -np.inf).max(axis=-4)
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        cdf = (w * ndtr((mid[..., None, :, :, :] - means) / np.maximum(stds, 1e-300))).sum(axis=-4)
        below = cdf < tau
        low = np.where(below, mid, low)
        high = np.where(below, high, mid)
    return 0.5 * (low + high)
