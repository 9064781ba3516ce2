"""
How much teacher is enough: every sampler at several numbers of network evaluations (NFE),
driven by the testbed's ideal teacher (the exact denoiser through the learned-sigma channel,
as a perfect DDPM-SR upsampler), against the exact posterior; the `exact` teacher (exact
reverse transitions) and N exact posterior samples (the Monte Carlo floor) as references.

Per configuration and image, from N samples stored as the sampler stores them (uint8):
the sample mean against E[x | y] (MSE), the sample variance against Var[x | y] (var error,
std error, variance ratio), and calibration (the share of pixels of the true image within
k sample std of the sample mean); averaged over images with 95% bootstrap intervals, the
variance ratio also per mixture scale. Each configuration is saved as it finishes, so a
rerun continues.
"""

import os
import time

import numpy as np
import torch as th

from guided_diffusion.script_util import create_gaussian_diffusion
from imaging import area_downsample, metrics, to_float, to_uint8
from runkit import logger
from runkit.fileio import cached_json
from sr_var.sampling import sample_images, sample_seed
from testbed import ExactTestbedTeacher, GaussianScaleMixture, TestbedParams, TestbedTeacher, quantize
from testbed.scoring import exact_posterior, group_by_scale, name_seed

# Where each sampler makes sense (NFE = network evaluations per sample = steps), with
# guided-diffusion's respacing (steps evenly spaced in t) or, after "@logsnr", steps evenly
# spaced in log-SNR (what DPM-Solver is designed for); about 2,300 NFE, 25-30 min on 2 cores.
DEFAULT_GRID = {
    "exact": (10, 250),
    "ancestral": (10, 25, 50, 100, 250, 1000),
    "ddim": (10, 25, 50, 100),
    "dpmpp_2m": (10, 25, 50, 100),
    "dpmpp_2m_sde": (10, 25, 50, 100),
    "analytic_ddim": (10, 25, 50, 100),
    "ancestral@logsnr": (10, 25),
    "dpmpp_2m@logsnr": (10, 25),
    "dpmpp_2m_sde@logsnr": (10, 25),
    "analytic_ddim@logsnr": (10, 25),
}
METRIC_KEYS = ("mean_mse", "var_error", "std_error", "var_ratio", "coverage_1", "coverage_2", "coverage_3")


def evaluation_images(testbed, num, seed):
    """[(name, k, truth uint8 CHW tensor, low-res [1, 3, s, s])]: held-out prior draws, stored as PNGs are."""
    x, ks = testbed.sample_prior(num, np.random.default_rng(seed))
    images = []
    for i, (xi, k) in enumerate(zip(x, ks)):
        truth = th.from_numpy(quantize(xi))
        low_res = area_downsample(to_float(truth[None]), testbed.params.small_size)
        images.append((f"eval{i:04d}_gsm{k}", int(k), truth, low_res))
    return images


def image_scores(truth, mean, var, exact):
    """Metrics of one image's sample mean and variance (HWC, [0, 255] units) against its exact posterior."""
    hwc_truth = truth.permute(1, 2, 0).numpy().astype(np.float64)
    coverage = metrics.coverage(hwc_truth, mean, var)
    return dict(mean_mse=metrics.mse(exact["mean"], mean), var_error=metrics.var_error(exact["var"], var),
                std_error=metrics.std_error(exact["var"], var), var_ratio=metrics.variance_ratio(exact["var"], var),
                **{f"coverage_{k}": v for k, v in coverage.items()})


def summarize(per_image, ks, scales):
    """Means over images with 95% intervals, and the variance ratio per mixture scale."""
    summary = {"num_images": len(per_image), **metrics.average(per_image),
               "ci95": metrics.bootstrap_interval(per_image)}
    groups = group_by_scale([r["var_ratio"] for r in per_image], ks, scales)
    summary["var_ratio_by_scale"] = {label: {"var_ratio": float(np.mean(group)), "num_images": len(group)}
                                     for label, group in groups.items()}
    return summary


