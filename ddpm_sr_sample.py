"""
Sample the DDPM-SR upsampler (OpenAI's 64->256 checkpoint) num_samples_per_image times for
each image of --to_sample_images_dict_path, conditioned on its area-downsampled low-res
image and class. Resumable; images are sharded across ranks under mpiexec. With
--model_path naming a testbed.json, the exact testbed denoiser replaces the network.
"""

import os

from guided_diffusion import dist_util, logger
from guided_diffusion.cli import UserError, args_to_dict, create_argparser, run_main
from guided_diffusion.script_util import sr_model_and_diffusion_defaults
from sr_var.sampling import load_sampler_model, plan_sampling, run_sampling, sampling_defaults


def create_parser():
    return create_argparser({**sampling_defaults(), **sr_model_and_diffusion_defaults()}, description=__doc__)


@run_main
def main():
    args = create_parser().parse_args()
    if not args.output_dir:
        raise UserError("--output_dir is required")
    if args.num_samples_per_image < 1:
        raise UserError(f"--num_samples_per_image must be at least 1 (got {args.num_samples_per_image})")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {args.batch_size})")
    dist_util.setup_dist()
    logger.configure(args.log_dir or os.path.join(args.output_dir, "log"), rank=dist_util.get_rank())
    todo = plan_sampling(args)
    model, diffusion = load_sampler_model(args, args_to_dict(args, sr_model_and_diffusion_defaults().keys()))
    run_sampling(args, model, diffusion, todo)


if __name__ == "__main__":
    main()
