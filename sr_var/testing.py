"""
Running a trained model of any kind (sr_var.kinds) over the images of a data-info pickle and
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

from imaging import low_res_input, to_float
from runkit import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    UserError,
    check_stop,
    create_argparser,
    dist_util,
    lock_folder,
    logger,
    require_writable_dir,
    stop_signals,
)
from runkit.fileio import load_model_weights
from runkit.finite import require_finite

from .data import flatten_data_info, iterate_images, load_data_info, read_image, resolve_images
from .models import load_mean_model, model_args_for_run, use_fp16_here
from .networks import MEAN_FLAG_NAMES
from .visualize import tile


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


TESTING_RULES = dict(batch_size=AT_LEAST_ONE, local_rank=NON_NEGATIVE, num_workers=NON_NEGATIVE,
                     max_tensorboard_batches=NON_NEGATIVE)


def testing_parser(kind, description=None):
    """The flags of a kind's test stage: the test's, the mean model's paths where it needs one, the model's."""
    mean_paths = dict(mean_model_path="", mean_model_args_path="") if kind.mean_model_flags else {}
    return create_argparser({**testing_defaults(), **mean_paths, **kind.defaults()},
                            rules={**TESTING_RULES, **kind.rules}, checks=kind.checks, description=description)


def checkpoint_step(model_path):
    """model090000.pt -> 90000 (the step in the output file names); other names: their stem."""
    name = os.path.basename(model_path)
    m = re.match(r"^model(\d+)\.pt$", name)
    return int(m.group(1)) if m else os.path.splitext(name)[0]


def test(args, explicit, kind):
    """The body of sr_mean_test.py, sr_var_test.py and sr_pc_test.py: `kind` is a kinds.ModelKind."""
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

    pickle_path = os.path.join(args.log_dir, kind.args_pickle)
    model_args = model_args_for_run(args, explicit, kind, pickle_path)
    model = kind.build(model_args)
    if not args.model_path:
        raise UserError("--model_path is required (a checkpoint of the training run)")
    load_model_weights(model, args.model_path, "model_path", MEAN_FLAG_NAMES)
    model.to(device).eval()
    if use_fp16:
        model.convert_to_fp16()
    mean_model = None
    if kind.uses_mean_model(model_args):
        mean_model = load_mean_model(args.mean_model_path, args.mean_model_args_path, device, use_fp16,
                                     sizes=(model_args["large_size"], model_args["small_size"]))

    step = checkpoint_step(args.model_path)
    mine = [i for i in dist_util.shard(list(range(len(names))))
            if not all(os.path.exists(p) for p in kind.output_paths(args.output_dir, names[i], step).values())]
    for i in mine:  # a damaged image is found before the log or any output is written
        read_image(paths[i])

    for flag in ("log_dir", "output_dir"):
        require_writable_dir(getattr(args, flag), flag)
    if dist_util.get_rank() == 0:
        lock_folder(args.output_dir, "output_dir")
    logger.configure(args.log_dir, rank=dist_util.get_rank())
    if not os.path.exists(pickle_path):
        logger.log(f"{pickle_path} not found; the model was built from the command-line flags")
    logger.log(f"{kind.name} model step {step}: {len(mine)} of {len(names)} images to do on this rank "
               f"(the rest are sharded to other ranks or done)")

    bar = logger.progress_bar(total=len(mine), desc=f"{kind.name} test")
    images = iterate_images([paths[i] for i in mine], model_args["large_size"], args.batch_size, args.num_workers)
    with stop_signals():
        for n_batch, (batch, idx) in enumerate(images):
            high_res = to_float(batch.to(device))
            low_res_up = low_res_input(high_res, model_args["small_size"])
            raw, mean = kind.predict(model, low_res_up, mean_model)
            for part in raw if isinstance(raw, tuple) else (raw,):  # never a NaN image or variance written
                require_finite(part, f"the {kind.title} model's output on {names[mine[idx[0]]]!r} and the rest "
                                     f"of its batch (--model_path {args.model_path!r})")
            for j, k in enumerate(idx.tolist()):
                kind.write(raw, j, kind.output_paths(args.output_dir, names[mine[k]], step), low_res_up)
            if n_batch < args.max_tensorboard_batches:
                logger.write_image(f"test_images_{step}", tile(kind.test_tiles(low_res_up, raw, mean)), n_batch)
            bar.update(len(idx))
            check_stop(f"the {kind.name} test stopped with its outputs so far in {args.output_dir}; "
                       f"the same command continues")
    bar.close()
    dist_util.barrier()
    logger.log(f"{kind.name} test complete: outputs in {args.output_dir}")
