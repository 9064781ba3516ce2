"""
The exact testbed (a Gaussian scale mixture): its closed forms against dense linear algebra,
the exact teacher through the real sampler against the closed-form posterior, and
Theorem 2.2 itself: short trainings of the mean and variance models approach the exact
posterior mean and variance.
"""

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F

from guided_diffusion.script_util import create_gaussian_diffusion
from imaging import area_downsample, low_res_input, to_float
from runkit import logger
from runkit.training import TrainLoop
from sr_var.data import flatten_data_info, load_all_images, load_data_info, resolve_images, sr_training_pairs
from sr_var.kinds import VAR
from sr_var.networks import create_mean_model, create_var_model, mean_model_defaults
from sr_var.sampling import sample_images
from testbed import (
    ExactCovariance,
    ExactTestbedTeacher,
    GaussianScaleMixture,
    TestbedParams,
    TestbedTeacher,
    quantize,
    write_testbed_dataset,
)


@pytest.fixture(scope="module")
def tiny():
    return GaussianScaleMixture(TestbedParams(large_size=8, small_size=2, length_scale=1.5))


def dense_operators(tb):
    """S, D, M and C0 as dense matrices over the flattened [C, H, W] image."""
    C = tb.params.channels
    S = np.kron(tb.R, np.kron(tb.K1, tb.K1))
    D = np.kron(np.eye(C), np.kron(tb.A, tb.A))
    M = S @ D.T @ np.linalg.inv(D @ S @ D.T)
    return S, D, M, S - M @ D @ S


def test_closed_forms_match_dense_linear_algebra(tiny):
    S, D, M, C0 = dense_operators(tiny)
    rng = np.random.default_rng(0)
    x, _ = tiny.sample_prior(5, rng)
    y = tiny.downsample(x)
    assert np.allclose(y.reshape(5, -1), x.reshape(5, -1) @ D.T)
    assert np.allclose(tiny.posterior_mean(y).reshape(5, -1), y.reshape(5, -1) @ M.T)
    assert np.allclose(tiny.c0_diag.ravel(), np.diag(C0))
    # p(k | y) from the dense Gaussian likelihoods
    cov_y = D @ S @ D.T
    for yi in y.reshape(5, -1):
        logp = [np.log(w) - 0.5 * np.linalg.slogdet(s ** 2 * cov_y)[1] - 0.5 * yi @ np.linalg.solve(s ** 2 * cov_y, yi)
                for s, w in zip(tiny.scales, tiny.params.weights)]
        expected = np.exp(logp - np.max(logp))
        expected /= expected.sum()
        assert np.allclose(tiny.component_posterior(yi.reshape(3, 2, 2)), expected, atol=1e-10)
    # Cov[x | y] = E[s^2 | y] C0 through the eigenbasis, on HWC-flat vectors in [0, 255] units
    yi = y[0]
    cov = ExactCovariance(tiny, yi)
    e_s2 = tiny.component_posterior(yi) @ tiny.scales ** 2
    chw_to_hwc = np.arange(C0.shape[0]).reshape(3, 8, 8).transpose(1, 2, 0).ravel()
    dense = (e_s2 * 127.5 ** 2 * C0)[np.ix_(chw_to_hwc, chw_to_hwc)]
    w = np.linalg.qr(rng.standard_normal((dense.shape[0], 4)))[0].T
    assert np.allclose(cov.along(w), np.einsum("kd,de,ke->k", w, dense, w))
    top_dirs, top_vals = cov.top(3)
    assert np.allclose(top_vals, np.linalg.eigvalsh(dense)[::-1][:3])
    assert np.allclose(np.einsum("kd,de,ke->k", top_dirs, dense, top_dirs), top_vals)
    b = rng.standard_normal(dense.shape[0]) * 20
    assert np.allclose(cov.top_eigenvalues_plus(b, 3), np.linalg.eigvalsh(dense + np.outer(b, b))[::-1][:3])


