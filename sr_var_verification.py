"""
Compare the mean and variance models with N DDPM-SR samples per image (Theorem 2.2):
MSE / PSNR / NMSE of the mean, var / std error of the variance, plus accuracy against the
true image, calibration, and (on the exact testbed) the exact posterior. Writes
{log_dir}/results.json, the log, TensorBoard images, {log_dir}/figures/*.png and
{log_dir}/results_grid.png.
"""

from guided_diffusion.cli import create_argparser, run_main
from sr_var.verification import verification_defaults, verify


def create_parser():
    return create_argparser(verification_defaults(), description=__doc__)


@run_main
def main():
    verify(create_parser().parse_args())


if __name__ == "__main__":
    main()
