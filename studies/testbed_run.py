"""
The testbed study's runner (scripts/testbed_study.py): the trainings (by the stage scripts
themselves, queued two at a time), then every checkpoint of every run scored against the
exact posterior by testbed.scoring, the reference lines (bilinear; the closed-form baselines
fitted on the training images; N exact posterior samples; N ideal-DDPM-SR samples; the PCA
and empirical quantiles of both), and the calibrated intervals. Every score is cached as JSON
(with its per-image values, for paired comparisons and seeds), so a rerun continues.
"""

import dataclasses
import os
import sys
import time

import numpy as np

from imaging import VAR_SCALE, to_255
from runkit import UserError, logger
from runkit.fileio import cached_json, load_model_weights, load_pickle, read_json, save_json, save_pickle
from runkit.run import Job, run_children, run_queue
from runkit.training import list_checkpoints, parse_resume_step_from_filename
from sr_var import baselines
from sr_var.data import flatten_data_info, load_all_images, load_data_info, resolve_images
from sr_var.kinds import KINDS, MEAN, PC, QUANTILE, VAR
from sr_var.networks import MEAN_FLAG_NAMES
from sr_var.quantiles import parse_levels
from sr_var.verification import ddpm_ground_truth
from testbed import ExactMeanModel, load_testbed, quantize
from testbed.scoring import (
    ExactScorer,
    interval_scores,
    mean_scores,
    pc_scores,
    quantile_scores,
    sample_moments,
    sample_pcs_chw,
    sample_quantiles,
    summarize,
    var_scores,
)

from .recipes import RECIPES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"mean": "sr_mean_train.py", "var": "sr_var_train.py", "pc": "sr_pc_train.py",
           "quantile": "sr_quantile_train.py"}
STUDY_KINDS = ("mean", "var", "quantile")  # --kinds; the PC models come with --num_pcs


def study_images(data_dir, large_size, small_size):
    """The study's held-out images (the testbed folder's evaluation set) as an ExactScorer."""
    testbed = load_testbed(os.path.join(data_dir, "testbed.json"), "out_dir")
    images = flatten_data_info(load_data_info(os.path.join(data_dir, "to_sample_data_info.pkl")))
    names = [n for n, _ in images]
    uint8 = load_all_images(resolve_images(os.path.join(data_dir, "images"), names), large_size)
    return ExactScorer(testbed, uint8, names, [k for _, k in images], small_size)


def reference_indices(images, count):
    """The `count` study images of the ideal-DDPM-SR reference, spread over the list (which is ordered by component)."""
    return np.linspace(0, len(images.names) - 1, count).round().astype(int)


# -- the runs ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Run:
    """One training: its name (its folders), kind, recipe, seed, and the mean run it needs ("exact": the testbed's)."""

    name: str
    kind: str
    recipe: str
    seed: int
    mean: str = ""

    @property
    def weights_of(self):
        return RECIPES[self.recipe].weights


def planned_runs(a):
    """
    The study's trainings: the chosen recipe's models of --kinds for each of --seeds seeds (each
    variance model on its own seed's mean model), the PC models on x - E[x|y] and on x - m(y)
    for each seed (named pc_exact_mean and pc for seed 0, as before seeds, and *_s1, ...
    after), and one mean model per recipe of --ablations (seed 0).
    """
    # in the order they are queued: the mean models first (the others wait for them)
    runs = [Run(f"mean_s{s}", "mean", a.recipe, s) for s in range(a.seeds)]
    runs += [Run(f"mean@{r}", "mean", r, 0) for r in a.ablations if r != a.recipe]
    for s in range(a.seeds):
        runs += [run_named(f"{kind}_s{s}", a.recipe) for kind in ("var", "quantile") if kind in a.kinds]
    if a.num_pcs:
        runs += [run_named(name, a.recipe) for s in range(a.seeds) for name in pc_names(s)]
    return runs


def pc_names(seed):
    """The two PC runs of a training seed: on x - E[x|y] and on x - m(y)."""
    return ("pc_exact_mean", "pc") if seed == 0 else (f"pc_exact_mean_s{seed}", f"pc_s{seed}")


