"""
Figures, drawn only from logged results (a sweep's results.json, an analysis JSON):
test accuracy vs correct-label ratio, average vs minimum CE, correct-label ratio vs alpha,
and per-class mean prediction vs mean noise distribution, with the paper's curves beside ours.

    python -m noisy_mnist.figures RESULTS.json OUT_DIR     # redraw a sweep's figures
"""

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from runkit import FlagParser, UserError, require_file, run_main
from runkit.fileio import read_json, save_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_RESULTS = os.path.join(ROOT, "data", "paper_mnist_results.json")
COLORS = {"uniform": "tab:blue", "fix": "tab:orange", "model": "tab:green"}
PAPER_NAMES = {"uniform": "uniform", "fix": "biased", "model": "generated"}
# The level shown in the per-class figures: the one nearest the original's default alpha.
PER_CLASS_RATIO = 0.6229
# The paper's model-noise alphas as far as they can be read: the original repository's history
# names model_noisy_label_0.9 / 0.8 / 0.5, while its uniform and fix files are named after the
# model-noise ratios (fix_noisy_label_0.8913, uniform_noisy_label_0.2333), i.e. alpha = ratio.
PAPER_MODEL_ALPHAS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
DPI = 80


def new_figure(width, height):
    # A bare Figure with its own Agg canvas: no pyplot state, no display needed. Fixed
    # margins (set by the callers) instead of a layout engine, which is slow to draw.
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig):
    """The figure rendered as an HWC uint8 RGB array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig, path):
    """Render once; returns the RGB array (for TensorBoard) written to the PNG at path."""
    image = figure_to_array(fig)
    save_png(image, path)
    return image


def per_class_figure(per_class_softmax, per_class_noise, title):
    """A 2x5 grid: for each clean class, the mean softmax and the mean noise distribution."""
    fig = new_figure(16, 6)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.07, top=0.88, wspace=0.1, hspace=0.3)
    classes = np.arange(len(per_class_softmax))
    for c, ax in enumerate(fig.subplots(2, 5, sharey=True).flat):
        ax.plot(classes, per_class_softmax[c], "o-", color="tab:red", label="prediction")
        ax.plot(classes, per_class_noise[c], "^--", color="tab:green", label="noise")
        ax.set_title(f"class {c}")
        ax.set_xticks(classes)
        ax.set_ylim(0, 1.02)
    fig.axes[0].legend()
    fig.suptitle(title)
    return fig


def load_paper(path):
    """The paper's curves by our noise-type names."""
    paper = read_json(path, "paper_results")
    return {entry.get("code_name", name): entry for name, entry in paper.items() if isinstance(entry, dict)}


def _by_type(rows):
    groups = {}
    for row in sorted(rows, key=lambda r: r["correct_label_ratio"]):
        groups.setdefault(row["noise_type"], []).append(row)
    return groups


def label_of(noise_type):
    """"fix (biased)": our name and the paper's."""
    paper_name = PAPER_NAMES.get(noise_type, noise_type)
    return noise_type if paper_name == noise_type else f"{noise_type} ({paper_name})"


_label = label_of


def paper_accuracy_at(paper, noise_type, ratio):
    """The paper's test accuracy at a correct-label ratio (linear between its measured points)."""
    curve = paper[noise_type]
    x, y = np.array(curve["correct_label_ratio"]), np.array(curve["test_accuracy"])
    order = np.argsort(x)
    return float(np.interp(ratio, x[order], y[order]))


