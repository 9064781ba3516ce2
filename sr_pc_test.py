"""
Run a trained principal components model over the images of a data-info pickle: writes
{output_dir}/{file_name}/high_res_pcs_{step}.npz with directions [K, H, W, C] (orthonormal
as flat vectors) and variances [K] ([0, 255]^2 units). The model flags come from
{log_dir}/pc_model_args.pkl; the mean model from --mean_model_path and --mean_model_args_path.
"""

from runkit import explicit_flags, run_main
from sr_var.kinds import PC
from sr_var.testing import test, testing_parser


def create_parser():
    return testing_parser(PC, description=__doc__)


@run_main(distributed=True)
def main():
    parser = create_parser()
    test(parser.parse_args(), explicit_flags(parser), PC)


if __name__ == "__main__":
    main()
