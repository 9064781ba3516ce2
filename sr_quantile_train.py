"""
Train the quantile model: a UNet from the bilinear low-res image (with --condition_on_mean
True, from [low-res, mean-model output] as the variance model) to one image per level of
--quantiles, by the pinball loss, so that it learns the conditional quantiles of x_hr given
x_lr (the conditional risk minimisers of that loss). Flags as sr_var_train.py; model flags
are pickled to {log_dir}/quantile_model_args.pkl; checkpoints go to {model_save_dir}.
"""

from runkit import explicit_flags, run_main
from sr_var.kinds import QUANTILE
from sr_var.training import train, training_parser


def create_parser():
    return training_parser(QUANTILE, description=__doc__)


@run_main(distributed=True)
def main():
    parser = create_parser()
    train(parser.parse_args(), explicit_flags(parser), QUANTILE)


if __name__ == "__main__":
    main()
