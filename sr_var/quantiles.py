"""
Per-pixel conditional quantiles: the quantile model's training loss (the pinball loss, whose
conditional risk minimiser is the conditional tau-quantile: Theorem 2.1's argument for
another proper loss) and its output files.

    {output_dir}/{file_name}/high_res_quantiles_{step}.npz
        levels     [L]           the quantile levels, increasing in (0, 1)
        quantiles  [L, H, W, C]  float32 in [0, 255] units, nondecreasing along L
        crossing   []            the share of pixels whose raw outputs crossed (were not
                                 nondecreasing along L) before they were sorted
"""

import os
import zipfile

import numpy as np
import torch as th

from runkit import UserError, comma_list, require_file
from runkit.fileio import atomic_write
from runkit.finite import require_finite


def parse_levels(text, flag="quantiles"):
    """'0.05,0.5,0.95' -> (0.05, 0.5, 0.95): each in (0, 1), strictly increasing; else one line."""
    levels = tuple(comma_list(text, flag, float, example="0.05,0.5,0.95"))
    if not all(0 < t < 1 for t in levels):
        raise UserError(f"--{flag} {text!r}: every level must lie in (0, 1)")
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise UserError(f"--{flag} {text!r}: the levels must be strictly increasing")
    return levels


def pinball_loss(quantiles, target, levels):
    """
    The pinball loss rho_tau(u) = max(tau u, (tau - 1) u), u = x - q_tau, averaged over pixels
    and levels: quantiles [B, L, C, H, W], target [B, C, H, W], levels [L] (a tensor).
    """
    u = target[:, None].float() - quantiles.float()
    tau = levels.to(u).view(1, -1, 1, 1, 1)
    return th.maximum(tau * u, (tau - 1) * u).mean()


def crossing_share(quantiles):
    """The share of pixels whose levels are not nondecreasing: quantiles [..., L, C, H, W] -> [...]."""
    crossed = (quantiles[..., 1:, :, :, :] < quantiles[..., :-1, :, :, :]).any(axis=-4)
    return crossed.reshape(*crossed.shape[:-3], -1).mean(axis=-1)


# -- files ---------------------------------------------------------------------------------------

def quantiles_path(output_dir, file_name, step):
    return os.path.join(output_dir, file_name, f"high_res_quantiles_{step}.npz")


def save_quantiles(path, levels, quantiles_chw_255):
    """One image's raw quantiles [L, C, H, W] in [0, 255] units: sorted along L, with the share that needed it."""
    q = np.asarray(quantiles_chw_255, np.float64)
    crossing = float(crossing_share(q))
    atomic_write(path, lambda f: np.savez(f, levels=np.asarray(levels, np.float64),
                                         quantiles=np.sort(q, axis=0).transpose(0, 2, 3, 1).astype(np.float32),
                                         crossing=np.float64(crossing)))


def load_quantiles(path, size, flag="sr_model_output_dir"):
    """(levels [L], quantiles [L, H, W, C] float64, crossing share) of a quantile-model output; UserError if unreadable."""
    require_file(path, flag)
    try:
        with np.load(path, allow_pickle=False) as f:
            levels, quantiles, crossing = f["levels"], f["quantiles"], float(f["crossing"])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise UserError(f"{path!r} is not a quantile-model output (levels, quantiles, crossing): {e}") from None
    if quantiles.ndim != 4 or quantiles.shape[1:] != (size, size, 3) or levels.shape != quantiles.shape[:1]:
        raise UserError(f"{path!r} holds quantiles {quantiles.shape} and levels {levels.shape}, not [L, {size}, "
                        f"{size}, 3] and [L]: check --large_size")
    require_finite(quantiles, f"quantile-model output {path!r}")
    return levels.astype(np.float64), quantiles.astype(np.float64), crossing
