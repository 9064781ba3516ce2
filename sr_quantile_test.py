"""
Run a trained quantile model over the images of a data-info pickle: writes
{output_dir}/{file_name}/high_res_quantiles_{step}.npz with levels [L], quantiles
[L, H, W, C] (float32, [0, 255] units, sorted along L) and the share of pixels whose raw
outputs crossed. The model flags come from {log_dir}/quantile_model_args.pkl; with
--condition_on_mean True the mean model from --mean_model_path and --mean_model_args_path.
"""

from runkit import explicit_flags, run_main
from sr_var.kinds import QUANTILE
from sr_var.testing import test, testing_parser


def create_parser():
    return testing_parser(QUANTILE, description=__doc__)


@run_main(distributed=True)
def main():
    parser = create_parser()
    test(parser.parse_args(), explicit_flags(parser), QUANTILE)


if __name__ == "__main__":
    main()
