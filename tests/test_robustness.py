"""
The mechanisms that make every mistake one line and lose no work, shared by all stage
scripts: flags spelt out and numeric flags checked by the parser, OSErrors that name their
flag, images of other bit depths, testbed parameters that define no prior, and checkpoint
errors that do not advise running untrusted code. (Each stage's own cases are beside its
other tests.)
"""

import errno
import importlib.util
import os
import pickle

import numpy as np
import pytest
import torch as th
from PIL import Image

import runkit as cli
from runkit import UserError, os_error_line
from runkit.fileio import atomic_write, load_state_dict
from sr_var.data import load_image
from testbed import TestbedParams
from tests.conftest import ROOT, assert_user_error, run_script


def script_parser(script):
    """The flag parser of a stage script, built as the script builds it."""
    spec = importlib.util.spec_from_file_location(f"script_{os.path.basename(script)[:-3]}",
                                                  os.path.join(ROOT, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.create_parser()


def parse_error(capsys, script, *args):
    """The one line with which the script's parser refuses `args` (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        script_parser(script).parse_args(list(args))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("script,args,needles", [
    ("sr_mean_train.py", ["--max", "3"], ["unknown flag --max", "did you mean --max_step or --max_cache_gb?"]),
    ("sr_var_train.py", ["--mean_model_pth", "x"], ["unknown flag --mean_model_pth", "--mean_model_path"]),
    ("mnist_classification.py", ["--tsak", "train"], ["unknown flag --tsak", "did you mean --task?"]),
    ("ddpm_sr_sample.py", ["--num_samples", "5"], ["unknown flag --num_samples", "--num_samples_per_image"]),
])
def test_flags_are_spelt_out(capsys, script, args, needles):
    """argparse would read --max as --max_step (prefix matching): here it is an error with a suggestion."""
    line = parse_error(capsys, script, *args)
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize("script,args,needle", [
    ("sr_mean_train.py", ["--batch_size", "0"], "--batch_size 0 should be at least 1"),
    ("sr_mean_train.py", ["--save_interval", "0"], "--save_interval 0 should be at least 1"),
    ("sr_mean_train.py", ["--max_step", "0"], "--max_step 0 should be at least 1"),
    ("sr_var_train.py", ["--lr", "-1"], "--lr -1.0 should be above 0"),
    ("sr_var_train.py", ["--dropout", "1.5"], "--dropout 1.5 should be in [0, 1)"),
    ("sr_mean_train.py", ["--large_size", "32", "--small_size", "6"], "--large_size 32 is not a multiple"),
    ("ddpm_sr_sample.py", ["--num_samples_per_image", "0"], "--num_samples_per_image 0 should be at least 1"),
    ("ddpm_sr_sample.py", ["--num_head_channels", "0"], "--num_head_channels 0 should be -1 (unset) or at least 1"),
    ("sr_mean_test.py", ["--batch_size", "-2"], "--batch_size -2 should be at least 1"),
    ("sr_var_verification.py", ["--num_samples", "1"], "--num_samples 1 should be at least 2"),
    ("mnist_classification.py", ["--eval_batch_size", "0"], "--eval_batch_size 0 should be at least 1"),
    ("mnist_classification.py", ["--alpha", "1.5"], "--alpha 1.5 should be in [0, 1]"),
])
def test_numeric_flags_are_checked_by_the_parser(capsys, script, args, needle):
    assert needle in parse_error(capsys, script, *args)


def test_a_bad_flag_ends_the_script_before_it_writes(tmp_path):
    """The same check through a real run: one line, exit status 2, nothing written."""
    proc = run_script(["sr_mean_train.py", "--batch_size", "0", "--log_dir", "logs", "--model_save_dir", "ck",
                       "--data_dir", "images", "--data_info_dict_path", "info.pkl"], cwd=tmp_path, check=False)
    assert_user_error(proc, "--batch_size 0 should be at least 1")
    assert os.listdir(tmp_path) == []


def test_an_os_error_names_the_flag_of_its_path(tmp_path):
    """A failed write (a full disk here) is an OSError naming the file, and one line naming the flag."""
    script_parser("sr_mean_test.py").parse_args(["--output_dir", str(tmp_path / "out")])

    def full_disk(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "out" / "img" / "high_res_mean_3.png"
    with pytest.raises(OSError) as info:
        atomic_write(str(target), full_disk)
    assert info.value.filename == str(target)
    assert os.listdir(target.parent) == []  # no temporary file left behind
    line = os_error_line(info.value)
    assert line.startswith("No space left on device:") and f"(--output_dir {str(tmp_path / 'out')!r})" in line


def test_an_output_folder_that_cannot_be_written(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="is a file, a directory is expected"):
        cli.require_writable_dir(str(tmp_path / "a_file"), "output_dir")
    with pytest.raises(UserError, match="cannot write to --log_dir '/proc/nowhere'"):
        cli.require_writable_dir("/proc/nowhere", "log_dir")


def test_sixteen_bit_images_keep_their_values(tmp_path):
    """PIL's convert("RGB") clips 16-bit greyscale to white; the loader scales it to 8 bits."""
    values = np.array([[0, 257 * 10], [257 * 128, 65535]], dtype=np.uint16).repeat(8, 0).repeat(8, 1)
    path = str(tmp_path / "deep.png")
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode in ("I;16", "I")  # what Pillow makes of a 16-bit grey PNG
    loaded = load_image(path, 16).numpy()
    assert loaded.shape == (3, 16, 16)
    np.testing.assert_array_equal(loaded[0], np.round(values / 257).astype(np.uint8))
    Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32)).save(str(tmp_path / "float.tiff"))
    with pytest.raises(UserError, match="has no 8-bit range"):
        load_image(str(tmp_path / "float.tiff"), 16)