def run_named(name, recipe):
    """The Run a training folder's name stands for (mean_s1, var_s1, quantile_s1, pc, mean@residual, ...), or None."""
    if name.startswith("mean@"):
        return Run(name, "mean", name[5:], 0) if name[5:] in RECIPES else None
    if name == "pc_exact_mean":
        return Run(name, "pc", recipe, 0, "exact")
    if name == "pc":
        return Run(name, "pc", recipe, 0, "mean_s0")
    kind, _, seed = name.rpartition("_s")
    if not seed.isdigit():
        return None
    if kind in ("pc_exact_mean", "pc"):
        return Run(name, "pc", recipe, int(seed), "exact" if kind == "pc_exact_mean" else f"mean_s{seed}")
    if kind not in STUDY_KINDS:
        return None
    return Run(name, kind, recipe, int(seed), f"mean_s{seed}" if kind == "var" else "")


def finished_runs(runs, out, steps):
    """The planned runs, and those an earlier call trained into this folder (seeds, ablations, kinds: they stay)."""
    names = {run.name for run in runs}
    recipe = runs[0].recipe
    folder = os.path.join(out, "checkpoints")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        run = run_named(name, recipe)
        if name in names or run is None or not os.path.exists(os.path.join(folder, name, f"model{steps:06d}.pt")):
            continue
        if run.mean and run.mean != "exact" and run.mean not in names:
            continue  # its mean model is not in the study
        runs.append(run)
        names.add(name)
    return runs


def training_job(run, a, out):
    """The stage command of a run, as a user would type it."""
    recipe = RECIPES[run.recipe]
    args = [SCRIPTS[run.kind], *recipe.flags(run.kind), "--use_fp16", "False", "--large_size", str(a.large_size),
            "--small_size", str(a.small_size), "--data_dir", f"{out}/data/images",
            "--data_info_dict_path", f"{out}/data/train_data_info.pkl", "--lr_anneal_steps", str(a.steps),
            "--max_step", str(a.steps), "--save_interval", str(a.eval_every), "--log_interval", "50",
            "--resume_checkpoint", "latest", "--num_workers", "0", "--seed", str(a.seed + run.seed),
            "--random_flip", "False", "--log_dir", f"{out}/logs/{run.name}", "--model_save_dir",
            f"{out}/checkpoints/{run.name}"]
    if run.kind == "var":
        args += ["--last_layer_type", "none"]
    if run.kind == "pc":
        args += ["--num_pcs", str(a.num_pcs)]
    if run.kind == "quantile":
        args += ["--quantiles", a.quantiles]
    if run.mean == "exact":
        args += ["--mean_model_path", f"{out}/data/testbed.json"]
    elif run.mean:
        mean = RECIPES[run.recipe].weights(a.steps)
        args += ["--mean_model_path", f"{out}/checkpoints/{run.mean}/{mean}",
                 "--mean_model_args_path", f"{out}/logs/{run.mean}/mean_model_args.pkl"]
    return Job(run.name, _command(args), needs=(run.mean,) if run.mean and run.mean != "exact" else (),
               name=f"training {run.name}")


def train_runs(runs, a, out):
    """
    Train what is not finished, --parallel at a time (one thread each when more than one: 2 on a
    2-core machine, more on a GPU; 1 trains on every core); the wall time of each as it finishes
    (of this call's part, for a run that resumed).
    """
    final = lambda run: os.path.join(out, "checkpoints", run.name, f"model{a.steps:06d}.pt")  # noqa: E731
    todo = [run for run in runs if not os.path.exists(final(run))]
    if not todo:
        return
    logger.log(f"training {', '.join(run.name for run in todo)} ({a.steps} steps each)")
    slots = a.parallel
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1" if slots > 1 else str(os.cpu_count() or 1))
    jobs = [training_job(run, a, out) for run in todo]
    finished = {j.key for j in jobs}
    for job in jobs:  # a mean run finished earlier is no job to wait for
        job.needs = tuple(n for n in job.needs if n in finished)
    def record(key, done):  # as each finishes: a later stop loses no time measured
        times = train_seconds(out)
        times[key] = {"seconds": done["seconds"], "side_by_side": slots}
        save_json(times, os.path.join(out, "train_seconds.json"))

    run_queue(jobs, slots, ROOT, env, on_done=record)


