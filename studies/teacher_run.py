"""
The trained teacher study's runner (scripts/teacher_study.py): the paper's whole chain on an
exact testbed. It writes the testbed folder and trains a DDPM-SR upsampler on it with the stage
scripts (make_testbed.py, sr_ddpm_train.py), as a user would; samples the evaluation images
with the paper's protocol (ancestral, 250 steps), ancestral 1,000 and the fast samplers, with
the trained network (its EMA weights) and, on the same images and random streams, with the
testbed's ideal teacher (the sampler study's configurations); and draws the references: N
exact posterior samples (the floor), a second independent set (the floor of comparing two
N-sample sets), exact samples of a known variance bias (the criterion's power) and the exact
teacher. Earlier checkpoints are sampled with the paper's protocol and the best fast sampler.
With a testbed study's models (--models_dir), their one-pass outputs on the same images.

Each sample set is reduced to its per-image moments (uint8 samples, ddof 1), saved as
runs/{teacher}/{configuration}.npz with its scores against the exact posterior beside it
(.json), as it finishes: a rerun continues, and more --steps continue the training and sample
the new checkpoint. The report (studies.teacher_report) scores the sets against each other.
"""

import json
import os
import time
import types

import numpy as np
import torch as th

from guided_diffusion.script_util import (
    SR_FLAG_NAMES,
    diffusion_from_flags,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
)
from imaging import area_downsample, to_float
from runkit import UserError, logger
from runkit.dist_util import cpu_name, dev
from runkit.fileio import atomic_write, cached_json, load_model_weights, load_pickle, save_json
from runkit.training import ema_checkpoint_name, list_checkpoints, parse_resume_step_from_filename
from sr_var.data import flatten_data_info, load_all_images, load_data_info, resolve_images
from sr_var.kinds import MEAN, VAR
from testbed import TestbedTeacher, load_testbed
from testbed.scoring import ExactScorer, mean_scores, summarize, var_scores

from .sampler_run import KNOWN_BIASES, configuration_key, floor_moments, sampled_moments, scored
from .testbed_run import ROOT, model_outputs, stage

# The teacher (docs/testbed.md, "The trained teacher", gives the measured costs behind it): the
# guided-diffusion UNet at 64 channels, the narrowest at which its GroupNorm(32) is not instance
# normalisation. At 32 channels every norm (the one before the output layer too) removes each
# channel's spatial mean, so the network cannot predict the per-channel mean of eps: measured,
# its error there is the whole variance of that mean (1/1024 at 32 px) at every t, and its
# samples carry a per-channel colour offset of the starting noise. One residual block per level,
# no channel growth (64 channels at 32, 16 and 8 px), attention only at 8 px (at 16 px it
# doubles a forward pass), no up/down-sampling residual blocks (a third cheaper); learned
# variance, as the paper's upsampler.
TEACHER_MODEL_FLAGS = ("--num_channels 64 --num_res_blocks 1 --channel_mult 1,1,1 --attention_resolutions 8 "
                       "--num_heads 4 --resblock_updown False --use_scale_shift_norm True --learn_sigma True "
                       "--class_cond False --diffusion_steps 1000 --noise_schedule linear").split()



def teacher_model_flags(large_size, small_size):
    """TEACHER_MODEL_FLAGS over guided-diffusion's SR defaults, as sr_create_model_and_diffusion takes them."""
    flags = sr_model_and_diffusion_defaults()
    it = iter(TEACHER_MODEL_FLAGS)
    for name, value in zip(it, it):
        default = flags[name[2:]]
        flags[name[2:]] = value == "True" if isinstance(default, bool) else type(default)(value)
    return dict(flags, large_size=large_size, small_size=small_size)


# What the study samples: the paper's protocol, the reference of the teacher's own samplers,
# and the fast samplers (dpmpp_2m and its SDE form on steps even in log-SNR, where the sampler
# study found them best; analytic DDIM, which uses the learned variance, at its best NFE there).
DEFAULT_CONFIGURATIONS = ("ancestral:250,ancestral:1000,dpmpp_2m@logsnr:10,dpmpp_2m@logsnr:25,dpmpp_2m@logsnr:50,"
                          "dpmpp_2m@logsnr:100,dpmpp_2m_sde@logsnr:25,analytic_ddim:100")
