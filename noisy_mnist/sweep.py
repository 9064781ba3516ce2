"""
The paper's MNIST experiment end to end: the clean model; then, for each noise type and
level, noisy labels, a model trained on them, and its analysis; then a results table and
figures drawn from it. Everything of a sweep lives under out_dir:

    sweep_flags.json                        the flags that decide the runs (a rerun must keep them)
    labels/{type}_noisy_label_{alpha}.pkl   the drawn labels (log.txt: their statistics)
    checkpoints/{run}/                      model*.pt of the run (SimpleCNN's format)
    checkpoints/stacks/{stack}/             model*.pt, opt*.pt of a stack (what it resumes from)
    logs/{run}/                             train_{run}.json, analysis_{run}.json / .png, log.txt
    logs/stacks/{stack}/                    the stack's training log, TensorBoard events
    results.json, results.csv, figures/*.png

A run is "clean" or the noisy-label file's stem. All runs see the same images, so up to
`stack` of them train together as one StackedCNN (the same computation, and much faster on
a CPU than one small network at a time): each from its own initial weights (--init
independent: a seed per run, tasks.run_seed; --init shared: all from --seed, as the clean
model), all in the batch order of the stack's first run. The clean model never shares a
stack with a model-noise run. Stacks go to `workers` single-threaded processes, the same
number of runs to each; the few runs left over (fewer than `workers`) train last as one
stack on every core. A rerun skips every stage whose output exists and continues a killed
stack from its latest checkpoint (keep --stack and --workers for that: they decide which
runs share a stack); it must keep the flags recorded in sweep_flags.json, which decide the
labels and the runs. Each noise file is drawn from a random stream of its own (seed, type,
alpha, label draw), and model-noise alphas solve mean p[c](alpha) = target ratio for the
formula in use.
"""

import contextlib
import csv
import hashlib
import io
import json
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from multiprocessing import get_context
from types import SimpleNamespace

import torch as th

from runkit import (
    AT_LEAST_ONE,
    FORWARDED_STOP,
    NON_NEGATIVE,
    POSITIVE,
    UserError,
    check_choice,
    check_flags,
    comma_list,
    dist_util,
    ignore_stop_signals,
    require_file,
    stop_requested,
    stop_signals,
)
from runkit.fileio import atomic_write, read_json, record_run_flags, save_json

from . import figures, tasks
from .data import load_split, to_inputs
from .model import create_model, load_weights, predict_logits
from .noise import NOISE_TYPES, alpha_for_ratio, expected_correct_ratio, noise_file_name

COLUMNS = ("noise_type", "alpha", "correct_label_ratio", "test_accuracy", "clean_train_accuracy",
           "ce_average", "ce_minimum", "tv_mean", "tv_mean_test")


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
        model_noise="original",  # the formula of model noise: the original code's, or "precise"
        init="independent",  # the noisy-label runs' initial weights and batch order (tasks.INIT_MODES)
        label_draw=0,  # another independent draw of the same labels' p (1, 2, ...): the second run of a floor
        lr=1e-4,
        batch_size=128,
        stack=5,  # runs trained together as one stacked network (1: one at a time)
        workers=2,  # stacks training at a time, in processes that share the CPU cores
        eval_batch_size=2000,
        paper_results=figures.PAPER_RESULTS,
        figures=True,  # False: results.json and .csv only, no figures (a study draws its own)
    )


SWEEP_RULES = dict(max_step=AT_LEAST_ONE, save_interval=AT_LEAST_ONE, log_interval=AT_LEAST_ONE, seed=NON_NEGATIVE,
                   stack=AT_LEAST_ONE, workers=AT_LEAST_ONE, eval_batch_size=AT_LEAST_ONE, label_draw=NON_NEGATIVE,
                   lr=POSITIVE, batch_size=AT_LEAST_ONE)


def stage_args(cfg, **overrides):
    """The flags of one mnist_classification.py stage within the sweep."""
    args = tasks.mnist_defaults()
    args.update({k: cfg[k] for k in ("data_dir", "max_step", "save_interval", "log_interval", "seed",
                                     "eval_batch_size", "model_noise", "init", "label_draw", "lr", "batch_size")})
    args.update(overrides)
    return SimpleNamespace(**args)


def final_checkpoint(cfg):
    return f"model{cfg['max_step']:06d}.pt"


def clean_dir(cfg):
    return os.path.join(cfg["out_dir"], "checkpoints", tasks.CLEAN)


def labels_path(cfg, noise_type, alpha):
    return os.path.join(cfg["out_dir"], "labels", noise_file_name(noise_type, alpha))


