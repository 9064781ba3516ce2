"""
Run a trained variance model over the images of a data-info pickle: writes
{output_dir}/{file_name}/high_res_var_{step}.pkl (float32 HWC, [0, 255]^2 units). The model
flags come from {log_dir}/var_model_args.pkl; the mean model from --mean_model_path and
--mean_model_args_path.
"""

from runkit import explicit_flags, run_main
from sr_var.kinds import VAR
from sr_var.testing import test, testing_parser


def create_parser():
    return testing_parser(VAR, description=__doc__)


@run_main(distributed=True)
def main():
    parser = create_parser()
    test(parser.parse_args(), explicit_flags(parser), VAR)


if __name__ == "__main__":
    main()
