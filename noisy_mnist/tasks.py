"""
The four tasks of `mnist_classification.py`, each a function of the parsed flags:

    train                  the clean model (clean labels)
    generate_noisy_label   draw a label per training image from a noise distribution p
    train_on_noisy_label   train on the drawn labels
    predict_analysis       compare the trained model's softmax with p (Theorem 2.1)

Each task first checks everything the user gave (data, files, checkpoints), so a mistake
ends with one line before anything is written, then logs to `log_dir`.
"""

import hashlib
import json
import os
from types import SimpleNamespace

import numpy as np
import torch as th
import torch.nn.functional as F

from runkit import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    Rule,
    UserError,
    check_choice,
    check_flags,
    dist_util,
    logger,
    require_file,
)
from runkit.fileio import save_json, save_torch
from runkit.training import TrainLoop, list_checkpoints, parse_resume_step_from_filename, resolve_resume_checkpoint

from . import figures, scores
from .data import load_split, to_inputs, train_batches
from .model import MODEL_RULES, NUM_CLASSES, create_model, load_weights, model_defaults, predict_logits
from .noise import (
    MODEL_NOISE_VARIANTS,
    NOISE_TYPES,
    ORIGINAL_EPSILON,
    draw_labels,
    heldout_noise_path,
    label_rng,
    load_heldout_noise,
    load_noisy_labels,
    noise_distribution,
    noise_file_name,
    noise_summary,
    resolve_noise_file,
    save_heldout_noise,
    save_noisy_labels,
)

CHECKPOINT_ROOT = os.path.join("checkpoints", "mnist_classification")
CLEAN = "clean"  # the name of results on clean labels
# Where a noisy-label run's initial weights and batch order come from. "independent": a seed
# of its own, derived from --seed, --label_draw and the noise file's name, so the run shares
# nothing with the clean model whose softmax may have defined p (the original code seeds
# nothing: every run starts from fresh random weights and order). "shared": --seed itself,
# as the clean model (this project's earlier runs: the run starts where the clean model did).
INIT_MODES = ("independent", "shared")


def mnist_defaults():
    """The flags of mnist_classification.py: the original's, plus seed, eval_batch_size and model_noise."""
    return dict(
        data_dir="data/mnist",
        lr=1e-4,
        batch_size=128,
        max_step=20000,
        log_dir="logs/mnist_classification",
        log_interval=10,
        save_interval=2000,
        model_save_dir="",  # "": checkpoints/mnist_classification/original for train and
        # generate_noisy_label, .../<noise label file name> for the other tasks
        resume_checkpoint="",  # a file name in model_save_dir; "" or "latest" loads the newest
        # checkpoint where a trained model is needed (generate_noisy_label, predict_analysis)
        task="train_on_noisy_label",
        alpha=0.6229,
        noise_type="model",
        noise_label_file="model_noisy_label_0.8.pkl",  # inside data_dir, or any path
        seed=0,
        eval_batch_size=2000,
        model_noise="original",  # the original code's formula; "precise": no epsilon, in log space
        init="independent",  # a noisy-label run's initial weights and batch order: INIT_MODES
        label_draw=0,  # which independent draw of the labels (0: the usual one; 1, 2, ...: others of the same p)
        **model_defaults(),
    )


MNIST_RULES = dict(lr=POSITIVE, batch_size=AT_LEAST_ONE, max_step=AT_LEAST_ONE, log_interval=AT_LEAST_ONE,
                   save_interval=AT_LEAST_ONE, seed=NON_NEGATIVE, eval_batch_size=AT_LEAST_ONE,
                   label_draw=NON_NEGATIVE,
                   alpha=Rule(lambda v: 0 <= v <= 1, "in [0, 1] (the probability kept on the true class)"),
                   **MODEL_RULES)


