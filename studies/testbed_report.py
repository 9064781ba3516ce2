"""
The testbed study's report (scripts/testbed_study.py): results.md (each model's row next to
the baseline it must beat and the Monte Carlo floor, with intervals over images, the spread
over training seeds, per mixture component; the paired differences; the quantiles and the
calibrated intervals; the principal components; the recipe table), convergence.png and
principal_directions.png, from the runner's results (studies.testbed_run).
"""

import os

import numpy as np

from imaging import metrics
from runkit.fileio import atomic_write

from .figures import pyplot, save_png
from .recipes import RECIPES


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _ci(summary, path, fmt):
    low, high = _get(summary["ci95"], path)
    return f"[{low:{fmt}}, {high:{fmt}}]"


def quantile_levels(summary):
    """The levels ("0.05", ...) of a quantile summary: its keys that are not bookkeeping."""
    return [k for k in summary if k not in ("ci95", "by_component", "num_images", "per_image", "step")]


def seed_runs(results, kind, on_exact_mean=False):
    """
    The names of the study recipe's runs of a kind, one per training seed, in seed order; for the
    PC models, those on x - E[x|y] (on_exact_mean) or on x - m(y). Read from the study's run list:
    the names are testbed_run's business.
    """
    recipe = results["config"]["recipe"]
    runs = [r for r in results["runs"] if r["kind"] == kind and r["recipe"] == recipe
            and (kind != "pc" or (r["mean"] == "exact") == on_exact_mean)]
    return [r["name"] for r in sorted(runs, key=lambda r: r["seed"])]


def ablation_runs(results):
    """(recipe, run name) of the mean models of the other recipes (--ablations), in the run list's order."""
    recipe = results["config"]["recipe"]
    return [(r["recipe"], r["name"]) for r in results["runs"] if r["kind"] == "mean" and r["recipe"] != recipe]


def model_runs(results, kind):
    """The seed runs of a kind and, for the mean, the recipe ablations' runs: those that have scores."""
    names = seed_runs(results, kind) + ([name for _, name in ablation_runs(results)] if kind == "mean" else [])
    return [name for name in names if results["scores"].get(name)]


def final_rows(results, kind, on_exact_mean=False):
    """The last checkpoint's scores of seed_runs, in seed order."""
    scores = results["scores"]
    return [scores[name][-1] for name in seed_runs(results, kind, on_exact_mean) if scores.get(name)]


def _seeds(rows):
    return f"{len(rows)} seed{'s' if len(rows) > 1 else ''}"


def seeds_cell(rows, path, fmt):
    """The seeds' mean and spread (min-max) of a metric, with the first seed's 95% interval over images."""
    values = [_get(r, path) for r in rows]
    if len(values) == 1:
        return f"{values[0]:{fmt}} {_ci(rows[0], path, fmt)}"
    return (f"{np.mean(values):{fmt}} (seeds {min(values):{fmt}}-{max(values):{fmt}}; seed 0 "
            f"{_ci(rows[0], path, fmt)})")


def by_component(summary, path, fmt):
    return " / ".join(f"{_get(c, path):{fmt}}" for c in summary["by_component"].values())


def seeds_by_component(rows, path, fmt):
    """by_component over training seeds: each component's mean over the seeds and its range."""
    if len(rows) == 1:
        return by_component(rows[0], path, fmt)
    per_seed = np.array([[_get(c, path) for c in r["by_component"].values()] for r in rows])
    return " / ".join(f"{m:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"
                      for m, lo, hi in zip(per_seed.mean(0), per_seed.min(0), per_seed.max(0)))


def paired_cell(a, b, path, fmt=".4f"):
    """The paired difference a - b of a metric over the same images, with its bootstrap interval."""
    return metrics.paired_text(metrics.paired_difference([_get(r, path) for r in a["per_image"]],
                                                         [_get(r, path) for r in b["per_image"]]), fmt)


