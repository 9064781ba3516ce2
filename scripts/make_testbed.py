"""
Write the exact testbed (a Gaussian scale mixture, SPEC.md) as an image folder:
{out_dir}/images/*.png, {out_dir}/train_data_info.pkl, {out_dir}/to_sample_data_info.pkl and
{out_dir}/testbed.json (what ddpm_sr_sample.py takes as --model_path for the exact teacher).

    python scripts/make_testbed.py --out_dir data/sr_testbed --large_size 32 --small_size 8
"""

import os

from runkit import (
    NON_NEGATIVE,
    UserError,
    comma_list,
    create_argparser,
    list_flags,
    logger,
    require_writable_dir,
    run_main,
)
from runkit.fileio import record_run_flags
from testbed import TESTBED_CHECKS, TESTBED_RULES, TestbedParams, write_testbed_dataset


@run_main
def main():
    d = TestbedParams()
    parser = create_argparser(dict(out_dir="data/sr_testbed", large_size=d.large_size, small_size=d.small_size,
                                   scales=",".join(map(str, d.scales)), length_scale=d.length_scale,
                                   channel_correlation=d.channel_correlation, num_train=2000, num_eval=16,
                                   seed=0),
                              rules=dict(TESTBED_RULES, num_train=NON_NEGATIVE),
                              checks=(*TESTBED_CHECKS, list_flags("scales")),
                              description=__doc__)
    args = parser.parse_args()
    scales = comma_list(args.scales, "scales", float, example="0.08,0.16,0.3")
    try:
        params = TestbedParams(large_size=args.large_size, small_size=args.small_size, scales=scales,
                               weights=tuple(1 / len(scales) for _ in scales), length_scale=args.length_scale,
                               channel_correlation=args.channel_correlation)
    except ValueError as e:
        raise UserError(str(e)) from None
    # One folder, one testbed: a rerun with the same flags finishes or finds it done, other flags are refused.
    flags_path = os.path.join(args.out_dir, "make_testbed_flags.json")
    flags = {k: v for k, v in vars(args).items() if k != "out_dir"}
    done = os.path.exists(os.path.join(args.out_dir, "testbed.json"))  # written last
    if done and not os.path.exists(flags_path):
        raise UserError(f"--out_dir {args.out_dir!r} already holds a testbed; choose another --out_dir")
    require_writable_dir(args.out_dir, "out_dir")
    record_run_flags(flags_path, flags, "out_dir")
    if done:
        logger.log(f"{args.out_dir} already holds this testbed")
        return
    write_testbed_dataset(args.out_dir, params, args.num_train, args.num_eval, args.seed)
    logger.log(f"wrote {args.num_train} training and {args.num_eval} evaluation images to {args.out_dir}")


if __name__ == "__main__":
    main()
