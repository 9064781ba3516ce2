"""scripts/teacher_study.py end to end at a tiny size (with a rerun that continues), and its scoring of one sample set against another."""

import json
import os

import numpy as np
import pytest

from runkit import UserError
from studies.sampler_run import evaluation_images, sampled_moments, scored
from studies.teacher_run import against, against_reference, exact_draws, parse_configurations, stratified
from testbed import CovarianceMixture, CovarianceMixtureParams
from testbed.scoring import within_floor

from .conftest import assert_user_error, run_script

TINY = ["--large_size", "16", "--small_size", "4", "--num_train", "64", "--num_eval", "6", "--num_images", "2",
        "--num_samples", "3", "--steps", "4", "--save_interval", "2", "--train_batch_size", "4",
        "--paper_steps", "10", "--reference_steps", "20",
        "--configurations", "ancestral:10,ancestral:20,dpmpp_2m@logsnr:5"]


def tiny_models(study, models):
    """A testbed study's layout with a mean and a variance model trained for 2 steps on the study's own testbed."""
    os.makedirs(models / "data")
    for name in ("testbed.json", "make_testbed_flags.json"):
        (models / "data" / name).write_bytes((study / "data" / name).read_bytes())
    (models / "study_flags.json").write_text(json.dumps({"recipe": "paper", "steps": 2}))
    common = ["--large_size", "16", "--small_size", "4", "--model_channels", "32", "--num_res_blocks", "1",
              "--channel_mult", "1,2", "--attention_resolutions", "8", "--data_dir", str(study / "data" / "images"),
              "--data_info_dict_path", str(study / "data" / "train_data_info.pkl"), "--batch_size", "4",
              "--max_step", "2", "--save_interval", "2", "--num_workers", "0", "--random_flip", "False"]
    run_script(["sr_mean_train.py", *common, "--log_dir", str(models / "logs" / "mean_s0"),
                "--model_save_dir", str(models / "checkpoints" / "mean_s0")])
    run_script(["sr_var_train.py", *common, "--log_dir", str(models / "logs" / "var_s0"),
                "--model_save_dir", str(models / "checkpoints" / "var_s0"),
                "--mean_model_path", str(models / "checkpoints" / "mean_s0" / "model000002.pt"),
                "--mean_model_args_path", str(models / "logs" / "mean_s0" / "mean_model_args.pkl")])


def test_teacher_study_runs_end_to_end_and_continues(tmp_path):
    out, models = tmp_path / "study", tmp_path / "models"
    first = run_script(["scripts/teacher_study.py", "--out_dir", str(out), *TINY,
                        "--models_dir", str(tmp_path / "none")], check=False)
    assert_user_error(first, "--models_dir", "does not exist")  # typed, absent: refused before any work
    assert not out.exists()
    run_script(["scripts/teacher_study.py", "--out_dir", str(out), *TINY, "--models_dir", ""])  # none: left out
    results = json.loads((out / "results.json").read_text())
    assert results["models"] is None and "does not exist" in results["models_left_out"]
    assert results["trained"].keys() == {"2", "4"} and results["paper"] == "ancestral_10"
    assert set(results["trained"]["4"]) == set(results["ideal"]) == {"ancestral_10", "ancestral_20",
                                                                     "dpmpp_2m@logsnr_5"}
    assert results["best_fast"] == "dpmpp_2m@logsnr_5"  # the only fast one; the curve follows it
    assert set(results["trained"]["2"]) == {"ancestral_10", "dpmpp_2m@logsnr_5"}
    # the reference is the teacher's own ancestral 20 samples: every other set is scored against it
    assert set(results["vs_reference"]["trained"]) >= {"ancestral_10", "dpmpp_2m@logsnr_5", "mc_floor"}
    assert "ancestral_20" not in results["vs_reference"]["trained"]
    exact = results["references"]["exact"]["summary"]
    assert abs(exact["var_ratio"] - 1) < 0.3  # exact samples (3 per image): unbiased, noisy
    table = (out / "results.md").read_text()
    assert "## Readings" in table and "3 exact posterior samples (floor)" in table
    assert (out / "error_vs_nfe.png").stat().st_size > 10_000 and (out / "training_curve.png").stat().st_size > 10_000
    assert json.loads((out / "study_flags.json").read_text())["num_samples"] == 3

    # a rerun with a testbed study's models: no training and no sampling, the models scored on the same images
    tiny_models(out, models)
    sets = {p: os.path.getmtime(p) for p in out.rglob("*.npz")}
    rerun = run_script(["scripts/teacher_study.py", "--out_dir", str(out), *TINY, "--models_dir", str(models)])
    assert "training the teacher" not in rerun.stdout
    assert sets == {p: os.path.getmtime(p) for p in out.rglob("*.npz")}
    m = json.loads((out / "results.json").read_text())["models"]
    assert m["found"]["same_images"] and m["found"]["mean"]["checkpoint"].endswith("model000002.pt")
    assert m["vs_exact"]["mean"]["summary"]["num_images"] == 2 and m["vs_teacher"]["var"]["summary"]["var_ratio"] > 0
    assert "the teacher's samples" in (out / "results.md").read_text()
    other = [*TINY[:10], "--num_samples", "4", *TINY[12:]]
    refused = run_script(["scripts/teacher_study.py", "--out_dir", str(out), *other], check=False)
    assert_user_error(refused, "num_samples")


