"""The main job, scripts/mini.sh, end to end at a smaller scale (the same script)."""

import json
import os
import subprocess

from tests.conftest import ROOT


def test_mini_script_end_to_end(tmp_path):
    env = dict(os.environ, MINI_OUT=str(tmp_path / "mini"), MINI_MNIST_STEPS="40", MINI_MNIST_LEVELS="0.8,0.4",
               MINI_SR_STEPS="4", MINI_NUM_TRAIN="40", MINI_NUM_EVAL="2", MINI_SAMPLES="4")
    proc = subprocess.run(["bash", "scripts/mini.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "mini"
    results = json.load(open(out / "results.json"))
    assert {r["noise_type"] for r in results["mnist"]} == {"clean", "uniform", "fix", "model"}
    # 1 clean + 2 levels of uniform and fix; the model-noise levels map to alpha = ratio / mean q[c],
    # capped at 1, so a barely trained clean model can merge them into one
    assert len(results["mnist"]) in (6, 7)
    assert {"mean", "var", "exact", "calibration", "mc_floor", "split_half", "ci95"} <= set(results["sr"])
    assert {"var_model_vs_target", "var_ratio"} <= set(results["sr"]["exact"]) and results["sr"]["by_component"]
    assert all(os.path.exists(p) for p in results["figures"]) and len(results["figures"]) >= 4
    # on the testbed each figure adds the exact posterior std: seven tiles of 32 px
    from PIL import Image

    figure = next((out / "logs" / "sr_compare" / "figures").iterdir())
    assert Image.open(figure).size == (7 * 32, 32)
    text = (out / "results.md").read_text()
    assert "paper's test accuracy" in text and "exact posterior mean" in text
    assert "Monte Carlo floor" in text and "split-half floor" in text and "its target Var + (m - E)^2" in text
    # a rerun continues: every stage finds its outputs and skips the work
    again = subprocess.run(["bash", "scripts/mini.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 samples of 0 images" in again.stdout