@pytest.mark.parametrize("alpha_bar", [0.999, 0.6, 0.05])
def test_exact_denoiser_matches_dense_gaussian_conditioning(tiny, alpha_bar):
    S, D, M, C0 = dense_operators(tiny)
    rng = np.random.default_rng(1)
    # a low-res image rescaled to lie between two scales, so that the mixture weights matter
    y0 = tiny.downsample(tiny.sample_prior(1, rng)[0])[0]
    y = min((y0 * c for c in np.geomspace(0.2, 5, 200)), key=lambda v: tiny.component_posterior(v).max())
    assert tiny.component_posterior(y).max() < 0.8
    x0 = tiny.sample_posterior(y, 1, rng)[0]
    a, b2 = np.sqrt(alpha_bar), 1 - alpha_bar
    x_t = a * x0 + np.sqrt(b2) * rng.standard_normal(x0.shape)
    n = x0.size
    my, r = M @ y.ravel(), x_t.ravel() - a * (M @ y.ravel())
    logp, means, covs = [], [], []
    for s, pk in zip(tiny.scales, tiny.component_posterior(y)):
        cov_t = a ** 2 * s ** 2 * C0 + b2 * np.eye(n)
        logp.append(np.log(pk) - 0.5 * np.linalg.slogdet(cov_t)[1] - 0.5 * r @ np.linalg.solve(cov_t, r))
        gain = a * s ** 2 * C0 @ np.linalg.inv(cov_t)
        means.append(my + gain @ r)
        covs.append(s ** 2 * C0 - a * gain @ (s ** 2 * C0))
    w = np.exp(np.array(logp) - max(logp))
    w /= w.sum()
    mean = sum(wk * mk for wk, mk in zip(w, means))
    var = sum(wk * (np.diag(ck) + (mk - mean) ** 2) for wk, mk, ck in zip(w, means, covs))
    got_mean, got_var = tiny.denoise(th.tensor(x_t[None]), th.tensor([alpha_bar]), th.tensor(y[None]))
    assert np.allclose(got_mean.numpy().ravel(), mean, atol=2e-6)
    assert np.allclose(got_var.numpy().ravel(), var, rtol=1e-4, atol=1e-9)


def test_teacher_samples_match_the_closed_form_posterior():
    """
    The real sampler (250 respaced steps, learned-range sigma) driven by the exact denoiser:
    per-pixel mean and variance of N samples against E[x|y] and Var[x|y].

    Tolerance: for an image whose p(k|y) is one-hot the posterior is Gaussian with
    covariance Sigma = s_k^2 C0, so with z_i = (mean_i - mu_i) / sqrt(Sigma_ii / N) the
    statistic Q = mean_i z_i^2 has E[Q] = 1 and SD[Q] = sqrt(2 sum_ij rho_ij^2) / n exactly
    (rho: the correlation matrix of Sigma); the same holds for V = mean_i s_i^2 / Sigma_ii
    with s_i^2 the unbiased sample variance (times sqrt(N / (N-1))). Neighbouring pixels are
    strongly correlated, so SD is computed, not assumed; the test allows 4 SD (a false
    alarm rate below 1e-4). What it cannot see, and what the closing note reports, is the
    few-percent variance deficit of a 250-step sampler (measured in the whitened basis).
    """
    tb = GaussianScaleMixture(TestbedParams(large_size=16, small_size=4, length_scale=1.0))
    rng = np.random.default_rng(3)
    x, _ = tb.sample_prior(1, rng)
    y = tb.downsample(x)[0]
    assert tb.component_posterior(y).max() > 0.999
    N = 400
    diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, timestep_respacing="250")
    samples = sample_images(TestbedTeacher(tb, diffusion, learn_sigma=True), diffusion,
                            th.tensor(y[None], dtype=th.float32), None, range(N), 16).double().numpy()

    k = tb.component_posterior(y).argmax()
    C0s = np.kron(tb.K1, tb.K1) - np.kron(tb.M1 @ tb.A @ tb.K1, tb.M1 @ tb.A @ tb.K1)
    d = np.sqrt(np.diag(C0s))
    sum_rho2 = (tb.R ** 2).sum() * ((C0s / np.outer(d, d)) ** 2).sum()
    n = samples[0].size
    sd = np.sqrt(2 * sum_rho2) / n

    mu, var = tb.posterior_mean(y), tb.posterior_variance(y)
    assert np.allclose(var, tb.scales[k] ** 2 * tb.c0_diag, rtol=1e-3)
    Q = np.mean((samples.mean(0) - mu) ** 2 / (var / N))
    V = np.mean(samples.var(0, ddof=1) / var)
    assert abs(Q - 1) < 4 * sd, (Q, sd)
    assert abs(V - 1) < 4 * sd * np.sqrt(N / (N - 1)), (V, sd)
    # the samples keep the low-res image: D x = y up to the final step's clipping/rounding
    assert np.abs(tb.downsample(samples) - y).max() < 2e-2