def run(args, console=True):
    """Run the task that args.task names; console=False: no progress bar, log to files only."""
    check_choice(args.task, list(TASK_FUNCTIONS), "task")
    check_choice(args.noise_type, NOISE_TYPES, "noise_type")
    check_choice(args.model_noise, MODEL_NOISE_VARIANTS, "model_noise")
    check_choice(args.init, INIT_MODES, "init")
    check_flags(args, MNIST_RULES)  # as the parser does (the sweep calls this without one)
    th.manual_seed(args.seed)
    np.random.seed(args.seed)
    dist_util.keep_freed_memory()
    return TASK_FUNCTIONS[args.task](args, default_model_save_dir(args), console)


def default_model_save_dir(args):
    if args.model_save_dir:
        return args.model_save_dir
    if args.task in ("train", "generate_noisy_label") or not args.noise_label_file:
        return os.path.join(CHECKPOINT_ROOT, "original")
    return os.path.join(CHECKPOINT_ROOT, labels_name(args.noise_label_file))


def labels_name(noise_label_file):
    """What a run's results are named by: the noise file's stem, or "clean"."""
    return os.path.splitext(os.path.basename(noise_label_file))[0] if noise_label_file else CLEAN


def run_seed(args, labels_file):
    """
    The seed of a run's initial weights and batch order: --seed for the clean model and for
    every run with --init shared; with --init independent, a noisy-label run's own, derived
    from --seed, --label_draw and the noise file's name (INIT_MODES).
    """
    if not labels_file or args.init == "shared":
        return args.seed
    key = f"{args.seed}/{args.label_draw}/init/{labels_name(labels_file)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") >> 1


# ---------------------------------------------------------------------------------------
# Pieces the tasks share
# ---------------------------------------------------------------------------------------

def load_data(data_dir):
    """Both splits as device tensors: inputs [N, 1, 28, 28] float and clean labels [N]."""
    device = dist_util.dev()
    train_images, train_labels = load_split(data_dir, "train")
    test_images, test_labels = load_split(data_dir, "test")
    return SimpleNamespace(train_x=to_inputs(train_images, device), train_y=train_labels.to(device),
                           test_x=to_inputs(test_images, device), test_y=test_labels.to(device))


def load_noise(args, data):
    """(path, noisy labels, p) of --noise_label_file, as device tensors."""
    path = resolve_noise_file(args.noise_label_file, args.data_dir, args.log_dir)
    noisy_labels, p = load_noisy_labels(path, len(data.train_y))
    device = data.train_y.device
    return path, th.from_numpy(noisy_labels).to(device), th.from_numpy(p).to(device)


def load_trained_model(args, model_save_dir, missing_hint):
    """The model of --resume_checkpoint in model_save_dir ("" or "latest": the newest one)."""
    name = args.resume_checkpoint
    if name in ("", "latest"):
        found = list_checkpoints(model_save_dir) if os.path.isdir(model_save_dir) else []
        if not found:
            raise UserError(f"no checkpoint model*.pt in --model_save_dir {model_save_dir!r}; {missing_hint}")
        name = found[-1]
    path = require_file(os.path.join(model_save_dir, name), "resume_checkpoint", missing_hint)
    model = create_model(args.input_dim, args.hidden_dims, dist_util.dev())
    return load_weights(model, path, "resume_checkpoint"), path


def cross_entropy_loss(model, inputs, targets):
    """TrainLoop's loss_fn: (mean loss, output)."""
    logits = model(inputs)
    return F.cross_entropy(logits, targets), logits


def stacked_cross_entropy_loss(model, inputs, targets):
    """
    TrainLoop's loss_fn for a StackedCNN, targets [B, K]: the sum over the K runs of each
    run's mean loss, so each model gets exactly the gradient it would get alone (a mean
    over runs would scale the gradients by 1/K, which Adam's eps does not ignore).
    """
    logits = model(inputs)  # [K, B, 10]
    return F.cross_entropy(logits.flatten(0, 1), targets.T.flatten(), reduction="sum") / len(inputs), logits


