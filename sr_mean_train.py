"""
Train the mean model: a UNet from the bilinear low-res image to the high-res image, with
MSE, so that it learns E[x_hr | x_lr] (Theorem 2.2). Model flags are pickled to
{log_dir}/mean_model_args.pkl; checkpoints go to {model_save_dir}/model{step:06d}.pt.
"""

from guided_diffusion.cli import create_argparser, explicit_flags, run_main
from guided_diffusion.script_util import mean_model_defaults
from sr_var.training import train, training_defaults


def create_parser():
    return create_argparser({**training_defaults(), **mean_model_defaults()}, description=__doc__)


@run_main
def main():
    parser = create_parser()
    train(parser.parse_args(), explicit_flags(parser), "mean")


if __name__ == "__main__":
    main()
