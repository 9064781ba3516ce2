"""
An exact classification testbed for Theorem 2.1 (scripts/classification_testbed.py): images
drawn from an exact testbed's prior (a mixture over components k, e.g. the Gaussian scale
mixture of testbed/), the class being the component k, so that p(k | x) is known in closed
form. The classifier is trained by the sweep's stages (clean labels; uniform, fix and model
noise), and its softmax is scored on held-out images against the exact target of Theorem 2.1,

    T(x) = sum_c p(c | x) P(noisy label | x, c),

where P is the noise's transition (uniform, fix: a function of c alone; model noise: of the
clean model's softmax q(x) and c). The noise files' p is P(. | x, c) at the true class c:
it equals T only where c is a function of x. The prior is passed in as an object with
`sample_prior(n, rng)` and `prior_component_posterior(x, pixel_noise)` (this package imports
no testbed code).

Storage: images are MNIST's files (uint8 [N, 28, 28], labels int64), written from [-1, 1]
units as round((x + 1) * 127.5) clipped to [0, 255] (testbed.quantize's map). p(k | x) is
computed for the stored image, with the rounding taken as independent pixel noise of
variance (1 / 127.5)^2 / 12 (`ROUNDING_VARIANCE`), and saved beside the images.
"""

import os

import numpy as np
import torch as th

from runkit import UserError
from runkit.fileio import atomic_write, load_pickle, record_run_flags, save_json, save_pickle, save_torch

from . import figures, scores, seeds, sweep, tasks
from .model import NUM_CLASSES
from .noise import noise_distribution

ROUNDING_VARIANCE = (1 / 127.5) ** 2 / 12  # one uint8 level in [-1, 1] units, uniform: its variance
POSTERIOR_FILE = "class_posterior.pkl"


def store_uint8(x):
    """[-1, 1] floats -> uint8, rounded to the nearest level and clipped (testbed.quantize's map)."""
    return np.clip(np.round((np.asarray(x) + 1) * 127.5), 0, 255).astype(np.uint8)


def stored_values(images):
    """uint8 -> the [-1, 1] values they stand for (float64)."""
    return np.asarray(images, dtype=np.float64) / 127.5 - 1


def padded(p):
    """p(k | x) [N, K] with K <= 10 as [N, 10] (classes beyond K have probability 0)."""
    if p.shape[1] > NUM_CLASSES:
        raise UserError(f"the prior has {p.shape[1]} components; the classifier has {NUM_CLASSES} classes")
    return np.pad(p, ((0, 0), (0, NUM_CLASSES - p.shape[1])))


def draw_split(prior, n, rng):
    """
    n images of the prior as stored: (uint8 [n, 28, 28], components [n], p(k | stored image)
    [n, 10], and a check of the storage: the share of clipped pixels and the TV between
    p(k | x) of the unrounded and of the stored images).
    """
    x, k = prior.sample_prior(n, rng)
    if x.shape[1:] != (1, 28, 28):
        raise UserError(f"the prior draws images {list(x.shape[1:])}; the classifier reads [1, 28, 28] "
                        f"(one channel, --large_size 28)")
    stored = store_uint8(x)
    posterior = padded(prior.prior_component_posterior(stored_values(stored), pixel_noise=ROUNDING_VARIANCE))
    unrounded = padded(prior.prior_component_posterior(x))
    check = dict(clipped_pixel_share=float(np.mean(np.abs(x) > 1)),
                 tv_unrounded_vs_stored=scores.summary(scores.tv(unrounded, posterior)))
    return stored[:, 0], np.asarray(k, dtype=np.int64), posterior, check


def prior_summary(posterior, labels):
    """How uncertain the class is: the Bayes classifier's accuracy, the entropy of p(k | x), ..."""
    best = posterior.max(axis=1)
    return dict(bayes_accuracy=float(np.mean(posterior.argmax(axis=1) == labels)),
                mean_max_posterior=float(best.mean()), share_max_posterior_below_0_9=float(np.mean(best < 0.9)),
                mean_entropy=float(scores.entropy(posterior).mean()),
                mean_posterior_at_true_class=float(posterior[np.arange(len(labels)), labels].mean()))


