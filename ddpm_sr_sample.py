"""
Sample the DDPM-SR upsampler (OpenAI's 64->256 checkpoint) num_samples_per_image times for
each image of --to_sample_images_dict_path, conditioned on its area-downsampled low-res
image and class. Resumable (every sample has its own random stream); images are sharded
across ranks under mpiexec. With --model_path naming a testbed.json, a testbed teacher
replaces the network: --teacher ideal_ddpm (the default there: the exact denoiser, sampled
as the paper samples) or exact (exact posterior samples through exact reverse transitions).
"""

import os

from guided_diffusion.script_util import SR_MODEL_AND_DIFFUSION_RULES, SR_SIZE_CHECKS, sr_model_and_diffusion_defaults
from runkit import (
    UserError,
    args_to_dict,
    create_argparser,
    dist_util,
    lock_folder,
    logger,
    require_writable_dir,
    run_main,
    stop_signals,
)
from sr_var.sampling import (
    SAMPLING_RULES,
    load_sampler_model,
    plan_sampling,
    record_sampling_flags,
    run_sampling,
    sampling_defaults,
)


def create_parser():
    return create_argparser({**sampling_defaults(), **sr_model_and_diffusion_defaults()},
                            rules={**SAMPLING_RULES, **SR_MODEL_AND_DIFFUSION_RULES}, checks=SR_SIZE_CHECKS,
                            description=__doc__)


@run_main(distributed=True)
def main():
    args = create_parser().parse_args()
    if not args.output_dir:
        raise UserError("--output_dir is required")
    dist_util.setup_dist()
    # Everything is checked before anything is written.
    todo = plan_sampling(args)
    model, diffusion = load_sampler_model(args, args_to_dict(args, sr_model_and_diffusion_defaults().keys()))
    log_dir = args.log_dir or os.path.join(args.output_dir, "log")
    record_sampling_flags(args, write=False)  # a folder of other samples: refused, untouched
    require_writable_dir(args.output_dir, "output_dir")
    require_writable_dir(log_dir, "log_dir")
    if dist_util.get_rank() == 0:
        lock_folder(args.output_dir, "output_dir")
    record_sampling_flags(args)
    logger.configure(log_dir, rank=dist_util.get_rank())
    with stop_signals():
        run_sampling(args, model, diffusion, todo)


if __name__ == "__main__":
    main()
