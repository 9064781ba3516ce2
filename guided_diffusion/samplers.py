"""
Samplers for a (respaced) GaussianDiffusion, chosen by name; the steps are the diffusion's
own (`--timestep_respacing`), one network evaluation per step for every sampler:

    ancestral      guided-diffusion's p_sample loop, with the model's (learned) variance
    ddim           DDIM (Song et al. 2021), --eta 0 deterministic, 1 the ancestral process
    dpmpp_2m       DPM-Solver++(2M) (Lu et al. 2022), the multistep ODE solver in x0
    dpmpp_2m_sde   its SDE form (midpoint), as diffusers' "sde-dpmsolver++"
    analytic_ddim  DDIM's mean with Analytic-DPM's optimal variance (Bao et al. 2022): the
                   noise of the step plus c^2 Var[x0 | x_t], Var[x0 | x_t] read back from the
                   learned-range variance channel; --eta 0 adds only the x0 uncertainty

The last three are the small pure functions below: `denoise(x, i)` gives the model's
p_mean_variance at respaced step i, `noise_fn(x)` a standard normal draw shaped like x.
Their arithmetic is diffusers' (DPMSolverMultistepScheduler with final_sigmas_type "zero",
checked in tests/test_samplers.py); a run's last step lands on alphabar = 1 (the sample).
"""

import numpy as np
import torch as th

from .logger import progress_bar

SAMPLERS = ("ancestral", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "analytic_ddim")


def sample(diffusion, model, shape, *, sampler="ancestral", eta=0.0, noise=None, noise_fn=None, clip_denoised=True,
           model_kwargs=None, device=None, progress=False):
    """Samples of `shape` with the named sampler (see the module's docstring)."""
    if sampler == "ancestral":
        return diffusion.p_sample_loop(model, shape, noise=noise, clip_denoised=clip_denoised,
                                       model_kwargs=model_kwargs, device=device, progress=progress, noise_fn=noise_fn)
    if sampler == "ddim":
        return diffusion.ddim_sample_loop(model, shape, noise=noise, clip_denoised=clip_denoised,
                                          model_kwargs=model_kwargs, device=device, progress=progress, eta=eta,
                                          noise_fn=noise_fn)
    if device is None:
        device = next(model.parameters()).device
    x = noise if noise is not None else th.randn(*shape, device=device)
    noise_fn = noise_fn or th.randn_like

    def denoise(x, i):
        t = th.full((x.shape[0],), i, device=x.device, dtype=th.long)
        with th.no_grad():
            return diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)

    steps = range(diffusion.num_timesteps - 1, -1, -1)
    if progress:
        steps = progress_bar(steps, leave=False)
    if sampler in ("dpmpp_2m", "dpmpp_2m_sde"):
        return dpmpp_2m(denoise, x, diffusion.alphas_cumprod, steps, noise_fn if sampler == "dpmpp_2m_sde" else None)
    if sampler == "analytic_ddim":
        return analytic_ddim(denoise, x, diffusion, steps, eta, noise_fn)
    raise ValueError(f"unknown sampler {sampler!r}")


def dpmpp_2m(denoise, x, alphas_cumprod, steps, noise_fn=None):
    """
    DPM-Solver++(2M) from x at the first step down to alphabar = 1; with noise_fn its SDE
    form. In lambda = log(alpha / sigma), a step s -> t of size h = lambda_t - lambda_s with
    D = x0 + (x0 - x0_prev) / (2 r), r = h_prev / h (first order, D = x0, on the first step):
        ODE: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D
        SDE: x_t = (sigma_t / sigma_s) e^-h x_s + alpha_t (1 - e^-2h) D + sigma_t sqrt(1 - e^-2h) z
    The last step (to sigma = 0) returns the prediction x0 (first order, as diffusers).
    """
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    ab_next = np.append(1.0, ab[:-1])  # where step i lands
    lam = lambda a: 0.5 * np.log(a / (1.0 - a))  # noqa: E731  log(alpha / sigma)
    x0_prev, h_prev = None, None
    for i in steps:
        x0 = denoise(x, i)["pred_xstart"]
        if ab_next[i] >= 1.0:
            return x0
        a_t, s_t, s_s = np.sqrt(ab_next[i]), np.sqrt(1.0 - ab_next[i]), np.sqrt(1.0 - ab[i])
        h = lam(ab_next[i]) - lam(ab[i])
        d = x0 if x0_prev is None else x0 + (x0 - x0_prev) * (h / h_prev / 2.0)
        if noise_fn is None:
            x = (s_t / s_s) * x - a_t * np.expm1(-h) * d
        else:
            x = (s_t / s_s * np.exp(-h)) * x - a_t * np.expm1(-2.0 * h) * d \
                + s_t * np.sqrt(-np.expm1(-2.0 * h)) * noise_fn(x)
        x0_prev, h_prev = x0, h
    return x


def analytic_ddim(denoise, x, diffusion, steps, eta, noise_fn):
    """
    DDIM's step with Analytic-DPM's optimal variance: with lambda^2 = eta^2 beta~ (DDIM's noise),
        x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - lambda^2) eps + sigma z,
        sigma^2 = lambda^2 + c^2 Var[x0 | x_t],  c = sqrt(ab_s) - sqrt(1 - ab_s - lambda^2) sqrt(ab_t / (1 - ab_t)),
    per pixel, with Var[x0 | x_t] = (v - beta~) / coef1^2 from the model's variance v of the
    ancestral step (v = beta~ + coef1^2 Var[x0 | x_t] defines what a learned variance estimates).
    eta = 1 is the ancestral step; unlike it, the last step also adds its noise.
    """
    ab = diffusion.alphas_cumprod
    ab_prev = diffusion.alphas_cumprod_prev
    for i in steps:
        out = denoise(x, i)
        x0 = out["pred_xstart"]
        eps = (x - np.sqrt(ab[i]) * x0) / np.sqrt(1.0 - ab[i])
        beta_tilde, coef1 = diffusion.posterior_variance[i], diffusion.posterior_mean_coef1[i]
        var_x0 = ((out["variance"] - beta_tilde) / coef1 ** 2).clamp(min=0)
        lam2 = eta ** 2 * beta_tilde
        keep = np.sqrt(max(1.0 - ab_prev[i] - lam2, 0.0))
        c = np.sqrt(ab_prev[i]) - keep * np.sqrt(ab[i] / (1.0 - ab[i]))
        x = np.sqrt(ab_prev[i]) * x0 + keep * eps + (lam2 + c ** 2 * var_x0).sqrt() * noise_fn(x)
    return x
