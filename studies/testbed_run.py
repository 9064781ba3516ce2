"""
The testbed study's runner (scripts/testbed_study.py): the trainings (by the stage scripts
themselves, in waves), then every checkpoint of every run scored against the exact posterior
by testbed.scoring, and the reference lines (bilinear, N exact posterior samples, N
ideal-DDPM-SR samples, and the PCA of both). Every score is cached as JSON, so a rerun
continues.
"""

import os
import sys
import time

import numpy as np

from imaging import to_255
from runkit import logger
from runkit.fileio import cached_json, load_model_weights, load_pickle, save_pickle
from runkit.run import run_children
from runkit.training import list_checkpoints, parse_resume_step_from_filename
from sr_var.data import flatten_data_info, load_all_images, load_data_info, resolve_images
from sr_var.kinds import KINDS, MEAN, PC, VAR
from sr_var.networks import MEAN_FLAG_NAMES
from sr_var.verification import ddpm_ground_truth
from testbed import ExactMeanModel, load_testbed, quantize
from testbed.scoring import (
    ExactScorer,
    mean_scores,
    pc_scores,
    sample_moments,
    sample_pcs_chw,
    summarize,
    var_scores,
)


def study_images(data_dir, large_size, small_size):
    """The study's held-out images (the testbed folder's evaluation set) as an ExactScorer."""
    testbed = load_testbed(os.path.join(data_dir, "testbed.json"), "out_dir")
    images = flatten_data_info(load_data_info(os.path.join(data_dir, "to_sample_data_info.pkl")))
    names = [n for n, _ in images]
    uint8 = load_all_images(resolve_images(os.path.join(data_dir, "images"), names), large_size)
    return ExactScorer(testbed, uint8, names, [k for _, k in images], small_size)


def reference_indices(images, count):
    """The `count` study images of the ideal-DDPM-SR reference, spread over the list (which is ordered by scale)."""
    return np.linspace(0, len(images.names) - 1, count).round().astype(int)


def pc_reference_lines(out_dir, images, num_samples, num_pcs, seed, count):
    """
    The PCA of the N exact posterior samples (the same draws as reference_lines) and of the
    ideal-DDPM-SR samples of the `count` reference images.
    """
    return cached_json(os.path.join(out_dir, f"pc_references_{num_pcs}.json"),
                       lambda: _pc_reference_lines(out_dir, images, num_samples, num_pcs, seed, count))


def _pc_reference_lines(out_dir, images, num_samples, num_pcs, seed, count):
    tb, ks, labels = images.testbed, images.ks, images.labels
    rng = np.random.default_rng(seed + 1)
    mc = np.stack([sample_pcs_chw(quantize(tb.sample_posterior(yi, num_samples, rng)).astype(np.float64), num_pcs)
                   for yi in images.y])
    refs = {"mc_floor": {**summarize(pc_scores(images, None, mc, None), ks, labels), "num_samples": num_samples}}
    idx = reference_indices(images, count)
    ddpm = np.stack([sample_pcs_chw(np.moveaxis(ddpm_ground_truth(os.path.join(out_dir, "ideal_ddpm"), images.names[i],
                                                               num_samples)[2], -1, -3), num_pcs) for i in idx])
    refs["ideal_ddpm"] = {**summarize(pc_scores(images, None, ddpm, None, idx), [ks[i] for i in idx], labels),
                          "num_images": int(len(idx)), "num_samples": num_samples}
    return refs


def reference_lines(out_dir, data_dir, images, reference_images, num_samples, seed):
    """Bilinear, num_samples exact posterior samples, and num_samples ideal-DDPM-SR samples (a subset)."""
    return cached_json(os.path.join(out_dir, "references.json"),
                       lambda: _reference_lines(out_dir, data_dir, images, reference_images, num_samples, seed))


def _reference_lines(out_dir, data_dir, images, reference_images, num_samples, seed):
    tb, ks, labels = images.testbed, images.ks, images.labels
    bilinear = to_255(images.low_res_up.double().numpy())
    refs = {"bilinear": summarize(mean_scores(images, bilinear))}
    # the calibration a perfect model would show: fresh samples within k exact std of the exact mean
    refs["exact"] = summarize(var_scores(images, images.exact_mean, images.exact_var))
    # N exact posterior samples, stored as uint8 like the teacher's
    rng = np.random.default_rng(seed + 1)
    moments = [sample_moments(quantize(tb.sample_posterior(yi, num_samples, rng)).astype(np.float64))
               for yi in images.y]
    mc_mean, mc_var = (np.stack(m) for m in zip(*moments))
    refs["mc_floor"] = {"mean": summarize(mean_scores(images, mc_mean)),
                        "var": summarize(var_scores(images, mc_mean, mc_var), ks, labels), "num_samples": num_samples}
    refs["ideal_ddpm"] = _ideal_ddpm_reference(out_dir, data_dir, images, reference_images, num_samples, seed)
    return refs