def train_seconds(out):
    """The wall time of each training the study ran in this folder ({out}/train_seconds.json)."""
    path = os.path.join(out, "train_seconds.json")
    return read_json(path, "out_dir") if os.path.exists(path) else {}


def stage(args, cwd, env=None):
    """Run a stage script as a user would (a stop signal reaches it, see run_children); returns its stdout."""
    return run_children([_command(args)], cwd, dict(os.environ, PYTHONPATH=ROOT, **(env or {})))[0]


def _command(args):
    return [sys.executable, os.path.join(ROOT, args[0]), *args[1:]]


# -- model outputs and their scores ------------------------------------------------------------

def model_outputs(run_dir_logs, checkpoint, kind, images, mean_model=None, model=None):
    """A model's outputs on every study image in [0, 255] units (kind.in_255), and the model."""
    if model is None:
        args = load_pickle(os.path.join(run_dir_logs, kind.args_pickle))
        model = kind.build(args)
        load_model_weights(model, checkpoint, "model_path", MEAN_FLAG_NAMES)
        model.eval()
    outs = [kind.in_255(kind.predict(model, images.low_res_up[i:i + 50], mean_model)[0])
            for i in range(0, len(images.low_res_up), 50)]
    if isinstance(outs[0], tuple):  # (directions, variances) of a PC model; (quantiles, levels) of a quantile model
        if kind is QUANTILE:
            return (np.concatenate([o[0] for o in outs]), outs[0][1]), model
        return tuple(np.concatenate(parts) for parts in zip(*outs)), model
    return np.concatenate(outs), model


def score(kind, images, mean, out):
    """A kind's outputs against the exact posterior: per image, and summarised pooled and per component."""
    if kind is MEAN:
        per_image = mean_scores(images, out)
    elif kind is VAR:
        per_image = var_scores(images, mean, out)
    elif kind is PC:
        per_image = pc_scores(images, mean, *out)
    else:  # quantiles [N, L, C, H, W] -> [L, N, ...]
        quantiles, levels = out
        per_image = quantile_scores(images, levels, np.moveaxis(quantiles, 1, 0))
    return dict(**summarize(per_image, images.ks, images.labels), per_image=per_image)


class FinalModels:
    """The runs' final models and their outputs on the study images, loaded once each."""

    def __init__(self, out, images, runs, steps):
        self.out, self.images, self.steps = out, images, steps
        self.runs = {run.name: run for run in runs}
        self._cache = {}

    def path(self, run, step=None):
        return os.path.join(self.out, "checkpoints", run.name, run.weights_of(self.steps if step is None else step))

    def mean_of(self, run):
        """(mean outputs, mean model) that a run is conditioned on: its mean run's final model, or the exact mean."""
        if run.mean == "exact":
            return self.images.exact_mean, ExactMeanModel(self.images.testbed)
        if not run.mean:
            return None, None
        return self.get(self.runs[run.mean])

    def get(self, run):
        if run.name not in self._cache:
            _, mean_model = self.mean_of(run)
            self._cache[run.name] = model_outputs(os.path.join(self.out, "logs", run.name), self.path(run),
                                                  KINDS[run.kind], self.images, mean_model)
        return self._cache[run.name]


