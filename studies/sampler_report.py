"""
The sampler study's report, from the runner's results (studies.sampler_run): which
configurations are within the floor criterion (testbed.scoring.within_floor), the criterion's
power on samples of a known variance bias, the robustness run, results.csv / results.md and
error_vs_nfe.png.
"""

import csv
import io
import os

from imaging.metrics import paired_text
from runkit.fileio import atomic_write
from testbed.scoring import within_floor

from .figures import pyplot, save_png
from .sampler_run import KNOWN_BIASES, ROBUSTNESS, configuration_key

# One H200, the seed's upsampler in fp16 + torch.compile at batch 10 (benchmarks/gpu_checks.sh, 2026-11-26).
H200_SAMPLE_STEPS_PER_S = 208.0
PAPER_SAMPLES = 2000 * 100
# The floor criterion (testbed.scoring.within_floor) in words, for the reports.
CRITERION = ("every component's variance ratio interval inside [{low:.2f}, {high:.2f}], and the relative mean MSE "
             "and std error not shown worse than the floor's: paired with the floor image by image, the difference's "
             "95% interval reaches 0 or stays within {band:g} of the floor's value.")
METRIC_KEYS = ("rel_mse", "mse", "var_ratio", "rel_std_error", "rel_var_error", "var_error", "std_error")


def configurations(results):
    """The sampled configurations (not the floor or the biased references), in the study's order."""
    return {key: r for key, r in results.items() if "sampler" in r}


def verdicts(results, band):
    """within_floor for every configuration and for the known biases, against the study's floor."""
    floor = results["mc_floor"]
    out = {key: within_floor(r, floor, band) for key, r in configurations(results).items()}
    for factor in KNOWN_BIASES:
        key = f"biased_x{factor:g}"
        if key in results:
            out[key] = within_floor(results[key], floor, band)
    out["mc_floor"] = within_floor(floor, floor, band)
    return out


def recommend(results, verdict):
    """The fewest NFE within the floor criterion, per sampler and overall (the exact teacher is not a sampler)."""
    best = {}
    for key, r in configurations(results).items():
        if r["sampler"] == "exact" or r["perturbation"] or not verdict[key]["within"]:
            continue
        if r["sampler"] not in best or r["nfe"] < best[r["sampler"]]["nfe"]:
            best[r["sampler"]] = dict(nfe=r["nfe"], hours_on_one_h200=PAPER_SAMPLES * r["nfe"] / H200_SAMPLE_STEPS_PER_S
                                      / 3600)
    if not best:
        return dict(per_sampler={}, fewest=None)
    sampler = min(best, key=lambda s: best[s]["nfe"])
    return dict(per_sampler=best, fewest=dict(sampler=sampler, **best[sampler]))


def write_tables(results, out_dir, n, band, verdict=None):
    """results.csv (every configuration's pooled numbers) and the markdown lines of results.md
    (`verdict`: verdicts(results, band), when the caller has it already)."""
    floor = results["mc_floor"]
    verdict = verdicts(results, band) if verdict is None else verdict
    rows = [dict(key=key, sampler=r["sampler"], nfe=r["nfe"], perturbation=r["perturbation"],
                 within_floor=verdict[key]["within"], **{k: r["summary"][k] for k in METRIC_KEYS},
                 seconds_per_sample=r["seconds_per_sample"]) for key, r in configurations(results).items()]
    rows.append(dict(key="mc_floor", sampler=f"{n} exact posterior samples (floor)", nfe="", perturbation="",
                     within_floor=True, **{k: floor["summary"][k] for k in METRIC_KEYS}, seconds_per_sample=""))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(out_dir, "results.csv"), lambda f: f.write(table.getvalue().encode()))

    labels = list(floor["summary"]["by_component"])
    lines = [f"Against the exact posterior, {floor['summary']['num_images']} images x {n} samples (uint8, moments "
             f"with ddof 1). Relative mean MSE: the MSE of the samples' mean to E[x|y] over the mean posterior "
             f"variance (1/N = {1 / n:.3f} for exact samples, plus rounding). Variance ratio: sum of the sample "
             f"variance over sum of Var[x|y], pooled [95% CI] and per component. Relative std error: mean "
             f"|s - s*| / s*. Within the floor: {CRITERION.format(low=1 - band, high=1 + band, band=band)}", "",
             "| sampler | NFE | rel. mean MSE [95% CI] | variance ratio [95% CI] | "
             + " | ".join(f"ratio {label}" for label in labels)
             + " | rel. std error [95% CI] | paired - floor: rel. mean MSE; rel. std error [95% CI] | within the floor "
               "| ms per sample |",
             "|---|---|---|---|" + "---|" * len(labels) + "---|---|---|---|"]

    def cells(summary):
        ci = summary["ci95"]
        return (f"{summary['rel_mse']:.4f} [{ci['rel_mse'][0]:.4f}, {ci['rel_mse'][1]:.4f}] | "
                f"{summary['var_ratio']:.3f} [{ci['var_ratio'][0]:.3f}, {ci['var_ratio'][1]:.3f}] | "
                + " | ".join(_ratio_cell(summary["by_component"][label]) for label in labels)
                + f" | {summary['rel_std_error']:.4f} [{ci['rel_std_error'][0]:.4f}, {ci['rel_std_error'][1]:.4f}]")

    for key, r in configurations(results).items():
        if r["perturbation"]:
            continue
        mark = "**yes**" if verdict[key]["within"] else "no"
        lines.append(f"| {r['sampler']} | {r['nfe']} | {cells(r['summary'])} | {paired_cell(verdict[key])} | {mark} | "
                     f"{r['seconds_per_sample'] * 1e3:.1f} |")
    lines.append(f"| **{n} exact posterior samples (floor)** | – | {cells(floor['summary'])} | 0 | – | – |")

    # the criterion's power: samples of a known variance bias
    lines += ["", f"The criterion's power: {n} exact posterior samples per image whose spread is scaled to a known "
                  f"variance bias, judged by the same rule:", "",
              "| samples | variance ratio [95% CI] | " + " | ".join(f"ratio {label}" for label in labels)
              + " | rel. mean MSE | rel. std error | paired - floor: rel. mean MSE; rel. std error | "
                "judged within the floor |",
              "|---|---|" + "---|" * len(labels) + "---|---|---|---|"]
    for factor in KNOWN_BIASES:
        key = f"biased_x{factor:g}"
        if key in results:
            s = results[key]["summary"]
            ci = s["ci95"]["var_ratio"]
            lines.append(f"| exact, variance x{factor:g} | {s['var_ratio']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
                         + " | ".join(_ratio_cell(s["by_component"][label]) for label in labels)
                         + f" | {s['rel_mse']:.4f} | {s['rel_std_error']:.4f} | {paired_cell(verdict[key])} | "
                         f"{'yes (missed)' if verdict[key]['within'] else 'no (caught)'} |")
    fc = floor["summary"]["by_component"]
    lines += ["", "The band's justification, the floor's own per-component variance ratio intervals: "
              + "; ".join(f"{label} {fc[label]['ci95']['var_ratio'][0]:.3f}-{fc[label]['ci95']['var_ratio'][1]:.3f} "
                          f"({fc[label]['num_images']} images)" for label in labels)
              + f". The paired margins ({band:g} of the floor's value): rel. mean MSE "
                f"{band * floor['summary']['rel_mse']:.4f}, rel. std error {band * floor['summary']['rel_std_error']:.4f}."]
    lines += _robustness_table(results)
    return lines


