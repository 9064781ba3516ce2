"""
Running a trained mean or variance model over the images of a data-info pickle and
writing what the verification reads:

    {output_dir}/{file_name}/low_res.png                 the bilinear low-res input (mean test)
    {output_dir}/{file_name}/high_res_mean_{step}.png    the mean model's output
    {output_dir}/{file_name}/high_res_var_{step}.pkl     the variance model's output, float32
                                                         HWC in [0, 255]^2 units (x 127.5^2)
    {output_dir}/{file_name}/high_res_pcs_{step}.npz     the PC model's output: directions
                                                         [K, H, W, C] (unit flat vectors) and
                                                         variances [K] in [0, 255]^2 units

Images are sharded across ranks; a rerun skips images whose output exists.
"""

import os
import re

import torch as th

from guided_diffusion import dist_util, logger
from guided_diffusion.cli import UserError, check_stop, lock_folder, require_writable_dir, stop_signals
from guided_diffusion.io_util import load_model_weights, save_pickle, save_png
from guided_diffusion.script_util import MEAN_FLAG_NAMES

from .data import flatten_data_info, iterate_images, load_data_info, low_res_input, resolve_images, to_float, to_uint8
from .models import build_model, load_mean_model, mean_and_var_input, model_args_for_run, use_fp16_here
from .principal_components import pcs_path, save_pcs
from .visualize import std_to_uint8, tile

VAR_SCALE = 127.5 ** 2  # [-1, 1]^2 units -> [0, 255]^2 units


def testing_defaults():
    """Flags of sr_mean_test.py / sr_var_test.py besides the model's (original defaults)."""
    return dict(
        data_dir="",
        data_info_dict_path="",
        batch_size=1,
        log_dir="",
        output_dir="",
        model_path="",
        debug_mode=False,
        local_rank=0,
        num_workers=4,
        max_tensorboard_batches=8,
    )


def checkpoint_step(model_path):
    """model090000.pt -> 90000 (the step in the output file names); other names: their stem."""
    name = os.path.basename(model_path)
    m = re.match(r"^model(\d+)\.pt$", name)
    return int(m.group(1)) if m else os.path.splitext(name)[0]


def output_paths(output_dir, file_name, kind, step):
    folder = os.path.join(output_dir, file_name)
    if kind == "mean":
        return {"low_res": os.path.join(folder, "low_res.png"),
                "mean": os.path.join(folder, f"high_res_mean_{step}.png")}
    if kind == "pc":
        return {"pcs": pcs_path(output_dir, file_name, step)}
    return {"var": os.path.join(folder, f"high_res_var_{step}.pkl")}


def test(args, explicit, kind):
    """The body of sr_mean_test.py (kind "mean"), sr_var_test.py ("var") and sr_pc_test.py ("pc")."""
    for flag in ("log_dir", "output_dir"):
        if not getattr(args, flag):
            raise UserError(f"--{flag} is required")
    dist_util.setup_dist()
    device = dist_util.dev()
    use_fp16 = use_fp16_here(args.use_fp16)
    # Check everything before writing anything.
    info = load_data_info(args.data_info_dict_path)
    names = [name for name, _ in flatten_data_info(info)]
    paths = resolve_images(args.data_dir, names, args.data_info_dict_path)

    pickle_path = os.path.join(args.log_dir, f"{kind}_model_args.pkl")
    model_args = model_args_for_run(args, explicit, kind, pickle_path)
    model = build_model(kind, model_args)
    if not args.model_path:
        raise UserError("--model_path is required (a checkpoint of the training run)")
    load_model_weights(model, args.model_path, "model_path", MEAN_FLAG_NAMES)
    model.to(device).eval()
    if use_fp16:
        model.convert_to_fp16()
    mean_model = None
    if kind != "mean":
        mean_model = load_mean_model(args.mean_model_path, args.mean_model_args_path, device, use_fp16,
                                     sizes=(model_args["large_size"], model_args["small_size"]))

    for flag in ("log_dir", "output_dir"):
        require_writable_dir(getattr(args, flag), flag)
    if dist_util.get_rank() == 0:
        lock_folder(args.output_dir, "output_dir")
    logger.configure(args.log_dir, rank=dist_util.get_rank())
    if not os.path.exists(pickle_path):
        logger.log(f"{pickle_path} not found; the model was built from the command-line flags")
    step = checkpoint_step(args.model_path)
    mine = [i for i in dist_util.shard(list(range(len(names))))
            if not all(os.path.exists(p) for p in output_paths(args.output_dir, names[i], kind, step).values())]
    logger.log(f"{kind} model step {step}: {len(mine)} of {len(names)} images to do on this rank "
               f"(the rest are sharded to other ranks or done)")

    bar = logger.progress_bar(total=len(mine), desc=f"{kind} test")
    images = iterate_images([paths[i] for i in mine], model_args["large_size"], args.batch_size, args.num_workers)
    with stop_signals():
        for n_batch, (batch, idx) in enumerate(images):
            high_res = to_float(batch.to(device))
            low_res_up = low_res_input(high_res, model_args["small_size"])
            with th.no_grad():
                if kind == "mean":
                    output = model(low_res_up).float()
                elif kind == "pc":
                    inputs, mean = mean_and_var_input(mean_model, low_res_up)
                    directions, variances = model(inputs)
                    output = directions * variances.clamp(min=0).sqrt()[:, :, None, None, None]  # sigma_k w_k
                else:
                    inputs, mean = mean_and_var_input(mean_model, low_res_up)
                    output = model(inputs).float()
            for j, k in enumerate(idx.tolist()):
                out = output_paths(args.output_dir, names[mine[k]], kind, step)
                if kind == "mean":
                    save_png(to_uint8(low_res_up[j]).permute(1, 2, 0).cpu().numpy(), out["low_res"])
                    save_png(to_uint8(output[j]).permute(1, 2, 0).cpu().numpy(), out["mean"])
                elif kind == "pc":
                    save_pcs(out["pcs"], directions[j].permute(0, 2, 3, 1).cpu().numpy(),
                             variances[j].cpu().numpy() * VAR_SCALE)
                else:
                    save_pickle((output[j] * VAR_SCALE).permute(1, 2, 0).cpu().numpy(), out["var"])
            if n_batch < args.max_tensorboard_batches:
                shown = [to_uint8(low_res_up.cpu())]
                if kind == "mean":
                    shown += [to_uint8(output.cpu())]
                elif kind == "pc":  # mean +- 2 sigma_k w_k for the first three
                    shown += [to_uint8(mean.cpu())] + [to_uint8((mean + sign * 2 * output[:, k]).cpu())
                                                       for k in range(min(3, output.shape[1])) for sign in (1, -1)]
                else:
                    shown += [to_uint8(mean.cpu()), std_to_uint8(output.cpu())]
                logger.write_image(f"test_images_{step}", tile(shown), n_batch)
            bar.update(len(idx))
            check_stop(f"the {kind} test stopped with its outputs so far in {args.output_dir}; "
                       f"the same command continues")
    bar.close()
    dist_util.barrier()
    logger.log(f"{kind} test complete: outputs in {args.output_dir}")
