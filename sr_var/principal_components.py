"""
Posterior principal components: the training loss of the PC model (after NPPC, Nehme et al.,
NeurIPS 2023) and the numbers that check its output against the principal components of
samples or of an exact covariance.

Directions are flat unit vectors (any layout, D values each); variances are along them.
Verification arrays are float64 in [0, 255] units (variances in [0, 255]^2), as in metrics.py.
"""

import os
import zipfile

import numpy as np
import torch as th

from guided_diffusion.cli import UserError, require_file
from guided_diffusion.io_util import atomic_write

# -- training ------------------------------------------------------------------------------------


def principal_components_loss(directions, variances, residual):
    """
    The PC model's loss on one batch: directions [B, K, C, H, W] (orthonormal), variances
    [B, K], residual x - m(y) [B, C, H, W], all in [-1, 1] units. With p_k = (w_k . e)^2:

      directions  (|e|^2 - sum_k p_k) / K: the residual energy they leave (per direction).
                  Gram-Schmidt stops each direction's gradient at the ones before it, so w_k
                  maximises what w_1..w_{k-1} leave: the minimiser is the top K principal
                  directions of E[e e^T | y], in order.
      variances   mean_k (sigma_k^2 - p_k)^2 with p_k's gradient stopped: the MSE regression
                  whose minimiser is E[p_k | y] = w_k^T E[e e^T | y] w_k (Theorem 2.2 along w_k).
    """
    e = residual.float().flatten(1)
    p = th.einsum("bkd,bd->bk", directions.flatten(2), e) ** 2
    num_pcs = directions.shape[1]
    left = (e.pow(2).sum(1) - p.sum(1)) / num_pcs
    return (left + (variances - p.detach()).pow(2).mean(1)).mean()


# -- files ---------------------------------------------------------------------------------------

def pcs_path(output_dir, file_name, step):
    return os.path.join(output_dir, file_name, f"high_res_pcs_{step}.npz")


def save_pcs(path, directions, variances):
    """directions [K, H, W, C] (unit flat vectors), variances [K] in [0, 255]^2 units, float32."""
    atomic_write(path, lambda f: np.savez(f, directions=np.asarray(directions, np.float32),
                                         variances=np.asarray(variances, np.float32)))


def load_pcs(path, size):
    """(directions [K, D] float64, variances [K] float64) of a PC-model output; UserError if unreadable."""
    require_file(path, "sr_model_output_dir")
    try:
        with np.load(path, allow_pickle=False) as f:
            directions, variances = f["directions"], f["variances"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise UserError(f"{path!r} is not a PC-model output (directions, variances): {e}") from None
    if directions.ndim != 4 or directions.shape[1:] != (size, size, 3) or variances.shape != directions.shape[:1]:
        raise UserError(f"{path!r} holds directions {directions.shape} and variances {variances.shape}, not "
                        f"[K, {size}, {size}, 3] and [K]: check --large_size")
    return directions.reshape(len(directions), -1).astype(np.float64), variances.astype(np.float64)


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


class ExactCovariance:
    """
    The testbed's Cov[x | y] for one low-res image y [C, h, w], on HWC-flat vectors in
    [0, 255] units (the verification's layout): diagonal in C0's eigenbasis.
    """

    def __init__(self, testbed, y):
        self.testbed = testbed
        p = testbed.params
        self.shape = (p.large_size, p.large_size, p.channels)
        self.eigenvalues = (testbed.posterior_covariance_eigenvalues(y) * 127.5 ** 2).ravel()

    def coefficients(self, vectors):
        """HWC-flat vectors [K, D] -> their coordinates [K, D] in the eigenbasis."""
        chw = np.moveaxis(vectors.reshape(-1, *self.shape), -1, -3)
        return self.testbed.to_eigen(chw).reshape(len(vectors), -1)

    def along(self, directions):
        """w_k^T Cov w_k for directions [K, D]."""
        return np.sum(self.coefficients(directions) ** 2 * self.eigenvalues, axis=1)

    def top(self, k):
        """The top k eigenvectors [k, D] (HWC-flat) and eigenvalues [k]."""
        order = np.argsort(self.eigenvalues)[::-1][:k]
        vectors = np.moveaxis(self.testbed.eigenvectors(order), -3, -1).reshape(len(order), -1)
        return vectors, self.eigenvalues[order]

    def top_eigenvalues_plus(self, bias, k):
        """The top k eigenvalues of Cov + b b^T (what a model trained on x - m learns, b = E[x | y] - m)."""
        from scipy.sparse.linalg import LinearOperator, eigsh

        b = self.coefficients(np.asarray(bias, np.float64).reshape(1, -1))[0]
        d = self.eigenvalues
        op = LinearOperator((len(d), len(d)), matvec=lambda v: d * v.ravel() + b * (b @ v.ravel()), dtype=np.float64)
        return np.sort(eigsh(op, k=k, which="LA", return_eigenvectors=False))[::-1]
