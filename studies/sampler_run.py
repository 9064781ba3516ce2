"""
How much teacher is enough: every sampler at several numbers of network evaluations (NFE),
driven by a testbed's ideal teacher (the exact denoiser through the learned-sigma channel,
as a perfect DDPM-SR upsampler), against the exact posterior; the `exact` teacher (exact
reverse transitions) and N exact posterior samples (the Monte Carlo floor) as references.

Per configuration and image, from N samples stored as the sampler stores them (uint8) and
reduced to their mean and unbiased variance: the scorer's metrics against E[x | y] and
Var[x | y] (relative errors, the variance ratio, calibration against fresh exact draws), per
image, pooled and per mixture component. Each configuration is saved with its per-image
scores as it finishes, so a rerun continues and the report can pair it with the floor.

Beside the grid:
- the power of the floor criterion: N exact samples whose spread is scaled so that their
  variance is x0.93 and x1.07 of the posterior's (a known bias the criterion must catch);
- the robustness run: the ideal teacher's denoiser perturbed as a network's error would
  be, x0 = E[x | y] + (1 - delta (1 - alphabar)) (E[x_0 | x_t, y] - E[x | y]) for delta in
  --perturbations, for the configurations of ROBUSTNESS that the grid has (how each
  sampler carries that error).
"""

import os
import time

import numpy as np
import torch as th

from guided_diffusion.script_util import create_gaussian_diffusion, diffusion_from_flags
from imaging import area_downsample, to_float, to_uint8
from runkit import dist_util, logger
from runkit.fileio import cached_json
from sr_var.sampling import sample_images, sample_seed
from testbed import ExactTestbedTeacher, TestbedTeacher, quantize
from testbed.scoring import ExactScorer, name_seed, sample_moments, sample_scores, summarize

# Where each sampler makes sense (NFE = network evaluations per sample = steps), with
# guided-diffusion's respacing (steps evenly spaced in t) or, after "@logsnr", steps evenly
# spaced in log-SNR (what DPM-Solver is designed for). Ancestral 1,000 is not in it: on the
# covariance mixture it alone would take about 25 of the default run's minutes on 2 cores
# (`--samplers ancestral --nfe 1000` adds it to a study's folder).
DEFAULT_GRID = {
    "exact": (10, 250),
    "ancestral": (10, 25, 50, 100, 250),
    "ddim": (10, 25, 50, 100),
    "dpmpp_2m": (10, 25, 50, 100),
    "dpmpp_2m_sde": (10, 25, 50, 100),
    "analytic_ddim": (10, 25, 50, 100),
    "ancestral@logsnr": (10, 25),
    "dpmpp_2m@logsnr": (10, 25, 50, 100),
    "dpmpp_2m_sde@logsnr": (10, 25, 50),
    "analytic_ddim@logsnr": (10, 25),
}
# The robustness run: each sampler at the NFE a user would run it at (ancestral at the paper's 250).
ROBUSTNESS = (("ancestral", 250), ("ddim", 100), ("analytic_ddim", 100), ("dpmpp_2m@logsnr", 25),
              ("dpmpp_2m_sde@logsnr", 25))
# The power check: exact samples with their variance scaled by these factors.
KNOWN_BIASES = (0.93, 1.07)


def configuration_key(sampler, nfe, perturbation=0.0):
    return f"{sampler}_{nfe}" + (f"_delta{perturbation:+g}" if perturbation else "")


def evaluation_images(testbed, num, seed):
    """
    Held-out prior draws, stored as PNGs are, as an ExactScorer (names carry the component):
    as many of each component as `num` allows (stratified), so that each has an interval.
    """
    ks = np.arange(num) * testbed.num_components // num
    x, ks = testbed.sample_prior(num, np.random.default_rng(seed), components=ks)
    uint8 = th.from_numpy(quantize(x))
    names = [f"eval{i:04d}_k{k}" for i, k in enumerate(ks)]
    return ExactScorer(testbed, uint8, names, [int(k) for k in ks], testbed.params.small_size)


def floor_moments(images, num_samples, variance_factor=1.0):
    """
    N exact posterior samples per image (uint8, as the sampler stores them), reduced to their
    moments; with variance_factor f, their spread about their mean scaled by sqrt(f) first
    (samples of a known variance bias).
    """
    means, variances = [], []
    for name, y in zip(images.names, images.y):
        draws = images.testbed.sample_posterior(y, num_samples, np.random.default_rng(name_seed(name)))
        if variance_factor != 1.0:
            draws = draws.mean(0) + np.sqrt(variance_factor) * (draws - draws.mean(0))
        mean, var = sample_moments(quantize(draws).astype(np.float64))
        means.append(mean)
        variances.append(var)
    return np.stack(means), np.stack(variances)