SAMPLER_NAMES = ("ancestral", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "analytic_ddim")
EXACT_TEACHER_STEPS = 10  # its samples are exact at any step count; 10 is the cheapest check of the machinery


def parse_configurations(text):
    """'sampler[@logsnr]:nfe,...' -> [(sampler, nfe)], each checked; a mistake is one line naming --configurations."""
    out = []
    for item in (p.strip() for p in text.split(",")):
        sampler, _, nfe = item.partition(":")
        name, _, spacing = sampler.partition("@")
        if not item or name not in SAMPLER_NAMES or spacing not in ("", "logsnr") or not nfe.isdigit() \
                or not 1 <= int(nfe) <= 1000:
            raise UserError(f"--configurations item {item!r}: give sampler:nfe with a sampler of "
                            f"{', '.join(SAMPLER_NAMES)} (optionally NAME@logsnr) and 1 <= nfe <= 1000, e.g. "
                            f"ancestral:250,dpmpp_2m@logsnr:25")
        if (sampler, int(nfe)) in out:
            raise UserError(f"--configurations names {item!r} twice")
        out.append((sampler, int(nfe)))
    return out


# -- the testbed folder and its evaluation images -----------------------------------------------

def testbed_flags(a):
    """make_testbed.py's flags for the study's testbed folder (the testbed study's, with the same flags)."""
    flags = ["--kind", a.testbed, "--large_size", str(a.large_size), "--small_size", str(a.small_size),
             "--num_train", str(a.num_train), "--num_eval", str(a.num_eval), "--seed", str(a.seed)]
    if a.testbed == "gaussian_scale_mixture":
        flags += ["--length_scale", str(a.length_scale)]
    return flags


def make_testbed_folder(a, data):
    """{out_dir}/data by make_testbed.py (a finished folder is left as it is); returns its wall time or 0."""
    if os.path.exists(os.path.join(data, "testbed.json")):
        return 0.0
    logger.log(f"writing the testbed: {a.num_train} training and {a.num_eval} evaluation images")
    start = time.time()
    stage(["scripts/make_testbed.py", "--out_dir", data, *testbed_flags(a)], ROOT)
    return time.time() - start


def stratified(pairs, count):
    """The first `count` of [(name, component)] taken in turn from each component, then sorted by component."""
    by_k = {}
    for name, k in pairs:
        by_k.setdefault(k, []).append(name)
    order = [(names[i], k) for i in range(max(map(len, by_k.values()))) for k, names in sorted(by_k.items())
             if i < len(names)]
    return sorted(order[:count], key=lambda p: (p[1], p[0]))


def evaluation_images(data, count, large_size, small_size):
    """`count` of the testbed folder's evaluation images, stratified over the components, as an ExactScorer."""
    pairs = flatten_data_info(load_data_info(os.path.join(data, "to_sample_data_info.pkl")))
    if count > len(pairs):
        raise UserError(f"--num_images {count} is more than the testbed's {len(pairs)} evaluation images "
                        f"(--num_eval)")
    chosen = stratified(pairs, count)
    names = [n for n, _ in chosen]
    uint8 = load_all_images(resolve_images(os.path.join(data, "images"), names), large_size)
    testbed = load_testbed(os.path.join(data, "testbed.json"), "out_dir")
    return ExactScorer(testbed, uint8, names, [k for _, k in chosen], small_size)


# -- sample sets, cached as their moments -------------------------------------------------------

def cached_moments(path, compute):
    """
    (means, variances, seconds per sample) of a sample set: computed once and saved as .npz at
    `path`, read back from there every time after.
    """
    if not os.path.exists(path):
        means, variances, seconds = compute()
        atomic_write(path, lambda f: np.savez(f, means=means, variances=variances, seconds=seconds))
    with np.load(path) as z:
        return z["means"], z["variances"], float(z["seconds"])


def sample_set(images, folder, key, compute, **extra):
    """
    One sample set: its moments ({folder}/{key}.npz) and its scores against the exact posterior
    ({folder}/{key}.json, the sampler study's `scored` with `extra` and the wall time).
    Returns {"scores": ..., "means": ..., "variances": ...}.
    """
    start = time.time()
    means, variances, seconds = cached_moments(os.path.join(folder, f"{key}.npz"), compute)
    result = cached_json(os.path.join(folder, f"{key}.json"), lambda: scored(
        images, means, variances, seconds_per_sample=seconds, wall_time_s=time.time() - start, **extra))
    return dict(scores=result, means=means, variances=variances)


