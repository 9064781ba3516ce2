"""
The same run whichever launcher starts it: mpiexec, torchrun, and SLURM's srun (simulated by
the variables srun sets, two processes on this machine); gloo on the CPU. Training with a fixed
seed gives the same checkpoint bytes and losses, sampling the same sample bytes; a launcher
whose variables contradict each other, or a rank that cannot reach the others, is one line and
exit 2; a SIGTERM to every rank ends each with exit 75 and one checkpoint, which a rerun
continues (docs/super_resolution.md, "Launchers").
"""

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from runkit import UserError
from runkit.dist_util import first_host, launcher_of
from tests.conftest import ROOT, assert_user_error, files_in, run_script
from tests.helpers import photo_folder_run

LAUNCHERS = ("mpiexec", "torchrun", "slurm")
MEAN_FLAGS = ("--attention_resolutions 16 --large_size 32 --small_size 8 --model_channels 32 --num_heads 4 "
              "--num_res_blocks 1 --resblock_updown True --channel_mult 1,2").split()
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PMI_SIZE", "PMI_RANK")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    return dict(env, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)


def _start(launcher, args, cwd):
    """The processes of a two-rank run of the stage `args` under `launcher`."""
    script = [os.path.join(ROOT, args[0]), *args[1:]]
    if launcher == "mpiexec":
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
        return [subprocess.Popen([mpiexec, "-n", "2", sys.executable, *script], cwd=cwd, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    if launcher == "torchrun":
        return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                  "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *script],
                                 cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    port = str(_free_port())  # srun: one task per rank, SLURM's variables in each
    return [subprocess.Popen([sys.executable, *script], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_env(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2",
                                                 SLURM_STEP_NUM_TASKS="2", SLURM_JOB_NODELIST="localhost",
                                                 SLURM_JOB_ID="4242", MASTER_PORT=port))
            for rank in range(2)]


def _run(launcher, args, cwd, timeout=300):
    procs = _start(launcher, args, cwd)
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, (launcher, out[-2000:], err[-2000:])


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    return photo_folder_run(tmp_path_factory.mktemp("launchers"), 2, 4, "data")


def _train_args(name, steps=2, save_interval=2):
    return ["sr_mean_train.py", *MEAN_FLAGS, "--data_dir", "imagenet/train", "--data_info_dict_path",
            "data/train_data_info.pkl", "--batch_size", "2", "--max_step", str(steps), "--save_interval",
            str(save_interval), "--log_interval", "1", "--num_workers", "0", "--image_interval", "0",
            "--log_dir", f"logs/{name}", "--model_save_dir", f"checkpoints/{name}", "--resume_checkpoint", "latest"]


def _losses(root, name):
    return [row["loss"] for row in csv.DictReader(open(root / "logs" / name / "progress.csv"))]


def test_launcher_variables_are_read_and_checked():
    assert launcher_of({}) is None
    torchrun = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    assert launcher_of(torchrun) == ("torchrun", 1, 1, 2, "h", 29500)
    assert launcher_of({"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
                        "SLURM_JOB_NODELIST": "gpu[07-08,12]", "SLURM_JOB_ID": "123456"}) \
        == ("SLURM", 3, 1, 4, "gpu07", 20000 + 123456 % 20000)
    # a batch script's own step (no srun) is one process, however many tasks the job has
    assert launcher_of({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "4",
                        "SLURM_JOB_NODELIST": "n1"}) is None
    assert launcher_of({"PMI_SIZE": "2"})[:1] == ("MPI",)
    assert first_host("a001,b[1-2]") == "a001" and first_host("rack[3,5]-gpu") == "rack3-gpu"
    for bad, words in (({"WORLD_SIZE": "2"}, "not RANK"),
                       ({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
                        "rank 2 in a world of 2"),
                       ({"RANK": "x", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
                        "RANK='x'"),
                       ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "SLURM_JOB_NODELIST"),
                       ({"PMI_SIZE": "two"}, "PMI_SIZE='two'")):
        with pytest.raises(UserError, match=words):
            launcher_of(bad)


def test_training_is_the_same_under_every_launcher(photo_run):
    for launcher in LAUNCHERS:
        _run(launcher, _train_args(launcher), photo_run)
    checkpoints = {launcher: open(photo_run / "checkpoints" / launcher / "model000002.pt", "rb").read()
                   for launcher in LAUNCHERS}
    assert checkpoints["mpiexec"] == checkpoints["torchrun"] == checkpoints["slurm"]
    assert _losses(photo_run, "mpiexec") == _losses(photo_run, "torchrun") == _losses(photo_run, "slurm")
    for launcher in LAUNCHERS:
        assert files_in(photo_run / "checkpoints" / launcher) == ["model000002.pt", "opt000002.pt"]
        assert os.path.exists(photo_run / "logs" / launcher / "rank1" / "log.txt")


def test_sampling_is_the_same_under_every_launcher(tmp_path):
    from testbed import TestbedParams, write_testbed_dataset

    write_testbed_dataset(str(tmp_path / "data"), TestbedParams(large_size=16, small_size=4), num_train=2,
                          num_eval=4)
    flags = ("--large_size 16 --small_size 4 --learn_sigma True --diffusion_steps 100 --noise_schedule linear "
             "--timestep_respacing 5 --num_samples_per_image 2 --batch_size 2 --data_dir data/images "
             "--model_path data/testbed.json --to_sample_images_dict_path data/to_sample_data_info.pkl").split()
    run_script(["ddpm_sr_sample.py", *flags, "--output_dir", "single"], cwd=tmp_path)
    for launcher in LAUNCHERS:
        _run(launcher, ["ddpm_sr_sample.py", *flags, "--output_dir", launcher], tmp_path)

    def samples(out):
        folder = tmp_path / out
        return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
                for d, _, names in os.walk(folder) for f in names if "high_res_samples" in d}

    single = samples("single")
    assert len(single) == 8
    for launcher in LAUNCHERS:
        assert samples(launcher) == single, launcher


def test_contradicting_or_unreachable_ranks_are_one_line(photo_run):
    proc = run_script(_train_args("bad"), cwd=photo_run, check=False, env={"WORLD_SIZE": "2"})
    assert_user_error(proc, "WORLD_SIZE=2", "torchrun")
    proc = run_script(_train_args("bad"), cwd=photo_run, check=False, timeout=120,
                      env={"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(_free_port()), "RUNKIT_DIST_TIMEOUT_S": "3"})
    assert_user_error(proc, "rank 1 of 2 (torchrun) could not reach the other ranks", "within 3 s")
    assert not os.path.exists(photo_run / "checkpoints" / "bad")


def test_a_sigterm_to_every_slurm_rank_saves_once_and_requeues(photo_run):
    name = "preempted"
    procs = _start("slurm", _train_args(name, steps=400, save_interval=400), photo_run)
    log = photo_run / "logs" / name / "progress.csv"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.exists() or len(open(log).read().splitlines()) < 4):
        time.sleep(0.5)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [75, 75], results
    saved = files_in(photo_run / "checkpoints" / name)
    assert len(saved) == 2 and saved[0].startswith("model") and saved[1].startswith("opt"), saved
    step = int(saved[0][len("model"):-len(".pt")])
    assert 0 < step < 400
    # the resubmission: the same command continues from that checkpoint to the end
    procs = _start("slurm", _train_args(name, steps=step + 2, save_interval=400), photo_run)
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    assert f"resuming from checkpoints/{name}/model{step:06d}.pt" in open(photo_run / "logs" / name / "log.txt").read()
    assert files_in(photo_run / "checkpoints" / name) == sorted(
        [*saved, f"model{step + 2:06d}.pt", f"opt{step + 2:06d}.pt"])
