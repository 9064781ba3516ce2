"""
Run a trained mean model over the images of a data-info pickle: writes
{output_dir}/{file_name}/low_res.png and high_res_mean_{step}.png. The model flags come from
{log_dir}/mean_model_args.pkl (the training run's); flags given here must agree with them.
"""

from guided_diffusion.cli import create_argparser, explicit_flags, run_main
from guided_diffusion.script_util import mean_model_defaults
from sr_var.testing import test, testing_defaults


def create_parser():
    return create_argparser({**testing_defaults(), **mean_model_defaults()}, description=__doc__)


@run_main
def main():
    parser = create_parser()
    test(parser.parse_args(), explicit_flags(parser), "mean")


if __name__ == "__main__":
    main()
