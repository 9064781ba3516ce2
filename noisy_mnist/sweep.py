"""
The paper's MNIST experiment end to end: the clean model; then, for each noise type and
level, noisy labels, a model trained on them, and its analysis; then a results table and
figures drawn from it. Everything of a sweep lives under out_dir:

    labels/{type}_noisy_label_{alpha}.pkl   the drawn labels (log.txt: their statistics)
    checkpoints/{run}/                      model*.pt, opt*.pt
    logs/{run}/                             log.txt, progress.csv, TensorBoard events,
                                            train_{run}.json, analysis_{run}.json / .png
    results.json, results.csv, figures/*.png

A run is "clean" or the noisy-label file's stem. A rerun skips every stage whose output
exists and continues a killed training from its latest checkpoint. Independent runs go
to `workers` processes: on a small CPU two single-threaded trainings get more done than
one two-threaded training (the layers are too small to keep two threads busy).
"""

import csv
import io
import json
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from types import SimpleNamespace

import torch as th

from guided_diffusion import dist_util
from guided_diffusion.cli import UserError, require_file
from guided_diffusion.io_util import atomic_write, save_json

from . import figures, tasks
from .data import load_split, to_inputs
from .noise import NOISE_TYPES, noise_file_name

COLUMNS = ("noise_type", "alpha", "correct_label_ratio", "test_accuracy", "clean_train_accuracy",
           "ce_average", "ce_minimum", "tv_mean")


def sweep_defaults():
    return dict(
        data_dir="data/mnist",
        out_dir="logs/mnist_sweep",
        max_step=20000,
        save_interval=2000,
        log_interval=10,
        noise_types="uniform,fix,model",
        levels="",  # target correct-label ratios, e.g. 0.9,0.5; "": the paper's eight per type
        seed=0,
        workers=2,  # training processes at a time; they share the CPU cores
        eval_batch_size=2000,
        paper_results=figures.PAPER_RESULTS,
    )


def stage_args(cfg, **overrides):
    """The flags of one mnist_classification.py stage within the sweep."""
    args = tasks.mnist_defaults()
    args.update({k: cfg[k] for k in ("data_dir", "max_step", "save_interval", "log_interval", "seed",
                                     "eval_batch_size")})
    args.update(overrides)
    return SimpleNamespace(**args)


def final_checkpoint(cfg):
    return f"model{cfg['max_step']:06d}.pt"


def clean_dir(cfg):
    return os.path.join(cfg["out_dir"], "checkpoints", tasks.CLEAN)


def train_and_analyse(cfg, noise_label_file, console):
    """Train the run of noise_label_file ("": clean labels) and analyse it; returns the analysis."""
    name = tasks.labels_name(noise_label_file)
    where = dict(log_dir=os.path.join(cfg["out_dir"], "logs", name), noise_label_file=noise_label_file,
                 model_save_dir=os.path.join(cfg["out_dir"], "checkpoints", name))
    if not os.path.isfile(os.path.join(where["model_save_dir"], final_checkpoint(cfg))):
        task = "train_on_noisy_label" if noise_label_file else "train"
        tasks.run(stage_args(cfg, task=task, resume_checkpoint="latest", **where), console)
    analysis_path = os.path.join(where["log_dir"], f"analysis_{name}.json")
    if os.path.isfile(analysis_path):
        with open(analysis_path) as f:
            analysis = json.load(f)
        if analysis["step"] == cfg["max_step"]:
            return analysis
    return tasks.run(stage_args(cfg, task="predict_analysis", resume_checkpoint=final_checkpoint(cfg), **where),
                     console)


def clean_run(cfg, console):
    start = time.time()
    row = dict(noise_type=tasks.CLEAN, alpha=1.0, **train_and_analyse(cfg, "", console))
    _report(row, start)
    return row


def noisy_run(cfg, noise_type, alpha, console):
    """Noisy labels of one type and alpha, training on them, analysis; returns the results row."""
    start = time.time()
    labels_dir = os.path.join(cfg["out_dir"], "labels")
    labels_path = os.path.join(labels_dir, noise_file_name(noise_type, alpha))
    if not os.path.isfile(labels_path):
        tasks.run(stage_args(cfg, task="generate_noisy_label", noise_type=noise_type, alpha=alpha,
                             log_dir=labels_dir, model_save_dir=clean_dir(cfg),
                             resume_checkpoint=final_checkpoint(cfg)), console)
    row = dict(noise_type=noise_type, alpha=alpha, **train_and_analyse(cfg, labels_path, console))
    _report(row, start)
    return row


