"""
Scoring for scripts/testbed_study.py: trained mean / variance checkpoints against the exact
posterior in closed form, and the reference lines (bilinear, N exact posterior samples, N
ideal-DDPM-SR samples). All in [0, 255] units (variances in [0, 255]^2), per image, then
averaged over images with 95% bootstrap intervals.
"""

import json
import os
import time

import numpy as np
import torch as th

from guided_diffusion import logger
from guided_diffusion.io_util import load_model_weights, load_pickle, save_json
from guided_diffusion.script_util import MEAN_FLAG_NAMES
from guided_diffusion.train_util import list_checkpoints, parse_resume_step_from_filename

from . import metrics
from .data import area_downsample, flatten_data_info, load_all_images, load_data_info, low_res_input, resolve_images
from .data import to_float
from .models import build_model, mean_and_var_input
from .testbed import load_testbed, quantize
from .verification import ddpm_ground_truth

COVERAGE_KS = (1, 2, 3)
FRESH_SAMPLES = 20  # exact posterior draws per image that the intervals are checked against


class StudyImages:
    """The held-out images with their exact posterior moments and fresh exact samples."""

    def __init__(self, data_dir, large_size, small_size, seed=12345):
        self.testbed = load_testbed(os.path.join(data_dir, "testbed.json"), "out_dir")
        info = load_data_info(os.path.join(data_dir, "to_sample_data_info.pkl"))
        images = flatten_data_info(info)
        self.names = [n for n, _ in images]
        self.ks = [k for _, k in images]
        self.uint8 = load_all_images(resolve_images(os.path.join(data_dir, "images"), self.names), large_size)
        self.small_size = small_size
        high_res = to_float(self.uint8)
        self.low_res_up = low_res_input(high_res, small_size)
        y = area_downsample(high_res, small_size).double().numpy()
        tb = self.testbed
        self.exact_mean = (tb.posterior_mean(y) + 1) * 127.5  # [N, C, H, W]
        self.exact_var = tb.posterior_variance(y) * 127.5 ** 2
        rng = np.random.default_rng(seed)
        self.fresh = np.stack([(tb.sample_posterior(yi, FRESH_SAMPLES, rng) + 1) * 127.5 for yi in y])  # [N, S, ...]
        self.y = y


def study_images(data_dir, large_size, small_size):
    return StudyImages(data_dir, large_size, small_size)


def _mean_scores(images, mean):
    per_image = []
    for i in range(len(mean)):
        per_image.append(metrics.mean_metrics(images.exact_mean[i], mean[i]))
    return per_image


def _var_scores(images, mean, var):
    """Var model (or any variance estimate) against Var, against Var + (m - E)^2, ratio, calibration."""
    per_image = []
    for i in range(len(var)):
        target = images.exact_var[i] + (mean[i] - images.exact_mean[i]) ** 2
        std = np.sqrt(np.maximum(var[i], 0))
        dev = np.abs(images.fresh[i] - mean[i][None])
        per_image.append(dict(
            vs_var=metrics.var_metrics(images.exact_var[i], var[i]),
            vs_target=metrics.var_metrics(target, var[i]),
            var_ratio=metrics.variance_ratio(images.exact_var[i], var[i]),
            coverage={str(k): float(np.mean(dev <= k * std[None])) for k in COVERAGE_KS},
        ))
    return per_image


def _summary(per_image, ks=None, scales=None):
    summary = {**metrics.average(per_image), "ci95": metrics.bootstrap_interval(per_image)}
    if ks is not None and "var_ratio" in per_image[0]:
        summary["var_ratio_by_scale"] = {
            f"s={scales[k]:g}": float(np.mean([r["var_ratio"] for r, kk in zip(per_image, ks) if kk == k]))
            for k in sorted(set(ks))}
    return summary


