"""scripts/testbed_study.py end to end at a tiny size, and the crossing / trend arithmetic."""

import json
import os

import numpy as np

from studies.testbed_report import crossing

from .conftest import run_script

TINY = ["--num_train", "64", "--small_train", "32", "--num_eval", "4", "--steps", "4", "--eval_every", "2",
        "--reference_images", "2", "--reference_samples", "4", "--num_pcs", "2"]


def test_testbed_study_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "study"
    run_script(["scripts/testbed_study.py", "--out_dir", str(out), *TINY])
    results = json.loads((out / "results.json").read_text())
    assert set(results["scores"]) == {"mean", "mean_small", "var", "var_exp", "pc", "pc_exact_mean"}
    for run, rows in results["scores"].items():
        assert [r["step"] for r in rows] == [2, 4], run
    refs = results["references"]
    assert refs["ideal_ddpm"]["num_images"] == 2 and refs["mc_floor"]["num_samples"] == 4
    # the exact moments are perfectly scored: coverage within k exact std grows with k
    cov = refs["exact"]["coverage"]
    assert cov["1"] < cov["2"] < cov["3"]
    assert 0 < results["cost"]["mean_model_s"] < results["cost"]["ideal_ddpm_s"]
    for run in ("pc", "pc_exact_mean"):  # scored against the exact covariance
        assert 0 <= results["scores"][run][-1]["overlap"] <= 1 and 0 < results["scores"][run][-1]["captured"] <= 1
    # with the exact mean as its mean model, what the PC model learns is the covariance itself
    last = results["scores"]["pc_exact_mean"][-1]
    assert np.isclose(last["captured_vs_target"], last["captured"])
    assert 0 < refs["pcs"]["mc_floor"]["captured"] <= 1 and refs["pcs"]["ideal_ddpm"]["num_images"] == 2
    table = (out / "results.md").read_text()
    assert "mean model, 64 images" in table and "4 exact posterior samples (floor)" in table
    assert "PCA of 4 exact posterior samples" in table and "PC model on x - E[x|y]" in table
    assert (out / "convergence.png").stat().st_size > 10_000
    # a rerun trains nothing and scores from its cache; a contradicting flag is refused
    before = {p: os.path.getmtime(p) for p in (out / "checkpoints").rglob("*.pt")}
    rerun = run_script(["scripts/testbed_study.py", "--out_dir", str(out), *TINY])
    assert "steps each)" not in rerun.stdout  # no training
    assert before == {p: os.path.getmtime(p) for p in (out / "checkpoints").rglob("*.pt")}
    refused = run_script(["scripts/testbed_study.py", "--out_dir", str(out), *TINY[:-2], "--reference_samples", "8"],
                         check=False)
    assert refused.returncode == 2 and "reference_samples" in refused.stderr
    too_many = run_script(["scripts/testbed_study.py", "--out_dir", str(tmp_path / "other"), *TINY[:-2],
                           "--num_pcs", "4"], check=False)  # 4 samples have at most 3 components
    assert too_many.returncode == 2 and "--num_pcs 4 should be at least 1 and below" in too_many.stderr
    assert not (tmp_path / "other").exists()


def test_crossing_finds_the_first_step_below_and_projects_a_power_law():
    rows = [{"step": s, "e": 100.0 * s ** -0.5} for s in (100, 200, 400, 800)]
    assert crossing(rows, 5.0, lambda r: r["e"]) == {"crossed_at": 400}
    c = crossing(rows, 1.0, lambda r: r["e"])
    assert c["crossed_at"] is None and np.isclose(c["slope"], -0.5)
    assert np.isclose(c["projected_step"], 10_000)  # 100 * s^-0.5 = 1 at s = 10^4
    flat = [{"step": s, "e": 3.0} for s in (100, 200, 400)]
    assert crossing(flat, 1.0, lambda r: r["e"])["projected_step"] is None