def accuracy(logits, labels):
    return (logits.argmax(dim=1) == labels).double().mean().item()


def start_log(args, console):
    formats = ("stdout", "log", "csv", "tensorboard") if console else ("log", "csv", "tensorboard")
    logger.configure(args.log_dir, format_strs=formats)
    logger.log(f"task {args.task}: {vars(args)}")


class TrainingHistory:
    """
    A run's evaluations at its checkpoints (CE on its training targets, accuracy on the clean
    training labels and on the test set), kept in {log_dir}/train_{labels name}.json. A
    resumed run keeps the evaluations up to the step it resumes from.
    """

    def __init__(self, log_dir, labels_file, model_save_dir, start_step):
        self.path = os.path.join(log_dir, f"train_{labels_name(labels_file)}.json")
        self.header = dict(labels=labels_file or CLEAN, model_save_dir=model_save_dir)
        self.evaluations = []
        if start_step and os.path.isfile(self.path):
            with open(self.path) as f:
                self.evaluations = [e for e in json.load(f)["evaluations"] if e["step"] <= start_step]

    def add(self, step, train_logits, test_logits, targets, data, prefix="eval/"):
        """Record and log the evaluation of one checkpoint from its logits on both splits."""
        result = dict(step=step, train_ce=F.cross_entropy(train_logits, targets).item(),
                      clean_train_accuracy=accuracy(train_logits, data.train_y),
                      test_accuracy=accuracy(test_logits, data.test_y))
        self.evaluations = [e for e in self.evaluations if e["step"] != step] + [result]
        save_json(dict(self.header, evaluations=self.evaluations), self.path)
        for key, value in result.items():
            if key != "step":
                logger.logkv(f"{prefix}{key}", value)
        logger.log(f"{self.header['labels']} step {step}: " +
                   ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "step"))
        return result


def train_loop(args, model, batches, loss_fn, model_save_dir, resume, on_save, console):
    """The project's TrainLoop with the MNIST settings of args (Adam, no weight decay)."""
    return TrainLoop(model=model, data=batches, loss_fn=loss_fn, batch_size=args.batch_size, lr=args.lr,
                     model_save_dir=model_save_dir, optimizer="adam", max_step=args.max_step,
                     resume_checkpoint=resume, log_interval=args.log_interval, save_interval=args.save_interval,
                     on_save=on_save, progress=console, flag_names="hidden_dims")


def fit(args, model_save_dir, data, targets, labels_file, console):
    """
    Train a fresh or resumed model on (data.train_x, targets) with the project's TrainLoop,
    evaluating it at every checkpoint (TrainingHistory). Returns the history's path.
    """
    seed = run_seed(args, labels_file)
    th.manual_seed(seed)
    model = create_model(args.input_dim, args.hidden_dims, dist_util.dev())
    resume = resolve_resume_checkpoint(model_save_dir, args.resume_checkpoint)
    start_step = parse_resume_step_from_filename(resume)
    batches = train_batches(data.train_x, targets, args.batch_size, seed, start_step)
    start_log(args, console)
    logger.log(f"training on {labels_file or 'the clean labels'}; checkpoints in {model_save_dir}; initial "
               f"weights and batch order from seed {seed} (--init {args.init})")
    history = TrainingHistory(args.log_dir, labels_file, model_save_dir, start_step)

    def evaluate(step):
        history.add(step, predict_logits(model, data.train_x, args.eval_batch_size),
                    predict_logits(model, data.test_x, args.eval_batch_size), targets, data)
        logger.dumpkvs(step)

    train_loop(args, model, batches, cross_entropy_loss, model_save_dir, resume, evaluate, console).run_loop()
    return history.path


