"""
The second exact testbed (a covariance mixture): every closed form against an independent
dense computation on a tiny instance (8 px, 2 channels, three components), its denoiser
against dense Gaussian conditioning, the exact reverse chain and the posterior sampler
against the closed-form moments, and the per-pixel quantiles against scipy.
"""

import math

import numpy as np
import pytest
import torch as th
from scipy import optimize, stats

from guided_diffusion.script_util import create_gaussian_diffusion
from imaging import VAR_SCALE
from sr_var.sampling import sample_images
from testbed import (
    Component,
    CovarianceMixture,
    CovarianceMixtureParams,
    ExactMeanModel,
    ExactTestbedTeacher,
    load_testbed,
    write_testbed_dataset,
)
from testbed.covariance_mixture import oriented_kernel
from testbed.mixture import mixture_quantile


@pytest.fixture(scope="module")
def tiny():
    components = (Component(0.3, 0.3, (2.0, 0.7), 0.0), Component(0.3, 0.35, (2.0, 0.7), math.pi / 2),
                  Component(0.4, 0.25, (1.0, 1.0), 0.0))
    return CovarianceMixture(CovarianceMixtureParams(large_size=8, small_size=2, channels=2, components=components,
                                                     channel_correlation=0.3, jitter=1e-3))


def dense(tb):
    """Per component: S_k, M_k, C_k, and D, as dense matrices over the flattened [C, H, W] image."""
    p = tb.params
    R = np.full((p.channels, p.channels), p.channel_correlation) + (1 - p.channel_correlation) * np.eye(p.channels)
    D = np.kron(np.eye(p.channels), np.kron(tb.A, tb.A))
    out = []
    for c in p.components:
        # the kernel from its definition, pixel by pixel
        K = np.empty((p.large_size ** 2,) * 2)
        U = np.array([[math.cos(c.angle), -math.sin(c.angle)], [math.sin(c.angle), math.cos(c.angle)]])
        P = U @ np.diag([c.lengths[0] ** -2, c.lengths[1] ** -2]) @ U.T
        for i in range(p.large_size ** 2):
            for j in range(p.large_size ** 2):
                d = np.array(divmod(i, p.large_size)) - np.array(divmod(j, p.large_size))
                K[i, j] = np.exp(-0.5 * d @ P @ d)
        S = c.scale ** 2 * np.kron(R, K) + p.jitter * np.eye(p.channels * p.large_size ** 2)
        M = S @ D.T @ np.linalg.inv(D @ S @ D.T)
        out.append((S, M, S - M @ D @ S))
    return out, D


def mixed_image(tb, rng, below=0.8):
    """A low-res image rescaled until no component holds p(k | y) above `below`: the weights matter."""
    y0 = tb.downsample(tb.sample_prior(1, rng)[0])[0]
    y = min((y0 * c for c in np.geomspace(0.2, 5, 200)), key=lambda v: tb.component_posterior(v).max())
    assert tb.component_posterior(y).max() < below
    return y


def test_kernel_is_the_oriented_gaussian(tiny):
    K = oriented_kernel(8, (2.0, 0.7), math.pi / 2)
    # d = (row, col): at angle 0 the long axis (l1) runs down the rows; rotated by 90 degrees it runs
    # along a row, so the pixel to the right (offset (0, 1)) is a long-axis neighbour, the one below a short-axis one
    assert K[0, 1] == pytest.approx(math.exp(-0.5 / 4)) and K[0, 8] == pytest.approx(math.exp(-0.5 / 0.49))


