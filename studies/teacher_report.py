"""
The trained teacher study's report, from the runner's results (studies.teacher_run):
results.md (the trained and the ideal teacher against exact truth with the sampler study's
table writer and floor criterion; their paired differences; every sampler against the
teacher's own ancestral samples; the teacher against its training steps; the one-pass models
against the teacher's samples and against exact truth; the costs), error_vs_nfe.png and
training_curve.png.
"""

import os

from imaging import metrics
from runkit.fileio import atomic_write
from testbed.scoring import within_floor

from .figures import pyplot, save_png
from .sampler_report import CRITERION, paired_cell, recommend, verdicts, write_tables

METRICS = (("rel_mse", "relative mean MSE"), ("rel_std_error", "relative std error"), ("var_ratio", "variance ratio"))


def sampler_label(scores):
    return f"{scores['sampler']} {scores['nfe']}"


def with_floor(results, sets, biases=False):
    """A teacher's sets in the sampler study's shape: {"mc_floor": ..., configurations...}, with the exact teacher."""
    refs = results["references"]
    out = {"mc_floor": refs["mc_floor"], "exact": refs["exact"], **sets}
    if biases:
        out.update({key: r for key, r in refs.items() if key.startswith("biased_x")})
    return out


def readings(results, band):
    """
    The numbers the docs read: the verdicts against exact truth and against the teacher's own
    reference samples, and the fewest NFE within each criterion, for the trained and the ideal teacher.
    """
    final = str(results["final_step"])
    out = {}
    for teacher, sets in (("trained", results["trained"][final]), ("ideal", results["ideal"])):
        vs_exact = with_floor(results, sets)
        v_exact = verdicts(vs_exact, band)
        vs_ref = results["vs_reference"][teacher]
        v_ref = verdicts(vs_ref, band)
        out[teacher] = dict(vs_exact=v_exact, vs_reference=v_ref,
                            fewest_vs_exact=recommend(vs_exact, v_exact)["per_sampler"],
                            fewest_vs_reference=recommend(vs_ref, v_ref)["per_sampler"])
    refs = results["references"]
    out["second_exact_set"] = within_floor(refs["mc_floor_b"], refs["mc_floor"], band)
    return out


def _cell(summary, key, fmt):
    low, high = summary["ci95"][key]
    return f"{summary[key]:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _paired(a, b, key, fmt=".4f"):
    return metrics.paired_text(metrics.paired_difference([r[key] for r in a["per_image"]],
                                                         [r[key] for r in b["per_image"]]), fmt)


def _components(summary, key="var_ratio", fmt=".3f"):
    return " | ".join(_cell(c, key, fmt) for c in summary["by_component"].values())