def fit_stack(args, runs, data, console):
    """
    Train the runs of `runs` (each with labels_file, targets [N], model_save_dir, log_dir)
    together as one StackedCNN. Each run starts from the initial weights `fit` would give
    it (`run_seed`); all take the batch order of the first run's seed, so each trains as
    `fit` would train it alone when they share the seed (--init shared, or a stack of one),
    and otherwise differs from that only in the order of its batches. The stack's own
    checkpoints (model*.pt, opt*.pt: what a killed stack resumes from) go to
    args.model_save_dir, its log to args.log_dir; at every checkpoint each run gets its
    model{step}.pt in SimpleCNN's format in its model_save_dir and its TrainingHistory.
    Returns each run's (train logits, test logits) at the final step, or None where this
    call computed none (the stack had finished before).
    """
    seeds = [run_seed(args, run.labels_file) for run in runs]
    dist_util.keep_freed_memory()
    model = create_model(args.input_dim, args.hidden_dims, dist_util.dev(), num_runs=len(runs), seeds=seeds)
    resume = resolve_resume_checkpoint(args.model_save_dir, "latest")
    start_step = parse_resume_step_from_filename(resume)
    targets = th.stack([run.targets for run in runs], dim=1)  # [N, K]
    batches = train_batches(data.train_x, targets, args.batch_size, seeds[0], start_step)
    start_log(args, console)
    logger.log(f"training {len(runs)} runs as one stack (logged loss: their sum): "
               f"{', '.join(labels_name(run.labels_file) for run in runs)}; initial weights from seeds {seeds}, "
               f"batch order from seed {seeds[0]} (--init {args.init})")
    histories = [TrainingHistory(run.log_dir, run.labels_file, run.model_save_dir, start_step) for run in runs]
    evaluated = {}  # step -> the runs' (train logits, test logits)

    def export_and_evaluate(step):
        train_logits = predict_logits(model, data.train_x, args.eval_batch_size)
        test_logits = predict_logits(model, data.test_x, args.eval_batch_size)
        evaluated.clear()
        evaluated[step] = list(zip(train_logits, test_logits))
        for i, (run, state) in enumerate(zip(runs, model.unstack())):
            save_torch(state, os.path.join(run.model_save_dir, f"model{step:06d}.pt"))
            histories[i].add(step, train_logits[i], test_logits[i], run.targets, data,
                             prefix=f"eval/{labels_name(run.labels_file)}/")
        logger.dumpkvs(step)

    loop = train_loop(args, model, batches, stacked_cross_entropy_loss, args.model_save_dir, resume,
                      export_and_evaluate, console)
    loop.run_loop()
    final = f"model{loop.step:06d}.pt"
    if not all(os.path.isfile(os.path.join(run.model_save_dir, final)) for run in runs):
        export_and_evaluate(loop.step)  # killed after the stack's checkpoint, before the runs' export
    return evaluated.get(loop.step)


# ---------------------------------------------------------------------------------------
# The tasks
# ---------------------------------------------------------------------------------------

def train(args, model_save_dir, console):
    data = load_data(args.data_dir)
    return fit(args, model_save_dir, data, data.train_y, "", console)


def train_on_noisy_label(args, model_save_dir, console):
    if not args.noise_label_file:
        raise UserError("--noise_label_file is required for --task train_on_noisy_label "
                        "(for the clean labels use --task train)")
    data = load_data(args.data_dir)
    path, noisy_labels, _ = load_noise(args, data)
    return fit(args, model_save_dir, data, noisy_labels, path, console)