def test_closed_forms_match_dense_linear_algebra(tiny):
    comps, D = dense(tiny)
    rng = np.random.default_rng(0)
    y = np.stack([mixed_image(tiny, rng) for _ in range(2)] + [tiny.downsample(tiny.sample_prior(2, rng)[0])[i]
                                                              for i in range(2)])
    flat = y.reshape(len(y), -1)
    for yi, fi in zip(y, flat):
        logp = [np.log(c.weight) - 0.5 * np.linalg.slogdet(D @ S @ D.T)[1] - 0.5 * fi @ np.linalg.solve(D @ S @ D.T, fi)
                for c, (S, _, _) in zip(tiny.params.components, comps)]
        w = np.exp(np.array(logp) - max(logp))
        w /= w.sum()
        assert np.allclose(tiny.component_posterior(yi), w, atol=1e-10)
        means = [M @ fi for _, M, _ in comps]
        mean = sum(wk * m for wk, m in zip(w, means))
        cov = sum(wk * (C + np.outer(m - mean, m - mean)) for wk, m, (_, _, C) in zip(w, means, comps))
        assert np.allclose(tiny.posterior_mean(yi).ravel(), mean, atol=1e-10)
        assert np.allclose(tiny.posterior_variance(yi).ravel(), np.diag(cov), atol=1e-10)
        # the covariance on HWC-flat vectors in [0, 255]^2 units: w^T Cov w, the top eigenpairs, Cov + bb^T
        chw_to_hwc = np.arange(cov.shape[0]).reshape(2, 8, 8).transpose(1, 2, 0).ravel()
        hwc = (VAR_SCALE * cov)[np.ix_(chw_to_hwc, chw_to_hwc)]
        oracle = tiny.covariance(yi)
        v = np.linalg.qr(rng.standard_normal((hwc.shape[0], 4)))[0].T
        assert np.allclose(oracle.along(v), np.einsum("kd,de,ke->k", v, hwc, v))
        vecs, vals = oracle.top(3)
        assert np.allclose(vals, np.linalg.eigvalsh(hwc)[::-1][:3])
        assert np.allclose(np.abs(vecs @ np.linalg.eigh(hwc)[1][:, ::-1][:, :3]), np.eye(3), atol=1e-6)
        b = rng.standard_normal(hwc.shape[0]) * 20
        assert np.allclose(oracle.top_eigenvalues_plus(b, 3), np.linalg.eigvalsh(hwc + np.outer(b, b))[::-1][:3])
    # batches give what single images give
    assert np.allclose(tiny.posterior_mean(y)[1], tiny.posterior_mean(y[1]))
    # the posterior mean is not linear in y: E[x | 2y] != 2 E[x | y] for a mixed image
    assert not np.allclose(tiny.posterior_mean(2 * y[0]), 2 * tiny.posterior_mean(y[0]), atol=1e-3)


def test_prior_component_posterior_matches_dense(tiny):
    comps, _ = dense(tiny)
    x, _ = tiny.sample_prior(3, np.random.default_rng(4))
    v = 1e-4
    for xi, got in zip(x.reshape(3, -1), tiny.prior_component_posterior(x, v)):
        logp = [np.log(c.weight) - 0.5 * np.linalg.slogdet(S + v * np.eye(len(xi)))[1]
                - 0.5 * xi @ np.linalg.solve(S + v * np.eye(len(xi)), xi) for c, (S, _, _) in
                zip(tiny.params.components, comps)]
        want = np.exp(np.array(logp) - max(logp))
        assert np.allclose(got, want / want.sum(), atol=1e-10)


def test_prior_and_posterior_samples_have_the_closed_form_moments(tiny):
    comps, _ = dense(tiny)
    rng = np.random.default_rng(5)
    x, k = tiny.sample_prior(20000, rng)
    for kk, (S, _, _) in enumerate(comps):
        emp = np.cov(x[k == kk].reshape(-1, S.shape[0]).T)
        assert np.abs(emp - S).max() < 0.1 * np.abs(S).max(), kk
    y = mixed_image(tiny, rng)
    samples = tiny.sample_posterior(y, 20000, rng)
    mean, var = tiny.posterior_mean(y), tiny.posterior_variance(y)
    n = len(samples)
    assert np.abs((samples.mean(0) - mean) / np.sqrt(var / n)).max() < 5
    assert np.abs(samples.var(0, ddof=1) / var - 1).max() < 0.1
    # D x = y exactly for every posterior sample
    assert np.allclose(tiny.downsample(samples), y[None], atol=1e-10)


def test_pixel_quantiles_match_scipy_and_samples(tiny):
    rng = np.random.default_rng(6)
    y = mixed_image(tiny, rng, below=0.7)
    levels = (0.05, 0.5, 0.95)
    q = tiny.posterior_quantiles(y, levels)  # [L, C, H, W]
    w, means, stds = tiny.pixel_marginals(y)
    for (c, i, j) in ((0, 3, 4), (1, 0, 7)):
        cdf = lambda t: sum(wk * stats.norm.cdf(t, m[c, i, j], s[c, i, j]) for wk, m, s in zip(w, means, stds))  # noqa
        for tau, got in zip(levels, q[:, c, i, j]):
            want = optimize.brentq(lambda t: cdf(t) - tau, -5, 5, xtol=1e-14)
            assert got == pytest.approx(want, abs=1e-9)
    samples = tiny.sample_posterior(y, 40000, rng)
    emp = np.quantile(samples, levels, axis=0)
    # a sample quantile's sd is sqrt(tau (1 - tau) / n) / density: well below 0.02 here
    assert np.abs(emp - q).max() < 0.03
    # the first testbed's marginals go through the same function
    assert mixture_quantile(np.array([1.0]), np.zeros((1, 1, 1, 1)), np.ones((1, 1, 1, 1)), 0.975)[0, 0, 0] == \
        pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        tiny.posterior_quantiles(y, (0.0,))