def reference_lines(out_dir, data_dir, images, reference_images, num_samples, seed):
    """Bilinear, num_samples exact posterior samples, and num_samples ideal-DDPM-SR samples (a subset)."""
    path = os.path.join(out_dir, "references.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    tb, ks, scales = images.testbed, images.ks, images.testbed.scales
    bilinear = (images.low_res_up.double().numpy() + 1) * 127.5
    refs = {"bilinear": _summary(_mean_scores(images, bilinear))}
    # the calibration a perfect model would show: fresh samples within k exact std of the exact mean
    refs["exact"] = _summary(_var_scores(images, images.exact_mean, images.exact_var))
    # N exact posterior samples, stored as uint8 like the teacher's
    rng = np.random.default_rng(seed + 1)
    mc = [quantize(tb.sample_posterior(yi, num_samples, rng)).astype(np.float64) for yi in images.y]
    mc_mean = np.stack([np.clip(s.mean(0), 0, 255) for s in mc])
    mc_var = np.stack([s.var(0) for s in mc])
    refs["mc_floor"] = {"mean": _summary(_mean_scores(images, mc_mean)),
                        "var": _summary(_var_scores(images, mc_mean, mc_var), ks, scales), "num_samples": num_samples}
    refs["ideal_ddpm"] = _ideal_ddpm_reference(out_dir, data_dir, images, reference_images, num_samples, seed)
    save_json(refs, path)
    return refs


def _ideal_ddpm_reference(out_dir, data_dir, images, count, num_samples, seed):
    """ddpm_sr_sample.py with the ideal teacher (250 steps, the paper's protocol) on the first `count` images."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    idx = np.linspace(0, len(images.names) - 1, count).round().astype(int)
    subset = {}
    for i in idx:
        subset.setdefault(f"gsm{images.ks[i]}", {"y": images.ks[i], "file_names": []})["file_names"].append(
            images.names[i])
    info_path = os.path.join(out_dir, "reference_images.pkl")
    from guided_diffusion.io_util import save_pickle

    save_pickle(subset, info_path)
    p = images.testbed.params
    args = [sys.executable, os.path.join(root, "ddpm_sr_sample.py"), "--large_size", str(p.large_size),
            "--small_size", str(p.small_size), "--class_cond", "True", "--learn_sigma", "True", "--diffusion_steps",
            "1000", "--noise_schedule", "linear", "--timestep_respacing", "250", "--data_dir",
            os.path.join(data_dir, "images"), "--model_path", os.path.join(data_dir, "testbed.json"),
            "--to_sample_images_dict_path", info_path, "--num_samples_per_image", str(num_samples),
            "--batch_size", str(min(num_samples, 100)), "--output_dir", os.path.join(out_dir, "ideal_ddpm"),
            "--seed", str(seed)]
    logger.log(f"ideal DDPM-SR reference: {count} images x {num_samples} samples x 250 steps")
    start = time.time()
    subprocess.run(args, cwd=root, env=dict(os.environ, PYTHONPATH=root), check=True, capture_output=True)
    seconds_per_image = (time.time() - start) / count
    means, variances = [], []
    for i in idx:  # the verification's own moments of the samples, HWC -> CHW like the exact moments here
        mean, var, _ = ddpm_ground_truth(os.path.join(out_dir, "ideal_ddpm"), images.names[i], num_samples)
        means.append(np.moveaxis(mean, -1, 0))
        variances.append(np.moveaxis(var, -1, 0))
    sub = _Subset(images, idx)
    return {"mean": _summary(_mean_scores(sub, np.stack(means))),
            "var": _summary(_var_scores(sub, np.stack(means), np.stack(variances)), list(sub.ks),
                            images.testbed.scales),
            "num_images": int(len(idx)), "num_samples": num_samples, "seconds_per_image": seconds_per_image}


class _Subset:
    def __init__(self, images, idx):
        self.exact_mean, self.exact_var = images.exact_mean[idx], images.exact_var[idx]
        self.fresh, self.ks = images.fresh[idx], [images.ks[i] for i in idx]


def _outputs(run_dir_logs, checkpoint, kind, images, mean_model=None, model=None):
    """The model's outputs on every study image ([0, 255] or [0, 255]^2 units) and the model."""
    if model is None:
        args = load_pickle(os.path.join(run_dir_logs, f"{kind}_model_args.pkl"))
        model = build_model(kind, args)
        load_model_weights(model, checkpoint, "model_path", MEAN_FLAG_NAMES)
        model.eval()
    outs = []
    with th.no_grad():
        for i in range(0, len(images.low_res_up), 50):
            x = images.low_res_up[i:i + 50]
            if kind == "mean":
                outs.append(model(x).double())
            else:
                inputs, _ = mean_and_var_input(mean_model, x)
                outs.append(model(inputs).double())
    out = th.cat(outs).numpy()
    return (out + 1) * 127.5 if kind == "mean" else out * 127.5 ** 2, model


def forward_seconds(out_dir, images, steps):
    """Seconds per image of one forward pass of the final mean model, and of the variance model with it."""
    def timed(fn):
        fn()  # warm-up
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) / len(images.low_res_up)

    mean_ckpt = os.path.join(out_dir, "checkpoints", "mean", f"model{steps:06d}.pt")
    _, mean_model = _outputs(os.path.join(out_dir, "logs", "mean"), mean_ckpt, "mean", images)
    var_ckpt = os.path.join(out_dir, "checkpoints", "var", f"model{steps:06d}.pt")
    mean_s = timed(lambda: _outputs(os.path.join(out_dir, "logs", "mean"), mean_ckpt, "mean", images, model=mean_model))
    _, var_model = _outputs(os.path.join(out_dir, "logs", "var"), var_ckpt, "var", images, mean_model)
    var_s = timed(lambda: _outputs(os.path.join(out_dir, "logs", "var"), var_ckpt, "var", images, mean_model,
                                   model=var_model))
    return mean_s, var_s


