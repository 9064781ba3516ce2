"""
Theorem 2.2 to convergence on the exact testbed: the mean, variance and principal components
models trained with the stage scripts (sr_mean_train.py, sr_var_train.py, sr_pc_train.py: the
project's one training loop), every checkpoint scored in closed form against the exact
posterior on held-out images:

    mean model      MSE / PSNR against E[x | y]
    variance model  var and std error against Var[x | y] and against what it learns,
                    Var[x | y] + (m(y) - E[x | y])^2; the variance ratio per mixture scale
    PC model        its top --num_pcs directions and variances against the exact Cov[x | y]:
                    subspace overlap, captured variance, each variance against the variance
                    along its direction (sr_pc_train.py on x - m(y), and on x - E[x | y])
    mean and var    calibration: the share of fresh exact posterior samples within k model std
                    of the model mean (k = 1, 2, 3)

beside reference lines: bilinear upsampling, N exact posterior samples (the Monte Carlo
floor) and N ideal-DDPM-SR samples (the testbed's perfect upsampler sampled as the paper
samples, 250 steps, on --reference_images of the images), and the PCA of both (what N
samples can see of the covariance). Two ablations train alongside:
the mean model on 4,000 instead of 40,000 images, the variance model with --last_layer_type
exp. Writes {out_dir}/results.json, results.md, convergence.png and principal_directions.png;
every stage resumes.

    python scripts/testbed_study.py                       # about 75 min on 2 cores
    python scripts/testbed_study.py --out_dir /tmp/tiny --num_train 64 --small_train 32 \\
        --num_eval 4 --steps 4 --eval_every 2 --reference_images 2 --reference_samples 4 --num_pcs 2
"""

import os
import pickle
import time

import numpy as np

from runkit import (
    AT_LEAST_ONE,
    AT_LEAST_TWO_SAMPLES,
    NON_NEGATIVE,
    POSITIVE,
    UserError,
    create_argparser,
    logger,
    require_writable_dir,
    run_main,
)
from runkit.fileio import atomic_write, load_pickle, record_run_flags, save_json
from studies.testbed_report import crossings, direction_figure, write_report
from studies.testbed_run import (
    forward_seconds,
    pc_reference_lines,
    reference_lines,
    score_checkpoints,
    stage,
    study_images,
    train_wave,
    training_runs,
)
from testbed import TESTBED_CHECKS, TESTBED_RULES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def defaults():
    return dict(out_dir="outputs/testbed_study", large_size=32, small_size=8, length_scale=2.0, num_train=40000,
                small_train=4000, num_eval=100, steps=1200, eval_every=100, batch_size=16, lr=1e-3,
                reference_images=24, reference_samples=100, num_pcs=5, seed=0, parallel=True)


RULES = dict(TESTBED_RULES, num_train=NON_NEGATIVE, small_train=AT_LEAST_ONE, num_eval=AT_LEAST_ONE, steps=AT_LEAST_ONE,
             eval_every=AT_LEAST_ONE, batch_size=AT_LEAST_ONE, lr=POSITIVE, reference_images=AT_LEAST_ONE,
             reference_samples=AT_LEAST_TWO_SAMPLES, num_pcs=AT_LEAST_ONE, seed=NON_NEGATIVE)


@run_main
def main():
    a = create_argparser(defaults(), rules=RULES, checks=TESTBED_CHECKS,
                         description=__doc__).parse_args()
    if a.small_train >= a.num_train:
        raise UserError(f"--small_train {a.small_train} should be below --num_train {a.num_train}")
    if not 1 <= a.num_pcs < a.reference_samples:
        raise UserError(f"--num_pcs {a.num_pcs} should be at least 1 and below --reference_samples "
                        f"{a.reference_samples} (N samples have at most N - 1 principal components)")
    if a.eval_every > a.steps:
        raise UserError(f"--eval_every {a.eval_every} should be at most --steps {a.steps}")
    out = os.path.abspath(a.out_dir)
    require_writable_dir(out, "out_dir")
    record_run_flags(os.path.join(out, "study_flags.json"), {k: v for k, v in vars(a).items() if k != "parallel"},
                     "out_dir")
    logger.configure(out, format_strs=("stdout", "log"))
    start = time.time()

    data = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data, "testbed.json")):
        logger.log(f"writing the testbed: {a.num_train} training and {a.num_eval} evaluation images")
        stage(["scripts/make_testbed.py", "--out_dir", data, "--large_size", str(a.large_size), "--small_size",
               str(a.small_size), "--length_scale", str(a.length_scale), "--num_train", str(a.num_train),
               "--num_eval", str(a.num_eval), "--seed", str(a.seed)], ROOT)
    small_info = os.path.join(data, "train_small_info.pkl")
    if not os.path.exists(small_info):  # small_train training images drawn at random (all scales), with their classes
        info = load_pickle(os.path.join(data, "train_data_info.pkl"))
        everything = sorted((n, s) for s, v in info.items() for n in v["file_names"])
        picks = np.random.default_rng(a.seed).choice(len(everything), a.small_train, replace=False)
        subset = {}
        for name, synset in (everything[i] for i in sorted(picks)):
            subset.setdefault(synset, {"y": info[synset]["y"], "file_names": []})["file_names"].append(name)
        atomic_write(small_info, lambda f: pickle.dump(subset, f))

    waves = training_runs(a, out)
    final = f"model{a.steps:06d}.pt"
    for wave in waves:
        todo = [(name, args) for name, args in wave
                if not os.path.exists(os.path.join(out, "checkpoints", name, final))]
        if todo:
            logger.log(f"training {', '.join(name for name, _ in todo)} ({a.steps} steps each)")
            train_wave(todo, a.parallel)
    logger.log(f"trainings done ({(time.time() - start) / 60:.1f} min)")

    images = study_images(data, a.large_size, a.small_size)
    refs = reference_lines(out, data, images, a.reference_images, a.reference_samples, a.seed)
    refs["pcs"] = pc_reference_lines(out, images, a.reference_samples, a.num_pcs, a.seed,
                                     refs["ideal_ddpm"]["num_images"])
    scores = score_checkpoints(out, images, [n for wave in waves for n, _ in wave], a.steps)
    mean_s, var_s, pc_s = forward_seconds(out, images, a.steps)
    cost = dict(mean_model_s=mean_s, var_model_s=var_s, pc_model_s=pc_s,
                ideal_ddpm_s=refs["ideal_ddpm"]["seconds_per_image"])
    results = dict(config=vars(a), references=refs, scores=scores, cost=cost, wall_time_s=time.time() - start)
    results["crossings"] = crossings(results)
    save_json(results, os.path.join(out, "results.json"))
    direction_figure(out, images, a.steps, os.path.join(out, "principal_directions.png"), count=min(3, a.num_pcs))
    print(write_report(results, out))


if __name__ == "__main__":
    main()
