"""
Principal components compared: of samples (PCA, and its split-half floor), of a model's
directions and variances against a reference (overlap, captured variance, variance ratios),
and against an exact covariance (any object with `along` and `top`, e.g.
testbed.ExactCovariance). Directions are flat unit vectors [K, D]; [0, 255] units.
"""

import numpy as np

# -- references: principal components of samples ------------------------------------------------

def sample_pcs(samples, k):
    """
    The top-k principal directions [k, D] and variances [k] (ddof 0, as the variance maps)
    of samples [N, ...], through the N x N Gram matrix (N << D).
    """
    x = np.asarray(samples, np.float64).reshape(len(samples), -1)
    x = x - x.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh(x @ x.T)
    order = np.argsort(eigvals)[::-1][:k]
    eigvals = np.clip(eigvals[order], 0, None)
    directions = (eigvecs[:, order].T @ x) / np.sqrt(np.maximum(eigvals, 1e-300))[:, None]
    return directions, eigvals / len(x)


class SampleCovariance:
    """The covariance (ddof 0) of samples [N, ...] as an operator: w^T C w without forming C."""

    def __init__(self, samples):
        x = np.asarray(samples, np.float64).reshape(len(samples), -1)
        self.centered = x - x.mean(axis=0)

    def along(self, directions):
        """w_k^T C w_k for directions [K, D]."""
        return np.sum((self.centered @ directions.T) ** 2, axis=0) / len(self.centered)


# -- the numbers ----------------------------------------------------------------------------------

def subspace_overlap(directions, reference):
    """Mean squared projection of the directions [K, D] onto span(reference [K', D], orthonormal): 1 = inside."""
    return float(np.sum((directions @ reference.T) ** 2) / len(directions))


def captured(along, top_eigenvalues):
    """sum_k w_k^T C w_k over the sum of C's top-K eigenvalues: 1 = as much as the top K can hold."""
    return float(np.sum(along) / np.sum(top_eigenvalues))


def compare(directions, variances, along, ref_directions, ref_eigenvalues):
    """
    Directions [K, D] and their variances [K] (None for a sample PCA, whose own variances are
    not checked) against a reference covariance C: `along` = w_k^T C w_k, the reference's top
    K directions and eigenvalues. variance_ratio k: sigma_k^2 / w_k^T C w_k (is each variance
    right for its own direction); to_eigenvalue k: sigma_k^2 / lambda_k.
    """
    result = {"overlap": subspace_overlap(directions, ref_directions), "captured": captured(along, ref_eigenvalues)}
    if variances is not None:
        result["variance_ratio"] = {str(k + 1): float(v / a) for k, (v, a) in enumerate(zip(variances, along))}
        result["to_eigenvalue"] = {str(k + 1): float(v / e) for k, (v, e) in enumerate(zip(variances, ref_eigenvalues))}
    return result


def vs_samples(directions, variances, samples, pca=None):
    """The model's directions against the PCA of samples [N, ...] (same K; `pca` = sample_pcs(samples, K) if known)."""
    ref_dirs, ref_vals = sample_pcs(samples, len(directions)) if pca is None else pca
    return compare(directions, variances, SampleCovariance(samples).along(directions), ref_dirs, ref_vals)


def vs_exact(cov, directions, variances=None, bias=None):
    """
    Directions [K, D] (and their variances, or None for a sample PCA) against an
    ExactCovariance: `compare` with its top K; with `bias` b = E[x | y] - m (HWC-flat), also
    the captured share of what a model trained on x - m learns, Cov + b b^T.
    """
    k = len(directions)
    along = cov.along(directions)
    result = compare(directions, variances, along, *cov.top(k))
    if bias is not None:
        result["captured_vs_target"] = captured(along + (directions @ bias) ** 2, cov.top_eigenvalues_plus(bias, k))
    return result


def split_half(samples, k):
    """
    What the PCA of N/2 samples can see of the covariance of N/2 others: the top-k PCs of
    each half against the other half's covariance (both ways, averaged). The floor of a
    sample PCA, measured from the samples alone (not scaled to N).
    """
    half = len(samples) // 2
    a, b = samples[:half], samples[half:2 * half]
    results = []
    for one, other in ((a, b), (b, a)):
        dirs, _ = sample_pcs(one, k)
        ref_dirs, ref_vals = sample_pcs(other, k)
        results.append(compare(dirs, None, SampleCovariance(other).along(dirs), ref_dirs, ref_vals))
    return {key: (results[0][key] + results[1][key]) / 2 for key in results[0]}