def generate_noisy_label(args, model_save_dir, console):
    """
    Writes {log_dir}/{noise_type}_noisy_label_{alpha}.pkl and, beside it, p on the test
    images (`heldout_noise_path`); returns the noise file's path.
    """
    images, labels = load_split(args.data_dir, "train")
    test_images, test_labels = load_split(args.data_dir, "test")
    logits = test_logits = None
    source = ""
    if args.noise_type == "model":
        model, source = load_trained_model(
            args, model_save_dir, "train the clean model first: python mnist_classification.py --task train")
        logits = predict_logits(model, to_inputs(images, dist_util.dev()), args.eval_batch_size).cpu().numpy()
        test_logits = predict_logits(model, to_inputs(test_images, dist_util.dev()),
                                     args.eval_batch_size).cpu().numpy()
    start_log(args, console)
    if source:
        logger.log(f"q = softmax of the clean model {source} ({args.model_noise} formula)")
    clean = labels.numpy()
    p = noise_distribution(args.noise_type, args.alpha, clean, logits, args.model_noise)
    noisy = draw_labels(p, label_rng(args.seed, args.noise_type, args.alpha, args.label_draw))
    path = os.path.join(args.log_dir, noise_file_name(args.noise_type, args.alpha))
    # The held-out p first: a file whose noise file exists is complete (a rerun skips both).
    save_heldout_noise(heldout_noise_path(path), noise_distribution(
        args.noise_type, args.alpha, test_labels.numpy(), test_logits, args.model_noise))
    save_noisy_labels(path, noisy, p)
    summary = noise_summary(noisy, p, clean)
    summary["expected_correct_label_ratio"] = float(p[np.arange(len(clean)), clean].mean())
    if logits is not None:
        q = F.softmax(th.from_numpy(logits), dim=1).double().numpy()  # float32 softmax, as the formula's
        q_true = q[np.arange(len(clean)), clean]
        summary["mean_q_true"] = float(q_true.mean())
        summary["saturated_share"] = float(np.mean(1.0 - q_true < ORIGINAL_EPSILON))
    for key, value in summary.items():
        logger.logkv(key, value)
    logger.dumpkvs()
    logger.log(f"{args.noise_type} noise, alpha {args.alpha}: correct-label ratio "
               f"{summary['correct_label_ratio']:.4f} (expected {summary['expected_correct_label_ratio']:.4f}), "
               f"argmax p != c for {summary['argmax_wrong_ratio']:.4f} (label draw {args.label_draw}); saved {path} "
               f"and p on the test images, {heldout_noise_path(path)}")
    return path


def predict_analysis(args, model_save_dir, console, draw=True):
    """
    Over the training set: per class, the mean softmax against the mean noise distribution;
    the average CE between p and the softmax against its minimum (the mean entropy of p);
    the mean total-variation distance between them, with its 95% interval over images. The
    same on the test images (held out) where p is known there (`heldout_targets`). With
    --noise_label_file "" the model is compared with the clean labels. Writes
    {log_dir}/analysis_{labels name}.json and .png.
    """
    data = load_data(args.data_dir)
    if args.noise_label_file:
        hint = (f"train it first: python mnist_classification.py --task train_on_noisy_label "
                f"--noise_label_file {args.noise_label_file}")
    else:
        hint = "train it first: python mnist_classification.py --task train"
    labels_file, noisy_labels, p = analysis_targets(args, data)
    model, checkpoint = load_trained_model(args, model_save_dir, hint)
    return analyse_logits(args, data, labels_file, noisy_labels, p, checkpoint, console,
                          predict_logits(model, data.train_x, args.eval_batch_size),
                          predict_logits(model, data.test_x, args.eval_batch_size), draw=draw)


def analysis_targets(args, data):
    """(labels file, labels [N], p [N, 10]) of --noise_label_file, or of the clean labels if it is ""."""
    if args.noise_label_file:
        return load_noise(args, data)
    return "", data.train_y, F.one_hot(data.train_y, NUM_CLASSES).double()


def heldout_targets(labels_file, data):
    """
    p on the test images [N_test, 10] (numpy): the clean labels' one-hot for "", else the
    file beside the noise file (`heldout_noise_path`); None where there is none (a noise
    file made elsewhere, such as the original's).
    """
    if not labels_file:
        return F.one_hot(data.test_y, NUM_CLASSES).double().cpu().numpy()
    path = heldout_noise_path(labels_file)
    return load_heldout_noise(path, len(data.test_y)) if os.path.isfile(path) else None