@pytest.fixture(scope="module")
def images():
    testbed = CovarianceMixture(CovarianceMixtureParams(large_size=8, small_size=2))
    return evaluation_images(testbed, 10, seed=3)


def test_a_sample_set_scored_against_another(images):
    """against(): exact moments as the reference reproduce the exact scores; two sets of N exact samples differ by
    about twice one set's error; a set of known variance bias is seen at its size and caught by the criterion."""
    n = 40
    a = exact_draws(images, n, "")
    b = exact_draws(images, n, "second set")
    itself = scored(against(images, images.exact_mean, images.exact_var), a[0], a[1])["per_image"]
    direct = scored(images, a[0], a[1])["per_image"]
    for x, y in zip(itself, direct):  # the exact variance here is above the 1/12 floor everywhere
        assert np.isclose(x["rel_mse"], y["rel_mse"]) and np.isclose(x["var_ratio"], y["var_ratio"])
    floor = scored(against(images, a[0], a[1]), b[0], b[1])
    assert abs(floor["summary"]["var_ratio"] - 1) < 0.05
    assert 1.4 / n < floor["summary"]["rel_mse"] < 3 / n  # each mean carries 1/N of the variance, their difference 2/N
    low = exact_draws(images, n, "second set", variance_factor=0.8)
    judged = scored(against(images, a[0], a[1]), low[0], low[1])
    assert abs(judged["summary"]["var_ratio"] - 0.8) < 0.05
    assert not within_floor(judged, floor)["within"]
    assert not within_floor(judged, floor)["checks"]["variance ratio " + images.labels[0]]

    # against_reference: every set but the reference, the floor of two exact sets, and the biased sets against b
    sets = {name: dict(scores=dict(sampler="x", nfe=1, seconds_per_sample=0.0), means=m[0], variances=m[1])
            for name, m in (("ref", a), ("other", low))}
    biased = {"biased_x0.8": dict(scores=dict(variance_factor=0.8), means=low[0], variances=low[1])}
    out = against_reference(images, sets["ref"], sets, dict(means=a[0], variances=a[1]),
                            dict(means=b[0], variances=b[1]), biased)
    assert set(out) == {"other", "mc_floor", "biased_x0.8"}
    assert np.isclose(out["other"]["summary"]["var_ratio"], judged["summary"]["var_ratio"])
    assert np.isclose(out["mc_floor"]["summary"]["var_ratio"], floor["summary"]["var_ratio"])


def test_configurations_and_the_stratified_images():
    assert parse_configurations("ancestral:250,dpmpp_2m@logsnr:25") == [("ancestral", 250), ("dpmpp_2m@logsnr", 25)]
    for bad in ("ancestral", "ancestral:0", "euler:10", "ancestral@cosine:10", "ancestral:10,ancestral:10", "a,"):
        with pytest.raises(UserError, match="configurations"):
            parse_configurations(bad)
    pairs = [("a0", 0), ("a1", 0), ("a2", 0), ("b0", 1), ("c0", 2), ("c1", 2)]
    assert stratified(pairs, 4) == [("a0", 0), ("a1", 0), ("b0", 1), ("c0", 2)]
    assert stratified(pairs, 6) == sorted(pairs, key=lambda p: (p[1], p[0]))


def test_a_sample_does_not_depend_on_the_images_in_its_batch():
    """sampled_moments batches samples across images (a GPU needs it); each sample still comes from its own stream
    and its own image's mixture: one image per batch and every image in one batch give the same moments."""
    testbed = CovarianceMixture(CovarianceMixtureParams(large_size=16, small_size=4))
    images16 = evaluation_images(testbed, 8, seed=0)  # every component, whose p(k | y) differ across the batch
    for sampler in ("ancestral", "exact"):
        alone = sampled_moments(images16, sampler, 20, 5, 5, seed=0)
        together = sampled_moments(images16, sampler, 20, 5, 40, seed=0)
        assert np.array_equal(alone[0], together[0]) and np.array_equal(alone[1], together[1]), sampler
