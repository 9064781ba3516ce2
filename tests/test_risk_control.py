"""
Calibrated intervals (imaging.risk_control): the Hoeffding-Bentkus p-value and bound against a
hand computation, RCPS and conformal risk control on loss curves, and their guarantees on
synthetic data: over repeated calibration sets the realised risk exceeds alpha in at most
about delta of them (RCPS), and is alpha or less on average (CRC).
"""

import math

import numpy as np
import pytest

from imaging import risk_control as rc


def test_thresholds_and_loss_curves():
    t = rc.thresholds(truth=[0.0, 3.0, 5.0, 10.0, 4.0], centre=[4.0] * 5, below=[2.0, 2.0, 0.0, 0.0, 1.0],
                      above=[1.0, 1.0, 1.0, 3.0, 0.0])
    assert t.tolist() == [2.0, 0.5, 1.0, 2.0, 0.0]
    assert np.isinf(rc.thresholds([1.0], [2.0], [0.0], [1.0])[0])  # below the centre with no room below
    curves = rc.loss_curves([t], [0.0, 0.5, 1.0, 1.99, 2.0])
    assert curves.tolist() == [[0.8, 0.6, 0.4, 0.4, 0.0]]


def test_hoeffding_bentkus_against_a_hand_computation():
    n, r, alpha = 100, 0.05, 0.1
    h1 = r * math.log(r / alpha) + (1 - r) * math.log((1 - r) / (1 - alpha))
    hoeffding = math.exp(-n * h1)
    bentkus = math.e * sum(math.comb(n, k) * alpha ** k * (1 - alpha) ** (n - k) for k in range(0, 6))
    assert rc.hb_pvalue(r, n, alpha) == pytest.approx(min(hoeffding, bentkus), rel=1e-9)
    assert rc.hb_pvalue(r, n, alpha) == pytest.approx(0.15652, abs=1e-4)  # e * P(Bin(100, 0.1) <= 5)
    # above alpha the test cannot reject
    assert rc.hb_pvalue(0.2, n, alpha) == 1.0
    # the bound is where the p-value crosses delta, and it falls as n grows
    ucb = rc.hb_upper_bound(r, n, 0.1)
    assert rc.hb_pvalue(r, n, ucb) == pytest.approx(0.1, abs=1e-6)
    assert r < rc.hb_upper_bound(r, 1000, 0.1) < ucb


def test_rcps_and_crc_choose_the_smallest_safe_lambda():
    lambdas = np.linspace(0, 1, 11)
    curves = np.tile(np.linspace(0.5, 0.0, 11), (40, 1))  # every image: loss 0.5 - 0.5 lambda
    # CRC: 40/41 R + 1/41 <= 0.1  <=>  R <= 0.0775  <=>  lambda >= 0.845 -> 0.9
    assert rc.conformal_risk_control(curves, lambdas, 0.1) == pytest.approx(0.9)
    # RCPS: the smallest lambda whose HB bound is <= 0.1 at delta 0.1, all larger ones too
    want = min(l for l, r in zip(lambdas, curves[0]) if all(rc.hb_pvalue(rr, 40, 0.1) <= 0.1
                                                              for rr in curves[0][lambdas >= l]))
    assert rc.rcps(curves, lambdas, 0.1, 0.1) == pytest.approx(want)
    assert rc.rcps(curves * 0 + 0.5, lambdas, 0.1, 0.1) is None  # no lambda is safe


def test_guarantees_hold_over_repeated_calibration_sets():
    """
    Synthetic images: each has its own noise scale s ~ Gamma, pixels x = s z, the interval
    +-lambda around 0 (a variance model that knows nothing of s). Over 300 calibration sets of
    n = 50 images, the risk on a large test set exceeds alpha in at most about delta of them
    for RCPS, and averages alpha or less for CRC.
    """
    rng = np.random.default_rng(0)
    alpha, delta, n = 0.1, 0.1, 50
    lambdas = np.linspace(0, 8, 801)

    def images(count):
        s = rng.gamma(4.0, 0.25, size=(count, 1))
        return np.abs(s * rng.standard_normal((count, 400)))  # the thresholds of +-lambda about 0

    test_curves = rc.loss_curves(images(4000), lambdas)
    exceed, crc_risks = 0, []
    for _ in range(300):
        cal = rc.loss_curves(images(n), lambdas)
        lam = rc.rcps(cal, lambdas, alpha, delta)
        exceed += test_curves[:, np.searchsorted(lambdas, lam)].mean() > alpha
        lam = rc.conformal_risk_control(cal, lambdas, alpha)
        crc_risks.append(test_curves[:, np.searchsorted(lambdas, lam)].mean())
    assert exceed / 300 <= delta + 0.03  # RCPS is conservative: far below delta in practice
    assert np.mean(crc_risks) <= alpha + 0.005


def test_repeated_splits_report_exact_risk_per_group():
    """Two groups of images of known noise scale, a fixed-width interval: the exact risk per group is read back."""
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    scales = np.repeat([0.5, 2.0], 30)[:, None]
    truth = scales * rng.standard_normal((60, 200))
    centre, offset = np.zeros_like(truth), np.ones_like(truth)
    exact = lambda low, high: (1 - (norm.cdf(high / scales) - norm.cdf(low / scales))).mean(1)  # noqa: E731
    r = rc.repeated_splits(truth, {"unit": (centre, offset, offset)}, alpha=0.2, delta=0.1, splits=20,
                           groups={"small": list(range(30)), "large": list(range(30, 60))}, exact_risk=exact)
    unit = r["unit"]
    assert unit["before_calibration"]["exact_risk"] == pytest.approx(exact(-offset, offset).mean())
    crc = unit["crc"]
    assert crc["no_lambda"] == 0 and crc["realised_risk"] <= 0.2 + 0.05
    # the guarantee is marginal: the small-noise group is far inside alpha, the large one above it
    assert crc["by_group"]["small"]["exact_risk"] < 0.2 < crc["by_group"]["large"]["exact_risk"]
    assert crc["by_group"]["large"]["above_alpha"] > 0.9
