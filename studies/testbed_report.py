"""
The testbed study's report (scripts/testbed_study.py): results.md (the tables, where each run
crosses the reference lines or the projection of its trend), convergence.png and
principal_directions.png, from the runner's scores (studies.testbed_run).
"""

import os

import numpy as np

from sr_var.kinds import KINDS, MEAN, PC
from testbed import ExactMeanModel

from .testbed_run import model_outputs


def direction_figure(out_dir, images, steps, path, count=3):
    """
    The exact top `count` principal directions of one held-out image (the same for every
    image on the testbed) beside the final PC models' first `count`: one row each, every
    direction grey = 0 and scaled to its largest value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = images.subset([0])
    _, mean_model = model_outputs(os.path.join(out_dir, "logs", "mean"),
                             os.path.join(out_dir, "checkpoints", "mean", f"model{steps:06d}.pt"), MEAN, one)
    exact, _ = images.covariance(0).top(count)
    rows = [("exact Cov[x|y]", exact.reshape(count, *images.uint8.shape[2:], -1))]
    for run, label, mm in (("pc_exact_mean", "PC model, exact mean", ExactMeanModel(images.testbed)),
                           ("pc", "PC model, trained mean", mean_model)):
        (directions, _), _ = model_outputs(os.path.join(out_dir, "logs", run),
                                      os.path.join(out_dir, "checkpoints", run, f"model{steps:06d}.pt"), PC, one, mm)
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


def run_kind(run):
    """The model kind of a study run: runs are named {kind}[_variant]."""
    return KINDS[run.split("_")[0]]


# kind -> (the reference line's error, a checkpoint's error): the number each run is compared on
CROSSING_LINES = {
    "mean": (lambda refs, ref: refs[ref]["mean"]["mse"], lambda r: r["mse"]),
    "var": (lambda refs, ref: refs[ref]["var"]["vs_var"]["var_error"], lambda r: r["vs_target"]["var_error"]),
    # the share of the top-K variance left uncaptured, against the PCA of N samples
    "pc": (lambda refs, ref: 1 - refs["pcs"][ref]["captured"], lambda r: 1 - r["captured"]),
}


def crossings(results):
    """Where each run meets the N-sample lines (or the trend's projection)."""
    refs, scores = results["references"], results["scores"]
    out = {}
    for run, rows in scores.items():
        if not rows:
            continue
        line, error = CROSSING_LINES[run_kind(run).name]
        for ref in ("mc_floor", "ideal_ddpm"):
            out[f"{run} vs {ref}"] = crossing(rows, line(refs, ref), error)
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
        by = " / ".join(f"{v['var_ratio']:.2f}" for v in r.get("by_component", {}).values())
        return f"{r['var_ratio']:.3f} ({by})" if by else f"{r['var_ratio']:.3f}"

    cfg = results["config"]
    rows = [(f"mean model, {cfg['num_train']:,} images", "mean"),
            (f"mean model, {cfg['small_train']:,} images", "mean_small"),
            ("variance model, last layer none", "var"), ("variance model, last layer exp", "var_exp")]
    for label, run in rows:
        if run not in last:
            continue
        r = last[run]
        if run_kind(run) is MEAN:
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
        by = " / ".join(f"{v['captured']:.3f}" for v in r.get("by_component", {}).values())
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