def score_checkpoints(out, images, runs, models):
    """
    Every checkpoint of every run, scored (cached in {out}/scores/{run}/{weights file}.json); a mean run
    whose recipe keeps an EMA is also scored on its other weights (the raw ones where the EMA is
    scored, the EMA where the raw ones are), as "raw:{run}" or "ema {rate}:{run}": the EMA's
    effect without another training.
    """
    scores = {}
    for run in runs:
        kind = KINDS[run.kind]
        mean, mean_model = models.mean_of(run)
        weights = [(run.name, run.weights_of)]
        other = RECIPES[run.recipe].other_weights() if run.kind == "mean" else None
        if other:
            tag, weights_of = other
            weights.append((f"{tag}:{run.name}", weights_of))
        for key, weights_of in weights:
            scores[key] = []
            for name in list_checkpoints(os.path.join(out, "checkpoints", run.name)):
                step = parse_resume_step_from_filename(name)
                path = os.path.join(out, "checkpoints", run.name, weights_of(step))

                def compute():
                    outs, _ = model_outputs(os.path.join(out, "logs", run.name), path, kind, images, mean_model)
                    return dict(step=step, **score(kind, images, mean, outs))

                # keyed by the weights file: a recipe that changes which weights it scores is not read from a stale cache
                cache = os.path.join(out, "scores", run.name, os.path.splitext(weights_of(step))[0] + ".json")
                scores[key].append(cached_json(cache, compute))
    return scores


# -- reference lines ---------------------------------------------------------------------------

def exact_sample_sets(images, num_samples, seed):
    """N exact posterior samples per image, stored as uint8 as a sampler stores them: [N_images, N, C, H, W] float64."""
    rng = np.random.default_rng(seed + 1)
    return np.stack([quantize(images.testbed.sample_posterior(y, num_samples, rng)).astype(np.float64)
                     for y in images.y])


def sample_references(images, samples, levels, num_pcs):
    """N samples per image as estimates: their moments, empirical quantiles and PCA, each scored."""
    moments = [sample_moments(s) for s in samples]
    mean, var = (np.stack(m) for m in zip(*moments))
    quantiles = np.stack([sample_quantiles(s, levels) for s in samples], axis=1)
    refs = {"mean": score(MEAN, images, None, mean), "var": score(VAR, images, mean, var),
            "quantile": score(QUANTILE, images, None, (np.moveaxis(quantiles, 0, 1), levels))}
    if num_pcs:
        pcs = np.stack([sample_pcs_chw(s, num_pcs) for s in samples])
        refs["pc"] = dict(**summarize(pc_scores(images, None, pcs, None), images.ks, images.labels))
    return refs


def reference_lines(out, data, images, a, samples):
    """Bilinear, the exact moments, N exact posterior samples (the floor) and N ideal-DDPM-SR samples (a subset)."""
    def compute():
        levels = parse_levels(a.quantiles)
        refs = {"bilinear": score(MEAN, images, None, to_255(images.low_res_up.double().numpy()))}
        # the calibration a perfect model would show: fresh samples within k exact std of the exact mean
        refs["exact"] = score(VAR, images, images.exact_mean, images.exact_var)
        refs["mc_floor"] = {**sample_references(images, samples, levels, a.num_pcs),
                            "num_samples": a.reference_samples}
        refs["ideal_ddpm"] = _ideal_ddpm_reference(out, data, images, a, levels)
        return refs

    return cached_json(os.path.join(out, "references.json"), compute)


def _ideal_ddpm_reference(out, data_dir, images, a, levels):
    """ddpm_sr_sample.py with the ideal teacher (250 steps, the paper's protocol) on --reference_images of the images."""
    idx = reference_indices(images, a.reference_images)
    subset = {}
    for i in idx:
        subset.setdefault(f"k{images.ks[i]}", {"y": images.ks[i], "file_names": []})["file_names"].append(
            images.names[i])
    info_path = os.path.join(out, "reference_images.pkl")
    save_pickle(subset, info_path)
    p = images.testbed.params
    args = ["ddpm_sr_sample.py", "--large_size", str(p.large_size), "--small_size", str(p.small_size),
            "--class_cond", "False", "--learn_sigma", "True", "--diffusion_steps", "1000", "--noise_schedule",
            "linear", "--timestep_respacing", "250", "--data_dir", os.path.join(data_dir, "images"),
            "--model_path", os.path.join(data_dir, "testbed.json"), "--to_sample_images_dict_path", info_path,
            "--num_samples_per_image", str(a.reference_samples), "--batch_size", str(min(a.reference_samples, 100)),
            "--output_dir", os.path.join(out, "ideal_ddpm"), "--seed", str(a.seed)]
    logger.log(f"ideal DDPM-SR reference: {len(idx)} images x {a.reference_samples} samples x 250 steps")
    start = time.time()
    stage(args, ROOT)
    seconds_per_image = (time.time() - start) / len(idx)
    samples = np.stack([np.moveaxis(ddpm_ground_truth(os.path.join(out, "ideal_ddpm"), images.names[i],
                                                      a.reference_samples)[2], -1, 1) for i in idx])
    return {**sample_references(images.subset(idx), samples, levels, a.num_pcs),
            "indices": [int(i) for i in idx], "num_images": int(len(idx)), "num_samples": a.reference_samples,
            "seconds_per_image": seconds_per_image}


