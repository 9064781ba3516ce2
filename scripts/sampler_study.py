"""
How much teacher is enough: every sampler of ddpm_sr_sample.py at NFE 10 ... 250, driven by
an exact testbed's ideal teacher (a perfect DDPM-SR upsampler: the exact denoiser, not a
network), against the exact posterior, with the Monte Carlo floor of N exact posterior
samples and the exact teacher beside them; the floor criterion's power on samples of a known
variance bias; and the robustness run (the denoiser perturbed by --perturbations). Writes
{out_dir}/results.json, results.csv, results.md and error_vs_nfe.png; a rerun continues (each
configuration is saved as it finishes).

    python scripts/sampler_study.py                                   # the covariance mixture
    python scripts/sampler_study.py --testbed gaussian_scale_mixture --out_dir outputs/sampler_study_gsm
    python scripts/sampler_study.py --out_dir /tmp/quick --num_eval 4 --num_samples 20 --nfe 10,25
    python scripts/sampler_study.py --samplers ancestral --nfe 1000   # adds ancestral 1,000 (not in the default)

A configuration is "within the floor" when every mixture component's variance ratio has its
95% interval inside [1 - band, 1 + band] and its relative mean MSE and relative std error are
not shown worse than the floor's: paired with the floor image by image, the difference's 95%
interval reaches 0 or stays within band times the floor's value (testbed.scoring.within_floor);
the recommendation is the fewest NFE within it.
"""

import os

from runkit import (
    AT_LEAST_ONE,
    AT_LEAST_TWO_SAMPLES,
    NON_NEGATIVE,
    POSITIVE,
    UserError,
    comma_list,
    create_argparser,
    list_flags,
    logger,
    require_writable_dir,
    run_main,
)
from runkit.fileio import atomic_write, record_run_flags, save_json
from studies.sampler_report import H200_SAMPLE_STEPS_PER_S, draw_figure, recommend, verdicts, write_tables
from studies.sampler_run import DEFAULT_GRID, run_study
from testbed import TESTBED_CHECKS, TESTBED_RULES, study_testbed


def defaults():
    return dict(out_dir="outputs/sampler_study", testbed="covariance_mixture", num_eval=24, num_samples=100,
                batch_size=100, nfe="", samplers=",".join(DEFAULT_GRID), large_size=32, small_size=8,
                length_scale=2.0, eta=0.0, seed=0, band=0.03, perturbations="-0.3,0.3")


RULES = dict(TESTBED_RULES, num_samples=AT_LEAST_TWO_SAMPLES, batch_size=AT_LEAST_ONE, eta=NON_NEGATIVE,
             band=POSITIVE)


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
    if not args.band < 1:
        raise UserError(f"--band {args.band} should be below 1 (the variance ratio's band is [1 - band, 1 + band])")
    perturbations = comma_list(args.perturbations, "perturbations", float, example="-0.3,0.3") \
        if args.perturbations else []
    testbed = study_testbed(args.testbed, args.large_size, args.small_size, args.length_scale)
    require_writable_dir(args.out_dir, "out_dir")
    cfg = {k: v for k, v in vars(args).items() if k not in ("out_dir", "nfe", "samplers", "batch_size", "band",
                                                            "perturbations")}
    if args.testbed != "gaussian_scale_mixture":
        del cfg["length_scale"]  # the first testbed's parameter
    record_run_flags(os.path.join(args.out_dir, "study_flags.json"), cfg, "out_dir")
    logger.configure(args.out_dir, format_strs=("stdout", "log"))
    logger.log(f"testbed: {testbed.to_json()}")
    results = run_study(cfg, grid, args.out_dir, args.batch_size, testbed, perturbations)
    verdict = verdicts(results, args.band)
    recommendation = recommend(results, verdict)
    save_json(dict(config=cfg, band=args.band, results=results, verdicts=verdict, recommendation=recommendation,
                   h200_sample_steps_per_s=H200_SAMPLE_STEPS_PER_S), os.path.join(args.out_dir, "results.json"))
    lines = write_tables(results, args.out_dir, args.num_samples, args.band, verdict)
    fewest = recommendation["fewest"]
    if fewest:
        lines += ["", f"Fewest evaluations within the floor criterion: {fewest['sampler']} at {fewest['nfe']} NFE "
                      f"(the paper's 2,000 x 100 samples: {fewest['hours_on_one_h200']:.1f} h on one H200 at "
                      f"{H200_SAMPLE_STEPS_PER_S:.0f} sample-steps/s); measured with the testbed's exact denoiser, "
                      f"not a network."]
    else:
        lines += ["", "No sampler configuration is within the floor criterion."]
    text = "\n".join(lines) + "\n"
    atomic_write(os.path.join(args.out_dir, "results.md"), lambda f: f.write(text.encode()))
    draw_figure(results, os.path.join(args.out_dir, "error_vs_nfe.png"), args.num_samples, args.band)
    print(text)


if __name__ == "__main__":
    main()