def make_labels(cfg, noise_type, alpha, console):
    """Draw the noisy labels of one type and alpha (once); returns the run spec."""
    path = labels_path(cfg, noise_type, alpha)
    if not os.path.isfile(path):
        tasks.run(stage_args(cfg, task="generate_noisy_label", noise_type=noise_type, alpha=alpha,
                             log_dir=os.path.dirname(path), model_save_dir=clean_dir(cfg),
                             resume_checkpoint=final_checkpoint(cfg)), console)
    return (noise_type, alpha, path)


def run_dirs(cfg, labels_file):
    name = tasks.labels_name(labels_file)
    return dict(log_dir=os.path.join(cfg["out_dir"], "logs", name),
                model_save_dir=os.path.join(cfg["out_dir"], "checkpoints", name))


def train_stack(cfg, specs, console, threads=0):
    """
    Train the runs of specs [(noise type, alpha, labels file ("": clean))] as one stack
    unless all have their final checkpoint, then analyse each; returns their results rows.
    threads: the torch threads to train with (0: as set).
    """
    own_threads = th.get_num_threads()
    th.set_num_threads(threads or own_threads)
    try:
        return _train_stack(cfg, specs, console)
    finally:
        th.set_num_threads(own_threads)


def _train_stack(cfg, specs, console):
    start = time.time()
    runs = [SimpleNamespace(labels_file=path, **run_dirs(cfg, path)) for _, _, path in specs]
    final_logits = None
    if not all(os.path.isfile(os.path.join(run.model_save_dir, final_checkpoint(cfg))) for run in runs):
        names = [tasks.labels_name(run.labels_file) for run in runs]
        stack = f"{names[0]}+{len(names) - 1}-{hashlib.sha1(' '.join(names).encode()).hexdigest()[:8]}"
        args = stage_args(cfg, task="train_stack", model_save_dir=os.path.join(cfg["out_dir"], "checkpoints",
                                                                                "stacks", stack),
                          log_dir=os.path.join(cfg["out_dir"], "logs", "stacks", stack))
        data = tasks.load_data(cfg["data_dir"])
        for run in runs:  # (labels file, labels, p), kept for the analysis
            run.noise = tasks.analysis_targets(analysis_args(cfg, run), data)
            run.targets = run.noise[1]
        final_logits = tasks.fit_stack(args, runs, data, console)
    if final_logits is not None:  # analyse from the logits of the final evaluation: no second pass
        rows = [dict(noise_type=t, alpha=a, **analyse_logits(cfg, run, data, logits, console))
                for (t, a, _), run, logits in zip(specs, runs, final_logits)]
    else:
        rows = [dict(noise_type=t, alpha=a, **analyse(cfg, run, console)) for (t, a, _), run in zip(specs, runs)]
    for row in rows:
        _report(row, start)
    return rows


def analysis_args(cfg, run):
    return stage_args(cfg, task="predict_analysis", resume_checkpoint=final_checkpoint(cfg),
                      noise_label_file=run.labels_file, log_dir=run.log_dir, model_save_dir=run.model_save_dir)


def analyse(cfg, run, console):
    """predict_analysis of a run's final checkpoint (once)."""
    name = tasks.labels_name(run.labels_file)
    analysis_path = os.path.join(run.log_dir, f"analysis_{name}.json")
    if os.path.isfile(analysis_path):
        with open(analysis_path) as f:
            analysis = json.load(f)
        if analysis["step"] == cfg["max_step"]:
            return analysis
    args = analysis_args(cfg, run)
    return tasks.predict_analysis(args, args.model_save_dir, console, draw=cfg["figures"])


def analyse_logits(cfg, run, data, logits, console):
    """
    predict_analysis of a run's final checkpoint from the stack's logits of it, which equal
    the checkpoint's own up to float rounding (tests/test_mnist_pipeline.py).
    """
    checkpoint = os.path.join(run.model_save_dir, final_checkpoint(cfg))
    return tasks.analyse_logits(analysis_args(cfg, run), data, *run.noise, checkpoint, console, *logits,
                                draw=cfg["figures"])


def _report(row, start):
    print(f"{row['labels']}: correct-label ratio {row['correct_label_ratio']:.4f}, test accuracy "
          f"{row['test_accuracy']:.4f}, CE {row['ce_average']:.4f} (minimum {row['ce_minimum']:.4f}), "
          f"TV {row['tv_mean']:.4f} [stack done in {time.time() - start:.0f} s]", flush=True)


