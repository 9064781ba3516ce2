"""
No silent wrong result: non-finite values are refused where they enter (weights, model
outputs, scores, a training loss), data-info pickles are checked as data, a resumed run
applies and logs the lr it was given, list flags refuse empty or malformed values, another
stage's checkpoint is named as such, and SIGINT saves and ends like SIGTERM (exit 130).
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F

from runkit import UserError, comma_list, create_argparser, list_flags, logger
from runkit.fileio import check_state_dict, load_state_dict, save_json
from runkit.finite import require_finite
from runkit.run import run_children
from runkit.training import TrainLoop
from sr_var.data import load_data_info
from sr_var.networks import create_mean_model, create_var_model, mean_model_defaults, var_model_defaults
from tests.conftest import files_in

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_comma_lists_refuse_blank_and_malformed_items():
    assert comma_list("0.1, 0.2", "scales", float) == (0.1, 0.2)
    assert comma_list("", "levels", float) == ()
    for value, needle in ((",", "empty item"), ("1,,2", "empty item"), ("0.1,abc", "list of floats")):
        with pytest.raises(UserError, match=f"--levels .*{needle}"):
            comma_list(value, "levels", float)
    with pytest.raises(UserError, match="--samplers: 'euler' is not one of: a, b"):
        comma_list("a,euler", "samplers", choices=("a", "b"))


def test_a_typed_empty_list_is_refused_and_a_missing_one_keeps_the_defaults(capsys):
    parser = create_argparser(dict(levels="", other=""), checks=(list_flags("levels"),))
    assert parser.parse_args([]).levels == "" and not hasattr(parser.parse_args([]), "_explicit")
    assert parser.parse_args(["--other", ""]).other == ""  # not a list flag
    for typed in ("", ","):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["--levels", typed])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--levels" in err and "is an empty list" in err


def test_finite_guard_on_arrays_scores_and_checkpoints(tmp_path):
    require_finite(np.arange(3), "integers")
    with pytest.raises(UserError, match=r"variance output 'v.pkl' holds 2 NaN or inf values of 4"):
        require_finite(np.array([1.0, np.nan, np.inf, 2.0]), "variance output 'v.pkl'")
    path = tmp_path / "results.json"
    with pytest.raises(UserError, match=r"refusing to write NaN into .*results.json.* \(at exact.var_ratio\[1\]\)"):
        save_json({"exact": {"var_ratio": [1.0, float("nan")]}}, str(path))
    assert not path.exists()
    save_json({"psnr": float("inf"), "n": np.int64(3)}, str(path))  # identical images: a valid JSON file
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {"psnr": "inf", "n": 3}
    weights = th.nn.Linear(2, 2).state_dict()
    weights["bias"][0] = float("nan")
    th.save(weights, tmp_path / "model.pt")
    with pytest.raises(UserError, match=r"model.pt' \(--model_path\) holds NaN or inf in 'bias' \(1 of 2"):
        load_state_dict(str(tmp_path / "model.pt"), "model_path")


def _linear_loop(tmp_path, data, **kwargs):
    x, y = th.randn(64, 4), th.randn(64, 2)

    def batches():
        while True:
            yield x, y

    def loss_fn(model, xb, yb):
        out = model(xb)
        return F.mse_loss(out, yb), out

    args = dict(model=th.nn.Linear(4, 2), data=data or batches(), loss_fn=loss_fn, batch_size=64, lr=1e-2,
                model_save_dir=str(tmp_path / "ckpt"), save_interval=100, log_interval=1, progress=False)
    return TrainLoop(**{**args, **kwargs})


def test_a_non_finite_loss_saves_the_last_finite_step_and_stops(tmp_path):
    logger.configure(str(tmp_path / "log"), format_strs=())
    x, y = th.randn(64, 4), th.randn(64, 2)

    def batches():
        for i in range(100):
            yield (x * float("nan") if i == 3 else x), y  # the 4th batch is poisoned

    loop = _linear_loop(tmp_path, batches(), max_step=50)
    with pytest.raises(UserError, match=r"the training loss is nan at step 4; the weights of the last finite step "
                                        r"are saved as model000003.pt"):
        loop.run_loop()
    assert files_in(tmp_path / "ckpt") == ["model000003.pt", "opt000003.pt"]
    saved = th.load(tmp_path / "ckpt" / "model000003.pt")
    assert all(th.isfinite(v).all() for v in saved.values())


def test_a_resumed_run_applies_and_logs_a_changed_lr(tmp_path):
    logger.configure(str(tmp_path / "log"), format_strs=("log",))
    _linear_loop(tmp_path, None, max_step=4, save_interval=4).run_loop()
    loop = _linear_loop(tmp_path, None, max_step=6, lr=1e-3, weight_decay=0.1, resume_checkpoint="latest")
    assert loop.opt.param_groups[0]["lr"] == 1e-3 and loop.opt.param_groups[0]["weight_decay"] == 0.1
    log = (tmp_path / "log" / "log.txt").read_text()
    assert "resuming with --lr 0.001: the checkpoint's optimizer ran at lr 0.01" in log
    assert "resuming with --weight_decay 0.1: the checkpoint's optimizer had 0.0" in log
    # annealed: the lr the flags give at the step reached is no change, and nothing is said
    logger.configure(str(tmp_path / "log2"), format_strs=("log",))
    _linear_loop(tmp_path / "b", None, max_step=4, save_interval=4, lr_anneal_steps=8).run_loop()
    _linear_loop(tmp_path / "b", None, max_step=6, lr_anneal_steps=8, resume_checkpoint="latest")
    assert "resuming with" not in (tmp_path / "log2" / "log.txt").read_text()


@pytest.mark.parametrize("info,needle", [
    ({"a": {"y": "3", "file_names": ["x"]}}, "class index of 'a' is '3'"),
    ({"a": {"y": None, "file_names": ["x"]}}, "class index of 'a' is None"),
    ({"a": {"y": 1.5, "file_names": ["x"]}}, "class index of 'a' is 1.5"),
    ({"a": {"y": True, "file_names": ["x"]}}, "class index of 'a' is True"),
    ({"a": {"y": -1, "file_names": ["x"]}}, "class index of 'a' is -1"),
    ({"a": {"y": 0, "file_names": [7]}}, "'a' lists 7, which is not a file name"),
    ({"a": {"y": 0, "file_names": ["x"]}, "b": {"y": 1, "file_names": ["x"]}}, "'x' is listed twice"),
    ([("a", 0)], "is not a data-info pickle"),
])
def test_data_info_pickles_are_checked_as_data(tmp_path, info, needle):
    path = tmp_path / "info.pkl"
    pickle.dump(info, open(path, "wb"))
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_data_info(str(path))
    pickle.dump({"a": {"y": np.int64(2), "file_names": ["x", "y"]}}, open(path, "wb"))
    assert load_data_info(str(path))["a"]["y"] == 2


def test_another_stages_checkpoint_is_named_as_such():
    small = dict(large_size=16, small_size=4, model_channels=32, num_res_blocks=1, attention_resolutions="8",
                 channel_mult="1,2", num_heads=2)
    mean = create_mean_model(**{**mean_model_defaults(), **small})
    var = create_var_model(**{**var_model_defaults(), **small})
    with pytest.raises(UserError, match="holds the weights of a mean model .*, not of a variance model"):
        check_state_dict(var, mean.state_dict(), "m.pt", "mean_model_path", {})
    mnist = {"conv1.weight": th.zeros(6, 1, 5, 5), "fc3.weight": th.zeros(10, 84)}
    with pytest.raises(UserError, match="holds the weights of an MNIST classifier"):
        check_state_dict(mean, mnist, "c.pt", "model_path", {})


def test_attention_at_a_resolution_the_network_never_reaches_is_refused():
    from guided_diffusion.script_util import SR_SIZE_CHECKS

    args = SimpleNamespace(large_size=32, small_size=8, attention_resolutions="16,8", channel_mult="1,2,2")
    for check in SR_SIZE_CHECKS:
        check(args)
    args.attention_resolutions = "12"
    with pytest.raises(UserError, match="works at 32, 16, 8 px .* never at 12"):
        for check in SR_SIZE_CHECKS:
            check(args)


STOPPABLE = """
import time
from runkit import run_main, stop_signals, check_stop
@run_main
def main():
    print("started", flush=True)
    with stop_signals():
        while True:
            time.sleep(0.05)
            check_stop("saved at the safe point")
main()
"""


def _start(code):
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    return proc


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 75)])
def test_stops_in_a_loop_and_outside_one_are_one_line(sig, status):
    outside = STOPPABLE.replace("    with stop_signals():\n        while True:", "    if True:\n        while True:")
    for code in (STOPPABLE, outside):
        proc = _start(code)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == status and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err and f"stopped: {signal.Signals(sig).name}" in err


def test_a_study_passes_a_stop_on_to_its_stages():
    child = STOPPABLE
    parent = f"""
import sys
from runkit import run_main
from runkit.run import run_children
@run_main
def main():
    print("started", flush=True)
    run_children([[sys.executable, "-c", {child!r}]] * 2)
main()
"""
    proc = _start(parent)
    time.sleep(1.5)  # the children are in their loops
    start = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75 and len(err.strip().splitlines()) == 1 and "saved their work" in err, err
    assert time.time() - start < 10
    with pytest.raises(UserError, match=r"-c failed \(3\): boom"):
        run_children([[sys.executable, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"]])
