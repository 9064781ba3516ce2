"""
Train the variance model: a UNet from [bilinear low-res image, mean-model output] to
(x_hr - mean)^2, with MSE, so that it learns Var[x_hr | x_lr] (Theorem 2.2). Model flags
are pickled to {log_dir}/var_model_args.pkl; checkpoints go to {model_save_dir}.
"""

from runkit import explicit_flags, run_main
from sr_var.kinds import VAR
from sr_var.training import train, training_parser


def create_parser():
    return training_parser(VAR, description=__doc__)


@run_main(distributed=True)
def main():
    parser = create_parser()
    train(parser.parse_args(), explicit_flags(parser), VAR)


if __name__ == "__main__":
    main()
