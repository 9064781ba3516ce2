"""
Train the mean model: a UNet from the bilinear low-res image to the high-res image, with
MSE, so that it learns E[x_hr | x_lr] (Theorem 2.2). Model flags are pickled to
{log_dir}/mean_model_args.pkl; checkpoints go to {model_save_dir}/model{step:06d}.pt.
"""

from runkit import explicit_flags, run_main
from sr_var.kinds import MEAN
from sr_var.training import train, training_parser


def create_parser():
    return training_parser(MEAN, description=__doc__)


@run_main(distributed=True)
def main():
    parser = create_parser()
    train(parser.parse_args(), explicit_flags(parser), MEAN)


if __name__ == "__main__":
    main()
