"""
Run a trained mean model over the images of a data-info pickle: writes
{output_dir}/{file_name}/low_res.png and high_res_mean_{step}.png. The model flags come from
{log_dir}/mean_model_args.pkl (the training run's); flags given here must agree with them.
"""

from runkit import explicit_flags, run_main
from sr_var.kinds import MEAN
from sr_var.testing import test, testing_parser


def create_parser():
    return testing_parser(MEAN, description=__doc__)


@run_main(distributed=True)
def main():
    parser = create_parser()
    test(parser.parse_args(), explicit_flags(parser), MEAN)


if __name__ == "__main__":
    main()