def _report(row, start):
    print(f"{row['labels']}: correct-label ratio {row['correct_label_ratio']:.4f}, test accuracy "
          f"{row['test_accuracy']:.4f}, CE {row['ce_average']:.4f} (minimum {row['ce_minimum']:.4f}), "
          f"TV {row['tv_mean']:.4f} [{time.time() - start:.0f} s]", flush=True)


def mean_true_class_probability(cfg):
    """Mean over training images of q[c], the clean model's softmax at the true class."""
    args = stage_args(cfg, resume_checkpoint=final_checkpoint(cfg))
    model, _ = tasks.load_trained_model(args, clean_dir(cfg), "the clean run did not finish")
    images, labels = load_split(cfg["data_dir"], "train")
    q = tasks.model_softmax(model, to_inputs(images, dist_util.dev()), cfg["eval_batch_size"])
    return q[th.arange(len(labels)), labels.to(q.device)].mean().item()


def target_levels(cfg):
    """{noise type: target correct-label ratios}: --levels, or the paper's measured ratios."""
    types = [t for t in cfg["noise_types"].split(",") if t]
    for t in types:
        if t not in NOISE_TYPES:
            raise UserError(f"--noise_types: {t!r} is not one of: {', '.join(NOISE_TYPES)}")
    if cfg["levels"]:
        try:
            levels = [float(x) for x in cfg["levels"].split(",")]
        except ValueError:
            raise UserError(f"--levels {cfg['levels']!r} should be ratios, e.g. 0.9,0.5") from None
        if not all(0.0 <= x <= 1.0 for x in levels):
            raise UserError(f"--levels {cfg['levels']!r}: every ratio must be in [0, 1]")
        return {t: list(dict.fromkeys(levels)) for t in types}
    paper = figures.load_paper(cfg["paper_results"])
    return {t: paper[t]["correct_label_ratio"] for t in types}


def _init_worker(threads):
    th.set_num_threads(threads)


def _run_now(fn, *args):
    """A finished Future of fn(*args): the one-process path looks like the pool's."""
    future = Future()
    future.set_result(fn(*args))
    return future


def run_sweep(cfg):
    start = time.time()
    if cfg["workers"] < 1:
        raise UserError(f"--workers {cfg['workers']} should be at least 1")
    require_file(cfg["paper_results"], "paper_results")
    levels = target_levels(cfg)
    for split in ("train", "test"):
        load_split(cfg["data_dir"], split)  # a data mistake ends here, not in a worker
    pool, console, own_threads = None, cfg["workers"] == 1, th.get_num_threads()
    if not console:
        threads = max(1, len(os.sched_getaffinity(0)) // cfg["workers"])
        th.set_num_threads(threads)  # this process also evaluates the clean model meanwhile
        pool = ProcessPoolExecutor(cfg["workers"], mp_context=get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads,))
    submit = pool.submit if pool else _run_now
    try:
        jobs = [submit(clean_run, cfg, console)]
        for noise_type in levels:
            if noise_type != "model":  # these need no clean model: they start at once
                jobs += [submit(noisy_run, cfg, noise_type, ratio, console) for ratio in levels[noise_type]]
        if "model" in levels:
            jobs[0].result()
            # E[correct-label ratio] = alpha * mean q[c], so this alpha lands near the target.
            mean_q = mean_true_class_probability(cfg)
            print(f"clean model: mean softmax at the true class {mean_q:.4f}", flush=True)
            alphas = dict.fromkeys(min(1.0, round(ratio / mean_q, 4)) for ratio in levels["model"])
            jobs += [submit(noisy_run, cfg, "model", alpha, console) for alpha in alphas]
        rows = [job.result() for job in jobs]
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
            th.set_num_threads(own_threads)
    wall_time = time.time() - start
    paths = write_results(cfg, rows, wall_time)
    print(f"sweep of {len(rows)} runs finished in {wall_time / 60:.1f} min; results: {', '.join(paths)}")
    return rows


def write_results(cfg, rows, wall_time):
    """results.json (every field, per-class arrays included), results.csv (COLUMNS), figures."""
    results_path = os.path.join(cfg["out_dir"], "results.json")
    save_json(dict(config=cfg, wall_time_s=wall_time, columns=COLUMNS, rows=rows), results_path)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([[row[c] for c in COLUMNS] for row in rows])
    csv_path = os.path.join(cfg["out_dir"], "results.csv")
    atomic_write(csv_path, lambda f: f.write(table.getvalue().encode()))
    figure_paths = figures.draw_figures(results_path, os.path.join(cfg["out_dir"], "figures"),
                                        cfg["paper_results"])
    return [results_path, csv_path, *figure_paths]
