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

from imaging.pc_metrics import (  # noqa: F401 (the comparisons, under their old names)
    SampleCovariance,
    captured,
    compare,
    sample_pcs,
    split_half,
    subspace_overlap,
    vs_exact,
    vs_samples,
)
from runkit import UserError, require_file
from runkit.fileio import atomic_write
from runkit.finite import require_finite

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
    require_finite(directions, f"PC-model output {path!r} (directions)")
    require_finite(variances, f"PC-model output {path!r} (variances)")
    return directions.reshape(len(directions), -1).astype(np.float64), variances.astype(np.float64)
