"""
The closed-form baselines (sr_var.baselines) on the first testbed, where the answers are
known: E[x | y] = M y is linear, so least squares must find M; the pooled residuals'
covariance is E[s^2] C0, so its top directions are C0's; the squared residuals grow with the
scale, which only a fit in y^2 can follow.
"""

import numpy as np

from sr_var.baselines import LinearBaselines
from testbed import GaussianScaleMixture, TestbedParams


def test_linear_baselines_recover_the_first_testbeds_answers():
    tb = GaussianScaleMixture(TestbedParams(large_size=8, small_size=2, length_scale=1.5))
    rng = np.random.default_rng(0)
    x, _ = tb.sample_prior(20000, rng)
    y = tb.downsample(x)

    def chunks():
        for i in range(0, len(x), 5000):
            yield x[i:i + 5000], y[i:i + 5000]

    b = LinearBaselines(chunks, num_pcs=3)
    xe, _ = tb.sample_prior(200, rng)
    ye = tb.downsample(xe)
    exact_mean, exact_var = tb.posterior_mean(ye), tb.posterior_variance(ye)
    # least squares finds M: its error to E[x|y] is a small share of the posterior variance
    assert np.mean((b.mean(ye) - exact_mean) ** 2) < 0.01 * exact_var.mean()
    # the y-independent map is the average posterior variance; the fit in y^2 follows the scale
    assert np.allclose(b.variance_constant(ye).mean(), tb.posterior_variance(y).mean(), rtol=0.01)
    err = lambda v: np.mean(np.abs(v - exact_var))  # noqa: E731
    assert err(b.variance_quadratic(ye)) < 0.7 * err(b.variance_constant(ye))
    # the pooled residuals' top directions are C0's (its first two span the top three, which are near-degenerate)
    directions, variances = b.principal_components(2)
    top = tb.eigenvectors(np.argsort(tb.lam.ravel())[::-1][:3]).reshape(3, -1)
    overlap = (directions[0].reshape(3, -1) @ top.T) ** 2
    assert overlap[:2].sum(1).min() > 0.95 and variances.shape == (2, 3)
    # quantiles: the linear estimate plus the residuals' own quantiles, ordered
    q = b.quantiles(ye, (0.05, 0.5, 0.95))
    assert q.shape == (3, 200, 3, 8, 8) and (q[0] < q[1]).all() and (q[1] < q[2]).all()
    inside = np.mean((xe >= q[0]) & (xe <= q[2]))
    assert abs(inside - 0.9) < 0.02