def monte_carlo_floor(testbed, images, num_samples, small_size):
    """The same metrics for num_samples exact posterior samples per image (what N samples carry by themselves)."""
    per_image = []
    for name, _, truth, _ in images:
        exact = exact_posterior(testbed, truth, small_size, num_samples, name_seed(name))
        per_image.append(image_scores(truth, exact["mc_mean"], exact["mc_var"], exact))
    return per_image


def run_configuration(testbed, images, sampler, nfe, num_samples, batch_size, seed, eta=0.0):
    """
    One sampler ("name" or "name@logsnr", see DEFAULT_GRID) at one NFE over every image:
    (per-image scores, seconds per sample).
    """
    sampler, _, spacing = sampler.partition("@")
    diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear",
                                          timestep_respacing=f"{spacing}{nfe}")
    if sampler == "exact":
        teacher, name = ExactTestbedTeacher(testbed, diffusion), "ancestral"
    else:
        teacher, name = TestbedTeacher(testbed, diffusion, learn_sigma=True), sampler
    per_image, seconds, size = [], 0.0, testbed.params.large_size
    for image_name, _, truth, low_res in images:
        draws = []
        for start in range(0, num_samples, batch_size):
            seeds = [sample_seed(seed, image_name, i) for i in range(start, min(start + batch_size, num_samples))]
            t0 = time.perf_counter()
            batch = sample_images(teacher, diffusion, low_res, None, seeds, size, sampler=name, eta=eta)
            seconds += time.perf_counter() - t0
            draws.append(to_uint8(batch).permute(0, 2, 3, 1).numpy())
        samples = np.concatenate(draws).astype(np.float64)
        exact = exact_posterior(testbed, truth, testbed.params.small_size)
        per_image.append(image_scores(truth, np.clip(samples.mean(axis=0), 0, 255), samples.var(axis=0), exact))
    return per_image, seconds / (num_samples * len(images))


def study_testbed(large_size, small_size, length_scale):
    return GaussianScaleMixture(TestbedParams(large_size=large_size, small_size=small_size,
                                              length_scale=length_scale))


def run_study(cfg, grid, out_dir, batch_size):
    """Every (sampler, NFE) of `grid` not yet saved under out_dir/runs; returns all results."""
    testbed = study_testbed(cfg["large_size"], cfg["small_size"], cfg["length_scale"])
    images = evaluation_images(testbed, cfg["num_eval"], cfg["seed"])
    ks = [k for _, k, _, _ in images]
    runs_dir = os.path.join(out_dir, "runs")
    results = {}
    floor_path = os.path.join(runs_dir, "mc_floor.json")
    results["mc_floor"] = cached_json(floor_path, lambda: summarize(
        monte_carlo_floor(testbed, images, cfg["num_samples"], cfg["small_size"]), ks, testbed.scales))

    def configuration(sampler, nfe):
        start = time.time()
        per_image, seconds = run_configuration(testbed, images, sampler, nfe, cfg["num_samples"],
                                               batch_size, cfg["seed"], cfg["eta"])
        summary = summarize(per_image, ks, testbed.scales)
        summary.update(sampler=sampler, nfe=nfe, seconds_per_sample=seconds, wall_time_s=time.time() - start)
        logger.log(f"{sampler} at {nfe} NFE: mean MSE {summary['mean_mse']:.3f}, var error "
                   f"{summary['var_error']:.3f}, variance ratio {summary['var_ratio']:.3f}, "
                   f"{seconds * 1e3:.1f} ms per sample ({time.time() - start:.0f} s)")
        return summary

    for sampler, nfes in grid.items():
        for nfe in nfes:
            path = os.path.join(runs_dir, f"{sampler}_{nfe}.json")
            results[f"{sampler}_{nfe}"] = cached_json(path, lambda: configuration(sampler, nfe))
    return results