def _ideal_ddpm_reference(out_dir, data_dir, images, count, num_samples, seed):
    """ddpm_sr_sample.py with the ideal teacher (250 steps, the paper's protocol) on the first `count` images."""
    idx = reference_indices(images, count)
    subset = {}
    for i in idx:
        subset.setdefault(f"gsm{images.ks[i]}", {"y": images.ks[i], "file_names": []})["file_names"].append(
            images.names[i])
    info_path = os.path.join(out_dir, "reference_images.pkl")
    save_pickle(subset, info_path)
    p = images.testbed.params
    args = ["ddpm_sr_sample.py", "--large_size", str(p.large_size),
            "--small_size", str(p.small_size), "--class_cond", "True", "--learn_sigma", "True", "--diffusion_steps",
            "1000", "--noise_schedule", "linear", "--timestep_respacing", "250", "--data_dir",
            os.path.join(data_dir, "images"), "--model_path", os.path.join(data_dir, "testbed.json"),
            "--to_sample_images_dict_path", info_path, "--num_samples_per_image", str(num_samples),
            "--batch_size", str(min(num_samples, 100)), "--output_dir", os.path.join(out_dir, "ideal_ddpm"),
            "--seed", str(seed)]
    logger.log(f"ideal DDPM-SR reference: {count} images x {num_samples} samples x 250 steps")
    start = time.time()
    stage(args, ROOT)
    seconds_per_image = (time.time() - start) / count
    means, variances = [], []
    for i in idx:  # the verification's own samples, HWC -> CHW like the exact moments here
        _, _, samples = ddpm_ground_truth(os.path.join(out_dir, "ideal_ddpm"), images.names[i], num_samples)
        mean, var = sample_moments(np.moveaxis(samples, -1, 1))
        means.append(mean)
        variances.append(var)
    sub = images.subset(idx)
    return {"mean": summarize(mean_scores(sub, np.stack(means))),
            "var": summarize(var_scores(sub, np.stack(means), np.stack(variances)), sub.ks, sub.labels),
            "num_images": int(len(idx)), "num_samples": num_samples, "seconds_per_image": seconds_per_image}


def model_outputs(run_dir_logs, checkpoint, kind, images, mean_model=None, model=None):
    """A model's outputs on every study image in [0, 255] units (kind.in_255), and the model."""
    if model is None:
        args = load_pickle(os.path.join(run_dir_logs, kind.args_pickle))
        model = kind.build(args)
        load_model_weights(model, checkpoint, "model_path", MEAN_FLAG_NAMES)
        model.eval()
    outs = [kind.in_255(kind.predict(model, images.low_res_up[i:i + 50], mean_model)[0])
            for i in range(0, len(images.low_res_up), 50)]
    if isinstance(outs[0], tuple):  # (directions [N, K, C, H, W], variances [N, K])
        return tuple(np.concatenate(parts) for parts in zip(*outs)), model
    return np.concatenate(outs), model


# kind name -> the summary of a kind's outputs against the exact posterior
SCORERS = {
    "mean": lambda images, mean, out: summarize(mean_scores(images, out)),
    "var": lambda images, mean, out: summarize(var_scores(images, mean, out), images.ks, images.labels),
    "pc": lambda images, mean, out: summarize(pc_scores(images, mean, *out), images.ks, images.labels),
}


def forward_seconds(out_dir, images, steps):
    """Seconds per image of one forward pass of the final mean model, and of the variance and PC models with it."""
    def timed(fn):
        fn()  # warm-up
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) / len(images.low_res_up)

    mean_ckpt = os.path.join(out_dir, "checkpoints", "mean", f"model{steps:06d}.pt")
    _, mean_model = model_outputs(os.path.join(out_dir, "logs", "mean"), mean_ckpt, MEAN, images)
    var_ckpt = os.path.join(out_dir, "checkpoints", "var", f"model{steps:06d}.pt")
    mean_s = timed(lambda: model_outputs(os.path.join(out_dir, "logs", "mean"), mean_ckpt, MEAN, images,
                                         model=mean_model))
    _, var_model = model_outputs(os.path.join(out_dir, "logs", "var"), var_ckpt, VAR, images, mean_model)
    var_s = timed(lambda: model_outputs(os.path.join(out_dir, "logs", "var"), var_ckpt, VAR, images, mean_model,
                                   model=var_model))
    pc_ckpt = os.path.join(out_dir, "checkpoints", "pc", f"model{steps:06d}.pt")
    _, pc_model = model_outputs(os.path.join(out_dir, "logs", "pc"), pc_ckpt, PC, images, mean_model)
    pc_s = timed(lambda: model_outputs(os.path.join(out_dir, "logs", "pc"), pc_ckpt, PC, images, mean_model,
                                  model=pc_model))
    return mean_s, var_s, pc_s


