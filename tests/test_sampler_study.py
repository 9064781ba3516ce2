"""scripts/sampler_study.py end to end at a tiny size on the covariance mixture, and the floor criterion's logic."""

import json

from testbed.scoring import within_floor

from .conftest import run_script

TINY = ["--large_size", "16", "--small_size", "4", "--num_eval", "4", "--num_samples", "6", "--nfe", "25",
        "--samplers", "exact,ancestral,dpmpp_2m@logsnr", "--perturbations=-0.3"]


def test_sampler_study_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "study"
    run_script(["scripts/sampler_study.py", "--out_dir", str(out), *TINY])
    results = json.loads((out / "results.json").read_text())
    runs = results["results"]
    assert set(runs) == {"mc_floor", "biased_x0.93", "biased_x1.07", "exact_25", "ancestral_25", "dpmpp_2m@logsnr_25",
                         "dpmpp_2m@logsnr_25_delta-0.3"}
    floor = runs["mc_floor"]["summary"]
    assert floor["num_images"] == 4 and len(floor["by_component"]) == 4  # stratified: one image per component here
    assert runs["dpmpp_2m@logsnr_25_delta-0.3"]["perturbation"] == -0.3
    assert set(results["verdicts"]) == set(runs)
    table = (out / "results.md").read_text()
    assert "The criterion's power" in table and "Robustness" in table and "delta -0.3" in table
    assert (out / "error_vs_nfe.png").stat().st_size > 10_000
    rerun = run_script(["scripts/sampler_study.py", "--out_dir", str(out), *TINY])
    assert "ms per sample (" not in rerun.stdout  # every configuration came from its cache


def test_within_floor_checks_each_component_and_the_floor():
    def summary(ratio_ci, rel_mse, rel_std_error):
        return {"rel_mse": rel_mse, "rel_std_error": rel_std_error,
                "ci95": {"rel_mse": [0.009, 0.011], "rel_std_error": [0.07, 0.08]},
                "by_component": {"a": {"ci95": {"var_ratio": ratio_ci}}, "b": {"ci95": {"var_ratio": [0.99, 1.01]}}}}

    floor = summary([0.99, 1.01], 0.010, 0.075)
    assert within_floor(summary([0.98, 1.02], 0.0105, 0.079), floor)["within"]
    assert not within_floor(summary([0.95, 0.99], 0.0105, 0.079), floor)["within"]  # one component under-disperses
    verdict = within_floor(summary([0.98, 1.02], 0.012, 0.079), floor)
    assert not verdict["within"] and verdict["checks"] == {"variance ratio a": True, "variance ratio b": True,
                                                           "rel_mse": False, "rel_std_error": True}
