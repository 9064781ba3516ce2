"""
Intervals with a finite-sample guarantee, for any interval source that widens with one scalar
lambda (SPEC.md, "Calibrated intervals"): per pixel [c - lambda a, c + lambda b] with a centre c
and offsets a, b >= 0 (a quantile model: its median and the distances to its outer levels; a
variance model: m and sigma; samples: their median and empirical quantile offsets).

The loss of an image at lambda is the share of its pixels outside the interval; it does not
grow with lambda. Given n calibration images (n counts images, never pixels):

    RCPS (Bates et al. 2021, with the Hoeffding-Bentkus bound): the smallest lambda of the grid
        such that at it and at every larger lambda the upper confidence bound on the mean loss
        is <= alpha at level delta; then P(risk > alpha) <= delta over calibration sets.
    Conformal risk control (Angelopoulos et al. 2022): the smallest lambda with
        (n / (n + 1)) R_hat(lambda) + 1 / (n + 1) <= alpha; then E[risk] <= alpha.

Every pixel has a threshold, the smallest lambda that covers it, so an image's whole loss
curve is one sort (`thresholds`, `loss_curves`).
"""

import math

import numpy as np
from scipy.stats import binom


def thresholds(truth, centre, below, above):
    """
    Per pixel, the smallest lambda >= 0 whose interval [c - lambda a, c + lambda b] holds the
    truth: (c - x) / a below the centre, (x - c) / b above it (inf where the offset is 0 and
    the truth is off the centre). Arrays of one shape; returns float64 of that shape.
    """
    x, c = np.asarray(truth, np.float64), np.asarray(centre, np.float64)
    a, b = np.asarray(below, np.float64), np.asarray(above, np.float64)
    gap = np.where(x < c, c - x, x - c)
    offset = np.where(x < c, a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(gap == 0, 0.0, np.where(offset > 0, gap / offset, np.inf))
    return t


def loss_curves(per_image_thresholds, lambdas):
    """The share of each image's pixels outside the interval at each lambda: [n, len(lambdas)]."""
    lambdas = np.asarray(lambdas, np.float64)
    curves = []
    for t in per_image_thresholds:
        t = np.sort(np.asarray(t, np.float64).ravel())
        curves.append(1.0 - np.searchsorted(t, lambdas, side="right") / len(t))
    return np.array(curves)


def _h1(a, b):
    """The binary KL divergence KL(Bern(a) || Bern(b)), with 0 log 0 = 0."""
    a = min(max(a, 0.0), 1.0)
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def hb_pvalue(risk_hat, n, alpha):
    """
    The Hoeffding-Bentkus p-value of H0: risk > alpha, from the mean loss risk_hat of n
    images (losses in [0, 1]): min(exp(-n h1(min(risk_hat, alpha), alpha)),
    e P(Binomial(n, alpha) <= ceil(n risk_hat))).
    """
    hoeffding = math.exp(-n * _h1(min(risk_hat, alpha), alpha))
    bentkus = math.e * binom.cdf(math.ceil(n * risk_hat - 1e-12), n, alpha)
    return min(hoeffding, bentkus, 1.0)


def hb_upper_bound(risk_hat, n, delta, tol=1e-10):
    """
    The Hoeffding-Bentkus upper confidence bound on the risk at level delta: the largest R
    whose test is not rejected, sup {R : hb_pvalue(risk_hat, n, R) > delta} (bisection; the
    p-value falls as R grows, so bound <= alpha exactly when hb_pvalue(risk_hat, n, alpha) <= delta).
    """
    low, high = risk_hat, 1.0
    if hb_pvalue(risk_hat, n, 1.0 - 1e-12) > delta:
        return 1.0
    while high - low > tol:
        mid = 0.5 * (low + high)
        if hb_pvalue(risk_hat, n, mid) > delta:
            low = mid
        else:
            high = mid
    return high


def rcps(curves, lambdas, alpha, delta):
    """
    RCPS with the Hoeffding-Bentkus bound: the smallest lambda such that it and every larger
    lambda of the grid have an upper bound <= alpha (scanned from the largest down, as
    the guarantee needs). None when not even the largest lambda has. curves: [n, len(lambdas)].
    """
    n = len(curves)
    risks = curves.mean(axis=0)
    chosen = None
    for j in range(len(lambdas) - 1, -1, -1):
        if hb_pvalue(risks[j], n, alpha) > delta:  # the bound exceeds alpha here
            break
        chosen = lambdas[j]
    return chosen


def conformal_risk_control(curves, lambdas, alpha):
    """The smallest lambda with (n / (n + 1)) R_hat(lambda) + 1 / (n + 1) <= alpha (losses bounded by 1)."""
    n = len(curves)
    ok = n / (n + 1) * curves.mean(axis=0) + 1 / (n + 1) <= alpha
    # the loss does not grow with lambda, so the lambdas that pass are a tail of the grid
    passing = np.nonzero(ok)[0]
    return None if len(passing) == 0 else lambdas[passing[0]]


METHODS = {"rcps_hb": lambda curves, lambdas, alpha, delta: rcps(curves, lambdas, alpha, delta),
           "crc": lambda curves, lambdas, alpha, delta: conformal_risk_control(curves, lambdas, alpha)}