def score_checkpoints(out_dir, images, runs, steps):
    """Every checkpoint of every run, scored (cached in {out_dir}/scores/{run}/{step}.json)."""
    scores = {}
    final_mean_model, final_mean = None, None
    for run in runs:
        kind = KINDS[run.split("_")[0]]  # runs are named {kind}[_variant] (testbed_report.run_kind)
        ckpt_dir, log_dir = os.path.join(out_dir, "checkpoints", run), os.path.join(out_dir, "logs", run)
        if kind.needs_mean_model and final_mean_model is None:
            final_mean, final_mean_model = model_outputs(os.path.join(out_dir, "logs", "mean"),
                                                    os.path.join(out_dir, "checkpoints", "mean",
                                                                 f"model{steps:06d}.pt"), MEAN, images)
        run_mean, run_mean_model = final_mean, final_mean_model
        if run.endswith("exact_mean"):  # trained on x - E[x | y]: the testbed's exact mean as its mean model
            run_mean, run_mean_model = images.exact_mean, ExactMeanModel(images.testbed)
        scores[run] = []
        for name in list_checkpoints(ckpt_dir):
            step = parse_resume_step_from_filename(name)
            path = os.path.join(out_dir, "scores", run, f"{step:06d}.json")

            def score():
                out, _ = model_outputs(log_dir, os.path.join(ckpt_dir, name), kind, images, run_mean_model)
                return dict(step=step, **SCORERS[kind.name](images, run_mean, out))

            scores[run].append(cached_json(path, score))
    return scores


# -- the trainings, run by the stage scripts themselves ---------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FLAGS = ("--attention_resolutions 16,8 --model_channels 32 --num_heads 4 --num_res_blocks 1 "
               "--resblock_updown True --use_fp16 False --channel_mult 1,2,2").split()


def stage(args, cwd, env=None):
    """Run a stage script as a user would (a stop signal reaches it, see run_children); returns its stdout."""
    return run_children([_command(args)], cwd, dict(os.environ, PYTHONPATH=ROOT, **(env or {})))[0]


def _command(args):
    return [sys.executable, os.path.join(ROOT, args[0]), *args[1:]]


def training_runs(a, out):
    """The trainings in three waves: (name, [script, flags]); the variance and PC runs need the main mean run."""
    sizes = ["--large_size", str(a.large_size), "--small_size", str(a.small_size)]
    common = [*MODEL_FLAGS, *sizes, "--data_dir", f"{out}/data/images", "--batch_size", str(a.batch_size),
              "--lr", str(a.lr), "--lr_anneal_steps", str(a.steps), "--max_step", str(a.steps),
              "--save_interval", str(a.eval_every), "--log_interval", "50", "--resume_checkpoint", "latest",
              "--num_workers", "0", "--seed", str(a.seed)]
    mean_run = ["--mean_model_path", f"{out}/checkpoints/mean/model{a.steps:06d}.pt",
                "--mean_model_args_path", f"{out}/logs/mean/mean_model_args.pkl"]
    first = [("mean", "sr_mean_train.py", ["--data_info_dict_path", f"{out}/data/train_data_info.pkl"]),
             ("mean_small", "sr_mean_train.py", ["--data_info_dict_path", f"{out}/data/train_small_info.pkl"])]
    second = [("var", "sr_var_train.py", ["--data_info_dict_path", f"{out}/data/train_data_info.pkl",
                                          "--last_layer_type", "none", *mean_run]),
              ("var_exp", "sr_var_train.py", ["--data_info_dict_path", f"{out}/data/train_data_info.pkl",
                                              "--last_layer_type", "exp", *mean_run])]
    pc = ["--data_info_dict_path", f"{out}/data/train_data_info.pkl", "--num_pcs", str(a.num_pcs)]
    third = [("pc", "sr_pc_train.py", [*pc, *mean_run]),  # on x - m(y), m the trained mean model
             ("pc_exact_mean", "sr_pc_train.py", [*pc, "--mean_model_path", f"{out}/data/testbed.json"])]
    full = lambda runs: [(n, [s, *common, *extra, "--log_dir", f"{out}/logs/{n}",  # noqa: E731
                              "--model_save_dir", f"{out}/checkpoints/{n}"]) for n, s, extra in runs]
    return full(first), full(second), full(third)


def train_wave(runs, parallel):
    """Train the runs of one wave: side by side on one thread each, or one after the other."""
    if not parallel:
        for _, args in runs:
            stage(args, ROOT)
        return
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1" if len(runs) > 1 else str(os.cpu_count() or 1))
    run_children([_command(args) for _, args in runs], ROOT, env, names=[f"training {name}" for name, _ in runs])