def exact_draws(images, num_samples, stream, variance_factor=1.0):
    """The moments of N exact posterior samples per image from a stream of their own (floor_moments, other names)."""
    renamed = types.SimpleNamespace(testbed=images.testbed, y=images.y,
                                    names=[f"{name}/{stream}" if stream else name for name in images.names])
    means, variances = floor_moments(renamed, num_samples, variance_factor)
    return means, variances, 0.0


def reference_sets(images, runs, num_samples, batch_size, seed):
    """
    The floor (N exact posterior samples, the sampler study's draws), a second independent set
    of N, exact samples of a known variance bias, and the exact teacher.
    """
    refs = {"mc_floor": sample_set(images, runs, "mc_floor", lambda: exact_draws(images, num_samples, ""),
                                   num_samples=num_samples),
            "mc_floor_b": sample_set(images, runs, "mc_floor_b",
                                     lambda: exact_draws(images, num_samples, "second set"),
                                     num_samples=num_samples)}
    for factor in KNOWN_BIASES:
        key = f"biased_x{factor:g}"
        refs[key] = sample_set(images, runs, key, lambda: exact_draws(images, num_samples, "", factor),
                               variance_factor=factor)
    key = configuration_key("exact", EXACT_TEACHER_STEPS)
    refs["exact"] = sample_set(images, os.path.join(runs, "exact"), key, lambda: sampled_moments(
        images, "exact", EXACT_TEACHER_STEPS, num_samples, batch_size, seed), sampler="exact",
        nfe=EXACT_TEACHER_STEPS, perturbation=0.0)
    return refs


def teacher_sets(images, folder, configurations, num_samples, batch_size, seed, network=None, label="ideal"):
    """The configurations sampled with one teacher (the testbed's ideal one, or network = (model, flags))."""
    out = {}
    for sampler, nfe in configurations:
        key = configuration_key(sampler, nfe)

        def compute():
            start = time.time()
            moments = sampled_moments(images, sampler, nfe, num_samples, batch_size, seed, network=network)
            logger.log(f"{label} {key}: {moments[2] * 1e3:.1f} ms per sample, "
                       f"{moments[2] / nfe * 1e3:.3g} ms per sample per NFE ({time.time() - start:.0f} s)")
            return moments

        out[key] = sample_set(images, folder, key, compute, sampler=sampler, nfe=nfe, perturbation=0.0)
    return out


# -- the teacher: trained by sr_ddpm_train.py ----------------------------------------------------

def training_args(a, out):
    """sr_ddpm_train.py's command line for the study's teacher."""
    return ["sr_ddpm_train.py", *TEACHER_MODEL_FLAGS, "--large_size", str(a.large_size),
            "--small_size", str(a.small_size), "--data_dir", f"{out}/data/images",
            "--data_info_dict_path", f"{out}/data/train_data_info.pkl", "--batch_size", str(a.train_batch_size),
            "--lr", str(a.lr), "--ema_rate", str(a.ema_rate), "--max_step", str(a.steps),
            "--save_interval", str(a.save_interval), "--log_interval", "50", "--image_interval", "0",
            "--random_flip", "False", "--num_workers", "0", "--seed", str(a.seed),
            "--resume_checkpoint", "latest", "--log_dir", f"{out}/logs/teacher",
            "--model_save_dir", f"{out}/checkpoints/teacher"]


