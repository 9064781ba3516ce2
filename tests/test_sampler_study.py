"""scripts/sampler_study.py end to end at a tiny size on the covariance mixture, and the floor criterion's logic."""

import json

import numpy as np
import pytest

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


def test_within_floor_checks_each_component_and_pairs_with_the_floor():
    rng = np.random.default_rng(0)
    images = 40
    floor_mse = 0.010 * np.exp(rng.normal(0, 0.3, images))  # images differ far more than two sets of samples do
    floor_std = 0.057 * np.exp(rng.normal(0, 0.1, images))

    def scores(ratio_ci, rel_mse, rel_std_error):
        per_image = [dict(rel_mse=float(m), rel_std_error=float(s)) for m, s in zip(rel_mse, rel_std_error)]
        return dict(per_image=per_image, summary=dict(
            rel_mse=float(np.mean(rel_mse)), rel_std_error=float(np.mean(rel_std_error)),
            by_component={"a": {"ci95": {"var_ratio": ratio_ci}}, "b": {"ci95": {"var_ratio": [0.99, 1.01]}}}))

    def noise(scale):
        return 1 + rng.normal(0, scale, images)

    floor = scores([0.99, 1.01], floor_mse, floor_std)
    # another exact set: paired with the floor, its differences reach 0
    assert within_floor(scores([0.98, 1.02], floor_mse * noise(0.05), floor_std * noise(0.01)), floor)["within"]
    assert not within_floor(scores([0.95, 0.99], floor_mse, floor_std), floor)["within"]  # one component under-disperses
    # a mean 6% worse on every image: shown worse (the interval above 0) and beyond the 3% margin
    verdict = within_floor(scores([0.98, 1.02], floor_mse * 1.06 * noise(0.01), floor_std), floor)
    assert not verdict["within"] and verdict["checks"] == {"variance ratio a": True, "variance ratio b": True,
                                                           "rel_mse": False, "rel_std_error": True}
    assert verdict["paired"]["rel_mse"]["ci95"][0] > 0
    assert 0.05 < verdict["paired"]["rel_mse"]["difference"] / floor["summary"]["rel_mse"] < 0.07
    # 1% worse, resolved as worse but shown within the margin: within
    small = within_floor(scores([0.98, 1.02], floor_mse, floor_std * 1.01 * noise(0.001)), floor)
    assert small["paired"]["rel_std_error"]["ci95"][0] > 0 and small["within"]
    # below the floor passes: the rule bounds how much worse, not how much better (the ratio band bounds that)
    assert within_floor(scores([0.98, 1.02], floor_mse * 0.9, floor_std * 0.95), floor)["within"]
    with pytest.raises(ValueError, match="same images"):
        within_floor(scores([0.98, 1.02], floor_mse[:-1], floor_std[:-1]), floor)