def score_checkpoints(out_dir, images, runs, steps):
    """Every checkpoint of every run, scored (cached in {out_dir}/scores/{run}/{step}.json)."""
    scores = {}
    final_mean_model, final_mean = None, None
    for run in runs:
        kind = "mean" if run.startswith("mean") else "var"
        ckpt_dir, log_dir = os.path.join(out_dir, "checkpoints", run), os.path.join(out_dir, "logs", run)
        if kind == "var" and final_mean_model is None:
            final_mean, final_mean_model = _outputs(os.path.join(out_dir, "logs", "mean"),
                                                    os.path.join(out_dir, "checkpoints", "mean",
                                                                 f"model{steps:06d}.pt"), "mean", images)
        scores[run] = []
        for name in list_checkpoints(ckpt_dir):
            step = parse_resume_step_from_filename(name)
            path = os.path.join(out_dir, "scores", run, f"{step:06d}.json")
            if not os.path.exists(path):
                out, _ = _outputs(log_dir, os.path.join(ckpt_dir, name), kind, images, final_mean_model)
                if kind == "mean":
                    s = _summary(_mean_scores(images, out))
                else:
                    s = _summary(_var_scores(images, final_mean, out), images.ks, images.testbed.scales)
                save_json(dict(step=step, **s), path)
            with open(path) as f:
                scores[run].append(json.load(f))
    return scores