def split_into_stacks(specs, stack, workers=1):
    """
    (stacks, tail): consecutive stacks of specs that keep `workers` processes equally busy,
    each worker's len // workers runs in ceil(that / stack) stacks of near-equal size, in
    rounds of one stack per worker; the tail is the len % workers runs left over, to train
    last on every core. With one worker: ceil(len / stack) stacks and no tail.
    """
    per_worker = len(specs) // workers
    count = -(-per_worker // stack)
    bounds = [round(i * per_worker / count) for i in range(count + 1)] if count else [0]
    stacks, start = [], 0
    for size in (b - a for a, b in zip(bounds, bounds[1:])):
        for _ in range(workers):
            stacks.append(specs[start:start + size])
            start += size
    return stacks, specs[start:]


def model_noise_alphas(cfg, ratios):
    """
    {alpha: target ratio} for model noise: each alpha solves mean p[c](alpha) = target for the
    formula in use (--model_noise) on the clean model's logits, by bisection.
    """
    args = stage_args(cfg, resume_checkpoint=final_checkpoint(cfg))
    model, _ = tasks.load_trained_model(args, clean_dir(cfg), "the clean run did not finish")
    images, labels = load_split(cfg["data_dir"], "train")
    logits = predict_logits(model, to_inputs(images, dist_util.dev()), cfg["eval_batch_size"]).cpu().numpy()
    labels = labels.numpy()
    alphas = {}
    for ratio in ratios:
        alpha = alpha_for_ratio(ratio, "model", labels, logits, cfg["model_noise"])
        expected = expected_correct_ratio("model", alpha, labels, logits, cfg["model_noise"])
        print(f"model noise ({cfg['model_noise']} formula): target ratio {ratio} -> alpha {alpha} "
              f"(expected ratio {expected:.4f})", flush=True)
        alphas.setdefault(alpha, ratio)
    return alphas


def target_levels(cfg):
    """{noise type: target correct-label ratios}: --levels, or the paper's measured ratios."""
    types = comma_list(cfg["noise_types"], "noise_types", choices=tuple(NOISE_TYPES))
    if not types:
        raise UserError("--noise_types is empty; give one or more of: " + ", ".join(NOISE_TYPES))
    if cfg["levels"]:
        levels = comma_list(cfg["levels"], "levels", float, example="0.9,0.5")
        if not all(0.0 <= x <= 1.0 for x in levels):
            raise UserError(f"--levels {cfg['levels']!r}: every ratio must be in [0, 1]")
        return {t: list(dict.fromkeys(levels)) for t in types}
    paper = figures.load_paper(cfg["paper_results"])
    return {t: paper[t]["correct_label_ratio"] for t in types}


# The flags that decide a sweep's labels and runs: a rerun into the same --out_dir must keep
# them. (--max_step may grow: the stacks then train on. --stack and --workers decide which
# runs share a stack: changed, a killed stack starts afresh instead of resuming.)
RECORDED_FLAGS = ("noise_types", "levels", "seed", "model_noise", "init", "label_draw")
# What a sweep_flags.json written before --init and --label_draw existed means.
EARLIER_SWEEPS = dict(init="shared", label_draw=0)


def record_sweep(cfg):
    """Write {out_dir}/sweep_flags.json, or refuse a rerun whose flags contradict it."""
    path = os.path.join(cfg["out_dir"], "sweep_flags.json")
    if not os.path.exists(path) and os.path.isdir(os.path.join(cfg["out_dir"], "labels")):
        raise UserError(f"--out_dir {cfg['out_dir']!r} holds a sweep without sweep_flags.json, made by an "
                        f"earlier version whose labels were drawn differently; choose another --out_dir")
    if os.path.isfile(path):  # an earlier sweep's record: its runs shared the clean model's seed
        saved = read_json(path, "out_dir")
        if isinstance(saved, dict) and not set(EARLIER_SWEEPS) <= set(saved):
            save_json({**EARLIER_SWEEPS, **saved}, path)
    flags = {k: cfg[k] for k in RECORDED_FLAGS}
    flags["data_dir"] = os.path.realpath(cfg["data_dir"])
    record_run_flags(path, flags, "out_dir")


def _init_worker(threads):
    th.set_num_threads(threads)
    ignore_stop_signals()  # between stacks; a stack's TrainLoop listens while it trains


def _run_now(fn, *args):
    """A finished Future of fn(*args): the one-process path looks like the pool's."""
    future = Future()
    future.set_result(fn(*args))
    return future


def wait_for(job, pool):
    """
    The result of a job. A stop signal to this process is passed on to the workers, whose
    stacks then save and stop (Preempted comes back through their jobs).
    """
    while True:
        try:
            return job.result(timeout=1.0)
        except FuturesTimeout:
            if stop_requested() and pool is not None:  # again each second: a worker may be between stacks
                for process in list(pool._processes.values()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, FORWARDED_STOP)


def run_sweep(cfg):
    """The whole sweep; SIGTERM / SIGUSR1 stop it with every stack saved (Preempted, exit status 75)."""
    with stop_signals():
        return _run_sweep(cfg)


def _run_sweep(cfg):
    start = time.time()
    check_flags(SimpleNamespace(**cfg), SWEEP_RULES)  # as the parser does (tests call this directly)
    check_choice(cfg["init"], tasks.INIT_MODES, "init")
    require_file(cfg["paper_results"], "paper_results")
    levels = target_levels(cfg)
    for split in ("train", "test"):
        load_split(cfg["data_dir"], split)  # a data mistake ends here, not in a worker
    record_sweep(cfg)
    pool, console, own_threads = None, cfg["workers"] == 1, th.get_num_threads()
    if not console:
        threads = max(1, len(os.sched_getaffinity(0)) // cfg["workers"])
        th.set_num_threads(threads)  # this process also draws the model-noise labels meanwhile
        pool = ProcessPoolExecutor(cfg["workers"], mp_context=get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads,))
    submit = pool.submit if pool else _run_now

    def with_labels(group):  # drawn just before the stack is submitted, while earlier stacks train
        return [spec + ("",) if spec[0] == tasks.CLEAN else make_labels(cfg, *spec, console) for spec in group]

    try:
        # The clean run and the runs that need no clean model start at once.
        first = [(tasks.CLEAN, 1.0)] + [(t, ratio) for t in levels if t != "model" for ratio in levels[t]]
        rank = {spec: i for i, spec in enumerate(first)}  # the order of the results rows
        targets = {spec: spec[1] for spec in first}  # the target correct-label ratio of each run
        stacks, tail = split_into_stacks(first, cfg["stack"], cfg["workers"])
        if not stacks:  # the clean run alone: it still trains first
            stacks, tail = [tail], []
        jobs = [submit(train_stack, cfg, with_labels(group), console) for group in stacks]
        if "model" in levels:
            wait_for(jobs[0], pool)  # the stack with the clean run
            alphas = model_noise_alphas(cfg, levels["model"])
            model_runs = [("model", alpha) for alpha in alphas]
            for spec in model_runs:
                rank[spec] = len(rank)
                targets[spec] = alphas[spec[1]]
            model_stacks, model_tail = split_into_stacks(model_runs, cfg["stack"], cfg["workers"])
            jobs += [submit(train_stack, cfg, with_labels(group), console) for group in model_stacks]
            tail += model_tail
        if tail:  # submitted last, on every core: when it starts, the other stacks are (nearly) done
            jobs.append(submit(train_stack, cfg, with_labels(tail), console, len(os.sched_getaffinity(0))))
        rows = [row for job in jobs for row in wait_for(job, pool)]
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
            th.set_num_threads(own_threads)
    rows.sort(key=lambda row: rank[row["noise_type"], row["alpha"]])  # the tail's rows back in place
    for row in rows:
        row["target_ratio"] = targets[row["noise_type"], row["alpha"]]
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
    writer.writerows([["" if row.get(c) is None else row[c] for c in COLUMNS] for row in rows])
    csv_path = os.path.join(cfg["out_dir"], "results.csv")
    atomic_write(csv_path, lambda f: f.write(table.getvalue().encode()))
    figure_paths = figures.draw_figures(results_path, os.path.join(cfg["out_dir"], "figures"),
                                        cfg["paper_results"]) if cfg["figures"] else []
    return [results_path, csv_path, *figure_paths]


def run_logits(cfg, run_name, inputs):
    """The float32 logits [N, 10] of a run's final checkpoint on inputs [N, 1, 28, 28] (as the stages compute them)."""
    args = stage_args(cfg)
    path = require_file(os.path.join(cfg["out_dir"], "checkpoints", run_name, final_checkpoint(cfg)), "out_dir",
                        "the sweep did not finish: rerun it")
    model = load_weights(create_model(args.input_dim, args.hidden_dims, dist_util.dev()), path, "out_dir")
    return predict_logits(model, inputs, cfg["eval_batch_size"])


def run_softmax(cfg, run_name, inputs):
    """The softmax (float64 numpy [N, 10]) of a run's final checkpoint on inputs [N, 1, 28, 28]."""
    return th.softmax(run_logits(cfg, run_name, inputs).double(), dim=1).cpu().numpy()
