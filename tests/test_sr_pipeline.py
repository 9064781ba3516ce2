"""
The super-resolution mean/variance stages: data handling, the data-info builder, the seed's
four commands end to end on a small ImageNet-like folder, and every bad input.
"""

import csv
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch as th
from PIL import Image

from imaging import low_res_input, to_float, to_uint8
from runkit.fileio import load_pickle
from sr_var.data import center_crop_arr
from sr_var.data_info import build_data_info
from sr_var.quantiles import load_quantiles
from tests.conftest import ROOT, assert_user_error, files_in, run_script
from tests.helpers import make_image_folder, photo_folder_run, snapshot

# The seed's MODEL_FLAGS with the sizes and widths cut for a CPU (32 px, 32 channels).
MEAN_FLAGS = ("--attention_resolutions 16 --large_size 32 --small_size 8 --model_channels 32 --num_heads 4 "
              "--num_res_blocks 1 --resblock_updown True --use_fp16 True --channel_mult 1,2").split()
VAR_FLAGS = MEAN_FLAGS + ["--last_layer_type", "none"]


def test_center_crop_and_low_res():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (130, 97, 3), dtype=np.uint8))
    arr = center_crop_arr(image, 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    same = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(center_crop_arr(Image.fromarray(same), 32), same)  # no resampling at size
    x = to_float(th.from_numpy(same).permute(2, 0, 1)[None])
    assert th.equal(to_uint8(x), th.from_numpy(same).permute(2, 0, 1)[None])  # exact round trip
    low = low_res_input(x, 8)
    assert low.shape == x.shape
    # the low-res input only depends on the 8x8 block means
    assert th.allclose(th.nn.functional.avg_pool2d(x, 4), th.nn.functional.interpolate(x, 8, mode="area"))


def test_build_data_info(tmp_path):
    folder = tmp_path / "train"
    make_image_folder(str(folder), num_classes=3, per_class=5)
    train, held = build_data_info(str(folder), num_per_class=2, seed=0, exclude=["n00000001_3"])
    assert sorted(train) == sorted(held) == ["n00000000", "n00000001", "n00000002"]
    assert [v["y"] for v in train.values()] == [0, 1, 2]
    assert all(len(v["file_names"]) == 2 for v in held.values())
    names = [n for info in (train, held) for v in info.values() for n in v["file_names"]]
    assert len(names) == len(set(names)) == 14 and "n00000001_3" not in names
    assert build_data_info(str(folder), 2, 0)[1] == build_data_info(str(folder), 2, 0)[1]  # fixed seed
    # a given evaluation list is kept, with its class indices
    _, kept = build_data_info(str(folder), eval_info={"n00000002": {"y": 7, "file_names": ["n00000002_0"]}})
    assert kept == {"n00000002": {"y": 7, "file_names": ["n00000002_0"]}}


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    """The seed's four SR commands, run as written but for data_dir, sizes, widths and steps."""
    root = photo_folder_run(tmp_path_factory.mktemp("sr"), 3, 6, "data/sr_imagenet")
    common = ["--data_dir", "imagenet/train", "--data_info_dict_path", "data/sr_imagenet/train_data_info.pkl",
              "--batch_size", "4", "--microbatch", "2", "--log_interval", "2", "--save_interval", "3",
              "--debug_mode", "yes", "--max_step", "3", "--num_workers", "0", "--image_interval", "2"]
    run_script(["sr_mean_train.py", *MEAN_FLAGS, *common, "--log_dir", "logs/sr_mean/64_256",
                "--model_save_dir", "checkpoints/sr_mean/64_256"], cwd=root)
    test_common = ["--data_dir", "imagenet/train", "--data_info_dict_path", "data/sr_imagenet/to_sample_data_info.pkl",
                   "--batch_size", "10", "--output_dir", "outputs/sr_var/64_256", "--debug_mode", "yes",
                   "--num_workers", "0"]
    run_script(["sr_mean_test.py", *MEAN_FLAGS, *test_common, "--log_dir", "logs/sr_mean/64_256",
                "--model_path", "checkpoints/sr_mean/64_256/model000003.pt"], cwd=root)
    mean_args = ["--mean_model_path", "checkpoints/sr_mean/64_256/model000003.pt",
                 "--mean_model_args_path", "logs/sr_mean/64_256/mean_model_args.pkl"]
    run_script(["sr_var_train.py", *VAR_FLAGS, *common, "--log_dir", "logs/sr_var/64_256",
                "--model_save_dir", "checkpoints/sr_var/64_256", *mean_args], cwd=root)
    run_script(["sr_var_test.py", *VAR_FLAGS, *test_common, "--log_dir", "logs/sr_var/64_256",
                "--model_path", "checkpoints/sr_var/64_256/model000003.pt", *mean_args], cwd=root)
    # the posterior principal components model, with the variance model's flags
    run_script(["sr_pc_train.py", *MEAN_FLAGS, "--num_pcs", "3", *common, "--log_dir", "logs/sr_pc/64_256",
                "--model_save_dir", "checkpoints/sr_pc/64_256", *mean_args], cwd=root)
    run_script(["sr_pc_test.py", *MEAN_FLAGS, *test_common, "--log_dir", "logs/sr_pc/64_256",
                "--model_path", "checkpoints/sr_pc/64_256/model000003.pt", *mean_args], cwd=root)
    # the quantile model, conditioned on the mean model's output as the variance model is
    run_script(["sr_quantile_train.py", *MEAN_FLAGS, "--quantiles", "0.1,0.5,0.9", "--condition_on_mean", "True",
                *common, "--log_dir", "logs/sr_quantile/64_256", "--model_save_dir", "checkpoints/sr_quantile/64_256",
                *mean_args], cwd=root)
    run_script(["sr_quantile_test.py", *MEAN_FLAGS, *test_common, "--log_dir", "logs/sr_quantile/64_256",
                "--model_path", "checkpoints/sr_quantile/64_256/model000003.pt", *mean_args], cwd=root)
    return root


def test_seed_commands_write_the_specified_files(sr_run):
    held = load_pickle(str(sr_run / "data/sr_imagenet/to_sample_data_info.pkl"))
    names = [n for v in held.values() for n in v["file_names"]]
    assert len(names) == 3
    for name in names:
        folder = sr_run / "outputs/sr_var/64_256" / name
        assert sorted(os.listdir(folder)) == ["high_res_mean_3.png", "high_res_pcs_3.npz", "high_res_quantiles_3.npz",
                                              "high_res_var_3.pkl", "low_res.png"]
        levels, quantiles, crossing = load_quantiles(str(folder / "high_res_quantiles_3.npz"), 32)
        assert levels.tolist() == [0.1, 0.5, 0.9] and quantiles.shape == (3, 32, 32, 3) and 0 <= crossing <= 1
        assert (np.diff(quantiles, axis=0) >= 0).all()  # written sorted along the levels
        assert np.array(Image.open(folder / "high_res_mean_3.png")).shape == (32, 32, 3)
        var = pickle.load(open(folder / "high_res_var_3.pkl", "rb"))
        assert var.shape == (32, 32, 3) and var.dtype == np.float32
        with np.load(folder / "high_res_pcs_3.npz") as pcs:
            directions, variances = pcs["directions"], pcs["variances"]
        assert directions.shape == (3, 32, 32, 3) and variances.shape == (3,) and directions.dtype == np.float32
        flat = directions.reshape(3, -1).astype(np.float64)
        assert np.allclose(flat @ flat.T, np.eye(3), atol=1e-5)  # orthonormal as flat vectors
    args = load_pickle(str(sr_run / "logs/sr_mean/64_256/mean_model_args.pkl"))
    assert args["model_channels"] == 32 and args["large_size"] == 32 and "last_layer_type" not in args
    assert load_pickle(str(sr_run / "logs/sr_var/64_256/var_model_args.pkl"))["last_layer_type"] == "none"
    assert load_pickle(str(sr_run / "logs/sr_pc/64_256/pc_model_args.pkl"))["num_pcs"] == 3
    refused = run_script(["sr_pc_test.py", *MEAN_FLAGS, "--num_pcs", "4", "--data_dir", "imagenet/train",
                          "--data_info_dict_path", "data/sr_imagenet/to_sample_data_info.pkl", "--log_dir",
                          "logs/sr_pc/64_256", "--output_dir", "outputs/bad", "--model_path",
                          "checkpoints/sr_pc/64_256/model000003.pt"], cwd=sr_run, check=False)
    assert_user_error(refused, "--num_pcs 4 contradicts", "pc_model_args.pkl")
    quantile_args = load_pickle(str(sr_run / "logs/sr_quantile/64_256/quantile_model_args.pkl"))
    assert quantile_args["quantiles"] == "0.1,0.5,0.9" and quantile_args["condition_on_mean"] is True
    for bad, needle in (("0.5,0.2", "strictly increasing"), ("0,0.5", "lie in (0, 1)"), ("0.1,,0.9", "--quantiles")):
        refused = run_script(["sr_quantile_train.py", *MEAN_FLAGS, "--quantiles", bad, "--data_dir", "imagenet/train",
                              "--data_info_dict_path", "data/sr_imagenet/train_data_info.pkl", "--log_dir", "logs/q",
                              "--model_save_dir", "checkpoints/q"], cwd=sr_run, check=False)
        assert_user_error(refused, needle)
    assert not (sr_run / "logs/q").exists()
    for run in ("sr_mean", "sr_var", "sr_pc", "sr_quantile"):
        assert files_in(sr_run / "checkpoints" / run / "64_256") == ["model000003.pt", "opt000003.pt"]
        log = (sr_run / "logs" / run / "64_256" / "log.txt").read_text()
        assert "needs a GPU; training in fp32" in log  # --use_fp16 True on a CPU
        assert "grad_norm" in log  # --debug_mode yes


def test_rerunning_a_test_skips_done_images(sr_run):
    proc = run_script(["sr_mean_test.py", *MEAN_FLAGS, "--data_dir", "imagenet/train", "--data_info_dict_path",
                       "data/sr_imagenet/to_sample_data_info.pkl", "--log_dir", "logs/sr_mean/64_256",
                       "--output_dir", "outputs/sr_var/64_256", "--model_path",
                       "checkpoints/sr_mean/64_256/model000003.pt", "--num_workers", "0"], cwd=sr_run)
    assert "0 of 3 images to do" in proc.stdout


def test_resume_continues_the_step_count(sr_run):
    run_script(["sr_mean_train.py", *MEAN_FLAGS, "--data_dir", "imagenet/train", "--data_info_dict_path",
                "data/sr_imagenet/train_data_info.pkl", "--batch_size", "2", "--save_interval", "2",
                "--max_step", "5", "--log_dir", "logs/sr_mean/64_256", "--model_save_dir",
                "checkpoints/sr_mean/64_256", "--resume_checkpoint", "model000003.pt", "--num_workers", "0"],
               cwd=sr_run)
    assert {"model000004.pt", "model000005.pt", "opt000005.pt"} <= set(os.listdir(
        sr_run / "checkpoints/sr_mean/64_256"))


def _seed_mean_test(root, *extra, **replace):
    args = dict(data_dir="imagenet/train", data_info_dict_path="data/sr_imagenet/to_sample_data_info.pkl",
                log_dir="logs/sr_mean/64_256", output_dir="outputs/bad",
                model_path="checkpoints/sr_mean/64_256/model000003.pt", num_workers="0")
    args.update(replace)
    flags = [x for k, v in args.items() for x in (f"--{k}", v)]
    return run_script(["sr_mean_test.py", *MEAN_FLAGS, *flags, *extra], cwd=root, check=False)


def test_bad_inputs_end_with_one_line(sr_run, tmp_path):
    assert_user_error(_seed_mean_test(sr_run, data_dir="imagenet/trian"), "--data_dir", "did you mean 'imagenet/train'")
    assert_user_error(_seed_mean_test(sr_run, data_info_dict_path="data/imagenet/to_sample_data_info.pkl"),
                      "did you mean 'data/sr_imagenet/to_sample_data_info.pkl'")
    # flags that contradict the args pickle of the checkpoint's run
    assert_user_error(_seed_mean_test(sr_run, "--model_channels", "64"), "--model_channels", "contradicts",
                      "mean_model_args.pkl")
    # a checkpoint of another stage: the variance model's (6 input channels) is named as such
    assert_user_error(_seed_mean_test(sr_run, model_path="checkpoints/sr_var/64_256/model000003.pt"),
                      "holds the weights of a variance model", "not of a mean model")
    # a listed image that is missing, and one that cannot be decoded
    info = {"n00000000": {"y": 0, "file_names": ["n00000000_0", "n00000000_404"]}}
    pickle.dump(info, open(sr_run / "missing.pkl", "wb"))
    assert_user_error(_seed_mean_test(sr_run, data_info_dict_path="missing.pkl"), "'n00000000_404'", "missing.pkl")
    os.makedirs(sr_run / "broken", exist_ok=True)
    (sr_run / "broken" / "n00000000_0.JPEG").write_bytes(b"not a jpeg")
    pickle.dump({"n00000000": {"y": 0, "file_names": ["n00000000_0"]}}, open(sr_run / "one.pkl", "wb"))
    assert_user_error(_seed_mean_test(sr_run, data_dir="broken", data_info_dict_path="one.pkl"),
                      "broken/n00000000_0.JPEG", "cannot be read")
    # a data-info pickle of the wrong kind
    pickle.dump([1, 2, 3], open(sr_run / "list.pkl", "wb"))
    assert_user_error(_seed_mean_test(sr_run, data_info_dict_path="list.pkl"), "not a data-info pickle")
    # the seed's own slip in sr_var_train.py
    proc = run_script(["sr_var_train.py", *VAR_FLAGS, "--data_dir", "imagenet/train", "--data_info_dict_path",
                       "data/sr_imagenet/train_data_info.pkl", "--log_dir", "logs/sr_var/other", "--model_save_dir",
                       "checkpoints/sr_var/other", "--mean_model_path", "checkpoints/sr_mean/64_256/model000003.pt",
                       "--mean_model_args_path", "logs/sr_mean/64_256mean_model_args.pkl"], cwd=sr_run, check=False)
    assert_user_error(proc, "did you mean 'logs/sr_mean/64_256/mean_model_args.pkl'")
    # a resume_checkpoint that does not exist
    proc = run_script(["sr_mean_train.py", *MEAN_FLAGS, "--data_dir", "imagenet/train", "--data_info_dict_path",
                       "data/sr_imagenet/train_data_info.pkl", "--log_dir", "logs/sr_mean/64_256",
                       "--model_save_dir", "checkpoints/sr_mean/64_256", "--resume_checkpoint", "model999999.pt"],
                      cwd=sr_run, check=False)
    # the checkpoints there: as many as the tests before this one made
    assert_user_error(proc, "--resume_checkpoint 'model999999.pt'", "checkpoints there: model0000")
    # a missing data directory for training
    proc = run_script(["sr_mean_train.py", "--data_dir", str(tmp_path / "none"), "--data_info_dict_path",
                       "data/sr_imagenet/train_data_info.pkl", "--log_dir", "logs/x", "--model_save_dir", "ck/x"],
                      cwd=sr_run, check=False)
    assert_user_error(proc, "--data_dir", "does not exist")


def test_two_rank_ddp_training_under_mpiexec(sr_run):
    """mpiexec -n 2: two ranks train one model (gloo on CPUs); rank 0 saves, each rank logs."""
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    args = [mpiexec, "-n", "2", sys.executable, os.path.join(ROOT, "sr_mean_train.py"), *MEAN_FLAGS,
            "--data_dir", "imagenet/train", "--data_info_dict_path", "data/sr_imagenet/train_data_info.pkl",
            "--batch_size", "2", "--max_step", "2", "--save_interval", "2", "--log_interval", "1",
            "--log_dir", "logs/ddp", "--model_save_dir", "checkpoints/ddp", "--num_workers", "0"]
    proc = subprocess.run(args, cwd=sr_run, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert files_in(sr_run / "checkpoints/ddp") == ["model000002.pt", "opt000002.pt"]
    assert os.path.exists(sr_run / "logs/ddp/rank1/log.txt")
    last = list(csv.DictReader(open(sr_run / "logs/ddp/progress.csv")))[-1]
    assert last["step"] == "2" and last["samples"] == "8"  # 2 steps x batch 2 x 2 ranks


# --------------------------------------------------------------------------------------
# Nothing hangs, nothing is lost (each: exit status, one line, nothing that existed changed)
# --------------------------------------------------------------------------------------

def _train(root, *extra, script="sr_mean_train.py", flags=MEAN_FLAGS, **replace):
    args = dict(data_dir="imagenet/train", data_info_dict_path="data/sr_imagenet/train_data_info.pkl",
                batch_size="2", log_dir="logs/fresh", model_save_dir="checkpoints/fresh", num_workers="0")
    args.update(replace)
    return [script, *flags, *[x for k, v in args.items() for x in (f"--{k}", v)], *extra]


def test_a_batch_larger_than_the_data_is_refused_not_a_hang(sr_run):
    before = snapshot(sr_run)
    assert_user_error(run_script(_train(sr_run, batch_size="16"), cwd=sr_run, check=False, timeout=120),
                      "--batch_size 16 is more than the 15 training images")
    pickle.dump({"n00000000": {"y": 0, "file_names": []}}, open(sr_run / "empty.pkl", "wb"))
    assert_user_error(run_script(_train(sr_run, data_info_dict_path="empty.pkl"), cwd=sr_run, check=False,
                                 timeout=120), "lists no images")
    os.remove(sr_run / "empty.pkl")
    assert snapshot(sr_run) == before


def test_sigterm_saves_and_exits_75_and_one_run_per_folder(sr_run):
    """
    Pre-emption: SIGTERM ends a training with a checkpoint and exit status 75 (not 0, so
    `&&` chains and schedulers see it did not finish); while it runs, a second training
    into the same --model_save_dir is refused; the same command with latest continues.
    """
    args = _train(sr_run, "--resume_checkpoint", "latest", max_step="100000", save_interval="100000",
                  log_interval="1", log_dir="logs/preempt", model_save_dir="checkpoints/preempt")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, args[0]), *args[1:]], cwd=sr_run,
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        progress = sr_run / "logs/preempt/progress.csv"
        deadline = time.time() + 120
        while (not progress.exists() or len(progress.read_text().splitlines()) < 3) and time.time() < deadline:
            time.sleep(0.1)
        second = run_script(_train(sr_run, "--resume_checkpoint", "latest", log_dir="logs/preempt",
                                   model_save_dir="checkpoints/preempt"), cwd=sr_run, check=False)
        assert_user_error(second, "--model_save_dir 'checkpoints/preempt' is in use by a run that is still going")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 75, (out[-2000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stopped: SIGTERM at step" in lines[0] and "--resume_checkpoint latest" in lines[0]
    saved = files_in(sr_run / "checkpoints/preempt")
    step = int(saved[0][5:11])
    assert saved == [f"model{step:06d}.pt", f"opt{step:06d}.pt"] and step >= 2
    assert "training complete" not in (sr_run / "logs/preempt/log.txt").read_text()
    run_script(_train(sr_run, "--resume_checkpoint", "latest", max_step=str(step + 1), log_dir="logs/preempt",
                      model_save_dir="checkpoints/preempt"), cwd=sr_run)
    assert f"model{step + 1:06d}.pt" in files_in(sr_run / "checkpoints/preempt")


def test_a_fresh_training_keeps_out_of_another_runs_folders(sr_run):
    before = snapshot(sr_run)
    # another run's log_dir: its args pickle describes its checkpoints, and is kept
    proc = run_script(_train(sr_run, "--model_channels", "64", log_dir="logs/sr_mean/64_256"), cwd=sr_run,
                      check=False)
    assert_user_error(proc, "--model_channels 64 contradicts", "mean_model_args.pkl", "choose another --log_dir")
    # a variance model on a mean run of another size
    proc = run_script(_train(sr_run, "--mean_model_path", "checkpoints/sr_mean/64_256/model000003.pt",
                             "--mean_model_args_path", "logs/sr_mean/64_256/mean_model_args.pkl",
                             script="sr_var_train.py", flags=" ".join(VAR_FLAGS).replace(
                                 "--large_size 32 --small_size 8", "--large_size 16 --small_size 4").split()),
                      cwd=sr_run, check=False)
    assert_user_error(proc, "is 8->32 px, the variance model 4->16 px")
    assert snapshot(sr_run) == before


def test_a_damaged_optimizer_state_is_one_line(sr_run, tmp_path):
    shutil.copytree(sr_run / "checkpoints/sr_mean/64_256", tmp_path / "ck")
    (tmp_path / "ck" / "opt000003.pt").write_bytes(b"\x80\x04garbage")
    before = snapshot(tmp_path)
    proc = run_script(_train(sr_run, "--resume_checkpoint", "model000003.pt", "--max_step", "4",
                             log_dir="logs/sr_mean/64_256", model_save_dir=str(tmp_path / "ck")), cwd=sr_run,
                      check=False)
    assert_user_error(proc, "optimizer state", "opt000003.pt", "is not readable", "delete it")
    assert snapshot(tmp_path) == before


def test_build_data_info_never_replaces_a_list_with_another(sr_run, tmp_path):
    os.makedirs(tmp_path / "empty")
    out = sr_run / "data/sr_imagenet"
    before = snapshot(out)
    proc = run_script(["scripts/build_data_info.py", "--data_dir", str(tmp_path / "empty"), "--out_dir", str(out)],
                      cwd=sr_run, check=False)
    assert_user_error(proc, "holds no images")
    make_image_folder(str(tmp_path / "other"), num_classes=2, per_class=3)
    proc = run_script(["scripts/build_data_info.py", "--data_dir", str(tmp_path / "other"), "--out_dir", str(out),
                       "--resample", "yes"], cwd=sr_run, check=False)
    assert_user_error(proc, "already holds another list", "--overwrite True")
    assert snapshot(out) == before
    # the same folder again: the same lists, nothing to refuse
    run_script(["scripts/build_data_info.py", "--data_dir", "imagenet/train", "--out_dir", str(out),
                "--num_per_class", "1"], cwd=sr_run)
    assert snapshot(out) == before