def paired_cell(verdict):
    """A verdict's paired differences to the floor (relative mean MSE; relative std error), each with its interval."""
    return "; ".join(paired_text(verdict["paired"][k]) for k in ("rel_mse", "rel_std_error"))


def _ratio_cell(component):
    low, high = component["ci95"]["var_ratio"]
    return f"{component['var_ratio']:.3f} [{low:.3f}, {high:.3f}]"


def _robustness_table(results):
    deltas = sorted({r["perturbation"] for r in configurations(results).values()} - {0.0})
    if not deltas:
        return []
    deltas = [deltas[0], 0.0, *deltas[1:]] if deltas[0] < 0 else [0.0, *deltas]
    head = " | ".join(f"delta {d:+g}" for d in deltas)
    lines = ["", "Robustness: the ideal teacher's denoiser perturbed as a network's error would be, x0 = E[x|y] + "
                 "(1 - delta (1 - alphabar)) (E[x0|x_t,y] - E[x|y]); variance ratio (and relative mean MSE) per "
                 "delta:", "", f"| sampler | NFE | {head} |", "|---|---|" + "---|" * len(deltas)]
    for sampler, nfe in ROBUSTNESS:
        cells = []
        for d in deltas:
            r = results.get(configuration_key(sampler, nfe, d))
            cells.append("–" if r is None else f"{r['summary']['var_ratio']:.3f} ({r['summary']['rel_mse']:.4f})")
        lines.append(f"| {sampler} | {nfe} | " + " | ".join(cells) + " |")
    return lines


def draw_figure(results, path, n, band):
    """Relative mean MSE, relative std error and variance ratio against NFE (log x); dashed: steps even in log-SNR."""
    plt = pyplot()

    panels = (("rel_mse", "relative mean MSE vs E[x|y]"), ("rel_std_error", "relative std error vs Var[x|y]"),
              ("var_ratio", "variance / exact variance"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    by_sampler = {}
    for r in configurations(results).values():
        if not r["perturbation"]:
            by_sampler.setdefault(r["sampler"], []).append(r)
    names = list(dict.fromkeys(s.partition("@")[0] for s in by_sampler))
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    floor = results["mc_floor"]["summary"]
    for ax, (metric, title) in zip(axes, panels):
        for sampler, rs in by_sampler.items():
            name, _, spacing = sampler.partition("@")
            rs = sorted(rs, key=lambda r: r["nfe"])
            ax.plot([r["nfe"] for r in rs], [r["summary"][metric] for r in rs], "o--" if spacing else "o-",
                    color=colors[name], mfc="none" if spacing else None, label=sampler)
        ax.axhline(floor[metric], color="black", linestyle=":", label=f"{n} exact samples (floor)")
        if metric == "var_ratio":
            ax.axhspan(1 - band, 1 + band, color="gray", alpha=0.2, label="the criterion's band")
        else:
            ax.axhspan(floor["ci95"][metric][0], floor["ci95"][metric][1], color="black", alpha=0.1)
            ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample (NFE)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[2].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    save_png(fig, path)
