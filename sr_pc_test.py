"""
Run a trained principal components model over the images of a data-info pickle: writes
{output_dir}/{file_name}/high_res_pcs_{step}.npz with directions [K, H, W, C] (orthonormal
as flat vectors) and variances [K] ([0, 255]^2 units). The model flags come from
{log_dir}/pc_model_args.pkl; the mean model from --mean_model_path and --mean_model_args_path.
"""

from guided_diffusion.cli import create_argparser, explicit_flags, run_main
from guided_diffusion.script_util import pc_model_defaults
from sr_var.testing import test, testing_defaults


def create_parser():
    defaults = {**testing_defaults(), "mean_model_path": "", "mean_model_args_path": "", **pc_model_defaults()}
    return create_argparser(defaults, description=__doc__)


@run_main
def main():
    parser = create_parser()
    test(parser.parse_args(), explicit_flags(parser), "pc")


if __name__ == "__main__":
    main()