def write_report(results, out_dir):
    """results.md and convergence.png; returns the markdown."""
    cfg, refs = results["config"], results["references"]
    base, floor, ideal = refs["baselines"], refs["mc_floor"], refs["ideal_ddpm"]
    n = floor["num_samples"]
    labels = results["labels"]
    recipe = RECIPES[cfg["recipe"]]
    lines = [f"# Testbed study: {cfg['testbed']}, {cfg['large_size']} px", "",
             f"{cfg['num_eval']} held-out images, {base['num_train']:,} training images; recipe `{cfg['recipe']}` "
             f"({recipe.note}), {cfg['steps']} steps, {cfg['seeds']} training seed(s). Components (per-component "
             f"columns in this order): {'; '.join(labels)}. Relative MSE: the MSE to E[x|y] over the image's mean "
             f"posterior variance ({n} exact samples: 1/{n} = {1 / n:.3f} plus rounding). Relative std error: mean "
             f"|s - s*| / s*. Brackets: 95% bootstrap intervals over images. With several training seeds a model's "
             f"cell is the seeds' mean, with their range ('seeds a-b'; per component '(a-b)'); its coverage and the "
             f"paired differences are seed 0's.", ""]

    # -- the mean
    mean_rows = final_rows(results, "mean")
    lines += ["## Mean: E[x|y]", "", "| estimate | relative MSE | MSE | relative MSE by component |", "|---|---|---|---|"]
    if mean_rows:
        lines.append(f"| mean model ({_seeds(mean_rows)}) | {seeds_cell(mean_rows, ('rel_mse',), '.4f')} | "
                     f"{seeds_cell(mean_rows, ('mse',), '.2f')} | "
                     f"{seeds_by_component(mean_rows, ('rel_mse',), '.4f')} |")
    for label, r in ((f"least-squares linear map (baseline)", base["mean"]), ("bilinear upsampling", refs["bilinear"]),
                     (f"**{n} exact posterior samples (floor)**", floor["mean"]),
                     (f"{n} ideal-DDPM-SR samples, 250 steps ({ideal['num_images']} images)", ideal["mean"])):
        lines.append(f"| {label} | {r['rel_mse']:.4f} {_ci(r, ('rel_mse',), '.4f')} | {r['mse']:.2f} | "
                     f"{by_component(r, ('rel_mse',), '.4f')} |")
    if mean_rows:
        lines += ["", f"Paired over the {cfg['num_eval']} images (seed 0), relative MSE: mean model - baseline "
                      f"{paired_cell(mean_rows[0], base['mean'], ('rel_mse',))}; mean model - floor "
                      f"{paired_cell(mean_rows[0], floor['mean'], ('rel_mse',))}.", ""]

    # -- the variance
    var_rows = final_rows(results, "var")
    lines += ["## Variance: Var[x|y]", "",
              "| estimate | relative std error | variance ratio | ratio by component | rel. std error by component | "
              "coverage k=1/2/3 |", "|---|---|---|---|---|---|"]

    def cov(c):
        return f"{c['1']:.3f} / {c['2']:.3f} / {c['3']:.3f}"

    if var_rows:
        lines.append(f"| variance model ({_seeds(var_rows)}) | "
                     f"{seeds_cell(var_rows, ('vs_var', 'rel_std_error'), '.4f')} | "
                     f"{seeds_cell(var_rows, ('var_ratio',), '.3f')} | "
                     f"{seeds_by_component(var_rows, ('var_ratio',), '.3f')} | "
                     f"{seeds_by_component(var_rows, ('vs_var', 'rel_std_error'), '.4f')} | "
                     f"{cov(var_rows[0]['coverage'])} |")
        lines.append(f"| variance model vs its target Var + (m-E)^2 | "
                     f"{seeds_cell(var_rows, ('vs_target', 'rel_std_error'), '.4f')} | "
                     f"{seeds_cell(var_rows, ('vs_target', 'var_ratio'), '.3f')} | "
                     f"{seeds_by_component(var_rows, ('vs_target', 'var_ratio'), '.3f')} | "
                     f"{seeds_by_component(var_rows, ('vs_target', 'rel_std_error'), '.4f')} | – |")
    for label, r in (("y-independent variance map (baseline)", base["var_constant"]),
                     ("quadratic fit in y of the squared residuals (baseline)", base["var_quadratic"]),
                     (f"**{n} exact posterior samples (floor)**", floor["var"]),
                     (f"{n} ideal-DDPM-SR samples, 250 steps ({ideal['num_images']} images)", ideal["var"])):
        lines.append(f"| {label} | {r['vs_var']['rel_std_error']:.4f} {_ci(r, ('vs_var', 'rel_std_error'), '.4f')} | "
                     f"{r['var_ratio']:.3f} | {by_component(r, ('var_ratio',), '.3f')} | "
                     f"{by_component(r, ('vs_var', 'rel_std_error'), '.4f')} | {cov(r['coverage'])} |")
    lines.append(f"| exact posterior moments | 0 | 1 | – | – | {cov(refs['exact']['coverage'])} |")
    if var_rows:
        lines += ["", f"Paired (seed 0), relative std error: variance model - quadratic baseline "
                      f"{paired_cell(var_rows[0], base['var_quadratic'], ('vs_var', 'rel_std_error'))}; variance "
                      f"model - floor {paired_cell(var_rows[0], floor['var'], ('vs_var', 'rel_std_error'))}.", ""]

    lines += _quantile_section(results)
    lines += _calibration_section(results)
    if cfg["num_pcs"]:
        lines += _pc_section(results)
    lines += _recipe_section(results)
    lines += _teacher_section(results)
    lines += _cost_section(results)
    text = "\n".join(lines) + "\n"
    atomic_write(os.path.join(out_dir, "results.md"), lambda f: f.write(text.encode()))
    convergence_figure(results, os.path.join(out_dir, "convergence.png"))
    if results.get("teacher"):
        teacher_figure(results, os.path.join(out_dir, "convergence_vs_teacher.png"))
    return text


