"""scripts/testbed_study.py end to end at a tiny size: every run, reference, baseline and the calibrated intervals."""

import json
import os

import numpy as np

from sr_var.data import flatten_data_info, load_data_info

from .conftest import run_script

TINY = ["--large_size", "16", "--small_size", "4", "--num_train", "64", "--num_eval", "8", "--steps", "4",
        "--eval_every", "2", "--reference_images", "2", "--reference_samples", "4", "--num_pcs", "2", "--seeds", "2",
        "--calibration_splits", "5"]


def fake_teacher_results(names, num_eval):
    """A teacher study's results.json in form (scripts/teacher_study.py writes it) for the tiny study's testbed."""
    def sample_set(rel_mse, rel_std_error):
        return {"summary": {"rel_mse": rel_mse, "rel_std_error": rel_std_error,
                            "ci95": {"rel_mse": [rel_mse / 2, rel_mse * 2], "rel_std_error": [0.0, 1.0]}}}

    sets = {"ancestral_10": sample_set(0.05, 0.2), "ancestral_20": sample_set(0.04, 0.15)}
    return {"config": {"testbed": "covariance_mixture", "large_size": 16, "small_size": 4, "num_train": 64,
                       "num_eval": num_eval, "seed": 0, "num_samples": 3},
            "images": {"names": names}, "final_step": 4, "paper": "ancestral_10", "reference": "ancestral_20",
            "best_fast": None, "trained": {"4": sets}, "ideal": sets,
            "references": {"mc_floor": sample_set(0.33, 0.4)}}


def test_testbed_study_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "study"
    run_script(["scripts/testbed_study.py", "--out_dir", str(out), *TINY, "--ablations", "paper"])
    results = json.loads((out / "results.json").read_text())
    assert set(results["scores"]) == {"mean_s0", "mean_s1", "var_s0", "var_s1", "quantile_s0", "quantile_s1", "pc",
                                      "pc_exact_mean", "pc_s1", "pc_exact_mean_s1", "mean@paper", "ema 0.999:mean_s0",
                                      "ema 0.999:mean_s1"}
    for run, rows in results["scores"].items():
        assert [r["step"] for r in rows] == [2, 4], run
        assert len(rows[-1]["per_image"]) == 8 and len(rows[-1]["by_component"]) >= 2, run
    refs = results["references"]
    assert refs["ideal_ddpm"]["num_images"] == 2 and refs["mc_floor"]["num_samples"] == 4
    assert refs["baselines"]["num_train"] == 64 and "var_quadratic" in refs["baselines"]
    # the exact moments are perfectly scored: coverage within k exact std grows with k
    cov = refs["exact"]["coverage"]
    assert cov["1"] < cov["2"] < cov["3"]
    # the exact posterior's own 5%-95% interval leaves out exactly 10% of each pixel's mass
    calibration = results["calibration"]
    assert abs(calibration["oracle"]["exact_risk"] - 0.1) < 1e-9 and calibration["alpha"] == 0.1
    assert {"quantile model", "variance model", "4 exact samples", "least-squares baseline"} <= set(calibration)
    for run in ("pc", "pc_exact_mean"):  # scored against the exact covariance
        assert 0 <= results["scores"][run][-1]["overlap"] <= 1 and 0 < results["scores"][run][-1]["captured"] <= 1
    # with the exact mean as its mean model, what the PC model learns is the covariance itself
    last = results["scores"]["pc_exact_mean"][-1]
    assert np.isclose(last["captured_vs_target"], last["captured"])
    table = (out / "results.md").read_text()
    for needle in ("mean model (2 seeds)", "least-squares linear map (baseline)", "4 exact posterior samples (floor)",
                   "## Quantiles", "## Intervals with a guarantee", "`paper`", "`combined`, ema 0.999 weights",
                   "PCA of 4 exact posterior samples", "PC model on x - m(y) (m the same seed's mean model) (2 seeds)",
                   "PC model on x - E[x|y] (the exact mean as its mean model) (2 seeds)"):
        assert needle in table, needle
    # with several seeds, each component's cell is the seeds' mean and range
    row = next(line for line in table.splitlines() if line.startswith("| mean model (2 seeds)"))
    cells = [c.strip() for c in row.split("|")[-2].split(" / ")]
    per_seed = [[c["rel_mse"] for c in results["scores"][f"mean_s{s}"][-1]["by_component"].values()] for s in (0, 1)]
    assert len(cells) == len(per_seed[0]) >= 2
    for cell, values in zip(cells, zip(*per_seed)):
        assert cell == f"{np.mean(values):.4f} ({min(values):.4f}-{max(values):.4f})"
    assert (out / "convergence.png").stat().st_size > 10_000
    # the chosen recipe keeps an EMA beside the weights it scores: the same training's other checkpoint files, each
    # score cached under its weights file's name (and the intervals under their splits and weights)
    assert results["scores"]["ema 0.999:mean_s0"][-1]["rel_mse"] != results["scores"]["mean_s0"][-1]["rel_mse"]
    assert {"model000004.json", "ema_0.999_000004.json"} <= set(os.listdir(out / "scores" / "mean_s0"))
    assert (out / "calibration_5splits_model001500.json").exists() is False  # the study's steps, not the default's
    assert (out / "calibration_5splits_model000004.json").exists()
    # a rerun asking for less trains nothing and scores from its cache: what an earlier call trained (the ablation,
    # the variance and quantile models) stays in the report; a contradicting flag is refused
    # (and with a teacher study's results on two of its images, the models are scored there beside its sets)
    names = [n for n, _ in flatten_data_info(load_data_info(str(out / "data" / "to_sample_data_info.pkl")))]
    teacher = tmp_path / "teacher.json"
    teacher.write_text(json.dumps(fake_teacher_results(names[2:4], num_eval=8)))
    before = {p: os.path.getmtime(p) for p in (out / "checkpoints").rglob("*.pt")}
    rerun = run_script(["scripts/testbed_study.py", "--out_dir", str(out), *TINY, "--kinds", "mean",
                        "--teacher_results", str(teacher)])
    assert "steps each)" not in rerun.stdout  # no training
    assert before == {p: os.path.getmtime(p) for p in (out / "checkpoints").rglob("*.pt")}
    again = json.loads((out / "results.json").read_text())
    assert set(again["scores"]) == set(results["scores"]) and again["calibration"] == calibration
    table = (out / "results.md").read_text()
    assert "`paper`" in table and "trained teacher, ancestral_10 (the paper's protocol) | 0.0500" in table
    on_two = np.mean([r["rel_mse"] for r in again["scores"]["mean_s1"][-1]["per_image"][2:4]])
    assert f"| mean_s1 | {on_two:.4f} | – |" in table
    assert (out / "convergence_vs_teacher.png").stat().st_size > 5_000
    teacher.write_text(json.dumps(fake_teacher_results(names[2:4], num_eval=6)))
    other = run_script(["scripts/testbed_study.py", "--out_dir", str(out), *TINY, "--teacher_results", str(teacher)],
                       check=False)
    assert other.returncode == 2 and "--teacher_results" in other.stderr and "num_eval 6 (here 8)" in other.stderr
    incomplete = fake_teacher_results(names[2:4], num_eval=8)
    del incomplete["final_step"]  # another version's layout: refused before any work, not after the trainings
    teacher.write_text(json.dumps(incomplete))
    other = run_script(["scripts/testbed_study.py", "--out_dir", str(tmp_path / "other"), *TINY, "--teacher_results",
                        str(teacher)], check=False)
    assert other.returncode == 2 and "without 'final_step'" in other.stderr and not (tmp_path / "other").exists()
    refused = run_script(["scripts/testbed_study.py", "--out_dir", str(out), *TINY[:-8], "--reference_samples", "8",
                          *TINY[-6:]], check=False)
    assert refused.returncode == 2 and "reference_samples" in refused.stderr
    too_many = run_script(["scripts/testbed_study.py", "--out_dir", str(tmp_path / "other"), *TINY[:-6],
                           "--num_pcs", "4", *TINY[-4:]], check=False)  # 4 samples have at most 3 components
    assert too_many.returncode == 2 and "--num_pcs 4 should be below" in too_many.stderr
    assert not (tmp_path / "other").exists()


