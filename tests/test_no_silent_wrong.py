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
    ({}, "lists no images"),
    ({"a": {"y": 0, "file_names": []}}, "lists no images"),
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


def test_a_queue_hands_over_each_finished_job_before_a_later_failure():
    from runkit.run import Job, run_queue

    finished = {}
    quick = [sys.executable, "-c", "print('done')"]
    fails = [sys.executable, "-c", "import sys, time; time.sleep(1); sys.stderr.write('boom\\n'); sys.exit(3)"]
    with pytest.raises(UserError, match=r"second failed \(3\): boom"):
        run_queue([Job("first", quick), Job("second", fails, needs=("first",), name="second"),
                   Job("third", quick, needs=("second",))], slots=2, on_done=lambda key, r: finished.update({key: r}))
    assert list(finished) == ["first"] and finished["first"]["stdout"] == "done\n" and finished["first"]["seconds"] > 0


def test_a_resumed_run_logs_a_changed_batch_size_and_refuses_a_foreign_checkpoint(tmp_path):
    logger.configure(str(tmp_path / "log"), format_strs=("log",))
    _linear_loop(tmp_path, None, max_step=4, save_interval=4).run_loop()
    _linear_loop(tmp_path, None, max_step=6, batch_size=32, resume_checkpoint="latest")
    assert ("resuming with --batch_size 32 (a global batch of 32): the checkpoint's run took global batches of 64 "
            "up to step 4") in (tmp_path / "log" / "log.txt").read_text()
    mnist = {"conv1.weight": th.zeros(6, 1, 5, 5), "fc3.weight": th.zeros(10, 84)}
    os.makedirs(tmp_path / "foreign")
    th.save(mnist, tmp_path / "foreign" / "model000004.pt")
    with pytest.raises(UserError, match=r"model000004.pt' \(--resume_checkpoint\) does not fit the model flags: "
                                        r"2 missing keys"):
        _linear_loop(tmp_path, None, model_save_dir=str(tmp_path / "foreign"), resume_checkpoint="latest")


def test_float_flags_refuse_nan_and_inf(capsys):
    parser = create_argparser(dict(length_scale=2.0, steps=3))
    assert parser.parse_args(["--length_scale", "1e-3"]).length_scale == 1e-3
    for value, needle in (("inf", "a finite number expected, got 'inf'"), ("nan", "a finite number expected"),
                          ("two", "a number expected, got 'two'")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--length_scale", value])
        assert f"--length_scale: {needle}" in capsys.readouterr().err


def test_a_single_process_stage_refuses_a_launch_as_one_of_several(tmp_path):
    code = "from runkit import run_main\n@run_main{}\ndef main():\n    print('ran')\nmain()\n"
    launched = dict(os.environ, PYTHONPATH=ROOT, RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", MASTER_ADDR="localhost",
                    MASTER_PORT="29555")
    single = subprocess.run([sys.executable, "-c", code.format("")], env=launched, capture_output=True, text=True)
    assert single.returncode == 2 and single.stdout == ""
    assert "runs as one process, but torchrun started it as one of 2 (WORLD_SIZE=2)" in single.stderr
    many = subprocess.run([sys.executable, "-c", code.format("(distributed=True)")], env=launched,
                          capture_output=True, text=True)
    assert many.returncode == 0 and many.stdout == "ran\n", many.stderr
    # run_main's cheap screen (no torch import) knows every variable that launcher_of reads
    from runkit import dist_util, run

    assert {*dist_util._TORCHRUN_VARS, *dist_util._MPI_SIZE_VARS, "SLURM_PROCID"} - {"MASTER_ADDR", "MASTER_PORT"} \
        <= run._LAUNCHER_VARS
    # a plain call inside an sbatch allocation of several tasks is one process
    sbatch = dict(os.environ, PYTHONPATH=ROOT, SLURM_PROCID="0", SLURM_NTASKS="4", SLURM_JOB_NODELIST="n1")
    plain = subprocess.run([sys.executable, "-c", code.format("")], env=sbatch, capture_output=True, text=True)
    assert plain.returncode == 0 and plain.stdout == "ran\n", plain.stderr


def test_text_and_json_files_given_by_a_flag_are_one_line_when_bad(tmp_path):
    from runkit.fileio import read_json, read_text

    (tmp_path / "bin").write_bytes(b"\x80\x81abc")
    with pytest.raises(UserError, match=r"bin' \(--exclude_list\) is not a text file: byte 0 is not UTF-8"):
        read_text(str(tmp_path / "bin"), "exclude_list")
    (tmp_path / "r.json").write_text("{")
    with pytest.raises(UserError, match=r"r.json' \(--out_dir\) is not JSON \(.*\); run it first"):
        read_json(str(tmp_path / "r.json"), "out_dir", "run it first")
    (tmp_path / "r.json").write_text('{"a": [1]}')
    assert read_json(str(tmp_path / "r.json"), "out_dir") == {"a": [1]}


def test_truncated_idx_files_and_a_pc_count_above_the_image_are_refused(tmp_path):
    from noisy_mnist.prepare import read_idx
    from sr_var.networks import PC_MODEL_CHECKS

    (tmp_path / "cut").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(UserError, match="is truncated: its header names 3 dimensions"):
        read_idx(str(tmp_path / "cut"))
    (tmp_path / "ok").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x03abc")
    assert read_idx(str(tmp_path / "ok")).tolist() == [97, 98, 99]
    args = SimpleNamespace(large_size=16, small_size=4, attention_resolutions="8", channel_mult="1,2",
                           out_channels=3, num_pcs=768)
    for check in PC_MODEL_CHECKS:
        check(args)
    args.num_pcs = 769
    with pytest.raises(UserError, match="--num_pcs 769 is more than the 768 values of a 16 px image"):
        for check in PC_MODEL_CHECKS:
            check(args)


def test_a_testbed_of_other_channels_or_sizes_than_the_images_is_refused(tmp_path):
    from testbed import GaussianScaleMixture, TestbedParams, load_testbed

    path = tmp_path / "testbed.json"
    path.write_text(GaussianScaleMixture(TestbedParams(large_size=16, small_size=4, channels=1)).to_json())
    assert load_testbed(str(path), sizes=(16, 4)).params.channels == 1
    with pytest.raises(UserError, match=r"testbed.json' \(--testbed_path\) has 1 channel\(s\), the images 3"):
        load_testbed(str(path), "testbed_path", sizes=(16, 4), channels=3)
    with pytest.raises(UserError, match=r"is 4->16 px, the flags 8->32 px"):
        load_testbed(str(path), "testbed_path", sizes=(32, 8), channels=1)
