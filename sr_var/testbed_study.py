"""
Scoring for scripts/testbed_study.py: trained mean / variance / principal components
checkpoints against the exact posterior in closed form, and the reference lines (bilinear,
N exact posterior samples, N ideal-DDPM-SR samples, and the PCA of both). All in [0, 255]
units (variances in [0, 255]^2), per image, then averaged over images with 95% bootstrap
intervals.
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
from . import principal_components as pcs
from .data import area_downsample, flatten_data_info, load_all_images, load_data_info, low_res_input, resolve_images
from .data import to_float
from .models import ExactMeanModel, build_model, mean_and_var_input
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
        self._covariances = {}

    def covariance(self, i):
        """The exact Cov[x | y] of image i (pcs.ExactCovariance, HWC-flat vectors)."""
        if i not in self._covariances:
            self._covariances[i] = pcs.ExactCovariance(self.testbed, self.y[i])
        return self._covariances[i]


def hwc_flat(chw):
    """[..., K, C, H, W] -> [..., K, H*W*C], the verification's layout of a direction."""
    hwc = np.moveaxis(chw, -3, -1)
    return hwc.reshape(*hwc.shape[:-3], -1)


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
    """Means with intervals; with the images' components, the variance ratio (or captured variance) per scale."""
    summary = {**metrics.average(per_image), "ci95": metrics.bootstrap_interval(per_image)}
    for key in ("var_ratio", "captured"):
        if ks is not None and key in per_image[0]:
            summary[f"{key}_by_scale"] = {
                f"s={scales[k]:g}": float(np.mean([r[key] for r, kk in zip(per_image, ks) if kk == k]))
                for k in sorted(set(ks))}
    return summary


def _pc_scores(images, mean, directions, variances, idx=None):
    """
    A PC model's directions [N, K, C, H, W] and variances [N, K] against the exact covariance:
    pcs.compare (overlap with the exact top K, captured variance, each variance against the
    variance along its direction and against the exact eigenvalue), and the captured share
    of what it learns, Cov + b b^T with b = E[x | y] - m(y). With variances None (a sample
    PCA): overlap and captured only. idx: the study images the rows belong to.
    """
    idx = range(len(directions)) if idx is None else idx
    return [pcs.vs_exact(images.covariance(i), hwc_flat(directions[row]),
                         None if variances is None else variances[row],
                         None if mean is None else hwc_flat((images.exact_mean[i] - mean[row])[None])[0])
            for row, i in enumerate(idx)]


def _sample_pcs(samples, k):
    """The top-k PCs [K, C, H, W] of samples [S, C, H, W]."""
    dirs, _ = pcs.sample_pcs(hwc_flat(samples), k)
    return np.moveaxis(dirs.reshape(k, *samples.shape[-2:], samples.shape[-3]), -1, -3)


def reference_indices(images, count):
    """The `count` study images of the ideal-DDPM-SR reference, spread over the list (which is ordered by scale)."""
    return np.linspace(0, len(images.names) - 1, count).round().astype(int)