def one_hot_images(tb, rng, per_scale=1):
    """Low-res images whose component posterior p(k | y) is one-hot, per_scale of each k."""
    found = {}
    while min((len(found.get(k, [])) for k in range(len(tb.scales))), default=0) < per_scale:
        x, k = tb.sample_prior(64, rng)
        y = tb.downsample(x)
        for yi, ki in zip(y, k):
            if tb.component_posterior(yi)[ki] > 0.9999:
                found.setdefault(int(ki), []).append(yi)
    return {k: v[:per_scale] for k, v in sorted(found.items())}


def per_pixel_statistics(tb, samples, y, k):
    """
    Q = mean_i z_i^2 of the standardised sample mean and V = mean_i s_i^2 / Sigma_ii of the
    unbiased sample variance, with their exact standard deviation for a Gaussian posterior
    Sigma = s_k^2 C0 (see test_teacher_samples_match_the_closed_form_posterior).
    """
    N = len(samples)
    C0s = np.kron(tb.K1, tb.K1) - np.kron(tb.M1 @ tb.A @ tb.K1, tb.M1 @ tb.A @ tb.K1)
    d = np.sqrt(np.diag(C0s))
    sum_rho2 = (tb.R ** 2).sum() * ((C0s / np.outer(d, d)) ** 2).sum()
    sd = np.sqrt(2 * sum_rho2) / samples[0].size
    mu, var = tb.posterior_mean(y), tb.posterior_variance(y)
    assert np.allclose(var, tb.scales[k] ** 2 * tb.c0_diag, rtol=1e-3)
    Q = np.mean((samples.mean(0) - mu) ** 2 / (var / N))
    V = np.mean(samples.var(0, ddof=1) / var)
    return Q, V, sd


def test_perturbed_teacher_computes_the_posterior_mean_once_per_low_res(tiny):
    """The robustness run's E[x | y]: the closed form, computed once for the steps of one low-res batch."""
    diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, timestep_respacing="10")
    teacher = TestbedTeacher(tiny, diffusion, learn_sigma=True, perturbation=0.3)
    calls = []
    closed_form = tiny.posterior_mean
    tiny.posterior_mean = lambda y: calls.append(1) or closed_form(y)
    try:
        x, _ = tiny.sample_prior(2, np.random.default_rng(0))
        low_res = th.tensor(tiny.downsample(x), dtype=th.float32)
        for t in diffusion.timestep_map[::4]:  # the base process's steps, as the sampler calls the model
            out = teacher(th.randn(2, 3, 8, 8), th.full((2,), t), low_res=low_res)
            assert out.shape == (2, 6, 8, 8) and th.isfinite(out).all()
        np.testing.assert_allclose(teacher.posterior_mean(low_res).numpy(), closed_form(low_res.double().numpy()))
        assert len(calls) == 1
        low_res.mul_(0.5)  # the same tensor changed in place: recomputed
        np.testing.assert_allclose(teacher.posterior_mean(low_res).numpy(), closed_form(low_res.double().numpy()))
        assert len(calls) == 2
    finally:
        del tiny.posterior_mean


