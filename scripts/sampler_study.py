"""
How much teacher is enough: every sampler of ddpm_sr_sample.py at NFE 10 ... 1000, driven by
the exact testbed's ideal teacher (a perfect DDPM-SR upsampler), against the exact posterior,
with the Monte Carlo floor of N exact posterior samples and the exact teacher beside them.
Writes {out_dir}/results.json, results.csv, results.md and error_vs_nfe.png; a rerun
continues (each configuration is saved as it finishes). About 30 minutes on 2 cores.

    python scripts/sampler_study.py --out_dir outputs/sampler_study
    python scripts/sampler_study.py --out_dir /tmp/quick --num_eval 4 --num_samples 20 --nfe 10,25

The recommendation: the fewest NFE whose mean MSE and var error are each within 10% of the
seed's sampler (ancestral, 250 steps) or of the floor, whichever is larger.
"""

import os

from runkit import (
    AT_LEAST_ONE,
    AT_LEAST_TWO_SAMPLES,
    NON_NEGATIVE,
    UserError,
    comma_list,
    create_argparser,
    list_flags,
    logger,
    require_writable_dir,
    run_main,
)
from runkit.fileio import atomic_write, record_run_flags, save_json
from studies.sampler_report import H200_SAMPLE_STEPS_PER_S, draw_figure, recommend, write_tables
from studies.sampler_run import DEFAULT_GRID, run_study
from testbed import TESTBED_CHECKS, TESTBED_RULES


def defaults():
    return dict(out_dir="outputs/sampler_study", num_eval=24, num_samples=100, batch_size=100, nfe="",
                samplers=",".join(DEFAULT_GRID), large_size=32, small_size=8, length_scale=2.0, eta=0.0, seed=0,
                tolerance=0.1)


RULES = dict(TESTBED_RULES, num_samples=AT_LEAST_TWO_SAMPLES, batch_size=AT_LEAST_ONE, eta=NON_NEGATIVE)


def grid_from(args):
    samplers = comma_list(args.samplers, "samplers", choices=tuple(DEFAULT_GRID))
    if not args.nfe:
        return {s: DEFAULT_GRID[s] for s in samplers}
    nfes = comma_list(args.nfe, "nfe", int, example="10,25,50")
    if not all(1 <= n <= 1000 for n in nfes):
        raise UserError(f"--nfe {args.nfe!r}: every count must be in 1..1000")
    return {s: nfes for s in samplers}


@run_main
def main():
    args = create_argparser(defaults(), rules=RULES, checks=(*TESTBED_CHECKS, list_flags("nfe", "samplers")),
                            description=__doc__).parse_args()
    grid = grid_from(args)
    if not 0 < args.tolerance < 1:
        raise UserError(f"--tolerance {args.tolerance} should be in (0, 1)")
    require_writable_dir(args.out_dir, "out_dir")
    cfg = {k: v for k, v in vars(args).items() if k not in ("out_dir", "nfe", "samplers", "batch_size", "tolerance")}
    record_run_flags(os.path.join(args.out_dir, "study_flags.json"), cfg, "out_dir")
    logger.configure(args.out_dir, format_strs=("stdout", "log"))
    results = run_study(cfg, grid, args.out_dir, args.batch_size)
    recommendation = recommend(results, args.tolerance)
    save_json(dict(config=cfg, results=results, recommendation=recommendation,
                   h200_sample_steps_per_s=H200_SAMPLE_STEPS_PER_S), os.path.join(args.out_dir, "results.json"))
    lines = write_tables(results, args.out_dir, args.num_samples)
    if recommendation and recommendation["fewest"]:
        f = recommendation["fewest"]
        lines += ["", f"Fewest evaluations within {args.tolerance:.0%} of ancestral at 250 (or the floor) on mean MSE "
                      f"and var error: {f['sampler']} at {f['nfe']} NFE (the paper's 2,000 x 100 samples: "
                      f"{f['hours_on_one_h200']:.1f} h on one H200 at {H200_SAMPLE_STEPS_PER_S:.0f} sample-steps/s)."]
    text = "\n".join(lines) + "\n"
    atomic_write(os.path.join(args.out_dir, "results.md"), lambda f: f.write(text.encode()))
    draw_figure(results, os.path.join(args.out_dir, "error_vs_nfe.png"), args.num_samples)
    print(text)


if __name__ == "__main__":
    main()