@pytest.mark.parametrize("params,needle", [
    (dict(scales=(-0.1, 0.2), weights=(0.5, 0.5)), "must all be above 0"),
    (dict(length_scale=0.0), "length_scale 0.0 must be above 0"),
    (dict(channel_correlation=-0.6), "must lie in (-0.5, 1)"),
    (dict(channel_correlation=1.0), "must lie in (-0.5, 1)"),
    (dict(weights=(0.5, 0.6, -0.1)), "must be 0 or more and sum to 1"),
    (dict(large_size=32, small_size=6), "positive multiple"),
])
def test_testbed_parameters_that_define_no_prior_are_refused(params, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        TestbedParams(**params)


def test_bad_testbed_parameters_through_the_script(tmp_path):
    proc = run_script(["scripts/make_testbed.py", "--out_dir", "tb", "--channel_correlation", "-0.7"],
                      cwd=tmp_path, check=False)
    assert_user_error(proc, "channel_correlation -0.7")
    cm = ["scripts/make_testbed.py", "--out_dir", "tb", "--kind", "covariance_mixture"]
    for extra, needle in ((["--scales", "0.1,0.2"], "--scales does not apply to --kind covariance_mixture"),
                          (["--components", "1:0.2:4:0.8"], "five numbers"),
                          (["--components", "0.5:0.2:4:0.8:0,0.4:0.2:1:1:0"], "must sum to 1"),
                          (["--components", "1:0.2:-4:0.8:0"], "two lengths > 0"),
                          (["--jitter", "0"], "jitter 0")):
        assert_user_error(run_script([*cm, *extra], cwd=tmp_path, check=False), needle)
    assert_user_error(run_script(["scripts/make_testbed.py", "--out_dir", "tb", "--kind", "wavelets"], cwd=tmp_path,
                                 check=False), "--kind 'wavelets' is not one of")
    # the studies' choices
    for script, extra, needle in (
            ("scripts/sampler_study.py", ["--testbed", "gsm"], "--testbed 'gsm' is not one of"),
            ("scripts/sampler_study.py", ["--band", "1.5"], "--band 1.5"),
            ("scripts/testbed_study.py", ["--recipe", "fast"], "--recipe 'fast' is not one of"),
            ("scripts/testbed_study.py", ["--ablations", "paper,fast"], "--ablations"),
            ("scripts/testbed_study.py", ["--kinds", "var,quantile"], "include mean"),
            ("scripts/testbed_study.py", ["--kinds", "mean,pc"], "--kinds: 'pc' is not one of"),
            ("scripts/testbed_study.py", ["--teacher_results", "none.json"], "--teacher_results"),
            ("scripts/testbed_study.py", ["--quantiles", "0.5"], "at least two levels"),
            ("scripts/testbed_study.py", ["--parallel", "0"], "--parallel 0 should be at least 1"),
            ("scripts/teacher_study.py", ["--configurations", "ancestral:250,euler:10"], "--configurations item"),
            ("scripts/teacher_study.py", ["--reference_steps", "500"], "must include ancestral:500"),
            ("scripts/teacher_study.py", ["--ema_rate", "0.99,0.999"], "--ema_rate"),
            ("scripts/teacher_study.py", ["--save_interval", "700"], "multiple of --save_interval")):
        assert_user_error(run_script([script, "--out_dir", "study", *extra], cwd=tmp_path, check=False), needle)
    assert os.listdir(tmp_path) == []


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_foreign_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    """torch's message suggests weights_only=False, which would run the file's code: not repeated."""
    malicious = tmp_path / "model.pt"
    th.save({"weight": th.zeros(2), "payload": _RunsCode()}, str(malicious))
    with pytest.raises(UserError) as info:
        load_state_dict(str(malicious), "model_path")
    message = str(info.value)
    assert "holds objects other than tensors (posix.system), refused" in message and "weights_only" not in message
    assert "\n" not in message
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(UserError, match="is not a readable PyTorch checkpoint") as info:
        load_state_dict(str(garbage), "model_path")
    assert "weights_only" not in str(info.value)
    pickle_file = tmp_path / "list.pt"
    pickle_file.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UserError, match="is not a readable PyTorch checkpoint|does not hold a model state_dict"):
        load_state_dict(str(pickle_file), "model_path")
