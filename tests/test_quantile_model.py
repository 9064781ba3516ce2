"""
The quantile model's loss and files: the pinball loss's minimiser is the quantile (the
conditional risk minimiser a trained quantile model approaches), crossing levels are counted
and then sorted, the levels flag is checked.
"""

import numpy as np
import pytest
import torch as th
from scipy import stats

from runkit import UserError
from sr_var.quantiles import crossing_share, load_quantiles, parse_levels, pinball_loss, save_quantiles


def test_the_pinball_loss_is_minimised_by_the_quantiles():
    """Free per-pixel outputs trained by the pinball loss on draws of a known law land on its quantiles."""
    th.manual_seed(0)
    levels = th.tensor([0.05, 0.5, 0.95])
    q = th.zeros(1, 3, 1, 2, 2, requires_grad=True)
    opt = th.optim.Adam([q], lr=0.05)
    for step in range(1500):
        x = th.randn(256, 1, 2, 2) * 2 + 1  # N(1, 4) at every pixel
        loss = pinball_loss(q.expand(256, -1, -1, -1, -1), x, levels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = 0.05 * (1 - step / 1500)
    want = 1 + 2 * stats.norm.ppf(levels.numpy())
    assert np.allclose(q.detach()[0, :, 0].mean(dim=(1, 2)).numpy(), want, atol=0.1)


def test_levels_crossings_and_files(tmp_path):
    assert parse_levels("0.05,0.5,0.95") == (0.05, 0.5, 0.95)
    for bad in ("0.5,0.2", "0,0.5", "0.2,1.0", "0.2,0.2", "a"):
        with pytest.raises(UserError):
            parse_levels(bad)
    raw = np.zeros((3, 3, 2, 2))  # [L, C, H, W]
    raw[0], raw[2] = 10, 20  # level 0 above level 1 at every pixel
    assert crossing_share(raw) == 1.0
    raw[0] = -5
    raw[1, 0, 0, 0] = -10  # now one pixel of 12 crosses
    assert crossing_share(raw) == pytest.approx(1 / 12)
    path = str(tmp_path / "q.npz")
    save_quantiles(path, [0.1, 0.5, 0.9], raw)
    levels, quantiles, crossing = load_quantiles(path, 2)
    assert levels.tolist() == [0.1, 0.5, 0.9] and crossing == pytest.approx(1 / 12)
    assert quantiles.shape == (3, 2, 2, 3) and (np.diff(quantiles, axis=0) >= 0).all()