def _quantile_section(results):
    refs, cfg = results["references"], results["config"]
    rows = final_rows(results, "quantile")
    levels = quantile_levels(refs["mc_floor"]["quantile"])
    n = refs["mc_floor"]["num_samples"]
    lines = ["## Quantiles", "", "Each level against the exact per-pixel posterior quantile: the mean absolute error "
             "in posterior standard deviations, and the coverage (the share of fresh exact posterior draws below it; "
             "tau for a perfect estimate).", "",
             "| estimate | " + " | ".join(f"tau={t}: error (in stds) | coverage" for t in levels) + " |",
             "|---|" + "---|---|" * len(levels)]

    def cells(r, seeds=None):
        out = []
        for t in levels:
            err = seeds_cell(seeds, (t, "rel_error"), ".3f") if seeds else f"{r[t]['rel_error']:.3f}"
            out.append(f"{err} | {r[t]['coverage']:.3f}")
        return " | ".join(out)

    if rows:
        lines.append(f"| quantile model ({_seeds(rows)}) | {cells(rows[0], rows)} |")
    for label, r in (("least-squares map + residual quantiles (baseline)", refs["baselines"]["quantile"]),
                     (f"**empirical quantiles of {n} exact samples (floor)**", refs["mc_floor"]["quantile"]),
                     (f"empirical quantiles of {n} ideal-DDPM-SR samples", refs["ideal_ddpm"]["quantile"])):
        lines.append(f"| {label} | {cells(r)} |")
    if rows:
        per = " ; ".join(f"{label}: " + " / ".join(f"{c[t]['rel_error']:.3f}" for t in levels)
                         for label, c in rows[0]["by_component"].items())
        lines += ["", f"Quantile model (seed 0) error in stds per component and level ({', '.join(levels)}): {per}."]
    return lines + [""]


