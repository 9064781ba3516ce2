"""
Write an exact testbed as an image folder: {out_dir}/images/*.png, train_data_info.pkl,
to_sample_data_info.pkl and testbed.json (what ddpm_sr_sample.py takes as --model_path for
the testbed teachers). Two kinds (SPEC.md; docs/testbed.md):

    gaussian_scale_mixture  (the default; the mini run's) x ~ N(0, s_k^2 S): --scales,
                            --length_scale, --channel_correlation
    covariance_mixture      components of their own oriented kernels: --components
                            (weight:scale:l1:l2:degrees, comma separated; empty: the defaults),
                            --jitter, --channel_correlation

    python scripts/make_testbed.py --out_dir data/sr_testbed --large_size 32 --small_size 8
    python scripts/make_testbed.py --kind covariance_mixture --out_dir data/sr_testbed_cm
"""

import math
import os

from runkit import (
    NON_NEGATIVE,
    UserError,
    check_choice,
    comma_list,
    create_argparser,
    explicit_flags,
    list_flags,
    logger,
    require_writable_dir,
    run_main,
)
from runkit.fileio import record_run_flags
from testbed import (
    TESTBED_CHECKS,
    TESTBED_KINDS,
    TESTBED_RULES,
    Component,
    CovarianceMixtureParams,
    TestbedParams,
    load_testbed,
    write_testbed_dataset,
)

KIND_FLAGS = {"gaussian_scale_mixture": ("scales", "length_scale"), "covariance_mixture": ("components", "jitter")}


def parse_components(text):
    """'w:s:l1:l2:deg,...' -> Components (angles in degrees on the command line, radians in testbed.json)."""
    components = []
    for item in comma_list(text, "components", example="0.5:0.2:4:0.8:0,0.5:0.3:4:0.8:90"):
        parts = item.split(":")
        try:
            w, s, l1, l2, deg = (float(v) for v in parts)
        except ValueError:
            raise UserError(f"--components item {item!r}: give weight:scale:l1:l2:degrees, five numbers") from None
        components.append(Component(w, s, (l1, l2), math.radians(deg)))
    return tuple(components)


def testbed_params(args):
    try:
        if args.kind == "gaussian_scale_mixture":
            scales = comma_list(args.scales, "scales", float, example="0.08,0.16,0.3")
            return TestbedParams(large_size=args.large_size, small_size=args.small_size, scales=scales,
                                 weights=tuple(1 / len(scales) for _ in scales), length_scale=args.length_scale,
                                 channel_correlation=args.channel_correlation)
        extra = {"components": parse_components(args.components)} if args.components else {}
        return CovarianceMixtureParams(large_size=args.large_size, small_size=args.small_size, jitter=args.jitter,
                                       channel_correlation=args.channel_correlation, **extra)
    except ValueError as e:
        raise UserError(str(e)) from None


@run_main
def main():
    d, c = TestbedParams(), CovarianceMixtureParams()
    parser = create_argparser(dict(out_dir="data/sr_testbed", kind="gaussian_scale_mixture", large_size=d.large_size,
                                   small_size=d.small_size, scales=",".join(map(str, d.scales)),
                                   length_scale=d.length_scale, components="", jitter=c.jitter,
                                   channel_correlation=d.channel_correlation, num_train=2000, num_eval=16,
                                   seed=0),
                              rules=dict(TESTBED_RULES, num_train=NON_NEGATIVE),
                              checks=(*TESTBED_CHECKS, list_flags("scales")),
                              description=__doc__)
    args = parser.parse_args()
    check_choice(args.kind, tuple(TESTBED_KINDS), "kind")
    other = [flag for kind, flags in KIND_FLAGS.items() if kind != args.kind for flag in flags
             if flag in explicit_flags(parser)]
    if other:
        raise UserError(f"--{other[0]} does not apply to --kind {args.kind} (it is a parameter of the other testbed)")
    params = testbed_params(args)
    # One folder, one testbed: a rerun with the same flags finishes or finds it done, other flags are refused.
    flags_path = os.path.join(args.out_dir, "make_testbed_flags.json")
    unused = KIND_FLAGS["covariance_mixture" if args.kind == "gaussian_scale_mixture" else "gaussian_scale_mixture"]
    flags = {k: v for k, v in vars(args).items() if k not in ("out_dir", "kind", *unused)}
    testbed_json = os.path.join(args.out_dir, "testbed.json")
    done = os.path.exists(testbed_json)  # written last
    if done and not os.path.exists(flags_path):
        raise UserError(f"--out_dir {args.out_dir!r} already holds a testbed; choose another --out_dir")
    if done and load_testbed(testbed_json, "out_dir").kind != args.kind:
        raise UserError(f"--out_dir {args.out_dir!r} holds a {load_testbed(testbed_json, 'out_dir').kind} testbed, "
                        f"not a {args.kind}; choose another --out_dir")
    require_writable_dir(args.out_dir, "out_dir")
    record_run_flags(flags_path, flags, "out_dir")
    if done:
        logger.log(f"{args.out_dir} already holds this testbed")
        return
    write_testbed_dataset(args.out_dir, params, args.num_train, args.num_eval, args.seed)
    logger.log(f"wrote a {args.kind} testbed: {args.num_train} training and {args.num_eval} evaluation images to "
               f"{args.out_dir}")


if __name__ == "__main__":
    main()