def baseline_lines(out, data, images, a):
    """The closed-form baselines fitted on the training images, scored as the models are."""
    def compute():
        fitted = baselines.fit_on_image_folder(os.path.join(data, "images"), os.path.join(data, "train_data_info.pkl"),
                                               a.large_size, a.small_size, max_images=a.num_train, num_pcs=a.num_pcs
                                               or 1)
        y = images.y
        mean = to_255(fitted.mean(y))
        levels = parse_levels(a.quantiles)
        refs = {"num_train": fitted.num_train, "mean": score(MEAN, images, None, mean),
                "var_constant": score(VAR, images, mean, fitted.variance_constant(y) * VAR_SCALE),
                "var_quadratic": score(VAR, images, mean, fitted.variance_quadratic(y) * VAR_SCALE),
                "quantile": score(QUANTILE, images, None, (np.moveaxis(to_255(fitted.quantiles(y, levels)), 0, 1),
                                                           levels))}
        if a.num_pcs:
            directions, variances = fitted.principal_components(len(y))
            refs["pc"] = dict(**summarize(pc_scores(images, mean, directions, variances * VAR_SCALE), images.ks,
                                          images.labels))
        save_pickle(dict(mean=mean, var_constant=fitted.variance_constant(y) * VAR_SCALE,
                         quantiles=to_255(fitted.quantiles(y, levels))), os.path.join(out, "baseline_outputs.pkl"))
        return refs

    return cached_json(os.path.join(out, "baselines.json"), compute)


def calibration_lines(out, images, a, models, samples):
    """
    Intervals with a guarantee (testbed.scoring.interval_scores) from the final seed-0 quantile
    model (its outer levels about its median), the variance model (m +- sigma), the N exact
    samples (their median and empirical quantiles) and the least-squares baseline's residual
    quantiles, against the exact posterior over repeated calibration/test splits.
    """
    def compute():
        levels = parse_levels(a.quantiles)
        lo, hi = 0, len(levels) - 1
        mid = int(np.argmin(np.abs(np.array(levels) - 0.5)))
        runs = models.runs
        sources = {}
        (q, _), _ = models.get(runs["quantile_s0"])
        q = np.moveaxis(q, 1, 0)  # [L, N, ...]
        sources["quantile model"] = (q[mid], q[mid] - q[lo], q[hi] - q[mid])
        var, _ = models.get(runs["var_s0"])
        mean, _ = models.get(runs["mean_s0"])
        std = np.sqrt(np.maximum(var, 0))
        sources["variance model"] = (mean, std, std)
        sq = np.stack([sample_quantiles(s, (levels[lo], 0.5, levels[hi])) for s in samples], axis=1)
        sources[f"{a.reference_samples} exact samples"] = (sq[1], sq[1] - sq[0], sq[2] - sq[1])
        base = load_pickle(os.path.join(out, "baseline_outputs.pkl"))
        bq = base["quantiles"]
        sources["least-squares baseline"] = (bq[mid], bq[mid] - bq[lo], bq[hi] - bq[mid])
        alpha = round(1 - (levels[hi] - levels[lo]), 12)  # 0.1, not 0.10000000000000009
        return interval_scores(images, sources, alpha=alpha, delta=a.delta, splits=a.calibration_splits, seed=a.seed)

    # keyed by what it depends on beyond the recorded flags: the splits and the models' weights files
    weights = os.path.splitext(RECIPES[a.recipe].weights(a.steps))[0]
    return cached_json(os.path.join(out, f"calibration_{a.calibration_splits}splits_{weights}.json"), compute)


