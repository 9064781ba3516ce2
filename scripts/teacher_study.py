"""
The paper's whole chain on an exact testbed (the covariance mixture by default): a DDPM-SR
upsampler trained with sr_ddpm_train.py on the testbed's training images, sampled on its
evaluation images with the paper's protocol (ancestral, 250 steps), ancestral 1,000 and the
fast samplers (--configurations), and every sample set scored against the exact posterior
(per component, relative errors, ddof 1, the sampler study's floor criterion) beside the
testbed's ideal teacher at the same configurations, the exact teacher and the Monte Carlo
floor; every sampler also against the teacher's own ancestral-1,000 samples; the teacher's
earlier checkpoints; and, with a testbed study's output folder (--models_dir), its mean and
variance models against the teacher's samples (what the paper reports) and against exact
truth. Writes {out_dir}/results.json, results.md, error_vs_nfe.png and training_curve.png;
a rerun continues (each sample set is saved as it finishes), and a larger --steps continues
the training and samples the new checkpoint.

    python scripts/teacher_study.py                       # docs/testbed.md says how long
    python scripts/teacher_study.py --testbed gaussian_scale_mixture --out_dir outputs/teacher_study_gsm
    python scripts/teacher_study.py --out_dir /tmp/tiny --large_size 16 --small_size 4 --num_train 64 \\
        --num_eval 4 --num_images 2 --num_samples 3 --steps 4 --save_interval 2 --train_batch_size 4 \\
        --paper_steps 20 --reference_steps 40 \\
        --configurations ancestral:20,ancestral:40,dpmpp_2m@logsnr:5,dpmpp_2m_sde@logsnr:5,analytic_ddim:5
"""

import json
import os
import time

from runkit import (
    AT_LEAST_ONE,
    AT_LEAST_TWO_SAMPLES,
    POSITIVE,
    UserError,
    check_choice,
    create_argparser,
    explicit_flags,
    list_flags,
    logger,
    require_writable_dir,
    run_main,
)
from runkit.fileio import record_run_flags, save_json
from studies.teacher_report import readings, write_report
from studies.teacher_run import (
    DEFAULT_CONFIGURATIONS,
    TEACHER_MODEL_FLAGS,
    configuration_key,
    parse_configurations,
    run_study,
)
from testbed import TESTBED_CHECKS, TESTBED_KINDS, TESTBED_RULES


def defaults():
    return dict(out_dir="outputs/teacher_study", testbed="covariance_mixture", large_size=32, small_size=8,
                length_scale=2.0, num_train=40000, num_eval=100, seed=0, num_images=10, num_samples=16,
                batch_size=16, steps=3000, save_interval=1500, train_batch_size=16, lr=1e-3, ema_rate="0.99",
                configurations=DEFAULT_CONFIGURATIONS, paper_steps=250, reference_steps=1000, band=0.03,
                models_dir="outputs/testbed_study", mean_run="mean_s0", var_run="var_s0")


RULES = dict(TESTBED_RULES, num_train=AT_LEAST_ONE, num_images=AT_LEAST_ONE, num_samples=AT_LEAST_TWO_SAMPLES,
             batch_size=AT_LEAST_ONE, steps=AT_LEAST_ONE, save_interval=AT_LEAST_ONE, train_batch_size=AT_LEAST_ONE,
             lr=POSITIVE, paper_steps=AT_LEAST_ONE, reference_steps=AT_LEAST_ONE, band=POSITIVE)


def check(a, explicit):
    """Everything the flags must satisfy, before anything is written; returns the configurations."""
    check_choice(a.testbed, tuple(TESTBED_KINDS), "testbed")
    configurations = parse_configurations(a.configurations)
    keys = [configuration_key(s, nfe) for s, nfe in configurations]
    for flag, steps in (("paper_steps", a.paper_steps), ("reference_steps", a.reference_steps)):
        if configuration_key("ancestral", steps) not in keys:
            raise UserError(f"--{flag} {steps}: --configurations must include ancestral:{steps}")
    if a.paper_steps == a.reference_steps:
        raise UserError(f"--paper_steps and --reference_steps are both {a.paper_steps}; the reference is another "
                        f"(longer) ancestral run")
    if a.save_interval > a.steps:
        raise UserError(f"--save_interval {a.save_interval} should be at most --steps {a.steps}")
    if a.steps % a.save_interval:
        raise UserError(f"--steps {a.steps} should be a multiple of --save_interval {a.save_interval} (the last "
                        f"checkpoint is the one the study samples)")
    try:
        rate = float(a.ema_rate)
    except ValueError:
        rate = -1.0
    if not 0 < rate < 1:
        raise UserError(f"--ema_rate {a.ema_rate!r}: give one rate in (0, 1), e.g. 0.999")
    if not a.band < 1:
        raise UserError(f"--band {a.band} should be below 1 (the variance ratio's band is [1 - band, 1 + band])")
    if a.num_images > a.num_eval:
        raise UserError(f"--num_images {a.num_images} should be at most --num_eval {a.num_eval}")
    if "models_dir" in explicit and a.models_dir and not os.path.isdir(a.models_dir):
        raise UserError(f"--models_dir {a.models_dir!r} does not exist (a testbed study's --out_dir)")
    return configurations


@run_main
def main():
    parser = create_argparser(defaults(), rules=RULES, checks=(*TESTBED_CHECKS, list_flags("configurations")),
                              description=__doc__)
    a = parser.parse_args()
    configurations = check(a, explicit_flags(parser))
    out = os.path.abspath(a.out_dir)
    require_writable_dir(out, "out_dir")
    # what defines the folder's samples; --steps may grow (the training continues), --configurations may change
    cfg = {k: getattr(a, k) for k in ("testbed", "large_size", "small_size", "num_train", "num_eval", "seed",
                                      "num_images", "num_samples", "train_batch_size", "lr", "ema_rate")}
    if a.testbed == "gaussian_scale_mixture":
        cfg["length_scale"] = a.length_scale
    cfg["teacher_model"] = " ".join(TEACHER_MODEL_FLAGS)
    record_run_flags(os.path.join(out, "study_flags.json"), cfg, "out_dir")
    logger.configure(out, format_strs=("stdout", "log"))
    start = time.time()
    results = run_study(a, configurations, out)
    report_start = time.time()
    costs_path = os.path.join(out, "costs.json")
    results["costs"] = json.load(open(costs_path)) if os.path.exists(costs_path) else {}
    config = {**vars(a), "band": a.band}
    text = write_report(results, out, config)
    results["costs"]["report_s"] = time.time() - report_start
    results.update(config=config, readings=readings(results, a.band), wall_time_s=time.time() - start)
    save_json(results, os.path.join(out, "results.json"))
    print(text)
    logger.log(f"done in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