def test_a_recipe_study_trains_the_mean_models_alone(tmp_path):
    out = tmp_path / "recipes"
    means = [*TINY[:16], "--num_pcs", "0", "--seeds", "1", *TINY[20:], "--kinds", "mean", "--ablations", "residual"]
    run_script(["scripts/testbed_study.py", "--out_dir", str(out), *means])
    results = json.loads((out / "results.json").read_text())
    assert set(results["scores"]) == {"mean_s0", "ema 0.999:mean_s0", "mean@residual"} and results["calibration"] is None
    assert sorted(os.listdir(out / "checkpoints")) == ["mean@residual", "mean_s0"]
    table = (out / "results.md").read_text()
    assert "## Training recipes of the mean model" in table and "## Intervals with a guarantee" not in table
    assert (out / "convergence.png").stat().st_size > 5_000



def test_the_report_finds_each_kinds_runs_in_seed_order_from_the_run_list():
    """The report reads which run is which from the study's run list: twelve seeds in number order."""
    from argparse import Namespace

    from studies.recipes import CHOSEN
    from studies.testbed_report import ablation_runs, final_rows, model_runs, seed_runs
    from studies.testbed_run import planned_runs

    a = Namespace(seeds=12, recipe=CHOSEN, ablations=["paper"], kinds=["mean", "var"], num_pcs=2)
    runs = [dict(name=r.name, kind=r.kind, recipe=r.recipe, seed=r.seed, mean=r.mean) for r in planned_runs(a)]
    results = dict(config=dict(recipe=CHOSEN), runs=runs, scores={r["name"]: [{"step": 4, "name": r["name"]}]
                                                                   for r in runs})
    seeds = [f"_s{s}" for s in range(12)]
    assert seed_runs(results, "mean") == [f"mean{s}" for s in seeds]
    assert seed_runs(results, "var") == [f"var{s}" for s in seeds]
    assert seed_runs(results, "pc") == ["pc"] + [f"pc{s}" for s in seeds[1:]]
    assert seed_runs(results, "pc", on_exact_mean=True) == ["pc_exact_mean"] + [f"pc_exact_mean{s}" for s in seeds[1:]]
    assert ablation_runs(results) == [("paper", "mean@paper")]
    assert model_runs(results, "mean")[-1] == "mean@paper" and model_runs(results, "quantile") == []
    del results["scores"]["pc_s3"]  # a run not scored yet is left out
    assert [r["name"] for r in final_rows(results, "pc")] == ["pc"] + [f"pc{s}" for s in seeds[1:] if s != "_s3"]