@pytest.mark.parametrize("alpha_bar", [0.999, 0.6, 0.05])
def test_exact_denoiser_matches_dense_gaussian_conditioning(tiny, alpha_bar):
    comps, D = dense(tiny)
    rng = np.random.default_rng(1)
    y = mixed_image(tiny, rng)
    x0 = tiny.sample_posterior(y, 1, rng)[0]
    a, b2 = np.sqrt(alpha_bar), 1 - alpha_bar
    x_t = a * x0 + np.sqrt(b2) * rng.standard_normal(x0.shape)
    n = x0.size
    logp, means, covs = [], [], []
    for pk, (_, M, C) in zip(tiny.component_posterior(y), comps):
        my = M @ y.ravel()
        r = x_t.ravel() - a * my
        cov_t = a ** 2 * C + b2 * np.eye(n)
        logp.append(np.log(pk) - 0.5 * np.linalg.slogdet(cov_t)[1] - 0.5 * r @ np.linalg.solve(cov_t, r))
        gain = a * C @ np.linalg.inv(cov_t)
        means.append(my + gain @ r)
        covs.append(C - a * gain @ C)
    w = np.exp(np.array(logp) - max(logp))
    w /= w.sum()
    mean = sum(wk * mk for wk, mk in zip(w, means))
    var = sum(wk * (np.diag(ck) + (mk - mean) ** 2) for wk, mk, ck in zip(w, means, covs))
    got_mean, got_var = tiny.denoise(th.tensor(x_t[None]), th.tensor([alpha_bar]), th.tensor(y[None]))
    assert np.allclose(got_mean.numpy().ravel(), mean, atol=2e-6)
    assert np.allclose(got_var.numpy().ravel(), var, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("respacing", ["50", "5"])
def test_exact_teacher_gives_exact_posterior_samples(tiny, respacing):
    """The chain of exact reverse transitions, through the sampler's entry point, at 50 steps and at 5."""
    diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, timestep_respacing=respacing)
    y = mixed_image(tiny, np.random.default_rng(2))
    N = 1000
    samples = sample_images(ExactTestbedTeacher(tiny, diffusion), diffusion, th.tensor(y[None], dtype=th.float32),
                            None, range(N), 8).double().numpy()
    mean, var = tiny.posterior_mean(y), tiny.posterior_variance(y)
    assert np.abs((samples.mean(0) - mean) / np.sqrt(var / N)).max() < 5
    assert np.abs(samples.var(0, ddof=1) / var - 1).max() < 0.3
    assert abs(samples.var(0, ddof=1).sum() / var.sum() - 1) < 0.05
    # the shape of the marginals, not only their moments: sample quantiles against the exact ones
    # (a sample quantile's sd is about sqrt(tau (1 - tau) / N) / density, below 0.01 here)
    levels = (0.1, 0.5, 0.9)
    assert np.abs(np.quantile(samples, levels, axis=0) - tiny.posterior_quantiles(y, levels)).max() < 0.06


def test_files_mean_model_and_json(tmp_path, tiny):
    tb = write_testbed_dataset(str(tmp_path), tiny.params, num_train=3, num_eval=2, seed=0)
    again = load_testbed(str(tmp_path / "testbed.json"))
    assert isinstance(again, CovarianceMixture) and again.params == tiny.params
    assert sorted(p.name[:2] for p in (tmp_path / "images").iterdir()) == ["cm"] * 5
    # the exact mean as a mean model, from the bilinear input
    from imaging import low_res_input
    x, _ = tb.sample_prior(2, np.random.default_rng(0))
    y = tb.downsample(x)
    got = ExactMeanModel(tb)(low_res_input(th.tensor(x), 2).float())
    assert np.allclose(got.numpy(), tb.posterior_mean(y), atol=1e-5)
