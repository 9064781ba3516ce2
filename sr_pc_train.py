"""
Train the posterior principal components model (after NPPC, Nehme et al., NeurIPS 2023): a
UNet from [bilinear low-res image, mean-model output] to --num_pcs orthonormal directions
and the variance along each, trained on x_hr - mean so that it learns the top principal
components of Cov[x_hr | x_lr] (Theorem 2.2 beyond the per-pixel variance). Flags as
sr_var_train.py; model flags are pickled to {log_dir}/pc_model_args.pkl.
"""

from runkit import explicit_flags, run_main
from sr_var.kinds import PC
from sr_var.training import train, training_parser


def create_parser():
    return training_parser(PC, description=__doc__)


@run_main(distributed=True)
def main():
    parser = create_parser()
    train(parser.parse_args(), explicit_flags(parser), PC)


if __name__ == "__main__":
    main()
