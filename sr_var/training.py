"""
Training a model of any kind (sr_var.kinds: the mean model by the MSE to x_hr, the variance
model by the MSE to (x_hr - mean)^2, the principal components model by its loss on
x_hr - mean) through the project's one TrainLoop. Its checks before a run (`start_training`),
the opening of the run's folders (`open_run_folders`) and the loop's flags (`loop_flags`) serve
the DDPM-SR upsampler's training too (sr_var/ddpm_training.py).
"""

import os

from runkit import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    UserError,
    check_choice,
    comma_list,
    create_argparser,
    dist_util,
    logger,
    require_writable_dir,
)
from runkit.fileio import save_pickle
from runkit.training import LR_SCHEDULES, TrainLoop, resolve_resume_checkpoint
from testbed.files import check_flips

from .data import (
    check_batch_size,
    flatten_data_info,
    load_data_info,
    resolve_images,
    seed_everything,
    sr_training_pairs,
    training_batches,
)
from .models import load_mean_model, model_args_for_run
from .networks import MEAN_FLAG_NAMES


def training_defaults():
    """Flags of sr_mean_train.py / sr_var_train.py besides the model's (original defaults)."""
    return dict(
        data_dir="",
        data_info_dict_path="",
        lr=1e-4,
        weight_decay=0.0,
        lr_anneal_steps=0,
        batch_size=1,
        microbatch=-1,
        fp16_scale_growth=1e-3,
        max_step=100000000,
        run_time=-1.0,
        log_dir="",
        log_interval=10,
        save_interval=10000,
        model_save_dir="",
        resume_checkpoint="",
        debug_mode=False,
        local_rank=0,  # accepted for torch.distributed.launch; the rank comes from the launcher's environment
        # additions
        seed=0,
        image_interval=500,
        num_workers=4,
        max_cache_gb=2.0,
        random_flip=True,  # the original's augmentation; refused on a testbed whose prior a flip changes
        lr_schedule="linear",  # the decay over --lr_anneal_steps: linear (the original's) or cosine
        lr_warmup_steps=0,  # a linear warm-up of the lr over this many first steps
        ema_rate="",  # comma-separated rates of EMAs of the weights, saved as ema_{rate}_{step}.pt ("" : none)
    )


TRAINING_RULES = dict(lr=POSITIVE, weight_decay=NON_NEGATIVE, lr_anneal_steps=NON_NEGATIVE, batch_size=AT_LEAST_ONE,
                      fp16_scale_growth=NON_NEGATIVE, max_step=AT_LEAST_ONE, log_interval=AT_LEAST_ONE,
                      save_interval=AT_LEAST_ONE, local_rank=NON_NEGATIVE, seed=NON_NEGATIVE,
                      image_interval=NON_NEGATIVE, num_workers=NON_NEGATIVE, max_cache_gb=NON_NEGATIVE,
                      lr_warmup_steps=NON_NEGATIVE)


def ema_rates(value):
    """The --ema_rate list: distinct rates in (0, 1) ("" : none)."""
    rates = comma_list(value, "ema_rate", float, example="0.9999") if value else []
    for rate in rates:
        if not 0 < rate < 1:
            raise UserError(f"--ema_rate {value!r}: every rate should be in (0, 1), not {rate}")
    if len(set(rates)) < len(rates):
        raise UserError(f"--ema_rate {value!r} names a rate twice")
    return rates


def training_parser(kind, description=None):
    """The flags of a kind's training stage: the loop's, the mean model's paths where it needs one, the model's."""
    mean_paths = dict(mean_model_path="", mean_model_args_path="") if kind.mean_model_flags else {}
    return create_argparser({**training_defaults(), **mean_paths, **kind.defaults()},
                            rules={**TRAINING_RULES, **kind.rules}, checks=kind.checks, description=description)


