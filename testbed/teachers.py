"""
The testbed's two teachers, which stand in for a DDPM-SR network where the posterior is known:
`TestbedTeacher` (ideal_ddpm: the exact denoiser and per-pixel variance through the
learned-sigma channel, sampled by any of guided-diffusion's samplers, as the paper samples a
trained upsampler) and `ExactTestbedTeacher` (exact: exact reverse transitions, exact samples
at any step count).
"""

import numpy as np
import torch as th

from runkit import UserError


class TestbedTeacher(th.nn.Module):
    """
    Stands in for the DDPM-SR network on the exact testbed: returns the exact epsilon
    E[eps | x_t, y] and, for a learned-sigma diffusion, the variance channel that makes the
    sampler's reverse step use the exact per-pixel variance of x_{t-1} given x_t:
    posterior_variance + coef1^2 Var[x_0 | x_t, y]. With `perturbation` delta, the denoiser
    is x0 = E[x | y] + (1 - delta (1 - alphabar)) (E[x_0 | x_t, y] - E[x | y]) (the sampler
    study's robustness run: how each sampler carries a network's error), the variance channel
    unchanged.
    """

    def __init__(self, testbed, diffusion, learn_sigma, perturbation=0.0):
        super().__init__()
        self.perturbation = perturbation
        if diffusion.rescale_timesteps:
            raise UserError("the testbed teacher needs --rescale_timesteps False")
        self.testbed = testbed
        self.learn_sigma = learn_sigma
        # The sampler calls the model with the base process's timesteps; map them back.
        inverse = np.full(max(diffusion.timestep_map) + 1, -1)
        inverse[diffusion.timestep_map] = np.arange(len(diffusion.timestep_map))
        self.register_buffer("respaced_index", th.from_numpy(inverse), persistent=False)
        for name in ("alphas_cumprod", "posterior_variance", "posterior_mean_coef1",
                     "posterior_log_variance_clipped", "log_betas"):
            self.register_buffer(name, th.from_numpy(getattr(diffusion, name)), persistent=False)
        self.dtype = th.float32
        self._posterior_mean = (None, -1, None)  # (low_res, its version, E[x | y])

    def posterior_mean(self, low_res):
        """
        E[x | y] for the perturbation, computed once per low-res batch: a sampler passes the same
        low_res tensor at every step (a new tensor, or this one changed in place, is recomputed).
        """
        cached_for, version, mean = self._posterior_mean
        if cached_for is not low_res or version != low_res._version:
            mean = th.as_tensor(self.testbed.posterior_mean(low_res.double().cpu().numpy()), device=low_res.device)
            self._posterior_mean = (low_res, low_res._version, mean)
        return mean

    def forward(self, x, timesteps, low_res=None, y=None):
        del y  # the testbed's posterior does not depend on the class
        j = self.respaced_index[timesteps]
        alpha_bar = self.alphas_cumprod[j]
        x0, var_x0 = self.testbed.denoise(x, alpha_bar, low_res)
        if self.perturbation:
            # a network's error, modelled: the denoiser's step away from E[x | y] scaled by
            # 1 - delta (1 - alphabar), i.e. by up to 1 - delta at high noise and not at all at t = 0
            posterior_mean = self.posterior_mean(low_res)
            x0 = posterior_mean + (1 - self.perturbation * (1 - alpha_bar.view(-1, 1, 1, 1))) * (x0 - posterior_mean)
        view = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
        eps = (x.double() - view(alpha_bar.sqrt()) * x0) / view((1 - alpha_bar).sqrt())
        if not self.learn_sigma:
            return eps.float()
        step_var = view(self.posterior_variance[j]) + view(self.posterior_mean_coef1[j]) ** 2 * var_x0
        min_log, max_log = view(self.posterior_log_variance_clipped[j]), view(self.log_betas[j])
        frac = (th.log(step_var.clamp(min=1e-20)) - min_log) / (max_log - min_log)
        return th.cat([eps, 2 * frac - 1], dim=1).float()


class ExactTestbedTeacher:
    """
    The reference teacher on the exact testbed: exact posterior samples through the chain of
    exact reverse transitions over the diffusion's (respaced) steps (testbed.sample_exact_chain).
    It replaces the sampler as a whole, not only the network.
    """

    def __init__(self, testbed, diffusion):
        self.testbed = testbed
        self.alphas_cumprod = diffusion.alphas_cumprod

    def to(self, device):
        del device
        return self

    def eval(self):
        return self

    def sample(self, low_res, noise):
        return self.testbed.sample_exact_chain(low_res, self.alphas_cumprod, noise.normal, noise.uniform)