def forward_seconds(models, kinds=("mean_s0", "var_s0", "quantile_s0", "pc")):
    """Seconds per image of one forward pass of each final model (with its mean model where it has one)."""
    times = {}
    for name in kinds:
        run = models.runs.get(name)
        if run is None:
            continue
        _, mean_model = models.mean_of(run)
        _, model = models.get(run)

        def once():
            return model_outputs("", "", KINDS[run.kind], models.images, mean_model, model=model)

        once()  # warm-up
        start = time.perf_counter()
        once()
        times[name] = (time.perf_counter() - start) / len(models.images.names)
    return times


# -- beside a trained teacher ------------------------------------------------------------------

TEACHER_TESTBED_KEYS = ("testbed", "large_size", "small_size", "num_train", "num_eval", "seed")


def read_teacher_results(path, a):
    """
    The sample sets of a teacher study's results.json (--teacher_results) that the study sets its
    models beside (teacher_lines), read before any work: refused unless it is of this study's
    testbed and holds every set it names.
    """
    results = read_json(path, "teacher_results", hint="give a teacher study's results.json (scripts/teacher_study.py)")
    if not isinstance(results, dict) or not {"config", "images", "trained", "ideal", "references"} <= set(results):
        raise UserError(f"--teacher_results {path}: not a teacher study's results.json (scripts/teacher_study.py)")
    keys = TEACHER_TESTBED_KEYS + (("length_scale",) if a.testbed == "gaussian_scale_mixture" else ())
    differ = [f"{k} {results['config'].get(k)!r} (here {getattr(a, k)!r})" for k in keys
              if results["config"].get(k) != getattr(a, k)]
    if differ:
        raise UserError(f"--teacher_results {path}: a teacher study of another testbed: {', '.join(differ)}")
    try:
        return _teacher_sets(results)
    except (KeyError, TypeError, IndexError) as e:  # another version's layout: refused now, not after the trainings
        raise UserError(f"--teacher_results {path}: a teacher study's results.json without {e} (written by "
                        f"another version of scripts/teacher_study.py?)") from None


def _teacher_sets(teacher):
    """{names, num_samples, teacher_steps, lines}: the trained teacher at the paper's protocol, at the reference
    and the closest fast sampler; the ideal teacher at the paper's protocol; N exact samples."""
    n = teacher["config"]["num_samples"]
    trained = teacher["trained"][str(teacher["final_step"])]
    sets = [(f"trained teacher, {teacher['paper']} (the paper's protocol)", trained[teacher["paper"]]),
            (f"trained teacher, {teacher['reference']}", trained[teacher["reference"]])]
    if teacher.get("best_fast"):
        sets.append((f"trained teacher, {teacher['best_fast']}", trained[teacher["best_fast"]]))
    sets += [(f"ideal teacher, {teacher['paper']}", teacher["ideal"][teacher["paper"]]),
             (f"{n} exact posterior samples (floor)", teacher["references"]["mc_floor"])]
    lines = {label: dict(rel_mse=s["summary"]["rel_mse"], rel_std_error=s["summary"]["rel_std_error"],
                         rel_mse_ci95=s["summary"]["ci95"]["rel_mse"],
                         rel_std_error_ci95=s["summary"]["ci95"]["rel_std_error"]) for label, s in sets}
    return dict(names=list(teacher["images"]["names"]), num_samples=n, teacher_steps=teacher["final_step"],
                lines=lines)


def teacher_lines(teacher, images):
    """
    The teacher study's sample sets (read_teacher_results) on its images, a subset of this
    study's: each set's relative MSE to E[x|y] and relative std error over those images, and
    the images' rows in this study.
    """
    rows = {name: i for i, name in enumerate(images.names)}
    if not set(teacher["names"]) <= set(rows):
        raise UserError("--teacher_results: its images are not among this study's evaluation images")
    return dict(rows=[rows[name] for name in teacher["names"]], num_samples=teacher["num_samples"],
                teacher_steps=teacher["teacher_steps"], lines=teacher["lines"])
