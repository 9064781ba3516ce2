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
    """The binary KL divergence KL(Bern(a) || Bern(b)), with 0 log 0 = 0 (a: a number or an array)."""
    a = np.clip(np.asarray(a, np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(a > 0, a * np.log(a / b), 0.0)
        second = np.where(a < 1, (1 - a) * np.log((1 - a) / (1 - b)), 0.0)
    return first + second


def hb_pvalue(risk_hat, n, alpha):
    """
    The Hoeffding-Bentkus p-value of H0: risk > alpha, from the mean loss risk_hat of n
    images (losses in [0, 1]): min(exp(-n h1(min(risk_hat, alpha), alpha)),
    e P(Binomial(n, alpha) <= ceil(n risk_hat))). risk_hat may be an array.
    """
    r = np.asarray(risk_hat, np.float64)
    hoeffding = np.exp(-n * _h1(np.minimum(r, alpha), alpha))
    bentkus = math.e * binom.cdf(np.ceil(n * r - 1e-12), n, alpha)
    p = np.minimum(np.minimum(hoeffding, bentkus), 1.0)
    return float(p) if p.ndim == 0 else p


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
    lambda of the grid have an upper bound <= alpha (the bound is <= alpha exactly where the
    p-value at alpha is <= delta). None when not even the largest lambda has. curves:
    [n, len(lambdas)].
    """
    safe = hb_pvalue(curves.mean(axis=0), len(curves), alpha) <= delta
    if not safe[-1]:
        return None
    unsafe = np.nonzero(~safe)[0]  # the tail of the grid after the last unsafe lambda
    return lambdas[unsafe[-1] + 1] if len(unsafe) else lambdas[0]


def conformal_risk_control(curves, lambdas, alpha):
    """The smallest lambda with (n / (n + 1)) R_hat(lambda) + 1 / (n + 1) <= alpha (losses bounded by 1)."""
    n = len(curves)
    ok = n / (n + 1) * curves.mean(axis=0) + 1 / (n + 1) <= alpha
    # the loss does not grow with lambda, so the lambdas that pass are a tail of the grid
    passing = np.nonzero(ok)[0]
    return None if len(passing) == 0 else lambdas[passing[0]]


METHODS = {"rcps_hb": lambda curves, lambdas, alpha, delta: rcps(curves, lambdas, alpha, delta),
           "crc": lambda curves, lambdas, alpha, delta: conformal_risk_control(curves, lambdas, alpha)}


def repeated_splits(truth, sources, alpha=0.1, delta=0.1, splits=200, seed=0, groups=None, exact_risk=None,
                    grid_size=801):
    """
    Interval sources {name: (centre, below, above)}, each [N, ...] like `truth` [N, ...]: over
    `splits` random halvings of the N images into a calibration and a test half, lambda by each
    method of METHODS on the calibration half, then on the test half the realised risk (the mean
    share of the true images' pixels outside), how often it exceeds alpha, and the width. With
    `exact_risk(low, high)` -> [N] (an image's expected share outside under its exact posterior,
    on a testbed) also that per test image, pooled and per group (`groups`: {label: [image
    indices]}). Per source also its interval as given (lambda = 1).
    """
    truth = np.asarray(truth, np.float64)
    n = len(truth)
    rng = np.random.default_rng(seed)
    halves = [rng.permutation(n) for _ in range(splits)]
    result = {"alpha": alpha, "delta": delta, "splits": splits, "num_images": n}
    for name, (centre, below, above) in sources.items():
        below, above = np.maximum(below, 0), np.maximum(above, 0)
        t = thresholds(truth, centre, below, above).reshape(n, -1)
        finite = t[np.isfinite(t)]
        grid = np.linspace(0, 1.5 * max(float(np.quantile(finite, 0.999)) if finite.size else 1.0, 1.0), grid_size)
        curves = loss_curves(t, grid)
        width = (below + above).reshape(n, -1).mean(1)
        cache = {}

        def risk_at(lam):  # the exact conditional risk of every image at lambda
            if lam not in cache:
                cache[lam] = exact_risk(centre - lam * below, centre + lam * above)
            return cache[lam]

        source = {"before_calibration": {"realised_risk": float(loss_curves(t, [1.0])[:, 0].mean()),
                                         "width": float(width.mean())}}
        if exact_risk is not None:
            source["before_calibration"]["exact_risk"] = float(risk_at(1.0).mean())
        for method, choose in METHODS.items():
            rows = []
            for order in halves:
                cal, test = order[:n // 2], order[n // 2:]
                lam = choose(curves[cal], grid, alpha, delta)
                if lam is not None:
                    j = int(np.searchsorted(grid, lam))
                    rows.append(dict(lam=float(lam), realised=float(curves[test, j].mean()),
                                     width=float(lam * width[test].mean()), test=test))
            summary = {"no_lambda": splits - len(rows)}
            if rows:
                summary.update(exceeds_alpha=float(np.mean([r["realised"] > alpha for r in rows])),
                               realised_risk=float(np.mean([r["realised"] for r in rows])),
                               lam=float(np.mean([r["lam"] for r in rows])),
                               width=float(np.mean([r["width"] for r in rows])))
                if exact_risk is not None:
                    exact = np.concatenate([risk_at(r["lam"])[r["test"]] for r in rows])
                    tested = np.concatenate([r["test"] for r in rows])
                    summary.update(exact_risk=float(exact.mean()), exact_above_alpha=float((exact > alpha).mean()))
                    if groups:
                        summary["by_group"] = {
                            label: dict(exact_risk=float(exact[np.isin(tested, idx)].mean()),
                                        above_alpha=float((exact[np.isin(tested, idx)] > alpha).mean()))
                            for label, idx in groups.items() if np.isin(tested, idx).any()}
            source[method] = summary
        result[name] = source
    return result