def accuracy_figure(rows, paper):
    fig = new_figure(7, 5)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.11, top=0.97)
    ax = fig.subplots()
    for noise_type, group in _by_type(rows).items():
        if noise_type not in COLORS:  # the clean run: a reference line
            ax.axhline(group[0]["test_accuracy"], color="gray", linestyle=":", label="clean labels (ours)")
            continue
        color = COLORS[noise_type]
        ax.plot([r["correct_label_ratio"] for r in group], [r["test_accuracy"] for r in group],
                "o-", color=color, label=f"{_label(noise_type)}, ours")
        if noise_type in paper:
            ax.plot(paper[noise_type]["correct_label_ratio"], paper[noise_type]["test_accuracy"],
                    "x--", color=color, alpha=0.7, label=f"{_label(noise_type)}, paper (MNIST)")
    ax.set_xlabel("correct-label ratio of the noisy training labels")
    ax.set_ylabel("test accuracy (clean test labels)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def seeds_accuracy_figure(groups, paper):
    """
    Test accuracy against the correct-label ratio over seeds (a seed study's groups): the
    mean, with bars from the lowest to the highest seed, beside the paper's curves.
    """
    fig = new_figure(7, 5)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.11, top=0.97)
    ax = fig.subplots()
    by_type = {}
    for g in sorted(groups, key=lambda g: g["correct_label_ratio"]):
        by_type.setdefault(g["noise_type"], []).append(g)
    for noise_type, group in by_type.items():
        acc = [g["test_accuracy"] for g in group]
        seeds = max(len(a["values"]) for a in acc)
        if noise_type not in COLORS:  # the clean runs: a band
            ax.axhspan(acc[0]["min"], acc[0]["max"], color="gray", alpha=0.2)
            ax.axhline(acc[0]["mean"], color="gray", linestyle=":", label=f"clean labels (ours, {seeds} seeds)")
            continue
        color = COLORS[noise_type]
        x = [g["correct_label_ratio"] for g in group]
        mean = np.array([a["mean"] for a in acc])
        ax.errorbar(x, mean, yerr=[mean - [a["min"] for a in acc], [a["max"] for a in acc] - mean], fmt="o-",
                    color=color, capsize=3, label=f"{label_of(noise_type)}, ours (mean, min-max of {seeds} seeds)")
        if noise_type in paper:
            ax.plot(paper[noise_type]["correct_label_ratio"], paper[noise_type]["test_accuracy"],
                    "x--", color=color, alpha=0.7, label=f"{label_of(noise_type)}, paper (MNIST)")
    ax.set_xlabel("correct-label ratio of the noisy training labels")
    ax.set_ylabel("test accuracy (clean test labels)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def ce_figure(rows, paper):
    groups = {t: g for t, g in _by_type(rows).items() if t in COLORS}
    fig = new_figure(5 * max(len(groups), 1), 4.5)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.25)
    for ax, (noise_type, group) in zip(np.atleast_1d(fig.subplots(1, max(len(groups), 1))), groups.items()):
        x = [r["correct_label_ratio"] for r in group]
        ax.plot(x, [r["ce_average"] for r in group], "o-", color="tab:red", label="average CE, ours")
        ax.plot(x, [r["ce_minimum"] for r in group], "s-", color="tab:blue", mfc="none", label="minimum CE, ours")
        if noise_type in paper:
            ref = paper[noise_type]
            ax.plot(ref["correct_label_ratio"], ref["train_ce_average"], "--", color="tab:red", alpha=0.6,
                    label="average CE, paper")
            ax.plot(ref["correct_label_ratio"], ref["train_ce_minimum"], ":", color="tab:blue", alpha=0.6,
                    label="minimum CE, paper")
        ax.set_title(_label(noise_type))
        ax.set_xlabel("correct-label ratio")
        ax.set_ylabel("cross-entropy on the training set")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def ratio_figure(rows, paper):
    """Correct-label ratio against alpha, ours and the paper's (alphas as read from its history)."""
    fig = new_figure(6, 5)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.11, top=0.97)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color="gray", label="ratio = alpha")
    for noise_type, group in _by_type(rows).items():
        if noise_type not in COLORS:
            continue
        ax.plot([r["alpha"] for r in group], [r["correct_label_ratio"] for r in group], "o-",
                color=COLORS[noise_type], label=f"{_label(noise_type)}, ours")
    if "model" in paper:
        ratios = paper["model"]["correct_label_ratio"]
        ax.plot(PAPER_MODEL_ALPHAS[:len(ratios)], ratios, "x--", color=COLORS["model"], alpha=0.7,
                label=f"{_label('model')}, paper (alpha 0.9 ... 0.2)")
    ax.set_xlabel("alpha")
    ax.set_ylabel("correct-label ratio of the drawn labels")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def draw_figures(results_path, out_dir, paper_path=PAPER_RESULTS):
    """Draw every figure of a sweep's results.json into out_dir; returns the paths written."""
    results = read_json(results_path)
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise UserError(f"{results_path!r} is not a sweep's results.json: it has no list of 'rows'")
    rows = results["rows"]
    paper = load_paper(paper_path)
    figs = {"accuracy_vs_ratio.png": accuracy_figure(rows, paper), "ce_average_vs_minimum.png": ce_figure(rows, paper),
            "ratio_vs_alpha.png": ratio_figure(rows, paper)}
    for noise_type, group in _by_type(rows).items():
        if noise_type in COLORS:
            row = min(group, key=lambda r: abs(r["correct_label_ratio"] - PER_CLASS_RATIO))
            figs[f"per_class_{noise_type}.png"] = per_class_figure(
                row["per_class_softmax"], row["per_class_noise"],
                f"{_label(noise_type)} noise, alpha {row['alpha']}, correct-label ratio "
                f"{row['correct_label_ratio']:.3f}: mean prediction vs noise per class")
    paths = []
    for name, fig in figs.items():
        paths.append(os.path.join(out_dir, name))
        save_figure(fig, paths[-1])
    return paths


@run_main
def main():
    parser = FlagParser(description="Redraw the figures of an MNIST sweep from its results.json.")
    parser.add_argument("results", help="results.json written by scripts/mnist_sweep.py")
    parser.add_argument("out_dir", help="folder for the PNG files")
    parser.add_argument("--paper_results", default=PAPER_RESULTS)
    args = parser.parse_args()
    require_file(args.results, "results")
    require_file(args.paper_results, "paper_results")
    for path in draw_figures(args.results, args.out_dir, args.paper_results):
        print(path)


if __name__ == "__main__":
    main()