def prepare_data(prior, flags, data_dir, num_train, num_test, seed):
    """
    Draw the training and test images (one random stream, `seed`) and write training.pt,
    test.pt, class_posterior.pkl ({"train", "test": p(k | x) [N, 10]}) and data_flags.json
    (`flags`: those that define the prior, with the counts and the seed) into data_dir. A
    folder that holds them already (the same flags) is kept as it is.
    Returns {"train", "test": dict(check, summary)}.
    """
    record_run_flags(os.path.join(data_dir, "data_flags.json"), dict(flags, num_train=num_train, num_test=num_test,
                                                                     data_seed=seed), "out_dir")
    summary_path = os.path.join(data_dir, "data_summary.pkl")
    if os.path.isfile(summary_path) and os.path.isfile(os.path.join(data_dir, POSTERIOR_FILE)):
        return load_pickle(summary_path, "out_dir")
    rng = np.random.default_rng(seed)
    posteriors, summary = {}, {}
    for split, name, n in (("train", "training.pt", num_train), ("test", "test.pt", num_test)):
        images, labels, posterior, check = draw_split(prior, n, rng)
        save_torch((th.from_numpy(images), th.from_numpy(labels)), os.path.join(data_dir, name))
        posteriors[split] = posterior
        summary[split] = dict(check=check, summary=prior_summary(posterior, labels))
    save_pickle(posteriors, os.path.join(data_dir, POSTERIOR_FILE))
    save_pickle(summary, summary_path)  # last: its presence means the folder is complete
    return summary


def load_posterior(data_dir, sizes):
    """{"train", "test": p(k | x) [N, 10]} of a prepared folder, checked against the data's sizes."""
    posterior = load_pickle(os.path.join(data_dir, POSTERIOR_FILE), "out_dir")
    for split, n in sizes.items():
        if not isinstance(posterior, dict) or getattr(posterior.get(split), "shape", None) != (n, NUM_CLASSES):
            raise UserError(f"{os.path.join(data_dir, POSTERIOR_FILE)!r} does not belong to the images beside it; "
                            f"choose another --out_dir")
    return posterior


def exact_target(noise_type, alpha, posterior, clean_logits=None, model_noise="original"):
    """
    T(x) = sum_c p(c | x) P(noisy label | x, c) [N, 10], the softmax Theorem 2.1 predicts
    for labels of this noise: p(k | x) itself for clean labels ("clean").
    """
    if noise_type == "clean":
        return posterior
    n = len(posterior)
    target = np.zeros((n, NUM_CLASSES))
    for c in range(NUM_CLASSES):
        weight = posterior[:, c]
        if weight.any():
            target += weight[:, None] * noise_distribution(noise_type, alpha, np.full(n, c), clean_logits, model_noise)
    return target


# ---------------------------------------------------------------------------------------
# The report: every run against the exact target, beside the floor
# ---------------------------------------------------------------------------------------

def attach_targets(cfg, done, runs, data, posterior):
    """
    Give every run its exact target T on both splits (run["target"]). For model noise, T
    needs its sweep's clean model: q from its final checkpoint's logits, as the labels were
    made; the noise file's p is checked to be that formula at the true class.
    """
    clean_logits = {}
    for run in runs.values():
        row = run["row"]
        logits = {}
        if row["noise_type"] == "model":
            if run["sweep"] not in clean_logits:
                sweep_cfg = done[run["sweep"]]["cfg"]
                clean_logits[run["sweep"]] = {split: sweep.run_logits(sweep_cfg, tasks.CLEAN, x).cpu().numpy()
                                              for split, x in (("train", data.train_x), ("test", data.test_x))}
            logits = clean_logits[run["sweep"]]
            remade = noise_distribution("model", row["alpha"], data.train_y.cpu().numpy(), logits["train"],
                                        cfg["model_noise"])
            if np.abs(remade - run["p"]["train"]).max() > 1e-9:
                raise RuntimeError(f"{run['labels_file']}: its p is not the model-noise formula of the clean model")
        run["target"] = {split: exact_target(row["noise_type"], row["alpha"], posterior[split], logits.get(split),
                                             cfg["model_noise"]) for split in ("train", "test")}


def target_of(run, split):
    return run["target"][split]


def exact_group_result(group):
    """A seed-study group's numbers (seeds.group_result) plus those against the exact target."""
    result = seeds.group_result(group, paper={})
    runs = group["runs"]
    for split in ("train", "test"):
        result[f"tv_exact_{split}"] = seeds.tv_to(runs, split, target_of)
    result["constant_tv_exact_test"] = seeds.constant_tv(runs, target_of)
    result["tv_target_vs_p_test"] = scores.summary(np.mean(
        [scores.tv(r["target"]["test"], r["p"]["test"]) for r in runs], axis=0))
    result["excess_ce_test"] = scores.summary(np.mean(
        [scores.cross_entropy(r["target"]["test"], r["softmax"]["test"]) - scores.entropy(r["target"]["test"])
         for r in runs], axis=0))
    result["target_accuracy"] = float(np.mean([np.mean(r["target"]["test"].argmax(axis=1) == r["labels_test"])
                                               for r in runs]))
    if len(runs) > 1 and all(np.array_equal(runs[0]["target"]["test"], r["target"]["test"]) for r in runs[1:]):
        mean_softmax = np.mean([r["softmax"]["test"] for r in runs], axis=0)
        result["mean_over_seeds_tv_exact_test"] = scores.summary(scores.tv(mean_softmax, runs[0]["target"]["test"]))
    if group["shared"]:
        for label, run in zip(("independent", "shared"), group["shared"]):
            result["init"][label]["tv_exact_test"] = scores.summary(scores.tv(run["softmax"]["test"],
                                                                              run["target"]["test"]))
    return result


