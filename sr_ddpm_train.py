"""
Train the DDPM-SR upsampler (the teacher that ddpm_sr_sample.py samples) as guided-diffusion's
super_res_train.py does: a SuperResModel on (high-res image, its area-downsampled low-res image,
class), with the diffusion's loss (--learn_sigma True: improved DDPM's hybrid loss), timesteps
sampled --schedule_sampler uniform or loss-second-moment, and EMAs of the weights (--ema_rate).
Model and diffusion flags are pickled to {log_dir}/ddpm_sr_model_args.pkl; checkpoints go to
{model_save_dir}/model{step:06d}.pt, ema_{rate}_{step:06d}.pt and opt{step:06d}.pt, and each
model or EMA file loads into ddpm_sr_sample.py --model_path with the same model flags.
"""

from runkit import explicit_flags, run_main
from sr_var.ddpm_training import train_upsampler, training_parser


def create_parser():
    return training_parser(description=__doc__)


@run_main(distributed=True)
def main():
    parser = create_parser()
    train_upsampler(parser.parse_args(), explicit_flags(parser))


if __name__ == "__main__":
    main()