def sampled_moments(images, sampler, nfe, num_samples, batch_size, seed, eta=0.0, perturbation=0.0, network=None):
    """
    One sampler ("name" or "name@logsnr") at one NFE over every image, each sample from its
    own stream: (means, unbiased variances [N, C, H, W] of the uint8 samples, seconds per sample).
    The teacher is the testbed's (ideal, or "exact"), or with `network` = (model, flags) a
    trained DDPM-SR upsampler (sr_create_model_and_diffusion's model with its weights, in eval
    mode on this process's device, and the model and diffusion flags it was built from; it is
    not moved). It runs on this process's device (its GPU when there is one: CUDA's random
    streams are not the CPU's); a batch of
    `batch_size` samples spans images, so that a GPU is not left idle by 100 samples of 32 px.
    """
    testbed = images.testbed
    device = dist_util.dev()
    sampler, _, spacing = sampler.partition("@")
    if network is not None:
        (teacher, flags), name = network, sampler
        diffusion = diffusion_from_flags({**flags, "timestep_respacing": f"{spacing}{nfe}"})
        if next(teacher.parameters()).device != device:
            raise ValueError(f"the network is on {next(teacher.parameters()).device}, this process samples on {device}")
    else:
        diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear",
                                              timestep_respacing=f"{spacing}{nfe}")
        if sampler == "exact":
            teacher, name = ExactTestbedTeacher(testbed, diffusion), "ancestral"
        else:
            teacher, name = TestbedTeacher(testbed, diffusion, learn_sigma=True, perturbation=perturbation), sampler
        teacher = teacher.to(device)
    class_cond = network is not None and network[1]["class_cond"]  # a testbed's class: its component
    low_res = area_downsample(to_float(images.uint8), testbed.params.small_size).to(device)
    jobs = [(i, s) for i in range(len(images.names)) for s in range(num_samples)]
    draws, seconds = [[] for _ in images.names], 0.0
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        rows = [i for i, _ in batch]
        seeds = [sample_seed(seed, images.names[i], s) for i, s in batch]
        t0 = time.perf_counter()
        x = sample_images(teacher, diffusion, low_res[rows], [images.ks[i] for i in rows] if class_cond else None,
                          seeds, testbed.params.large_size, sampler=name, eta=eta)
        x = to_uint8(x).cpu().numpy()
        seconds += time.perf_counter() - t0
        for i, sample in zip(rows, x):
            draws[i].append(sample)
    means, variances = zip(*(sample_moments(np.stack(d).astype(np.float64)) for d in draws))
    return np.stack(means), np.stack(variances), seconds / len(jobs)


def scored(images, means, variances, **extra):
    """Per-image scores and their summary (pooled and per component), with `extra` fields."""
    per_image = sample_scores(images, means, variances)
    return dict(summary=summarize(per_image, images.ks, images.labels), per_image=per_image, **extra)


def run_study(cfg, grid, out_dir, batch_size, testbed, perturbations=()):
    """Every (sampler, NFE) of `grid`, the floor, the known biases and the robustness run not yet saved; returns all."""
    images = evaluation_images(testbed, cfg["num_eval"], cfg["seed"])
    runs_dir = os.path.join(out_dir, "runs")
    results = {"mc_floor": cached_json(os.path.join(runs_dir, "mc_floor.json"), lambda: scored(
        images, *floor_moments(images, cfg["num_samples"]), num_samples=cfg["num_samples"]))}
    for factor in KNOWN_BIASES:
        results[f"biased_x{factor:g}"] = cached_json(os.path.join(runs_dir, f"biased_x{factor:g}.json"), lambda: scored(
            images, *floor_moments(images, cfg["num_samples"], factor), variance_factor=factor))

    def configuration(sampler, nfe, perturbation):
        start = time.time()
        means, variances, seconds = sampled_moments(images, sampler, nfe, cfg["num_samples"], batch_size,
                                                    cfg["seed"], cfg["eta"], perturbation)
        r = scored(images, means, variances, sampler=sampler, nfe=nfe, perturbation=perturbation,
                   seconds_per_sample=seconds, wall_time_s=time.time() - start)
        s = r["summary"]
        logger.log(f"{configuration_key(sampler, nfe, perturbation)}: relative mean MSE {s['rel_mse']:.4f}, "
                   f"variance ratio {s['var_ratio']:.3f}, relative std error {s['rel_std_error']:.4f}, "
                   f"{seconds * 1e3:.1f} ms per sample ({time.time() - start:.0f} s)")
        return r

    todo = [(s, n, 0.0) for s, nfes in grid.items() for n in nfes]
    todo += [(s, n, d) for d in perturbations for s, n in ROBUSTNESS if d != 0 and n in grid.get(s, ())]
    for sampler, nfe, delta in todo:
        key = configuration_key(sampler, nfe, delta)
        results[key] = cached_json(os.path.join(runs_dir, f"{key}.json"), lambda: configuration(sampler, nfe, delta))
    return results
