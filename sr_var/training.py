"""
Training the mean model (MSE to x_hr), the variance model (MSE to (x_hr - mean)^2) and the
principal components model (principal_components_loss of x_hr - mean) through the
project's one TrainLoop.
"""

import os

import torch.nn.functional as F

from guided_diffusion import dist_util, logger
from guided_diffusion.cli import UserError, require_writable_dir
from guided_diffusion.io_util import save_pickle
from guided_diffusion.train_util import TrainLoop, resolve_resume_checkpoint

from .data import (
    check_batch_size,
    flatten_data_info,
    load_data_info,
    resolve_images,
    seed_everything,
    sr_training_pairs,
    to_uint8,
    training_batches,
)
from .models import build_model, load_mean_model, mean_and_var_input, model_args_for_run
from .principal_components import principal_components_loss
from .visualize import sr_tiles, std_to_uint8, tile


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
        local_rank=0,  # accepted for torch.distributed.launch; the rank comes from MPI
        # additions
        seed=0,
        image_interval=500,
        num_workers=4,
        max_cache_gb=2.0,
    )


def train(args, explicit, kind):
    """The body of sr_mean_train.py (kind "mean"), sr_var_train.py ("var") and sr_pc_train.py ("pc")."""
    for flag in ("log_dir", "model_save_dir"):
        if not getattr(args, flag):
            raise UserError(f"--{flag} is required")
    dist_util.setup_dist()
    seed_everything(args.seed + dist_util.get_rank())
    device = dist_util.dev()

    # Check everything the run needs before the (slow) start, and before writing anything.
    info = load_data_info(args.data_info_dict_path)
    names = [name for name, _ in flatten_data_info(info)]
    paths = resolve_images(args.data_dir, names, args.data_info_dict_path)
    check_batch_size(len(paths), args.batch_size, args.data_info_dict_path)
    resume = resolve_resume_checkpoint(args.model_save_dir, args.resume_checkpoint)
    pickle_path = os.path.join(args.log_dir, f"{kind}_model_args.pkl")
    # A fresh run takes the flags (and refuses another run's args pickle); a resumed run takes the saved ones.
    model_args = model_args_for_run(args, explicit, kind, pickle_path, fresh_run=not resume)
    model = build_model(kind, model_args)
    mean_model = None
    if kind != "mean":
        mean_model = load_mean_model(args.mean_model_path, args.mean_model_args_path, device, args.use_fp16,
                                     sizes=(model_args["large_size"], model_args["small_size"]))

    for flag in ("log_dir", "model_save_dir"):
        require_writable_dir(getattr(args, flag), flag)
    logger.configure(args.log_dir, rank=dist_util.get_rank())
    if dist_util.get_rank() == 0 and not os.path.exists(pickle_path):
        save_pickle(model_args, pickle_path)
        logger.log(f"saved model flags to {pickle_path}")
    logger.log(f"{kind} model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
               f"{len(paths)} training images")

    batches = training_batches(paths, image_size=model_args["large_size"], batch_size=args.batch_size,
                               num_workers=args.num_workers, max_cache_gb=args.max_cache_gb, seed=args.seed)
    pairs = sr_training_pairs(batches, model_args["small_size"], device, seed=args.seed)

    if kind == "mean":
        def loss_fn(net, low_res_up, high_res):
            output = net(low_res_up)
            return F.mse_loss(output.float(), high_res), output

        def image_fn(step, micro, output):
            logger.write_image("train_images", sr_tiles(micro[0], output, micro[1]), step)
    elif kind == "pc":
        def loss_fn(net, low_res_up, high_res):
            inputs, mean = mean_and_var_input(mean_model, low_res_up)
            directions, variances = net(inputs)
            # the output shown: sigma_k w_k, each direction at its standard deviation
            return (principal_components_loss(directions, variances, high_res - mean),
                    directions * variances.clamp(min=0).sqrt()[:, :, None, None, None])

        def image_fn(step, micro, output):
            low_res_up, _ = micro
            _, mean = mean_and_var_input(mean_model, low_res_up)
            n = 4
            columns = [to_uint8(low_res_up[:n].cpu()), to_uint8(mean[:n].cpu())]
            for k in range(min(3, output.shape[1])):  # mean +- 2 sigma_k w_k
                columns += [to_uint8((mean[:n] + sign * 2 * output[:n, k]).cpu()) for sign in (1, -1)]
            logger.write_image("train_images", tile(columns), step)
    else:
        def loss_fn(net, low_res_up, high_res):
            inputs, mean = mean_and_var_input(mean_model, low_res_up)
            output = net(inputs)
            return F.mse_loss(output.float(), (high_res - mean) ** 2), output

        def image_fn(step, micro, output):
            low_res_up, high_res = micro
            inputs, mean = mean_and_var_input(mean_model, low_res_up)
            label = (high_res - mean) ** 2
            n = 4
            columns = [to_uint8(low_res_up[:n].cpu()), to_uint8(mean[:n].cpu()),
                       std_to_uint8(output[:n].cpu()), std_to_uint8(label[:n].cpu())]
            logger.write_image("train_images", tile(columns), step)

    TrainLoop(
        model=model,
        data=pairs,
        loss_fn=loss_fn,
        batch_size=args.batch_size,
        microbatch=args.microbatch,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer="adamw",
        lr_anneal_steps=args.lr_anneal_steps,
        use_fp16=args.use_fp16,
        fp16_scale_growth=args.fp16_scale_growth,
        max_step=args.max_step,
        run_time=args.run_time,
        model_save_dir=args.model_save_dir,
        resume_checkpoint=resume,
        log_interval=args.log_interval,
        save_interval=args.save_interval,
        image_interval=args.image_interval,
        image_fn=image_fn,
        debug_mode=args.debug_mode,
    ).run_loop()
    logger.log("training complete")