def analyse_logits(args, data, labels_file, noisy_labels, p, checkpoint, console, train_logits, test_logits,
                   draw=True):
    """
    predict_analysis from a checkpoint's logits on both splits (the sweep has them from
    training); draw=False: no per-class figure (the studies draw their own).
    """
    start_log(args, console)
    logger.log(f"analysing {checkpoint} against {labels_file or 'the clean labels'}")
    log_softmax = F.log_softmax(train_logits.double(), dim=1)
    softmax = log_softmax.exp()
    in_class = F.one_hot(data.train_y, NUM_CLASSES).double()  # [N, 10]: image i is of class c
    counts = in_class.sum(dim=0)

    def per_class(values):  # [10, 10]: row c is the mean of `values` over the images of class c
        return ((in_class.T @ values) / counts.clamp(min=1)[:, None]).tolist()

    step = parse_resume_step_from_filename(checkpoint)
    result = dict(
        labels=labels_file or CLEAN,
        checkpoint=checkpoint,
        step=step,
        correct_label_ratio=(noisy_labels == data.train_y).double().mean().item(),
        expected_correct_label_ratio=(p * in_class).sum(dim=1).mean().item(),  # mean p[c]
        clean_train_accuracy=accuracy(train_logits, data.train_y),
        test_accuracy=accuracy(test_logits, data.test_y),
        ce_average=(-(p * log_softmax).sum(dim=1)).mean().item(),
        ce_minimum=(-th.special.xlogy(p, p).sum(dim=1)).mean().item(),
        tv_mean=(0.5 * (softmax - p).abs().sum(dim=1)).mean().item(),
        tv_mean_ci95=scores.mean_interval(scores.tv(softmax, p))[1],
        init=args.init,
        init_seed=run_seed(args, labels_file),
        label_draw=args.label_draw,
        class_counts=counts.long().tolist(),
        per_class_softmax=per_class(softmax),
        per_class_noise=per_class(p),
    )
    p_test = heldout_targets(labels_file, data)
    if p_test is not None:  # held out: what Theorem 2.1 is about (the risk minimiser on new images)
        test_softmax = F.softmax(test_logits.double(), dim=1)
        tv_test, ci = scores.mean_interval(scores.tv(test_softmax, p_test))
        result.update(tv_mean_test=tv_test, tv_mean_test_ci95=ci,
                      ce_average_test=float(scores.cross_entropy(p_test, test_softmax).mean()),
                      ce_minimum_test=float(scores.entropy(p_test).mean()))
    else:
        logger.log(f"no p on the test images beside {labels_file} ({heldout_noise_path(labels_file)}): "
                   f"the analysis is on the training images only")
        result.update(tv_mean_test=None, tv_mean_test_ci95=None, ce_average_test=None, ce_minimum_test=None)
    for key in ("correct_label_ratio", "clean_train_accuracy", "test_accuracy", "ce_average", "ce_minimum", "tv_mean",
                "tv_mean_test", "ce_average_test", "ce_minimum_test"):
        if result[key] is not None:
            logger.logkv(f"analysis/{key}", result[key])
            logger.log(f"{key}: {result[key]:.4f}")
    logger.dumpkvs(step)

    name = labels_name(labels_file)
    save_json(result, os.path.join(args.log_dir, f"analysis_{name}.json"))
    if not draw:
        return result
    fig = figures.per_class_figure(result["per_class_softmax"], result["per_class_noise"],
                                   f"{name}, step {step}: mean prediction vs noise per class")
    image = figures.save_figure(fig, os.path.join(args.log_dir, f"analysis_{name}.png"))
    logger.write_image("predict_analysis", image, step)
    return result


TASK_FUNCTIONS = dict(train=train, generate_noisy_label=generate_noisy_label,
                      train_on_noisy_label=train_on_noisy_label, predict_analysis=predict_analysis)
