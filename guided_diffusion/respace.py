"""
Respacing: run a diffusion model trained with T steps on a subset of its timesteps
("250", "ddim25", per-section counts such as "10,20,30", or "logsnr25": steps uniform in
log signal-to-noise ratio, the spacing DPM-Solver is designed for).
"""

import numpy as np
import torch as th

from .gaussian_diffusion import GaussianDiffusion


def logsnr_timesteps(alphas_cumprod, count):
    """
    `count` timesteps of the base process, spread uniformly in lambda = log(alpha / sigma)
    from the noisiest step to the cleanest (both kept), rounded to the nearest base step and
    made distinct (where base steps are sparser in lambda than asked for, neighbours move).
    """
    num_timesteps = len(alphas_cumprod)
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"cannot create {count} steps out of {num_timesteps}")
    lam = 0.5 * np.log(alphas_cumprod / (1 - alphas_cumprod))  # decreasing in t
    targets = np.linspace(lam[0], lam[-1], count)
    steps = np.rint(np.interp(-targets, -lam, np.arange(num_timesteps))).astype(int)
    for j in range(1, count):  # distinct and increasing, within 0 .. T-1
        steps[j] = max(steps[j], steps[j - 1] + 1)
    for j in range(count - 1, -1, -1):
        steps[j] = min(steps[j], num_timesteps - count + j)
    return set(int(s) for s in steps)


def space_timesteps(num_timesteps, section_counts, alphas_cumprod=None):
    """
    The set of original timesteps to keep.

    :param section_counts: a list of per-section step counts, a comma-separated string of
        them (the T steps are cut into equal sections, each strided evenly), "ddimN" for
        DDIM's fixed stride giving exactly N steps, or "logsnrN" for N steps uniform in
        log-SNR (needs the base process's alphas_cumprod).
    """
    if isinstance(section_counts, str) and section_counts.startswith("logsnr"):
        try:
            count = int(section_counts[len("logsnr"):])
        except ValueError:
            raise ValueError(f"{section_counts!r} is not logsnr followed by a step count") from None
        if alphas_cumprod is None:
            raise ValueError("logsnr respacing needs the base schedule")
        return logsnr_timesteps(np.asarray(alphas_cumprod), count)
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            try:
                desired_count = int(section_counts[len("ddim"):])
            except ValueError:
                raise ValueError(f"{section_counts!r} is not ddim followed by a step count") from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired_count:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired_count} steps with an integer stride")
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ValueError(f"{section_counts!r} is not a list of step counts") from None
    if any(count < 1 for count in section_counts):
        raise ValueError("every section needs at least one step")
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


class SpacedDiffusion(GaussianDiffusion):
    """
    A diffusion process that skips steps of a base process. The model still sees the
    base process's timestep numbers (through `timestep_map`).

    :param use_timesteps: the timesteps of the base process to keep.
    """

    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        self.timestep_map = []
        self.original_num_steps = len(kwargs["betas"])

        base_diffusion = GaussianDiffusion(**kwargs)
        last_alpha_cumprod = 1.0
        new_betas = []
        for i, alpha_cumprod in enumerate(base_diffusion.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                self.timestep_map.append(i)
        kwargs["betas"] = np.array(new_betas)
        super().__init__(**kwargs)
        self._timestep_map_tensors = {}

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn, *args, **kwargs):
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn, *args, **kwargs):
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self)

    def timestep_map_on(self, device):
        """`timestep_map` as a tensor on `device` (cached: it is needed at every step)."""
        if device not in self._timestep_map_tensors:
            self._timestep_map_tensors[device] = th.tensor(self.timestep_map, device=device)
        return self._timestep_map_tensors[device]

    def _scale_timesteps(self, t):
        # Scaling is done by the wrapped model.
        return t


class _WrappedModel:
    """Calls the model with the base process's timestep numbers."""

    def __init__(self, model, diffusion):
        self.model = model
        self.diffusion = diffusion

    def __call__(self, x, ts, **kwargs):
        new_ts = self.diffusion.timestep_map_on(ts.device)[ts]
        if self.diffusion.rescale_timesteps:
            new_ts = new_ts.float() * (1000.0 / self.diffusion.original_num_steps)
        return self.model(x, new_ts, **kwargs)