def train_teacher(a, out):
    """Train (or continue) the teacher up to --steps; the wall time of each session is added to costs.json."""
    ckpt_dir = os.path.join(out, "checkpoints", "teacher")
    if os.path.exists(os.path.join(ckpt_dir, f"model{a.steps:06d}.pt")):
        return
    done = list_checkpoints(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    start_step = parse_resume_step_from_filename(done[-1]) if done else 0
    logger.log(f"training the teacher: steps {start_step} to {a.steps} (sr_ddpm_train.py)")
    start = time.time()
    stage(training_args(a, out), ROOT)
    add_cost(out, "training", dict(from_step=start_step, to_step=a.steps, seconds=time.time() - start))


def add_cost(out, part, entry):
    """Append a measured cost to {out_dir}/costs.json (one list per part)."""
    path = os.path.join(out, "costs.json")
    costs = json.load(open(path)) if os.path.exists(path) else {}
    costs.setdefault(part, []).append(entry)
    save_json(costs, path)


def teacher_steps(out, a):
    """The steps of the saved teacher checkpoints that have an EMA of --ema_rate, up to --steps."""
    ckpt_dir = os.path.join(out, "checkpoints", "teacher")
    steps = [parse_resume_step_from_filename(n) for n in list_checkpoints(ckpt_dir)]
    return [s for s in steps if s <= a.steps
            and os.path.exists(os.path.join(ckpt_dir, ema_checkpoint_name(float(a.ema_rate), s)))]


def load_teacher(out, a, step):
    """
    (the teacher's network with its EMA weights at `step`, in eval mode on this process's device
    (its GPU when there is one), its model and diffusion flags).
    """
    flags = load_pickle(os.path.join(out, "logs", "teacher", "ddpm_sr_model_args.pkl"), what="DDPM-SR args pickle")
    model, _ = sr_create_model_and_diffusion(**flags)
    load_model_weights(model, os.path.join(out, "checkpoints", "teacher", ema_checkpoint_name(float(a.ema_rate), step)),
                       "out_dir", SR_FLAG_NAMES)
    return model.to(dev()).eval(), flags


def best_fast(trained, verdict):
    """
    The fast configuration (not ancestral) that the training curve follows: the fewest NFE within
    the floor criterion against exact truth, else the lowest relative std error against it.
    """
    fast = {key: s["scores"] for key, s in trained.items() if s["scores"]["sampler"] != "ancestral"}
    if not fast:
        return None
    within = [key for key in fast if verdict[key]["within"]]
    if within:
        return min(within, key=lambda key: fast[key]["nfe"])
    return min(fast, key=lambda key: fast[key]["summary"]["rel_std_error"])


# Where the teacher's denoiser is compared with the exact one: t from nearly clean to nearly pure noise.
DENOISER_TIMESTEPS = (10, 50, 100, 250, 500, 750, 900, 990)


def denoiser_errors(images, network, seed, draws=4):
    """
    The teacher's denoiser against the exact one, on the study's images: at each t of
    DENOISER_TIMESTEPS, x_t = a x + b eps for `draws` noises per image; the mean square of the
    network's eps minus the exact E[eps | x_t, y] ("excess": what a perfect network would
    remove), beside the mean square of the exact E[eps | x_t, y] minus eps ("exact": what no
    network can remove, the training loss's floor). In eps units, so that the two add up to
    the network's expected training MSE at t.
    """
    model, flags = network
    device = next(model.parameters()).device
    diffusion = diffusion_from_flags({**flags, "timestep_respacing": ""})
    ideal = TestbedTeacher(images.testbed, diffusion, learn_sigma=True).to(device)
    x = to_float(images.uint8).repeat_interleave(draws, 0)
    low_res = area_downsample(x, images.small_size).to(device)
    generator = th.Generator().manual_seed(seed)  # the same noises on any device
    out = {}
    for t in DENOISER_TIMESTEPS:
        noise = th.randn(x.shape, generator=generator)
        x_t = diffusion.q_sample(x, th.full((len(x),), t), noise).to(device)
        noise, steps = noise.to(device), th.full((len(x),), t, device=device)
        with th.no_grad():
            net = model(x_t, steps, low_res=low_res)[:, :3]
            exact = ideal(x_t, steps, low_res=low_res)[:, :3]
        out[str(t)] = dict(excess=float(((net - exact) ** 2).mean()), exact=float(((exact - noise) ** 2).mean()))
    return out


# -- the one-pass models of a testbed study ------------------------------------------------------

def find_models(a, images, data):
    """
    The mean and variance models of a testbed study's output folder (--models_dir): the weights
    that study scores (its recipe's, at its last step; else the latest model*.pt) of --mean_run
    and --var_run, on the same testbed as this study. Returns (what was found, None) or (None,
    why they are left out, for the log).
    """
    root = a.models_dir
    if not root or not os.path.isdir(root):
        return None, f"--models_dir {root!r} does not exist (scripts/testbed_study.py writes it)"
    tb_path = os.path.join(root, "data", "testbed.json")
    if not os.path.exists(tb_path):
        return None, f"{tb_path} does not exist"
    theirs = load_testbed(tb_path, "models_dir")
    if theirs.to_json() != images.testbed.to_json():
        return None, (f"{tb_path} is another testbed ({theirs.kind}, {theirs.params.large_size} px) than this "
                      f"study's ({images.testbed.kind}, {images.testbed.params.large_size} px)")
    study_path = os.path.join(root, "study_flags.json")
    study = json.load(open(study_path)) if os.path.exists(study_path) else {}
    found = {}
    for kind, run in ((MEAN, a.mean_run), (VAR, a.var_run)):
        weights = scored_weights(root, run, study)
        args = os.path.join(root, "logs", run, kind.args_pickle)
        if not weights or not os.path.exists(args):
            return None, f"{root}/checkpoints/{run} holds no {kind.name} model checkpoint with {args}"
        found[kind.name] = dict(checkpoint=weights, logs=os.path.dirname(args))
    # the same folder flags (counts, seed) draw the same images: the models trained on this study's
    # training images, and this study's evaluation images are among theirs
    ours, flags = os.path.join(data, "make_testbed_flags.json"), os.path.join(root, "data", "make_testbed_flags.json")
    found["same_images"] = bool(os.path.exists(flags) and json.load(open(flags)) == json.load(open(ours)))
    found["recipe"] = study.get("recipe", "")
    return found, None


def scored_weights(root, run, study):
    """The checkpoint of a testbed study's run that the study scores, or None."""
    ckpt_dir = os.path.join(root, "checkpoints", run)
    if study.get("recipe") and study.get("steps"):
        from .recipes import RECIPES  # the testbed study's recipes: which weights (EMA or not) it scores

        if study["recipe"] in RECIPES:
            path = os.path.join(ckpt_dir, RECIPES[study["recipe"]].weights(study["steps"]))
            return path if os.path.exists(path) else None
    names = list_checkpoints(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    return os.path.join(ckpt_dir, names[-1]) if names else None


def model_estimates(found, images):
    """The mean model's output and the variance model's (with that mean model) on the images, [0, 255] units."""
    mean, mean_model = model_outputs(found["mean"]["logs"], found["mean"]["checkpoint"], MEAN, images)
    var, _ = model_outputs(found["var"]["logs"], found["var"]["checkpoint"], VAR, images, mean_model)
    return mean, var


def estimate_scores(images, mean, var):
    """A mean and a variance estimate against the scorer's moments: per image and summarised per component."""
    per_mean = mean_scores(images, mean)
    per_var = [dict(r["vs_var"], coverage=r["coverage"]) for r in var_scores(images, mean, var)]
    return dict(mean=dict(summary=summarize(per_mean, images.ks, images.labels), per_image=per_mean),
                var=dict(summary=summarize(per_var, images.ks, images.labels), per_image=per_var))


# -- scoring one sample set against another -------------------------------------------------------

ROUNDING_VARIANCE = 1 / 12  # [0, 255]^2 units: the variance that uint8 rounding alone gives a pixel


def against(images, means, variances):
    """
    The scorer with a sample set's moments (N samples, ddof 1) in place of the exact ones, so
    that the same metrics score another estimate against that set: a fast sampler against the
    teacher's own ancestral samples, or a model against the teacher's samples, as the paper
    scores its models. The set's variances are floored at uint8 rounding's 1/12 so that every
    relative error stays finite; the fresh exact draws (calibration) stay the exact ones.
    """
    ref = images.subset(list(range(len(images.names))))
    ref.exact_mean = np.asarray(means, np.float64)
    ref.exact_var = np.maximum(np.asarray(variances, np.float64), ROUNDING_VARIANCE)
    return ref


def against_reference(images, reference, sets, floor_a, floor_b, biased):
    """
    Every set of `sets` scored against the `reference` set (its own moments, not exact truth),
    with the floor of such a comparison: N exact posterior samples scored against another N
    (floor_b against floor_a, the same images), and the criterion's power: exact samples of a
    known variance bias against floor_b.
    """
    ref = against(images, reference["means"], reference["variances"])
    out = {key: scored(ref, s["means"], s["variances"], sampler=s["scores"]["sampler"], nfe=s["scores"]["nfe"],
                       perturbation=0.0, seconds_per_sample=s["scores"]["seconds_per_sample"])
           for key, s in sets.items() if s is not reference}
    out["mc_floor"] = scored(against(images, floor_a["means"], floor_a["variances"]), floor_b["means"],
                             floor_b["variances"])
    ref_b = against(images, floor_b["means"], floor_b["variances"])
    for key, s in biased.items():
        out[key] = scored(ref_b, s["means"], s["variances"], variance_factor=s["scores"]["variance_factor"])
    return out


# -- the study -----------------------------------------------------------------------------------

def run_study(a, configurations, out):
    """Everything not yet saved under `out`; returns the results the report reads (JSON-able)."""
    from .sampler_report import verdicts  # the report's rule, needed here to pick the curve's sampler

    data = os.path.join(out, "data")
    seconds = make_testbed_folder(a, data)
    if seconds:
        add_cost(out, "testbed", dict(seconds=seconds))
    images = evaluation_images(data, a.num_images, a.large_size, a.small_size)
    logger.log(f"{len(images.names)} evaluation images: {', '.join(images.names)}")
    found, why = find_models(a, images, data)
    if why:
        logger.log(f"the one-pass models are left out: {why}")
    train_teacher(a, out)

    runs = os.path.join(out, "runs")
    n, bs, seed = a.num_samples, a.batch_size, a.seed
    refs = reference_sets(images, runs, n, bs, seed)
    ideal = teacher_sets(images, os.path.join(runs, "ideal"), configurations, n, bs, seed)
    steps = teacher_steps(out, a)
    final = a.steps
    if final not in steps:
        raise UserError(f"{out}/checkpoints/teacher has no EMA checkpoint at step {final} (--ema_rate "
                        f"{a.ema_rate}); it belongs to another run: choose another --out_dir")
    network = load_teacher(out, a, final)
    trained = {final: teacher_sets(images, os.path.join(runs, f"trained_{final:06d}"), configurations, n, bs, seed,
                                   network, f"trained teacher (step {final})")}
    denoiser = {final: cached_json(os.path.join(runs, f"trained_{final:06d}", "denoiser.json"),
                                   lambda: denoiser_errors(images, network, seed))}
    verdict = verdicts({"mc_floor": refs["mc_floor"]["scores"], **{k: s["scores"] for k, s in trained[final].items()}},
                       a.band)
    paper = configuration_key("ancestral", a.paper_steps)
    best = best_fast(trained[final], verdict)
    curve = [(s, nfe) for s, nfe in configurations if configuration_key(s, nfe) in (paper, best)]
    for step in steps:
        if step != final:
            network = load_teacher(out, a, step)
            trained[step] = teacher_sets(images, os.path.join(runs, f"trained_{step:06d}"), curve, n, bs, seed,
                                         network, f"trained teacher (step {step})")
            denoiser[step] = cached_json(os.path.join(runs, f"trained_{step:06d}", "denoiser.json"),
                                         lambda: denoiser_errors(images, network, seed))

    biased = {f"biased_x{f:g}": refs[f"biased_x{f:g}"] for f in KNOWN_BIASES}
    reference = configuration_key("ancestral", a.reference_steps)
    results = dict(
        images=dict(names=images.names, ks=images.ks, labels=list(images.labels)),
        final_step=final, paper=paper, reference=reference, best_fast=best,
        references={key: s["scores"] for key, s in refs.items()},
        ideal={key: s["scores"] for key, s in ideal.items()},
        trained={str(step): {key: s["scores"] for key, s in sets.items()} for step, sets in sorted(trained.items())},
        denoiser={str(step): errors for step, errors in sorted(denoiser.items())},
        vs_reference=dict(
            trained=against_reference(images, trained[final][reference], trained[final], refs["mc_floor"],
                                      refs["mc_floor_b"], biased),
            ideal=against_reference(images, ideal[reference], ideal, refs["mc_floor"], refs["mc_floor_b"], {})),
        models=None, models_left_out=why,
    )
    if found:
        start = time.perf_counter()
        mean, var = model_estimates(found, images)
        forward_s = (time.perf_counter() - start) / len(images.names)
        teacher = trained[final][paper]
        results["models"] = dict(
            found={k: v for k, v in found.items()}, seconds_per_image=forward_s,
            forward_on=cpu_name(),
            vs_exact=estimate_scores(images, mean, var),
            vs_teacher=estimate_scores(against(images, teacher["means"], teacher["variances"]), mean, var))
    return results