@pytest.mark.parametrize("respacing", ["100", "10"])
def test_exact_teacher_gives_exact_posterior_samples(respacing):
    """
    The `exact` teacher (the chain of exact reverse transitions) through the sampler's entry
    point, at 32 px with length scale 2, 400 samples for an image of each scale: the
    per-pixel mean and variance match the closed form within 4 of their exact standard
    deviations, at 100 steps and at 10; and the 20 leading directions of the posterior
    covariance keep their variance (the `ideal_ddpm` teacher, one diagonal Gaussian per
    step, loses 6-12% there).
    """
    tb = GaussianScaleMixture(TestbedParams(large_size=32, small_size=8, length_scale=2.0))
    diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, timestep_respacing=respacing)
    teacher = ExactTestbedTeacher(tb, diffusion)
    N = 400
    top = np.argsort(tb.lam.ravel())[::-1][:20]  # leading eigen-directions of C0 (R (x) C0s)
    for k, (y,) in one_hot_images(tb, np.random.default_rng(7)).items():
        samples = sample_images(teacher, diffusion, th.tensor(y[None], dtype=th.float32), None,
                                range(k * N, (k + 1) * N), 32).double().numpy()
        Q, V, sd = per_pixel_statistics(tb, samples, y, k)
        assert abs(Q - 1) < 4 * sd, (k, Q, sd)
        assert abs(V - 1) < 4 * sd * np.sqrt(N / (N - 1)), (k, V, sd)
        # whitened: project x - E[x|y] on the eigenvectors U_r[:, c] (x) U_s[:, n]
        r = (samples - tb.posterior_mean(y)[None]).reshape(N, 3, -1)
        coords = np.einsum("ca,sn,bcs->ban", tb.U_r, tb.U_s, r).reshape(N, -1)[:, top]
        ratio = (coords ** 2).mean(0) / (tb.scales[k] ** 2 * tb.lam.ravel()[top])
        # each ratio ~ chi2_N / N (sd sqrt(2/N)); the 20 directions are independent
        assert abs(ratio.mean() - 1) < 4 * np.sqrt(2 / (N * 20)), (k, ratio)


def test_monte_carlo_and_split_half_floors_match_theory():
    """
    The verification's floors on a testbed image: N exact posterior samples, stored as uint8,
    miss the exact mean by MSE = mean_i (Sigma_ii + 1/12) / N in expectation ([0, 255] units;
    1/12 is the rounding), and the split-half estimate (first half against second, / 4)
    has the same expectation; both within 4 exact standard deviations.
    """
    from imaging import metrics
    from sr_var.verification import exact_posterior

    tb = GaussianScaleMixture(TestbedParams(large_size=16, small_size=4, length_scale=1.0))
    (y,) = one_hot_images(tb, np.random.default_rng(3))[2]
    x = tb.posterior_mean(y)  # any high-res image with this low-res image
    truth = th.from_numpy(quantize(x))
    N = 100
    exact = exact_posterior(tb, truth, 4, N, seed=0)
    want = np.mean(exact["var"] + 1 / 12) / N
    C0s = np.kron(tb.K1, tb.K1) - np.kron(tb.M1 @ tb.A @ tb.K1, tb.M1 @ tb.A @ tb.K1)
    d = np.sqrt(np.diag(C0s))
    sd = np.sqrt(2 * (tb.R ** 2).sum() * ((C0s / np.outer(d, d)) ** 2).sum()) / exact["var"].size
    floor = metrics.mse(exact["mean"], exact["mc_mean"])
    assert abs(floor / want - 1) < 4 * sd, (floor, want, sd)
    samples = np.moveaxis(quantize(tb.sample_posterior(y, N, np.random.default_rng(1))), 1, -1).astype(np.float64)
    split = metrics.split_half(samples)["mean"]["mse"]
    assert abs(split / want - 1) < 4 * sd, (split, want, sd)


@pytest.fixture(scope="module")
def testbed_run(tmp_path_factory):
    """Held-out testbed images on disk, loaded through the real image pipeline."""
    root = tmp_path_factory.mktemp("testbed")
    # length_scale 2: the exact mean is far enough from bilinear (their gap is 30% of the
    # posterior variance) for a short training to show it.
    tb = write_testbed_dataset(str(root), TestbedParams(large_size=16, small_size=4, length_scale=2.0),
                               num_train=0, num_eval=96, seed=0)
    names = [n for n, _ in flatten_data_info(load_data_info(str(root / "to_sample_data_info.pkl")))]
    logger.configure(str(root / "log"), format_strs=())
    return tb, load_all_images(resolve_images(str(root / "images"), names), 16), root


def _train(model, loss_fn, tb, steps, root, name, lr=2e-3, batch_size=32):
    """Train on fresh draws from the prior (pairs from the joint distribution, as the theorem has it)."""
    def batches():
        rng = np.random.default_rng(1)
        while True:
            x, _ = tb.sample_prior(batch_size, rng)
            yield th.from_numpy(quantize(x))

    TrainLoop(model=model, data=sr_training_pairs(batches(), 4, th.device("cpu")), loss_fn=loss_fn,
              batch_size=batch_size, lr=lr, model_save_dir=str(root / name), max_step=steps, save_interval=steps,
              progress=False).run_loop()
    return model.eval()