def write_report(results, out_dir, cfg):
    """results.md and the figures; returns the markdown."""
    n, band = cfg["num_samples"], cfg["band"]
    final = str(results["final_step"])
    trained, ideal = results["trained"][final], results["ideal"]
    labels = list(results["references"]["mc_floor"]["summary"]["by_component"])  # the components sampled
    reading = readings(results, band)
    paper, reference = results["paper"], results["reference"]
    lines = [f"# Trained teacher study: {cfg['testbed']}, {cfg['large_size']} px", "",
             f"The DDPM-SR teacher trained by sr_ddpm_train.py for {final} steps (batch {cfg['train_batch_size']}, "
             f"lr {cfg['lr']}, sampled with its EMA {cfg['ema_rate']} weights), against the testbed's ideal teacher "
             f"(the exact denoiser and per-pixel variance) on the same {len(results['images']['names'])} evaluation "
             f"images and random streams, {n} samples per image. Components (per-component columns in this order): "
             f"{'; '.join(labels)}.", ""]

    lines += ["## Readings", ""] + _headlines(results, reading, n, ref_label=reference.replace("_", " "))
    lines += ["", "## The trained teacher against exact truth", ""]
    lines += write_tables(with_floor(results, trained, biases=True),
                          os.path.join(out_dir, "runs", f"trained_{int(final):06d}"), n, band)
    lines += ["", "## The ideal teacher against exact truth (the sampler study's configurations, the same images)", ""]
    ideal_lines = write_tables(with_floor(results, ideal), os.path.join(out_dir, "runs", "ideal"), n, band)
    lines += ideal_lines[:next((i for i, x in enumerate(ideal_lines) if x.startswith("The criterion's power")),
                               len(ideal_lines))]  # the power check is the trained table's
    second = results["references"]["mc_floor_b"]
    s = second["summary"]
    lines += [f"A second, independent set of {n} exact posterior samples, judged by the same rule (the criterion's "
              f"false alarms at this size): variance ratio {_cell(s, 'var_ratio', '.3f')}, by component "
              f"{_components(s).replace(' | ', ' / ')}; rel. mean MSE {_cell(s, 'rel_mse', '.4f')}; rel. std error "
              f"{_cell(s, 'rel_std_error', '.4f')}; paired with the floor, rel. mean MSE; rel. std error "
              f"{paired_cell(reading['second_exact_set'])}; judged "
              f"{'within' if reading['second_exact_set']['within'] else 'not within'} the floor."]

    lines += ["", "## Trained minus ideal, paired over the same images and random streams", "",
              "| sampler | NFE | rel. mean MSE | variance ratio | rel. std error |", "|---|---|---|---|---|"]
    for key, r in trained.items():
        if key in ideal:
            lines.append(f"| {r['sampler']} | {r['nfe']} | {_paired(r, ideal[key], 'rel_mse')} | "
                         f"{_paired(r, ideal[key], 'var_ratio', '.3f')} | {_paired(r, ideal[key], 'rel_std_error')} |")

    ref_label = reference.replace("_", " ")
    lines += ["", f"## Every sampler against the teacher's own {ref_label} samples", "",
              f"Each set scored against the same teacher's {ref_label} samples (their moments in place of the exact "
              f"ones; variance ratio: sum of the set's variance over the reference's). The floor of such a comparison: "
              f"{n} exact posterior samples against another {n} (the same images). Within the criterion: "
              f"{CRITERION.format(low=1 - band, high=1 + band, band=band)}", "",
              "| teacher | sampler | NFE | variance ratio [95% CI] | " + " | ".join(f"ratio {x}" for x in labels)
              + " | rel. mean MSE [95% CI] | rel. std error [95% CI] | within |",
              "|---|---|---|---|" + "---|" * len(labels) + "---|---|---|"]
    for teacher in ("trained", "ideal"):
        vs_ref, verdict = results["vs_reference"][teacher], reading[teacher]["vs_reference"]
        for key, r in vs_ref.items():
            if "sampler" in r:
                s = r["summary"]
                lines.append(f"| {teacher} | {r['sampler']} | {r['nfe']} | {_cell(s, 'var_ratio', '.3f')} | "
                             f"{_components(s)} | {_cell(s, 'rel_mse', '.4f')} | {_cell(s, 'rel_std_error', '.4f')} | "
                             f"{'**yes**' if verdict[key]['within'] else 'no'} |")
    vs_ref = results["vs_reference"]["trained"]
    for key in [k for k in vs_ref if k.startswith("biased_x")] + ["mc_floor"]:
        s = vs_ref[key]["summary"]
        what = (f"{n} exact samples against {n} more (floor)" if key == "mc_floor" else
                f"exact, variance x{vs_ref[key]['variance_factor']:g}, against {n} exact (power)")
        within = reading["trained"]["vs_reference"][key]["within"]
        lines.append(f"| – | {what} | – | {_cell(s, 'var_ratio', '.3f')} | {_components(s)} | "
                     f"{_cell(s, 'rel_mse', '.4f')} | {_cell(s, 'rel_std_error', '.4f')} | "
                     f"{'yes' if within else 'no'} |")

    lines += ["", "Fewest NFE within the criterion, per sampler:", ""]
    for teacher in ("trained", "ideal"):
        for what, key in (("exact truth", "fewest_vs_exact"), (f"its own {ref_label} samples", "fewest_vs_reference")):
            found = reading[teacher][key]
            text = ", ".join(f"{s} at {v['nfe']}" for s, v in sorted(found.items())) or "none"
            lines.append(f"- {teacher} teacher, against {what}: {text}")

    lines += ["", "## The trained teacher against its training steps", "",
              f"Sampled at each kept checkpoint with the paper's protocol ({paper.replace('_', ' ')}) and the fast "
              f"configuration closest to exact at the last step ({(results['best_fast'] or 'none').replace('_', ' ')}).",
              "", "| step | sampler | NFE | rel. mean MSE [95% CI] | variance ratio [95% CI] | "
              + " | ".join(f"ratio {x}" for x in labels) + " | rel. std error [95% CI] |",
              "|---|---|---|---|---|" + "---|" * len(labels) + "---|"]
    for step, sets in sorted(results["trained"].items(), key=lambda kv: int(kv[0])):
        for key in (paper, results["best_fast"]):
            if key in sets:
                r, s = sets[key], sets[key]["summary"]
                lines.append(f"| {step} | {r['sampler']} | {r['nfe']} | {_cell(s, 'rel_mse', '.4f')} | "
                             f"{_cell(s, 'var_ratio', '.3f')} | {_components(s)} | {_cell(s, 'rel_std_error', '.4f')} |")
    for key in (paper, results["best_fast"]):
        if key in ideal:
            s = ideal[key]["summary"]
            lines.append(f"| ideal teacher | {ideal[key]['sampler']} | {ideal[key]['nfe']} | "
                         f"{_cell(s, 'rel_mse', '.4f')} | {_cell(s, 'var_ratio', '.3f')} | {_components(s)} | "
                         f"{_cell(s, 'rel_std_error', '.4f')} |")
    s = results["references"]["mc_floor"]["summary"]
    lines.append(f"| {n} exact samples (floor) | – | – | {_cell(s, 'rel_mse', '.4f')} | {_cell(s, 'var_ratio', '.3f')} | "
                 f"{_components(s)} | {_cell(s, 'rel_std_error', '.4f')} |")

    lines += ["", "## The teacher's denoiser against the exact one", "",
              "Mean square of the network's eps minus the exact E[eps|x_t,y] at each t (its excess error), on the "
              "study's images with 4 noises each; last row: the exact E[eps|x_t,y] minus eps (what no network removes, "
              "the training MSE's floor at t).", ""]
    ts = list(next(iter(results["denoiser"].values())))
    lines += ["| step | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
    for step, errors in sorted(results["denoiser"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {step} | " + " | ".join(f"{errors[t]['excess']:.2e}" for t in ts) + " |")
    lines.append("| exact (floor) | " + " | ".join(f"{errors[t]['exact']:.2e}" for t in ts) + " |")
    lines += ["", "## The one-pass models against the teacher's samples and against exact truth", ""]
    lines += _model_lines(results, n, labels)
    lines += ["", "## Costs", ""] + _cost_lines(results)
    text = "\n".join(lines) + "\n"
    atomic_write(os.path.join(out_dir, "results.md"), lambda f: f.write(text.encode()))
    error_figure(results, os.path.join(out_dir, "error_vs_nfe.png"), n, band)
    curve_figure(results, os.path.join(out_dir, "training_curve.png"), n)
    return text


def _headlines(results, reading, n, ref_label):
    """The study's answers in a few lines, each with its interval (the tables below carry the rest)."""
    final = str(results["final_step"])
    trained, ideal = results["trained"][final], results["ideal"]
    paper, floor = results["paper"], results["references"]["mc_floor"]
    lines = []
    if paper in trained:
        t, s = trained[paper], trained[paper]["summary"]
        lines.append(f"- The paper's protocol ({paper.replace('_', ' ')}, {n} samples) with the trained teacher "
                     f"(step {final}) against exact truth: variance ratio {_cell(s, 'var_ratio', '.3f')} (by component "
                     f"{_components(s).replace(' | ', ' / ')}); rel. mean MSE {_cell(s, 'rel_mse', '.4f')} against "
                     f"the floor's {_cell(floor['summary'], 'rel_mse', '.4f')}; rel. std error "
                     f"{_cell(s, 'rel_std_error', '.4f')} against the floor's "
                     f"{_cell(floor['summary'], 'rel_std_error', '.4f')}.")
        if paper in ideal:
            lines.append(f"- Trained minus ideal teacher at the paper's protocol, paired: variance ratio "
                         f"{_paired(t, ideal[paper], 'var_ratio', '.3f')}, rel. mean MSE "
                         f"{_paired(t, ideal[paper], 'rel_mse')}, rel. std error "
                         f"{_paired(t, ideal[paper], 'rel_std_error')}.")
    for teacher in ("trained", "ideal"):
        for what, key in (("exact truth", "fewest_vs_exact"), (f"its own {ref_label} samples", "fewest_vs_reference")):
            found = {k: v for k, v in reading[teacher][key].items() if k != "ancestral"}
            text = ", ".join(f"{k} at {v['nfe']} NFE" for k, v in sorted(found.items())) or "none"
            lines.append(f"- Fast samplers within the floor criterion, {teacher} teacher, against {what}: {text}.")
    second = "passes" if reading["second_exact_set"]["within"] else "fails"
    lines.append(f"- The criterion at this size: a second set of {n} exact posterior samples {second} it; the power "
                 f"check (exact samples of variance x0.93 and x1.07) is in the trained teacher's table.")
    return lines


def _model_lines(results, n, labels):
    models = results["models"]
    if models is None:
        return [f"Left out: {results['models_left_out']}."]
    final = str(results["final_step"])
    teacher = results["trained"][final][results["paper"]]
    floor = results["references"]["mc_floor"]
    ex, vt = models["vs_exact"], models["vs_teacher"]
    proto = results["paper"].replace("_", " ")
    lines = [f"The testbed study's models ({models['found']['mean']['checkpoint']}, {models['found']['var']['checkpoint']}; "
             f"trained on {'the same' if models['found']['same_images'] else 'other'} testbed images) on the same "
             f"images. Against the teacher: the teacher's {n} samples ({proto}) in place of the exact moments, as the "
             f"paper scores its models (relative to the teacher's variance).", "",
             "| estimate | against | rel. mean MSE [95% CI] | MSE | variance ratio [95% CI] | "
             + " | ".join(f"ratio {x}" for x in labels) + " | rel. std error [95% CI] | var error |",
             "|---|---|---|---|---|" + "---|" * len(labels) + "---|---|"]

    def row(what, vs, mean, var):
        m, v = mean["summary"], var["summary"]
        return (f"| {what} | {vs} | {_cell(m, 'rel_mse', '.4f')} | {m['mse']:.3f} | {_cell(v, 'var_ratio', '.3f')} | "
                f"{_components(v)} | {_cell(v, 'rel_std_error', '.4f')} | {v['var_error']:.2f} |")

    lines.append(row("mean and variance models", "the teacher's samples", vt["mean"], vt["var"]))
    lines.append(row("mean and variance models", "exact", ex["mean"], ex["var"]))
    as_pair = dict(summary=teacher["summary"], per_image=teacher["per_image"])
    lines.append(row(f"the teacher's {n} samples ({proto})", "exact", as_pair, as_pair))
    lines.append(row(f"{n} exact posterior samples (floor)", "exact", floor, floor))
    lines += ["", "Paired over the same images, against exact truth (models minus the teacher's samples): "
              f"rel. mean MSE {_paired(ex['mean'], teacher, 'rel_mse')}; variance ratio "
              f"{_paired(ex['var'], teacher, 'var_ratio', '.3f')}; rel. std error "
              f"{_paired(ex['var'], teacher, 'rel_std_error')}. One pass of both models: "
              f"{models['seconds_per_image'] * 1e3:.1f} ms per image on {models.get('forward_on', 'this CPU')} "
              f"(2 network evaluations)."]
    return lines


def _cost_lines(results):
    costs = results.get("costs", {})
    lines = []
    for part in ("testbed", "training"):
        for c in costs.get(part, []):
            extra = (f" (steps {c['from_step']}-{c['to_step']}: {c['seconds'] / max(c['to_step'] - c['from_step'], 1):.3g}"
                     f" s per step)" if part == "training" else "")
            lines.append(f"- {part}: {c['seconds'] / 60:.1f} min{extra}")
    final = str(results["final_step"])
    for teacher, sets in (("trained", results["trained"][final]), ("ideal", results["ideal"])):
        per_nfe = [r["seconds_per_sample"] / r["nfe"] * 1e3 for r in sets.values()]
        lines.append(f"- sampling, {teacher} teacher: {min(per_nfe):.3g}-{max(per_nfe):.3g} ms per sample per NFE; "
                     f"{sum(r['wall_time_s'] for r in sets.values()) / 60:.1f} min for its configurations at the last step")
    curve = [r for step, sets in results["trained"].items() if step != final for r in sets.values()]
    if curve:
        lines.append(f"- sampling the earlier checkpoints: {sum(r['wall_time_s'] for r in curve) / 60:.1f} min")
    return lines


def error_figure(results, path, n, band):
    """Each metric against NFE per image: trained (solid) and ideal (dashed) teacher, exact teacher, floor, models."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    final = str(results["final_step"])
    floor = results["references"]["mc_floor"]["summary"]
    exact = results["references"]["exact"]
    names = list(dict.fromkeys(r["sampler"] for r in results["ideal"].values()))
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    models = results["models"]
    for ax, (metric, title) in zip(axes, METRICS):
        for teacher, sets, style in (("trained", results["trained"][final], "o-"), ("ideal", results["ideal"], "s--")):
            for name in names:
                rs = sorted((r for r in sets.values() if r["sampler"] == name), key=lambda r: r["nfe"])
                if rs:
                    ax.plot([r["nfe"] for r in rs], [r["summary"][metric] for r in rs], style, color=colors[name],
                            mfc="none" if teacher == "ideal" else None, label=f"{name} ({teacher})")
        ax.plot([exact["nfe"]], [exact["summary"][metric]], "k*", ms=10, label="exact teacher")
        ax.axhline(floor[metric], color="black", linestyle=":", label=f"{n} exact samples (floor)")
        if models:
            est = models["vs_exact"]["mean" if metric == "rel_mse" else "var"]["summary"]
            nfe = 1 if metric == "rel_mse" else 2
            ax.plot([nfe], [est[metric]], "rX", ms=11, label="mean / variance model (one pass)")
        if metric == "var_ratio":
            ax.axhspan(1 - band, 1 + band, color="gray", alpha=0.2, label="the criterion's band")
        else:
            ax.axhspan(*floor["ci95"][metric], color="black", alpha=0.1)
            ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample (NFE)")
        ax.set_title(f"{title} vs exact")
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[2].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    save_png(fig, path)


def curve_figure(results, path, n):
    """Each metric against the teacher's training step, for the paper's protocol and the best fast sampler."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    floor = results["references"]["mc_floor"]["summary"]
    steps = sorted(int(s) for s in results["trained"])
    for ax, (metric, title) in zip(axes, METRICS):
        for i, key in enumerate(k for k in (results["paper"], results["best_fast"]) if k):
            rows = [(s, results["trained"][str(s)][key]) for s in steps if key in results["trained"][str(s)]]
            if not rows:
                continue
            label = key.replace("_", " ")
            ax.plot([s for s, _ in rows], [r["summary"][metric] for _, r in rows], "o-", color=f"C{i}",
                    label=f"trained teacher, {label}")
            lows = [r["summary"]["ci95"][metric][0] for _, r in rows]
            highs = [r["summary"]["ci95"][metric][1] for _, r in rows]
            ax.fill_between([s for s, _ in rows], lows, highs, color=f"C{i}", alpha=0.15)
            if key in results["ideal"]:
                ax.axhline(results["ideal"][key]["summary"][metric], color=f"C{i}", linestyle="--",
                           label=f"ideal teacher, {label}")
        ax.axhline(floor[metric], color="black", linestyle=":", label=f"{n} exact samples (floor)")
        if metric != "var_ratio":
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(f"{title} vs exact")
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    save_png(fig, path)
