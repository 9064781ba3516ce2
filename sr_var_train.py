"""
Train the variance model: a UNet from [bilinear low-res image, mean-model output] to
(x_hr - mean)^2, with MSE, so that it learns Var[x_hr | x_lr] (Theorem 2.2). Model flags
are pickled to {log_dir}/var_model_args.pkl; checkpoints go to {model_save_dir}.
"""

from guided_diffusion.cli import create_argparser, explicit_flags, run_main
from guided_diffusion.script_util import var_model_defaults
from sr_var.training import train, training_defaults


def create_parser():
    defaults = {**training_defaults(), "mean_model_path": "", "mean_model_args_path": "", **var_model_defaults()}
    return create_argparser(defaults, description=__doc__)


@run_main
def main():
    parser = create_parser()
    train(parser.parse_args(), explicit_flags(parser), "var")


if __name__ == "__main__":
    main()