def test_theorem_2_2_on_the_exact_testbed(testbed_run):
    """
    Mean model trained with MSE on (low-res, high-res) pairs approaches E[x|y]; the
    variance model trained on (x - mean)^2 approaches Var[x|y] (Theorem 2.2), checked
    against the closed forms on held-out images after 300 CPU steps each.

    Margins: on this machine the run gives an MSE ratio to bilinear of 0.63, a correlation
    of the per-image variance level of 0.93 and a relative level error of 0.59. A model
    that ignored what it learnt would give a ratio >= 1 (bilinear itself gives 1), a
    variance model blind to the image a correlation near 0, and one that stayed at its zero
    initialisation a relative error of 1; the bounds (0.85, 0.8, 0.9) sit between, with
    room for other CPUs' rounding.
    """
    tb, eval_images, root = testbed_run
    th.manual_seed(0)
    flags = dict(mean_model_defaults(), large_size=16, small_size=4, model_channels=32, num_res_blocks=1,
                 attention_resolutions="8", channel_mult="1,2", resblock_updown=True)
    mean_model = _train(create_mean_model(**flags),
                        lambda net, lr_up, hr: (F.mse_loss(out := net(lr_up), hr), out), tb, 300, root, "mean")

    def var_loss(net, lr_up, hr):
        inputs, mean = VAR.network_input(mean_model, lr_up)
        out = net(inputs)
        return F.mse_loss(out, (hr - mean) ** 2), out

    var_model = _train(create_var_model(**flags, last_layer_type="none"), var_loss, tb, 300, root, "var")

    high_res = to_float(eval_images)
    y = area_downsample(high_res, 4).double().numpy()
    exact_mean, exact_var = th.tensor(tb.posterior_mean(y)), th.tensor(tb.posterior_variance(y))
    with th.no_grad():
        low_res_up = low_res_input(high_res, 4)
        inputs, mean = VAR.network_input(mean_model, low_res_up)
        var = var_model(inputs).double()
    model_err = (mean.double() - exact_mean).square().mean().item()
    bilinear_err = (low_res_up.double() - exact_mean).square().mean().item()
    # Per image, the level of the exact variance is E[s^2 | y] * mean(C0_ii): it changes
    # ~14-fold between the mixture's scales.
    level_exact = exact_var.mean(dim=(1, 2, 3))
    level_model = var.clamp(min=0).mean(dim=(1, 2, 3))
    corr = np.corrcoef(level_exact.numpy(), level_model.numpy())[0, 1]
    rel_err = ((level_model - level_exact).abs().sum() / level_exact.sum()).item()
    print(f"mean model / bilinear MSE to E[x|y]: {model_err:.3g} / {bilinear_err:.3g} "
          f"= {model_err / bilinear_err:.3f}; variance level correlation {corr:.3f}, relative error {rel_err:.3f}")
    assert model_err < 0.85 * bilinear_err
    assert corr > 0.8
    assert rel_err < 0.9


def test_prior_component_posterior_matches_dense_gaussians():
    """p(k | x) of a prior draw (the classification testbed's target) against dense Gaussian likelihoods."""
    tb = GaussianScaleMixture(TestbedParams(large_size=4, small_size=2, channels=2, length_scale=0.8,
                                            scales=(0.5, 0.6, 0.7), weights=(0.2, 0.3, 0.5)))
    x, _ = tb.sample_prior(3, np.random.default_rng(0))
    S = np.kron(tb.R, np.kron(tb.K1, tb.K1))
    v = 1e-3
    got = tb.prior_component_posterior(x, v)
    for xi, row in zip(x.reshape(3, -1), got):
        cov = [s ** 2 * S + v * np.eye(len(xi)) for s in tb.scales]
        logp = [np.log(w) - 0.5 * np.linalg.slogdet(c)[1] - 0.5 * xi @ np.linalg.solve(c, xi)
                for c, w in zip(cov, tb.params.weights)]
        expected = np.exp(logp - np.max(logp))
        assert np.allclose(row, expected / expected.sum(), atol=1e-12)
    assert np.allclose(got[1], tb.prior_component_posterior(x[1], v))  # one image or a batch
