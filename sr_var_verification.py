"""
Compare the mean and variance models with N DDPM-SR samples per image (Theorem 2.2):
MSE / PSNR / NMSE of the mean, var / std error of the variance, plus accuracy against the
true image, calibration, and (on the exact testbed) the exact posterior. Writes
{log_dir}/results.json, the log, TensorBoard images, {log_dir}/figures/*.png and
{log_dir}/results_grid.png.
"""

from runkit import create_argparser, multiple_of, run_main
from sr_var.verification import VERIFICATION_RULES, verification_defaults, verify


def create_parser():
    return create_argparser(verification_defaults(), rules=VERIFICATION_RULES,
                            checks=(multiple_of("large_size", "small_size"),), description=__doc__)


@run_main
def main():
    verify(create_parser().parse_args())


if __name__ == "__main__":
    main()