def crossing(rows, floor, key):
    """First checkpoint step at or below `floor`; else a power-law fit (error = a * step^b) to the
    last half of the checkpoints and the step where it would reach the floor (None if not falling)."""
    steps = np.array([r["step"] for r in rows], dtype=float)
    errors = np.array([key(r) for r in rows], dtype=float)
    below = np.nonzero(errors <= floor)[0]
    if len(below):
        return {"crossed_at": int(steps[below[0]])}
    tail = slice(len(rows) // 2, None)
    if len(steps[tail]) < 2:
        return {"crossed_at": None, "slope": None, "projected_step": None}
    slope, intercept = np.polyfit(np.log(steps[tail]), np.log(errors[tail]), 1)
    falling = slope < -0.01  # flatter than this the projection means nothing
    projected = float(np.exp((np.log(floor) - intercept) / slope)) if falling else None
    return {"crossed_at": None, "slope": float(slope), "projected_step": projected}


def crossings(results):
    """Where each run meets the N-sample lines (or the trend's projection)."""
    refs, scores = results["references"], results["scores"]
    out = {}
    for run, rows in scores.items():
        if not rows:
            continue
        for ref in ("mc_floor", "ideal_ddpm"):
            if run.startswith("mean"):
                out[f"{run} vs {ref}"] = crossing(rows, refs[ref]["mean"]["mse"], lambda r: r["mse"])
            else:
                out[f"{run} vs {ref}"] = crossing(rows, refs[ref]["var"]["vs_var"]["var_error"],
                                                  lambda r: r["vs_target"]["var_error"])
    return out


def write_report(results, out_dir):
    """results.md (the tables) and convergence.png (error vs step, log-log, with the reference lines)."""
    refs, scores = results["references"], results["scores"]
    last = {run: rows[-1] for run, rows in scores.items() if rows}
    n = refs["mc_floor"]["num_samples"]
    lines = ["| estimate | step | mean MSE vs E[x\\|y] [95% CI] | PSNR | var error vs Var [95% CI] | std error | "
             "var error vs Var + (m-E)^2 | variance ratio (by scale) | coverage k=1/2/3 |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cov(c):
        return f"{c['1']:.3f} / {c['2']:.3f} / {c['3']:.3f}"

    def ci(summary, *keys):
        lo, hi = summary["ci95"], summary["ci95"]
        for k in keys:
            lo, hi = lo[k], hi[k]
        return f"[{lo[0]:.3f}, {hi[1]:.3f}]"

    def ratio(r):
        by = " / ".join(f"{v:.2f}" for v in r.get("var_ratio_by_scale", {}).values())
        return f"{r['var_ratio']:.3f} ({by})" if by else f"{r['var_ratio']:.3f}"

    cfg = results["config"]
    rows = [(f"mean model, {cfg['num_train']:,} images", "mean"),
            (f"mean model, {cfg['small_train']:,} images", "mean_small"),
            ("variance model, last layer none", "var"), ("variance model, last layer exp", "var_exp")]
    for label, run in rows:
        if run not in last:
            continue
        r = last[run]
        if run.startswith("mean"):
            lines.append(f"| {label} | {r['step']} | {r['mse']:.3f} {ci(r, 'mse')} | {r['psnr']:.2f} | – | – | – | – "
                         f"| – |")
        else:
            lines.append(f"| {label} | {r['step']} | – | – | {r['vs_var']['var_error']:.2f} "
                         f"{ci(r, 'vs_var', 'var_error')} | {r['vs_var']['std_error']:.3f} | "
                         f"{r['vs_target']['var_error']:.2f} | {ratio(r)} | {cov(r['coverage'])} |")
    lines.append(f"| bilinear | – | {refs['bilinear']['mse']:.3f} | {refs['bilinear']['psnr']:.2f} | – | – | – | – "
                 f"| – |")
    if "exact" in refs:
        lines.append(f"| exact posterior moments | – | 0 | – | 0 | 0 | – | 1 | {cov(refs['exact']['coverage'])} |")
    for key, label in (("mc_floor", f"{n} exact posterior samples (floor)"),
                       ("ideal_ddpm", f"{n} ideal-DDPM-SR samples, 250 steps")):
        r = refs[key]
        lines.append(f"| {label} ({r['num_images'] if 'num_images' in r else cfg['num_eval']} images) | – | "
                     f"{r['mean']['mse']:.3f} | {r['mean']['psnr']:.2f} | {r['var']['vs_var']['var_error']:.2f} | "
                     f"{r['var']['vs_var']['std_error']:.3f} | – | {ratio(r['var'])} | {cov(r['var']['coverage'])} |")
    lines += ["", "Where each training run meets the N-sample lines (the variance model scored against its own "
              "target, Var + (m-E)^2); when it does not within the budget, the power-law trend of its last half "
              "of checkpoints and the step where that trend would meet the line:", "",
              "| run vs line | crossed at step | trend slope (log-log) | projected step |", "|---|---|---|---|"]
    for name, c in results.get("crossings", {}).items():
        slope = "–" if c.get("slope") is None else f"{c['slope']:.2f}"
        proj = "–" if c.get("projected_step") is None else f"{c['projected_step']:,.0f}"
        lines.append(f"| {name} | {c['crossed_at'] if c['crossed_at'] is not None else 'not yet'} | {slope} | "
                     f"{proj} |")
    cost = results.get("cost")
    if cost:
        lines += ["", "| per image | network evaluations | seconds on this CPU |", "|---|---|---|",
                  f"| mean model | 1 | {cost['mean_model_s']:.4f} |",
                  f"| variance model (with its mean model) | 2 | {cost['var_model_s']:.4f} |",
                  f"| {n} DDPM-SR samples x 250 steps | {n * 250:,} | {cost['ideal_ddpm_s']:.2f} (the testbed's "
                  f"exact denoiser, not a network) |"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text)
    _figure(results, os.path.join(out_dir, "convergence.png"))
    return text


def _figure(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs, scores = results["references"], results["scores"]
    fig, (ax_mean, ax_var) = plt.subplots(1, 2, figsize=(12, 4.5))
    cfg = results["config"]
    for run, label in (("mean", f"mean model, {cfg['num_train']:,} images"),
                       ("mean_small", f"mean model, {cfg['small_train']:,} images")):
        rows = scores.get(run, [])
        ax_mean.plot([r["step"] for r in rows], [r["mse"] for r in rows], "o-", label=label)
    ax_mean.axhline(refs["bilinear"]["mse"], color="gray", linestyle=":", label="bilinear")
    ax_mean.axhline(refs["mc_floor"]["mean"]["mse"], color="black", linestyle="--", label="exact samples (floor)")
    ax_mean.axhline(refs["ideal_ddpm"]["mean"]["mse"], color="tab:red", linestyle="-.", label="ideal DDPM-SR")
    ax_mean.set_title("mean model: MSE to E[x|y]")
    for run, label in (("var", "variance model (none)"), ("var_exp", "variance model (exp)")):
        rows = scores.get(run, [])
        ax_var.plot([r["step"] for r in rows], [r["vs_var"]["var_error"] for r in rows], "o-", label=f"{label} vs Var")
        ax_var.plot([r["step"] for r in rows], [r["vs_target"]["var_error"] for r in rows], "s--", mfc="none",
                    label=f"{label} vs its target")
    ax_var.axhline(refs["mc_floor"]["var"]["vs_var"]["var_error"], color="black", linestyle="--",
                   label="exact samples (floor)")
    ax_var.axhline(refs["ideal_ddpm"]["var"]["vs_var"]["var_error"], color="tab:red", linestyle="-.",
                   label="ideal DDPM-SR")
    ax_var.set_title("variance model: var error")
    for ax in (ax_mean, ax_var):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