def _calibration_section(results):
    cal = results.get("calibration")
    if not cal:
        return []
    labels = results["labels"]
    lines = ["## Intervals with a guarantee", "",
             f"Each source's interval [c - lambda a, c + lambda b] calibrated on half of the {cal['num_images']} "
             f"images and tested on the other half, over {cal['splits']} random splits; alpha = {cal['alpha']:.2f} "
             f"(the share of an image's pixels outside), delta = {cal['delta']:.2f}; n counts images. The exact "
             f"risk is an image's expected share of pixels outside under its exact posterior. The oracle: the exact "
             f"posterior's own interval [q*(alpha/2), q*(1 - alpha/2)], width {cal['oracle']['width']:.2f} grey "
             f"levels, exact risk {cal['oracle']['exact_risk']:.3f}.", "",
             "| source | method | P(test risk > alpha) | test risk | lambda | width | width / oracle | exact risk | "
             "images with exact risk > alpha | exact risk by component |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, src in cal.items():
        if not isinstance(src, dict) or "before_calibration" not in src:
            continue
        b = src["before_calibration"]
        lines.append(f"| {name} | none (lambda 1) | – | {b['realised_risk']:.3f} | 1 | {b['width']:.2f} | "
                     f"{b['width_to_oracle']:.3f} | {b['exact_risk']:.3f} | – | – |")
        for method, label in (("rcps_hb", "RCPS (Hoeffding-Bentkus)"), ("crc", "conformal risk control")):
            r = src[method]
            if "exceeds_alpha" not in r:
                lines.append(f"| {name} | {label} | no lambda on the grid is safe | – | – | – | – | – | – | – |")
                continue
            comp = " / ".join(f"{r['by_group'][lab]['exact_risk']:.3f}" for lab in labels if lab in r["by_group"])
            lines.append(f"| {name} | {label} | {r['exceeds_alpha']:.3f} | {r['realised_risk']:.3f} | {r['lam']:.3f} | "
                         f"{r['width']:.2f} | {r['width_to_oracle']:.3f} | {r['exact_risk']:.3f} | "
                         f"{r['exact_above_alpha']:.3f} | {comp} |")
    return lines + [""]


def _pc_section(results):
    refs, cfg = results["references"], results["config"]
    k = cfg["num_pcs"]
    lines = ["## Posterior principal components", "",
             f"Top {k} directions against the exact Cov[x|y]: subspace overlap with the exact top {k} and captured "
             f"variance (sum of w^T Cov w over the sum of the top {k} eigenvalues), pooled [95% CI] and by "
             f"component.", "", "| estimate | overlap | captured variance | captured by component |",
             "|---|---|---|---|"]
    for on_exact_mean, label in ((True, "PC model on x - E[x|y] (the exact mean as its mean model)"),
                                 (False, "PC model on x - m(y) (m the same seed's mean model)")):
        rows = final_rows(results, "pc", on_exact_mean)
        if rows:
            lines.append(f"| {label} ({_seeds(rows)}) | {seeds_cell(rows, ('overlap',), '.3f')} | "
                         f"{seeds_cell(rows, ('captured',), '.3f')} | {seeds_by_component(rows, ('captured',), '.3f')} |")
    n = refs["mc_floor"]["num_samples"]
    for label, r in (("pooled PCA of the training residuals (baseline: the same directions for every image)",
                      refs["baselines"].get("pc")), (f"PCA of {n} exact posterior samples", refs["mc_floor"].get("pc")),
                     (f"PCA of {n} ideal-DDPM-SR samples", refs["ideal_ddpm"].get("pc"))):
        if r:
            lines.append(f"| {label} | {r['overlap']:.3f} {_ci(r, ('overlap',), '.3f')} | {r['captured']:.3f} "
                         f"{_ci(r, ('captured',), '.3f')} | {by_component(r, ('captured',), '.3f')} |")
    return lines + [""]


def _recipe_section(results):
    scores, cfg = results["scores"], results["config"]
    names = [(cfg["recipe"], run) for run in seed_runs(results, "mean")[:1]] + ablation_runs(results)
    names = [(r, run) for r, run in names if scores.get(run)]
    if len(names) < 2:
        return []
    floor = results["references"]["mc_floor"]["mean"]["rel_mse"]
    base = results["references"]["baselines"]["mean"]["rel_mse"]
    times = results.get("train_seconds", {})
    lines = ["## Training recipes of the mean model", "",
             f"Seed 0 of each, {cfg['steps']} steps; relative MSE to E[x|y] at the end, pooled and by component, "
             f"and as a multiple of the floor ({floor:.4f}) and of the least-squares baseline ({base:.4f}). Wall "
             f"time: the training alone, side by side with another on one thread each.", "",
             "| recipe | what it changes | wall time (min) | relative MSE | by component | x floor | x baseline |",
             "|---|---|---|---|---|---|---|"]
    for recipe, run in names:
        wall = times.get(run, {}).get("seconds")
        rows = [(f"`{recipe}`", RECIPES[recipe].note, "–" if wall is None else f"{wall / 60:.1f}", scores[run][-1])]
        other = RECIPES[recipe].other_weights()
        if other and scores.get(f"{other[0]}:{run}"):  # the same training, its other weights
            what = ("its weights, not the EMA" if other[0] == "raw" else
                    f"the EMA of its weights (rate {RECIPES[recipe].ema})")
            rows.append((f"`{recipe}`, {other[0]} weights", f"the same training, scored on {what}", "(the same)",
                         scores[f"{other[0]}:{run}"][-1]))
        for label, note, wall_cell, r in rows:
            lines.append(f"| {label} | {note} | {wall_cell} | {r['rel_mse']:.4f} {_ci(r, ('rel_mse',), '.4f')} | "
                         f"{by_component(r, ('rel_mse',), '.4f')} | {r['rel_mse'] / floor:.2f} | "
                         f"{r['rel_mse'] / base:.2f} |")
    return lines + [""]


TEACHER_PANELS = (("mean", ("rel_mse",), "rel_mse", "relative MSE to E[x|y]"),
                  ("var", ("vs_var", "rel_std_error"), "rel_std_error", "relative std error"))


def _on_rows(rows_of_scores, rows, path):
    """A run's metric at each checkpoint, averaged over the study images `rows` (the teacher study's)."""
    return [float(np.mean([_get(r["per_image"][i], path) for i in rows])) for r in rows_of_scores]


def _teacher_section(results):
    teacher = results.get("teacher")
    if not teacher:
        return []
    scores, rows = results["scores"], teacher["rows"]
    lines = ["## Beside the trained teacher", "",
             f"The teacher study's {len(rows)} images, {teacher['num_samples']} samples per image, its teacher "
             f"trained {teacher['teacher_steps']} steps (scripts/teacher_study.py); the models at their last "
             f"checkpoint, scored on the same images. A sample set's mean carries 1/N of the posterior variance "
             f"(the floor's relative MSE), a model's none.", "",
             "| estimate | relative MSE to E[x\\|y] | relative std error |", "|---|---|---|"]
    for prefix, path, _, _ in TEACHER_PANELS:
        for name in model_runs(results, prefix):
            value = _on_rows(scores[name][-1:], rows, path)[0]
            cells = (f"{value:.4f}", "–") if prefix == "mean" else ("–", f"{value:.4f}")
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    for label, line in teacher["lines"].items():
        mse_low, mse_high = line["rel_mse_ci95"]
        std_low, std_high = line["rel_std_error_ci95"]
        lines.append(f"| {label} | {line['rel_mse']:.4f} [{mse_low:.4f}, {mse_high:.4f}] | "
                     f"{line['rel_std_error']:.4f} [{std_low:.4f}, {std_high:.4f}] |")
    return lines + [""]


def teacher_figure(results, path):
    """The models' error against training step on the teacher study's images; the teacher's sample sets as lines."""
    plt = pyplot()

    teacher, scores = results["teacher"], results["scores"]
    panels = [p for p in TEACHER_PANELS if model_runs(results, p[0])]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (prefix, metric_path, key, title) in zip(axes[0], panels):
        for name in model_runs(results, prefix):
            rows = scores[name]
            ax.plot([r["step"] for r in rows], _on_rows(rows, teacher["rows"], metric_path),
                    "o-" if "@" not in name else ".--", lw=1, ms=3, label=name)
        for j, (label, line) in enumerate(teacher["lines"].items()):
            style = dict(color="black", linestyle="--") if "floor" in label else dict(color=colours[j % 10],
                                                                                        linestyle=":")
            ax.axhline(line[key], lw=1.5, label=label, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(f"{title}, {len(teacher['rows'])} images; lines: {teacher['num_samples']} samples per image",
                     fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_png(fig, path)


def _cost_section(results):
    cost, refs = results.get("cost", {}), results["references"]
    n = refs["mc_floor"]["num_samples"]
    forward = cost.get("forward_s", {})
    names = {"mean_s0": ("mean model", 1), "var_s0": ("variance model (with its mean model)", 2),
             "quantile_s0": ("quantile model", 1), "pc": ("PC model (with its mean model)", 2)}
    forward_on, sampling_on = cost.get("forward_on", "this CPU"), cost.get("sampling_on", "this CPU")
    lines = ["| per image | network evaluations | seconds |", "|---|---|---|"]
    lines += [f"| {names[k][0]} | {names[k][1]} | {v:.4f} on {forward_on} |" for k, v in forward.items() if k in names]
    if "ideal_ddpm_s" in cost:
        lines.append(f"| {n} DDPM-SR samples x 250 steps | {n * 250:,} | {cost['ideal_ddpm_s']:.2f} on {sampling_on} "
                     f"(the testbed's exact denoiser, not a network) |")
    return lines


def convergence_figure(results, path):
    """Error against training step (log-log) per kind, every seed, with the floor and the baseline."""
    plt = pyplot()

    refs, scores = results["references"], results["scores"]
    panels = [("mean", ("rel_mse",), "mean model: relative MSE to E[x|y]", refs["mc_floor"]["mean"],
               refs["baselines"]["mean"]),
              ("var", ("vs_var", "rel_std_error"), "variance model: relative std error", refs["mc_floor"]["var"],
               refs["baselines"]["var_quadratic"]),
              ("quantile", None, "quantile model: error in stds (middle level)", refs["mc_floor"]["quantile"],
               refs["baselines"]["quantile"])]
    panels = [p for p in panels if seed_runs(results, p[0])]  # the kinds trained
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.4), squeeze=False)
    axes = axes[0]
    for ax, (prefix, path_, title, floor, base) in zip(axes, panels):
        if path_ is None:  # the middle quantile level
            levels = quantile_levels(floor)
            path_ = (levels[len(levels) // 2], "rel_error")
        seed0 = seed_runs(results, prefix)[0]
        ablations = {name for _, name in ablation_runs(results)}
        other_weights = [name for name in sorted(scores) if name.endswith(f":{seed0}")]  # its EMA, or its raw ones
        for name in model_runs(results, prefix) + other_weights:
            rows = scores[name]
            style = ".:" if name in other_weights else ".--" if name in ablations else "o-"
            ax.plot([r["step"] for r in rows], [_get(r, path_) for r in rows], style, lw=1, ms=3, label=name)
        ax.axhline(_get(floor, path_), color="black", linestyle="--", label="exact samples (floor)")
        ax.axhline(_get(base, path_), color="tab:gray", linestyle=":", label="closed-form baseline")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_png(fig, path)


def direction_figure(models, images, path, count=3):
    """
    The exact top `count` principal directions of one held-out image beside the final PC models'
    first `count`: one row each, every direction grey = 0 and scaled to its largest value.
    """
    plt = pyplot()

    exact, _ = images.covariance(0).top(count)
    rows = [("exact Cov[x|y]", exact.reshape(count, *images.uint8.shape[2:], -1))]
    for run, label in (("pc_exact_mean", "PC model, exact mean"), ("pc", "PC model, trained mean")):
        if run in models.runs:
            (directions, _), _ = models.get(models.runs[run])
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
    save_png(fig, path)


def interval_figure(models, images, levels, path, image=None):
    """
    One held-out image's per-pixel intervals along its middle row, in one colour channel: the
    true image, the exact posterior's quantiles at `levels` (its outer ones shaded), and the
    final seed-0 quantile model's; beside them the width maps (outer levels) of both.
    """
    plt = pyplot()

    run = models.runs.get("quantile_s0")
    if run is None:
        return
    i = int(np.argmax([np.mean(v) for v in images.exact_var])) if image is None else image
    (q, _), _ = models.get(run)
    model_q = q[i]  # [L, C, H, W]
    exact_q = images.exact_quantiles(levels)[:, i]
    truth = images.uint8[i].double().numpy()
    row, channel = truth.shape[-2] // 2, 0
    x = np.arange(truth.shape[-1])
    fig, (ax, ax_exact, ax_model) = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    ax.fill_between(x, exact_q[0, channel, row], exact_q[-1, channel, row], color="tab:blue", alpha=0.25,
                    label=f"exact {levels[0]:g}-{levels[-1]:g}")
    ax.plot(x, exact_q[len(levels) // 2, channel, row], color="tab:blue", label=f"exact {levels[len(levels) // 2]:g}")
    for j, style in ((0, "--"), (len(levels) // 2, "-"), (len(levels) - 1, "--")):
        ax.plot(x, model_q[j, channel, row], style, color="tab:orange", label=f"model {levels[j]:g}")
    ax.plot(x, truth[channel, row], "k.", label="true image")
    ax.set_xlabel("column (middle row, red channel)")
    ax.set_ylabel("grey level")
    ax.set_title(f"{images.names[i]}: per-pixel posterior quantiles")
    ax.legend(fontsize=7, ncol=2)
    vmax = max((exact_q[-1] - exact_q[0]).max(), (model_q[-1] - model_q[0]).max())
    for a, width, title in ((ax_exact, exact_q[-1] - exact_q[0], "exact width"),
                            (ax_model, model_q[-1] - model_q[0], "quantile model's width")):
        im = a.imshow(width.mean(0), vmin=0, vmax=vmax, cmap="viridis")
        a.set_title(f"{title} ({levels[0]:g}-{levels[-1]:g})", fontsize=9)
        a.set_xticks([])
        a.set_yticks([])
    fig.colorbar(im, ax=[ax_exact, ax_model], shrink=0.8, label="grey levels")
    save_png(fig, path)
