"""
Write the exact testbed (a Gaussian scale mixture, SPEC.md) as an image folder:
{out_dir}/images/*.png, {out_dir}/train_data_info.pkl, {out_dir}/to_sample_data_info.pkl and
{out_dir}/testbed.json (what ddpm_sr_sample.py takes as --model_path for the exact teacher).

    python scripts/make_testbed.py --out_dir data/sr_testbed --large_size 32 --small_size 8
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from guided_diffusion import logger  # noqa: E402
from guided_diffusion.cli import UserError, create_argparser, run_main  # noqa: E402
from sr_var.testbed import TestbedParams, write_testbed_dataset  # noqa: E402


@run_main
def main():
    d = TestbedParams()
    parser = create_argparser(dict(out_dir="data/sr_testbed", large_size=d.large_size, small_size=d.small_size,
                                   scales=",".join(map(str, d.scales)), length_scale=d.length_scale,
                                   channel_correlation=d.channel_correlation, num_train=2000, num_eval=16,
                                   seed=0), description=__doc__)
    args = parser.parse_args()
    scales = tuple(float(s) for s in args.scales.split(","))
    try:
        params = TestbedParams(large_size=args.large_size, small_size=args.small_size, scales=scales,
                               weights=tuple(1 / len(scales) for _ in scales), length_scale=args.length_scale,
                               channel_correlation=args.channel_correlation)
    except ValueError as e:
        raise UserError(str(e)) from None
    write_testbed_dataset(args.out_dir, params, args.num_train, args.num_eval, args.seed)
    logger.log(f"wrote {args.num_train} training and {args.num_eval} evaluation images to {args.out_dir}")


if __name__ == "__main__":
    main()