def start_training(args, explicit, kind):
    """
    What every training stage checks before it builds anything, writing nothing: the two
    folders given, the process group and seeds, the training images (and the batch size
    against them), the checkpoint to resume from, and the model flags of the run (a fresh
    run's from the command line, a resumed run's from its args pickle, contradictions refused).
    Returns (images [(file_name, y)], their paths, the checkpoint to resume or "", model flags).
    """
    for flag in ("log_dir", "model_save_dir"):
        if not getattr(args, flag):
            raise UserError(f"--{flag} is required")
    dist_util.setup_dist()
    seed_everything(args.seed + dist_util.get_rank())

    info = load_data_info(args.data_info_dict_path)
    images = flatten_data_info(info)
    paths = resolve_images(args.data_dir, [name for name, _ in images], args.data_info_dict_path)
    check_batch_size(len(paths), args.batch_size, args.data_info_dict_path)
    check_flips(args.data_dir, args.random_flip)
    resume = resolve_resume_checkpoint(args.model_save_dir, args.resume_checkpoint)
    # A fresh run takes the flags (and refuses another run's args pickle); a resumed run takes the saved ones.
    model_args = model_args_for_run(args, explicit, kind, os.path.join(args.log_dir, kind.args_pickle),
                                    fresh_run=not resume)
    return images, paths, resume, model_args


def open_run_folders(args, kind, model_args, model, num_images):
    """After every check: the folders made writable, the log opened, the args pickle of a fresh run written."""
    for flag in ("log_dir", "model_save_dir"):
        require_writable_dir(getattr(args, flag), flag)
    logger.configure(args.log_dir, rank=dist_util.get_rank())
    pickle_path = os.path.join(args.log_dir, kind.args_pickle)
    if dist_util.get_rank() == 0 and not os.path.exists(pickle_path):
        save_pickle(model_args, pickle_path)
        logger.log(f"saved model flags to {pickle_path}")
    logger.log(f"{kind.name} model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
               f"{num_images} training images")


def loop_flags(args, resume):
    """The TrainLoop arguments that training_defaults()'s flags give."""
    return dict(
        batch_size=args.batch_size,
        microbatch=args.microbatch,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer="adamw",
        lr_anneal_steps=args.lr_anneal_steps,
        lr_schedule=check_choice(args.lr_schedule, LR_SCHEDULES, "lr_schedule"),
        warmup_steps=args.lr_warmup_steps,
        ema_rate=ema_rates(args.ema_rate),
        use_fp16=args.use_fp16,
        fp16_scale_growth=args.fp16_scale_growth,
        max_step=args.max_step,
        run_time=args.run_time,
        model_save_dir=args.model_save_dir,
        resume_checkpoint=resume,
        log_interval=args.log_interval,
        save_interval=args.save_interval,
        image_interval=args.image_interval,
        debug_mode=args.debug_mode,
    )


def train(args, explicit, kind):
    """The body of sr_mean_train.py, sr_var_train.py and sr_pc_train.py: `kind` is a kinds.ModelKind."""
    # Check everything the run needs before the (slow) start, and before writing anything.
    _, paths, resume, model_args = start_training(args, explicit, kind)
    device = dist_util.dev()
    model = kind.build(model_args)
    mean_model = None
    if kind.uses_mean_model(model_args):
        mean_model = load_mean_model(args.mean_model_path, args.mean_model_args_path, device, args.use_fp16,
                                     sizes=(model_args["large_size"], model_args["small_size"]))
    open_run_folders(args, kind, model_args, model, len(paths))

    batches = training_batches(paths, image_size=model_args["large_size"], batch_size=args.batch_size,
                               num_workers=args.num_workers, max_cache_gb=args.max_cache_gb, seed=args.seed)
    pairs = sr_training_pairs(batches, model_args["small_size"], device, random_flip=args.random_flip, seed=args.seed)

    def loss_fn(net, low_res_up, high_res):
        return kind.loss(net, low_res_up, high_res, mean_model)

    def image_fn(step, micro, output):
        logger.write_image("train_images", kind.train_tiles(micro, output, mean_model), step)

    TrainLoop(
        model=model,
        data=pairs,
        loss_fn=loss_fn,
        image_fn=image_fn,
        flag_names=MEAN_FLAG_NAMES,
        **loop_flags(args, resume),
    ).run_loop()
    logger.log("training complete")
