"""
The sampler study's report: the recommendation (the fewest NFE within the tolerance of the
seed's sampler or of the floor), results.csv / results.md and error_vs_nfe.png, from the
runner's results (studies.sampler_run).
"""

import csv
import io
import os

from runkit.fileio import atomic_write

from .sampler_run import METRIC_KEYS

# One H200, the seed's upsampler in fp16 + torch.compile at batch 10 (benchmarks/gpu_checks.sh, 2026-11-26).
H200_SAMPLE_STEPS_PER_S = 208.0
PAPER_SAMPLES = 2000 * 100


def recommend(results, tolerance):
    """Per sampler the fewest NFE within `tolerance` of max(ancestral at 250, floor) on mean MSE and var error."""
    reference = results.get("ancestral_250")
    floor = results["mc_floor"]
    if reference is None:
        return None
    limits = {k: (1 + tolerance) * max(reference[k], floor[k]) for k in ("mean_mse", "var_error")}
    best = {}
    for key, r in results.items():
        if key == "mc_floor" or r["sampler"] == "exact":
            continue
        if all(r[k] <= limit for k, limit in limits.items()):
            if r["sampler"] not in best or r["nfe"] < best[r["sampler"]]["nfe"]:
                best[r["sampler"]] = dict(nfe=r["nfe"], mean_mse=r["mean_mse"], var_error=r["var_error"],
                                          hours_on_one_h200=PAPER_SAMPLES * r["nfe"] / H200_SAMPLE_STEPS_PER_S / 3600)
    overall = min(best.values(), key=lambda b: b["nfe"]) if best else None
    return dict(limits=limits, per_sampler=best,
                fewest=None if overall is None else dict(sampler=next(s for s, b in best.items() if b is overall),
                                                         **overall))


def write_tables(results, out_dir, n):
    rows = [dict(sampler=r["sampler"], nfe=r["nfe"], **{k: r[k] for k in METRIC_KEYS},
                 seconds_per_sample=r["seconds_per_sample"]) for key, r in results.items() if key != "mc_floor"]
    floor = results["mc_floor"]
    rows.append(dict(sampler=f"{n} exact posterior samples (floor)", nfe="", **{k: floor[k] for k in METRIC_KEYS},
                     seconds_per_sample=""))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(out_dir, "results.csv"), lambda f: f.write(table.getvalue().encode()))
    scales = list(floor["var_ratio_by_scale"])
    lines = ["| sampler | NFE | mean MSE | var error | std error | variance ratio | "
             + " | ".join(f"ratio {s}" for s in scales) + " | coverage k=1/2/3 | ms per sample |",
             "|---|---|---|---|---|---|" + "---|" * len(scales) + "---|---|"]

    def cells(r):
        ci = r["ci95"]
        return (f"{r['mean_mse']:.3f} [{ci['mean_mse'][0]:.3f}, {ci['mean_mse'][1]:.3f}] | "
                f"{r['var_error']:.2f} [{ci['var_error'][0]:.2f}, {ci['var_error'][1]:.2f}] | {r['std_error']:.3f} | "
                f"{r['var_ratio']:.3f} [{ci['var_ratio'][0]:.3f}, {ci['var_ratio'][1]:.3f}] | "
                + " | ".join(f"{r['var_ratio_by_scale'][s]['var_ratio']:.3f}" for s in scales)
                + f" | {r['coverage_1']:.3f} / {r['coverage_2']:.3f} / {r['coverage_3']:.3f}")

    for key, r in results.items():
        if key != "mc_floor":
            lines.append(f"| {r['sampler']} | {r['nfe']} | {cells(r)} | {r['seconds_per_sample'] * 1e3:.1f} |")
    lines.append(f"| **{n} exact posterior samples (floor)** | – | {cells(floor)} | – |")
    return lines


def draw_figure(results, path, n):
    """Error vs NFE (log x): one colour per sampler; solid: steps even in t, dashed: even in log-SNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("mean_mse", "mean MSE vs E[x|y]"), ("var_error", "var error vs Var[x|y]"),
              ("var_ratio", "variance / exact variance"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    by_sampler = {}
    for key, r in results.items():
        if key != "mc_floor":
            by_sampler.setdefault(r["sampler"], []).append(r)
    names = list(dict.fromkeys(s.partition("@")[0] for s in by_sampler))
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    for ax, (metric, title) in zip(axes, panels):
        for sampler, rs in by_sampler.items():
            name, _, spacing = sampler.partition("@")
            rs = sorted(rs, key=lambda r: r["nfe"])
            ax.plot([r["nfe"] for r in rs], [r[metric] for r in rs], "o--" if spacing else "o-",
                    color=colors[name], mfc="none" if spacing else None, label=sampler)
        ax.axhline(results["mc_floor"][metric], color="black", linestyle=":", label=f"{n} exact samples (floor)")
        if metric == "var_ratio":
            ax.axhline(1.0, color="gray", linewidth=0.5)
        else:
            ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample (NFE)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)
