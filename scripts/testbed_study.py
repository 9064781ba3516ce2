"""
Theorem 2.2 to convergence on an exact testbed (the covariance mixture by default): the mean,
variance, quantile and principal components models trained with the stage scripts
(sr_mean_train.py, sr_var_train.py, sr_quantile_train.py, sr_pc_train.py: the project's one
training loop) with the chosen recipe (studies/recipes.py) and --seeds seeds, every checkpoint
scored in closed form against the exact posterior on held-out images, pooled and per mixture
component, with relative errors:

    mean model      MSE against E[x | y] (and over the mean posterior variance)
    variance model  against Var[x | y] and against what it learns, Var + (m - E)^2: relative
                    var and std errors, the variance ratio; calibration
    quantile model  each level against the exact per-pixel posterior quantile (in posterior
                    stds) and its coverage of fresh exact draws; then intervals with a
                    finite-sample guarantee (RCPS, conformal risk control) over repeated
                    calibration/test splits, against the exact oracle interval
    PC model        its top --num_pcs directions against the exact Cov[x | y] (on x - E[x|y]
                    and on x - m(y), for each seed)

beside the reference lines and the baselines each model must beat: bilinear upsampling; the
closed-form baselines fitted on the same training images (least squares for the mean, the
y-independent and quadratic variance maps, the pooled PCA of the residuals, the residuals'
quantiles); N exact posterior samples (the Monte Carlo floor); N ideal-DDPM-SR samples (the
testbed's perfect upsampler sampled as the paper samples, 250 steps, on --reference_images of
the images). --ablations trains one mean model per other recipe (the recipe table); --kinds
mean trains the mean models alone (a recipe study, without the variance and quantile models
and their intervals). With a teacher study's results.json of the same testbed
(--teacher_results), the models are also scored on its images beside its trained teacher's
sample sets (a table and convergence_vs_teacher.png). Writes {out_dir}/results.json,
results.md, convergence.png, intervals.png and principal_directions.png; every stage resumes.

    python scripts/testbed_study.py                                     # docs/testbed.md says how long
    python scripts/testbed_study.py --seeds 3                           # two more seeds of each model
    python scripts/testbed_study.py --out_dir outputs/steps6000 --steps 6000 --eval_every 1000 --kinds mean --num_pcs 0
    python scripts/testbed_study.py --testbed gaussian_scale_mixture --out_dir outputs/testbed_study_gsm
    python scripts/testbed_study.py --out_dir outputs/recipes --kinds mean --num_pcs 0 --ablations paper,residual,norm8
    python scripts/testbed_study.py --teacher_results outputs/teacher_study/results.json
    python scripts/testbed_study.py --out_dir /tmp/tiny --large_size 16 --small_size 4 --num_train 64 \\
        --num_eval 8 --steps 4 --eval_every 2 --reference_images 2 --reference_samples 4 --num_pcs 2 --seeds 2 \\
        --calibration_splits 5
"""

import os
import time

from runkit import (
    AT_LEAST_ONE,
    AT_LEAST_TWO_SAMPLES,
    FRACTION,
    NON_NEGATIVE,
    UserError,
    check_choice,
    comma_list,
    create_argparser,
    logger,
    require_writable_dir,
    run_main,
)
from runkit.dist_util import cpu_name, device_name
from runkit.fileio import record_run_flags, save_json
from sr_var.quantiles import parse_levels
from studies.recipes import CHOSEN, RECIPES
from studies.testbed_report import direction_figure, interval_figure, write_report
from studies.testbed_run import (
    STUDY_KINDS,
    FinalModels,
    baseline_lines,
    calibration_lines,
    exact_sample_sets,
    finished_runs,
    forward_seconds,
    planned_runs,
    read_teacher_results,
    reference_lines,
    score_checkpoints,
    stage,
    study_images,
    teacher_lines,
    train_runs,
    train_seconds,
)
from testbed import TESTBED_CHECKS, TESTBED_KINDS, TESTBED_RULES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def defaults():
    return dict(out_dir="outputs/testbed_study", testbed="covariance_mixture", large_size=32, small_size=8,
                length_scale=2.0, num_train=40000, num_eval=100, recipe=CHOSEN, ablations="", kinds="mean,var,quantile",
                seeds=1, steps=1500, eval_every=250, reference_images=24, reference_samples=100, num_pcs=5,
                quantiles="0.05,0.5,0.95", delta=0.1, calibration_splits=200, seed=0, teacher_results="", parallel=2)


RULES = dict(TESTBED_RULES, num_train=AT_LEAST_ONE, num_eval=AT_LEAST_ONE, seeds=AT_LEAST_ONE, steps=AT_LEAST_ONE,
             eval_every=AT_LEAST_ONE, reference_images=AT_LEAST_ONE, reference_samples=AT_LEAST_TWO_SAMPLES,
             num_pcs=NON_NEGATIVE, delta=FRACTION, calibration_splits=AT_LEAST_ONE, seed=NON_NEGATIVE,
             parallel=AT_LEAST_ONE)