def pc_reference_lines(out_dir, images, num_samples, num_pcs, seed, count):
    """
    The PCA of the N exact posterior samples (the same draws as reference_lines) and of the
    ideal-DDPM-SR samples of the `count` reference images.
    """
    path = os.path.join(out_dir, f"pc_references_{num_pcs}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    tb, ks, scales = images.testbed, images.ks, images.testbed.scales
    rng = np.random.default_rng(seed + 1)
    mc = np.stack([_sample_pcs(quantize(tb.sample_posterior(yi, num_samples, rng)).astype(np.float64), num_pcs)
                   for yi in images.y])
    refs = {"mc_floor": {**_summary(_pc_scores(images, None, mc, None), ks, scales), "num_samples": num_samples}}
    idx = reference_indices(images, count)
    ddpm = np.stack([_sample_pcs(np.moveaxis(ddpm_ground_truth(os.path.join(out_dir, "ideal_ddpm"), images.names[i],
                                                               num_samples)[2], -1, -3), num_pcs) for i in idx])
    refs["ideal_ddpm"] = {**_summary(_pc_scores(images, None, ddpm, None, idx), [ks[i] for i in idx], scales),
                          "num_images": int(len(idx)), "num_samples": num_samples}
    save_json(refs, path)
    return refs


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
    idx = reference_indices(images, count)
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
            elif kind == "pc":
                directions, variances = model(mean_and_var_input(mean_model, x)[0])
                outs.append((directions.double(), variances.double()))
            else:
                inputs, _ = mean_and_var_input(mean_model, x)
                outs.append(model(inputs).double())
    if kind == "pc":  # (directions [N, K, C, H, W], variances [N, K] in [0, 255]^2 units)
        return (th.cat([d for d, _ in outs]).numpy(), th.cat([v for _, v in outs]).numpy() * 127.5 ** 2), model
    out = th.cat(outs).numpy()
    return (out + 1) * 127.5 if kind == "mean" else out * 127.5 ** 2, model


def forward_seconds(out_dir, images, steps):
    """Seconds per image of one forward pass of the final mean model, and of the variance and PC models with it."""
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
    pc_ckpt = os.path.join(out_dir, "checkpoints", "pc", f"model{steps:06d}.pt")
    _, pc_model = _outputs(os.path.join(out_dir, "logs", "pc"), pc_ckpt, "pc", images, mean_model)
    pc_s = timed(lambda: _outputs(os.path.join(out_dir, "logs", "pc"), pc_ckpt, "pc", images, mean_model,
                                  model=pc_model))
    return mean_s, var_s, pc_s


def score_checkpoints(out_dir, images, runs, steps):
    """Every checkpoint of every run, scored (cached in {out_dir}/scores/{run}/{step}.json)."""
    scores = {}
    final_mean_model, final_mean = None, None
    for run in runs:
        kind = "mean" if run.startswith("mean") else "pc" if run.startswith("pc") else "var"
        ckpt_dir, log_dir = os.path.join(out_dir, "checkpoints", run), os.path.join(out_dir, "logs", run)
        if kind != "mean" and final_mean_model is None:
            final_mean, final_mean_model = _outputs(os.path.join(out_dir, "logs", "mean"),
                                                    os.path.join(out_dir, "checkpoints", "mean",
                                                                 f"model{steps:06d}.pt"), "mean", images)
        run_mean, run_mean_model = final_mean, final_mean_model
        if run.endswith("exact_mean"):  # trained on x - E[x | y]: the testbed's exact mean as its mean model
            run_mean, run_mean_model = images.exact_mean, ExactMeanModel(images.testbed)
        scores[run] = []
        for name in list_checkpoints(ckpt_dir):
            step = parse_resume_step_from_filename(name)
            path = os.path.join(out_dir, "scores", run, f"{step:06d}.json")
            if not os.path.exists(path):
                out, _ = _outputs(log_dir, os.path.join(ckpt_dir, name), kind, images, run_mean_model)
                if kind == "mean":
                    s = _summary(_mean_scores(images, out))
                elif kind == "pc":
                    s = _summary(_pc_scores(images, run_mean, *out), images.ks, images.testbed.scales)
                else:
                    s = _summary(_var_scores(images, run_mean, out), images.ks, images.testbed.scales)
                save_json(dict(step=step, **s), path)
            with open(path) as f:
                scores[run].append(json.load(f))
    return scores


def direction_figure(out_dir, images, steps, path, count=3):
    """
    The exact top `count` principal directions of one held-out image (the same for every
    image on the testbed) beside the final PC models' first `count`: one row each, every
    direction grey = 0 and scaled to its largest value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = _Subset(images, [0])
    one.low_res_up = images.low_res_up[:1]
    _, mean_model = _outputs(os.path.join(out_dir, "logs", "mean"),
                             os.path.join(out_dir, "checkpoints", "mean", f"model{steps:06d}.pt"), "mean", one)
    exact, _ = images.covariance(0).top(count)
    rows = [("exact Cov[x|y]", exact.reshape(count, *images.uint8.shape[2:], -1))]
    for run, label, mm in (("pc_exact_mean", "PC model, exact mean", ExactMeanModel(images.testbed)),
                           ("pc", "PC model, trained mean", mean_model)):
        (directions, _), _ = _outputs(os.path.join(out_dir, "logs", run),
                                      os.path.join(out_dir, "checkpoints", run, f"model{steps:06d}.pt"), "pc", one, mm)
        rows.append((label, np.moveaxis(directions[0, :count], 1, -1)))
    fig, axes = plt.subplots(len(rows), count, figsize=(1.6 * count + 1.2, 1.6 * len(rows)), squeeze=False)
    for r, (label, dirs) in enumerate(rows):
        for k in range(count):
            w = dirs[k] / max(np.abs(dirs[k]).max(), 1e-12)
            axes[r][k].imshow(np.clip(0.5 + 0.5 * w, 0, 1))
            axes[r][k].set_xticks([])
            axes[r][k].set_yticks([])
            if r == 0:
                axes[r][k].set_title(f"w_{k + 1}", fontsize=9)
        axes[r][0].set_ylabel(label, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


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
            if run.startswith("pc"):  # the share of the top-K variance left uncaptured, against the PCA of N samples
                out[f"{run} vs {ref}"] = crossing(rows, 1 - refs["pcs"][ref]["captured"], lambda r: 1 - r["captured"])
            elif run.startswith("mean"):
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
    if "pcs" in refs:
        lines += _pc_table(results, last)
    cost = results.get("cost")
    if cost:
        lines += ["", "| per image | network evaluations | seconds on this CPU |", "|---|---|---|",
                  f"| mean model | 1 | {cost['mean_model_s']:.4f} |",
                  f"| variance model (with its mean model) | 2 | {cost['var_model_s']:.4f} |",
                  f"| PC model, top {cfg['num_pcs']} (with its mean model) | 2 | {cost['pc_model_s']:.4f} |",
                  f"| {n} DDPM-SR samples x 250 steps | {n * 250:,} | {cost['ideal_ddpm_s']:.2f} (the testbed's "
                  f"exact denoiser, not a network) |"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text)
    _figure(results, os.path.join(out_dir, "convergence.png"))
    return text


def _pc_table(results, last):
    """The principal components: the PC models' last checkpoints and the PCA of N samples, against the exact Cov."""
    refs, cfg = results["references"]["pcs"], results["config"]
    k, n = cfg["num_pcs"], refs["mc_floor"]["num_samples"]

    def cells(r, ci=True):
        band = lambda key: f" [{r['ci95'][key][0]:.3f}, {r['ci95'][key][1]:.3f}]" if ci else ""  # noqa: E731
        by = " / ".join(f"{v:.3f}" for v in r.get("captured_by_scale", {}).values())
        return f"{r['overlap']:.3f}{band('overlap')} | {r['captured']:.3f}{band('captured')} ({by})"

    def per_k(d):
        return " / ".join(f"{d[str(i + 1)]:.2f}" for i in range(k))

    lines = ["", f"Posterior principal components (top {k}) against the exact Cov[x|y]: subspace overlap (mean "
             f"squared projection onto the exact top {k}), captured variance (sum of w_k^T Cov w_k over the sum of "
             f"the top {k} eigenvalues; by scale), the model's variance sigma_k^2 over w_k^T Cov w_k and over the "
             f"exact eigenvalue lambda_k:", "",
             "| estimate | step | overlap [95% CI] | captured variance [95% CI] (by scale) | captured of its target "
             "Cov + bb^T | sigma_k^2 / w_k^T Cov w_k | sigma_k^2 / lambda_k |", "|---|---|---|---|---|---|---|"]
    for run, label in (("pc", "PC model on x - m(y), m the trained mean model"),
                       ("pc_exact_mean", "PC model on x - E[x|y] (the exact mean as its mean model)")):
        if run in last:
            r = last[run]
            lines.append(f"| {label} | {r['step']} | {cells(r)} | {r['captured_vs_target']:.3f} | "
                         f"{per_k(r['variance_ratio'])} | {per_k(r['to_eigenvalue'])} |")
    for key, label in (("mc_floor", f"PCA of {n} exact posterior samples"),
                       ("ideal_ddpm", f"PCA of {n} ideal-DDPM-SR samples")):
        r = refs[key]
        lines.append(f"| {label} ({r.get('num_images', cfg['num_eval'])} images) | – | {cells(r)} | – | – | – |")
    return lines


def _figure(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs, scores = results["references"], results["scores"]
    fig, (ax_mean, ax_var, ax_pc) = plt.subplots(1, 3, figsize=(18, 4.5))
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
    for run, label in (("pc", "PC model, trained mean"), ("pc_exact_mean", "PC model, exact mean")):
        rows = scores.get(run, [])
        ax_pc.plot([r["step"] for r in rows], [r["captured"] for r in rows], "o-", label=f"{label}: captured")
        ax_pc.plot([r["step"] for r in rows], [r["overlap"] for r in rows], "s--", mfc="none",
                   label=f"{label}: overlap")
    if "pcs" in refs:
        for key, color, label in (("mc_floor", "black", "PCA of exact samples"),
                                  ("ideal_ddpm", "tab:red", "PCA of ideal DDPM-SR samples")):
            ax_pc.axhline(refs["pcs"][key]["captured"], color=color, linestyle="--", label=f"{label}: captured")
            ax_pc.axhline(refs["pcs"][key]["overlap"], color=color, linestyle=":", label=f"{label}: overlap")
    ax_pc.set_title(f"principal components (top {results['config'].get('num_pcs', '?')}) vs exact Cov")
    ax_pc.set_ylim(0, 1)
    for ax in (ax_mean, ax_var, ax_pc):
        ax.set_xscale("log")
        if ax is not ax_pc:
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