def compute_results(cfg, done):
    data = tasks.load_data(cfg["data_dir"])
    posterior = load_posterior(cfg["data_dir"], dict(train=len(data.train_y), test=len(data.test_y)))
    runs = seeds.load_runs(done, data)
    attach_targets(cfg, done, runs, data, posterior)
    labels_test = data.test_y.cpu().numpy()
    for run in runs.values():
        run["labels_test"] = labels_test
    groups = seeds.groups_of(done, runs)
    order = {t: i for i, t in enumerate((tasks.CLEAN, "uniform", "fix", "model"))}
    keys = sorted(groups, key=lambda k: (order.get(k[0], 9), -k[1]))
    return [exact_group_result(groups[k]) for k in keys]


def write_report(cfg, done, wall_time, data_summary):
    groups = compute_results(cfg, done)
    out = dict(config=cfg, wall_time_s=wall_time, data=data_summary, sweeps=seeds.sweep_times(done), groups=groups)
    path = os.path.join(cfg["out_dir"], "results.json")
    save_json(out, path)
    text = "\n".join(markdown(out)) + "\n"
    atomic_write(os.path.join(cfg["out_dir"], "results.md"), lambda f: f.write(text.encode()))
    print(text, flush=True)
    print(f"classification testbed finished in {wall_time / 60:.1f} min; results: {path}", flush=True)
    return out


def markdown(out):
    """The tables of results.md (docs/mnist.md shows them)."""
    cell = seeds.cell
    test = out["data"]["test"]
    s, c = test["summary"], test["check"]
    lines = [f"The prior's classes on the {out['config']['num_test']} held-out images: the Bayes classifier "
             f"(argmax p(k | x)) is right on {s['bayes_accuracy']:.3f}, its mean max p(k | x) is "
             f"{s['mean_max_posterior']:.3f}, max p(k | x) < 0.9 on {s['share_max_posterior_below_0_9']:.3f} of the "
             f"images, the mean entropy of p(k | x) is {s['mean_entropy']:.3f} nats (log 10 = 2.303). Storage: "
             f"{c['clipped_pixel_share']:.1e} of the pixels clipped; TV between p(k | x) of the unrounded and the "
             f"stored images {cell(c['tv_unrounded_vs_stored'])}.", "",
             "T = sum_c p(c | x) P(label | x, c), the exact target; p = P(label | x, c) at the true class c (what "
             "the noise files hold). Test accuracy on the clean classes, mean over seeds; every TV and CE on the "
             "held-out images: mean over images of the seeds' mean [95% interval over images]. Floor: the TV "
             "between two runs on independent draws of the same labels' p. Constant: the best softmax that ignores "
             "the image (T's mean over the training images).", "",
             "| labels | target ratio | correct-label ratio | test accuracy | accuracy of argmax T | TV(softmax, T) "
             "| floor | TV(mean of the seeds' softmax, T) | TV(constant, T) | CE(T, softmax) − H(T) | TV(softmax, p) "
             "| TV(T, p) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in out["groups"]:
        lines.append(f"| {figures.label_of(g['noise_type'])} | {g['target_ratio']:.3g} | "
                     f"{g['correct_label_ratio']:.3f} | {seeds.accuracy_cell(g['test_accuracy'])} | {g['target_accuracy']:.3f} | "
                     f"{cell(g['tv_exact_test'])} | {cell(g.get('floor_test'))} | "
                     f"{cell(g.get('mean_over_seeds_tv_exact_test'))} | {cell(g['constant_tv_exact_test'])} | "
                     f"{cell(g['excess_ce_test'])} | "
                     f"{cell(g.get('tv_test'))} | {cell(g['tv_target_vs_p_test'])} |")
    shared = [g for g in out["groups"] if "init" in g]
    if shared:
        lines += ["", "Model noise, seed 0, on the same labels: the run from initial weights and a batch order of its "
                  "own (independent) or from the clean model's (shared).", "",
                  "| target ratio | init | test accuracy | TV(softmax, T) | TV(softmax, p) | TV between the two runs |",
                  "|---|---|---|---|---|---|"]
        for g in shared:
            for label in ("independent", "shared"):
                e = g["init"][label]
                between = cell(g["init"]["between_test"]) if label == "independent" else ""
                lines.append(f"| {g['target_ratio']:.3g} | {label} | {e['test_accuracy']:.3f} | "
                             f"{cell(e['tv_exact_test'])} | {cell(e['tv_test'])} | {between} |")
    return lines