def check(a):
    """Everything the flags must satisfy, before anything is written."""
    check_choice(a.testbed, tuple(TESTBED_KINDS), "testbed")
    check_choice(a.recipe, tuple(RECIPES), "recipe")
    a.ablations = comma_list(a.ablations, "ablations", choices=tuple(RECIPES)) if a.ablations else []
    a.kinds = comma_list(a.kinds, "kinds", choices=STUDY_KINDS)
    if "mean" not in a.kinds:
        raise UserError(f"--kinds {','.join(a.kinds) or repr('')}: include mean (the variance and PC models learn "
                        f"its residuals, and every table starts from it)")
    if len(parse_levels(a.quantiles)) < 2:
        raise UserError(f"--quantiles {a.quantiles!r}: give at least two levels (an interval's ends)")
    if a.num_pcs and a.num_pcs >= a.reference_samples:
        raise UserError(f"--num_pcs {a.num_pcs} should be below --reference_samples {a.reference_samples} "
                        f"(N samples have at most N - 1 principal components)")
    if a.eval_every > a.steps:
        raise UserError(f"--eval_every {a.eval_every} should be at most --steps {a.steps}")
    if a.reference_images > a.num_eval:
        raise UserError(f"--reference_images {a.reference_images} should be at most --num_eval {a.num_eval}")
    if a.num_eval < 4:
        raise UserError(f"--num_eval {a.num_eval}: the calibration splits need at least 4 images")
    return read_teacher_results(a.teacher_results, a) if a.teacher_results else None


@run_main
def main():
    a = create_argparser(defaults(), rules=RULES, checks=TESTBED_CHECKS, description=__doc__).parse_args()
    teacher = check(a)
    out = os.path.abspath(a.out_dir)
    require_writable_dir(out, "out_dir")
    # more seeds, ablations or kinds add runs to a study (earlier runs stay in it); what its runs are is recorded
    flags = {k: v for k, v in vars(a).items() if k not in ("out_dir", "parallel", "ablations", "kinds", "seeds",
                                                          "calibration_splits", "teacher_results")}
    if a.testbed != "gaussian_scale_mixture":
        del flags["length_scale"]  # the first testbed's parameter
    record_run_flags(os.path.join(out, "study_flags.json"), flags, "out_dir")
    logger.configure(out, format_strs=("stdout", "log"))
    start = time.time()

    data = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data, "testbed.json")):
        logger.log(f"writing the {a.testbed} testbed: {a.num_train} training and {a.num_eval} evaluation images")
        kind_flags = ["--length_scale", str(a.length_scale)] if a.testbed == "gaussian_scale_mixture" else []
        stage(["scripts/make_testbed.py", "--kind", a.testbed, "--out_dir", data, "--large_size", str(a.large_size),
               "--small_size", str(a.small_size), *kind_flags, "--num_train", str(a.num_train), "--num_eval",
               str(a.num_eval), "--seed", str(a.seed)], ROOT)

    images = study_images(data, a.large_size, a.small_size)
    beside_teacher = teacher_lines(teacher, images) if teacher else None  # its images checked before the trainings
    runs = planned_runs(a)
    train_runs(runs, a, out)
    logger.log(f"trainings done ({(time.time() - start) / 60:.1f} min)")

    runs = finished_runs(runs, out, a.steps)
    samples = exact_sample_sets(images, a.reference_samples, a.seed)
    refs = reference_lines(out, data, images, a, samples)
    refs["baselines"] = baseline_lines(out, data, images, a)
    models = FinalModels(out, images, runs, a.steps)
    scores = score_checkpoints(out, images, runs, models)
    # the intervals compare the quantile and the variance model: without them there is nothing to calibrate
    calibration = (calibration_lines(out, images, a, models, samples)
                   if {"var_s0", "quantile_s0"} <= set(models.runs) else None)
    # the models' forward passes run on this process's CPU, ddpm_sr_sample.py on the GPU when there is one
    cost = dict(forward_s=forward_seconds(models), ideal_ddpm_s=refs["ideal_ddpm"]["seconds_per_image"],
                forward_on=cpu_name(), sampling_on=device_name())
    results = dict(config=vars(a), runs=[dict(name=r.name, kind=r.kind, recipe=r.recipe, seed=r.seed, mean=r.mean)
                                         for r in runs],
                   references=refs, scores=scores, calibration=calibration, cost=cost,
                   train_seconds=train_seconds(out), labels=images.labels, wall_time_s=time.time() - start,
                   teacher=beside_teacher)
    save_json(results, os.path.join(out, "results.json"))
    if a.num_pcs:
        direction_figure(models, images, os.path.join(out, "principal_directions.png"), count=min(3, a.num_pcs))
    interval_figure(models, images, parse_levels(a.quantiles), os.path.join(out, "intervals.png"))
    print(write_report(results, out))


if __name__ == "__main__":
    main()
