"""
ddpm_sr_sample.py (resume after kill -9, sharding under mpiexec, bad input) and
sr_var_verification.py (metrics worked out by hand, the results file, bad input).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch as th
from PIL import Image

from imaging import metrics
from runkit import logger
from runkit.fileio import png_is_complete, save_pickle, save_png
from sr_var.quantiles import save_quantiles
from testbed import TestbedParams, write_testbed_dataset
from tests.conftest import ROOT, assert_user_error, run_script
from tests.helpers import snapshot

SAMPLE_FLAGS = ("--large_size 16 --small_size 4 --class_cond True --learn_sigma True --diffusion_steps 1000 "
                "--noise_schedule linear --timestep_respacing 50").split()


@pytest.fixture(scope="module")
def testbed_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampling")
    write_testbed_dataset(str(root / "data"), TestbedParams(large_size=16, small_size=4), num_train=4, num_eval=4)
    return root


def _sample_args(out, n, batch_size=2, extra=()):
    return ["ddpm_sr_sample.py", *SAMPLE_FLAGS, "--output_dir", out, "--data_dir", "data/images",
            "--model_path", "data/testbed.json", "--to_sample_images_dict_path", "data/to_sample_data_info.pkl",
            "--num_samples_per_image", str(n), "--batch_size", str(batch_size), *extra]


def _sample_files(out):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(out) for f in files if "high_res_samples" in d)


def test_sampling_resumes_after_kill_9(testbed_dir):
    out = str(testbed_dir / "killed")
    cmd = [sys.executable, os.path.join(ROOT, _sample_args(out, 6)[0]), *_sample_args(out, 6)[1:]]
    proc = subprocess.Popen(cmd, cwd=testbed_dir, env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(_sample_files(out)) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _sample_files(out)
    assert 0 < len(before) < 24
    # nothing half-written under a final name
    for path in before:
        assert os.path.basename(path).startswith("sample_") or ".tmp-" in path
    finished = [p for p in before if os.path.basename(p).startswith("sample_")]
    assert all(png_is_complete(p) for p in finished)
    mtimes = {p: os.path.getmtime(p) for p in finished}

    done = run_script(_sample_args(out, 6), cwd=testbed_dir)
    assert f"{24 - len(finished)} samples of" in done.stdout  # only the missing ones were made
    after = _sample_files(out)
    assert len(after) == 24 and all(png_is_complete(p) for p in after)
    assert all(os.path.getmtime(p) == t for p, t in mtimes.items())  # finished samples kept
    for path in after:
        assert np.array(Image.open(path)).shape == (16, 16, 3)
    # a complete run has nothing left to do
    assert "0 samples of 0 images" in run_script(_sample_args(out, 6), cwd=testbed_dir).stdout


def test_two_ranks_shard_the_images(testbed_dir):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    assert mpiexec, "mpiexec comes with the mpich package"
    out, log = str(testbed_dir / "mpi"), str(testbed_dir / "mpi_log")
    args = _sample_args(out, 2, extra=["--log_dir", log])
    subprocess.run([mpiexec, "-n", "2", sys.executable, os.path.join(ROOT, args[0]), *args[1:]], cwd=testbed_dir,
                   env=dict(os.environ, PYTHONPATH=ROOT), check=True, capture_output=True, timeout=300)

    def images_done(log_file):
        text = open(log_file).read()
        return {line.split(":")[0] for line in text.splitlines() if ": 2 samples" in line}

    rank0, rank1 = images_done(os.path.join(log, "log.txt")), images_done(os.path.join(log, "rank1", "log.txt"))
    assert len(rank0) == len(rank1) == 2 and not rank0 & rank1
    assert len(_sample_files(out)) == 8


def test_sampling_bad_inputs(testbed_dir):
    assert_user_error(run_script(_sample_args("outputs/x", 0), cwd=testbed_dir, check=False),
                      "--num_samples_per_image 0 should be at least 1")
    checkpoint = str(testbed_dir / "tiny.pt")
    import torch as th

    from guided_diffusion.script_util import sr_create_model_and_diffusion, sr_model_and_diffusion_defaults
    flags = sr_model_and_diffusion_defaults()
    flags.update(large_size=16, small_size=4, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                 attention_resolutions="8", class_cond=False, learn_sigma=True)
    th.save(sr_create_model_and_diffusion(**flags)[0].state_dict(), checkpoint)
    args = _sample_args("outputs/x", 1) + ["--num_channels", "32", "--channel_mult", "1,2", "--num_res_blocks", "1",
                                           "--attention_resolutions", "8"]
    args[args.index("data/testbed.json")] = checkpoint  # a class-unconditional model with --class_cond True
    assert_user_error(run_script(args, cwd=testbed_dir, check=False), "does not fit", "--class_cond")
    args = _sample_args("outputs/x", 1)
    args[args.index("data/to_sample_data_info.pkl")] = "data/to_sample_data_inf.pkl"
    assert_user_error(run_script(args, cwd=testbed_dir, check=False), "did you mean 'data/to_sample_data_info.pkl'")


def test_a_lost_sample_is_redrawn_as_it_was(testbed_dir):
    """Every sample has its own random stream: redrawn alone, a lost sample comes back byte for byte."""
    out = str(testbed_dir / "redraw")
    run_script(_sample_args(out, 4, batch_size=4), cwd=testbed_dir)
    lost = _sample_files(out)[5]
    original = open(lost, "rb").read()
    os.remove(lost)
    assert "1 samples of 1 images" in run_script(_sample_args(out, 4, batch_size=4), cwd=testbed_dir).stdout
    assert open(lost, "rb").read() == original


def test_teachers_and_sampling_folders(testbed_dir):
    """
    --teacher exact writes the same layout; a folder keeps the flags that decide its samples
    (another respacing or teacher into it is refused, nothing changed); --teacher needs a
    testbed; unknown schedules, respacings and class indices are one line.
    """
    out = str(testbed_dir / "exact")
    run_script(_sample_args(out, 2, extra=["--teacher", "exact"]), cwd=testbed_dir)
    assert len(_sample_files(out)) == 8
    flags = json.load(open(os.path.join(out, "sampling_flags.json")))
    assert flags["teacher"] == "exact" and flags["timestep_respacing"] == "50" and flags["large_size"] == 16
    before = snapshot(out)
    for extra, needle in ((["--timestep_respacing", "25"], "--timestep_respacing '25' contradicts"),
                          (["--teacher", "ideal_ddpm"], "--teacher 'ideal_ddpm' contradicts")):
        args = _sample_args(out, 4, extra=["--teacher", "exact"] + extra)
        if extra[0] == "--teacher":
            args = _sample_args(out, 4, extra=extra)
        assert_user_error(run_script(args, cwd=testbed_dir, check=False), needle, "sampling_flags.json")
    assert snapshot(out) == before
    for extra, needle in ((["--teacher", "perfect"], "--teacher 'perfect' is not one of: ideal_ddpm, exact"),
                          (["--noise_schedule", "quadratic"], "--noise_schedule 'quadratic' is not one of"),
                          (["--timestep_respacing", "fifty"], "--timestep_respacing 'fifty' cannot be made"),
                          (["--timestep_respacing", "2000"], "cannot divide section of 1000 steps into 2000"),
                          (["--teacher", "exact", "--use_ddim", "True"], "does not apply to it"),
                          (["--sampler", "euler"], "--sampler 'euler' is not one of"),
                          (["--use_ddim", "True", "--sampler", "dpmpp_2m"], "--use_ddim True asks for DDIM")):
        assert_user_error(run_script(_sample_args("outputs/none", 1, extra=extra), cwd=testbed_dir, check=False),
                          needle)
    args = _sample_args("outputs/none", 1, extra=["--teacher", "exact"])
    args[args.index("data/testbed.json")] = "upsampler.pt"
    open(testbed_dir / "upsampler.pt", "wb").close()
    assert_user_error(run_script(args, cwd=testbed_dir, check=False), "--teacher exact needs a testbed")
    save_pickle({"n00000000": {"y": 1000, "file_names": ["gsm0_000004"]}}, str(testbed_dir / "y1000.pkl"))
    args = _sample_args("outputs/none", 1)
    args[args.index("data/to_sample_data_info.pkl")] = "y1000.pkl"
    assert_user_error(run_script(args, cwd=testbed_dir, check=False), "class index 1000", "0..999")
    assert not os.path.exists(testbed_dir / "outputs" / "none")


def test_fp16_with_a_testbed_teacher_on_a_gpu_says_so_once():
    """--use_fp16 True with a testbed on CUDA: the teacher has no fp16 form; it runs as is and says so."""
    from guided_diffusion.script_util import create_gaussian_diffusion
    from sr_var.sampling import use_fp16_where_it_applies
    from testbed import GaussianScaleMixture, TestbedTeacher

    teacher = TestbedTeacher(GaussianScaleMixture(TestbedParams(large_size=16, small_size=4)),
                             create_gaussian_diffusion(learn_sigma=True, timestep_respacing="10"), learn_sigma=True)
    logger.configure("unused", format_strs=())
    assert use_fp16_where_it_applies(teacher, th.device("cuda"), True) is teacher
    assert any("does not apply" in w for w in logger.get_current().warned)


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------

def test_metrics_by_hand_without_uint8_wrap():
    ref = np.array([[3, 250]], dtype=np.uint8)
    est = np.array([[5, 10]], dtype=np.uint8)  # 3 - 5 wraps to 254 in uint8
    assert metrics.mse(ref, est) == (4 + 240 ** 2) / 2 == 28802.0
    assert metrics.psnr(ref, est) == pytest.approx(10 * np.log10(250 ** 2 / 28802.0))  # data range: max(ref)
    assert metrics.nmse(ref, est) == pytest.approx((4 + 240 ** 2) / (9 + 250 ** 2))
    ref_var = np.array([4.0, 9.0, 0.0])
    est_var = np.array([1.0, -5.0, 16.0])  # a negative model variance counts as 0
    assert metrics.var_error(ref_var, est_var) == pytest.approx((3 + 9 + 16) / 3)
    assert metrics.std_error(ref_var, est_var) == pytest.approx((1 + 3 + 4) / 3)
    cov = metrics.coverage(np.array([0.0, 0, 0, 0]), np.array([0.5, 1.5, 2.5, 3.5]), np.ones(4))
    assert cov == {"1": 0.25, "2": 0.5, "3": 0.75}
    assert metrics.psnr(ref, ref) == float("inf")


@pytest.fixture(scope="module")
def verification_dir(tmp_path_factory):
    """Hand-made samples and model outputs for two 4x4 images."""
    root = tmp_path_factory.mktemp("verify")
    rng = np.random.default_rng(0)
    os.makedirs(root / "images")
    info = {"n00000000": {"y": 0, "file_names": ["n00000000_0", "n00000000_1"]}}
    save_pickle(info, str(root / "info.pkl"))
    for name in info["n00000000"]["file_names"]:
        save_png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), str(root / "images" / f"{name}.png"))
        for i in range(3):
            save_png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
                     str(root / "ddpm" / name / "high_res_samples" / f"sample_{i}.png"))
        save_png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), str(root / "sr" / name / "high_res_mean_7.png"))
        save_pickle(rng.normal(500, 300, (4, 4, 3)).astype(np.float32), str(root / "sr" / name / "high_res_var_9.pkl"))
    return root


def _verify_args(**replace):
    args = dict(data_dir="images", data_info_dict_path="info.pkl", large_size="4", small_size="2",
                ddpm_sr_output_dir="ddpm", num_samples="3", sr_model_output_dir="sr", mean_model_step="7",
                var_model_step="9", log_dir="log")
    args.update(replace)
    return ["sr_var_verification.py", *[x for k, v in args.items() for x in (f"--{k}", v)]]


def test_verification_results_match_a_direct_computation(verification_dir):
    run_script(_verify_args(), cwd=verification_dir)
    results = json.load(open(verification_dir / "log" / "results.json"))
    mses, var_errors = [], []
    for name in ("n00000000_0", "n00000000_1"):
        sample_dir = verification_dir / "ddpm" / name / "high_res_samples"
        samples = np.stack([np.array(Image.open(sample_dir / f"sample_{i}.png")) for i in range(3)]).astype(np.float64)
        model_mean = np.array(Image.open(verification_dir / "sr" / name / "high_res_mean_7.png")).astype(np.float64)
        model_var = np.load(verification_dir / "sr" / name / "high_res_var_9.pkl", allow_pickle=True)
        mses.append(np.mean((samples.mean(0) - model_mean) ** 2))
        var_errors.append(np.mean(np.abs(samples.var(0) - np.maximum(model_var, 0))))
        assert os.path.exists(verification_dir / "ddpm" / name / "high_res_mean.png")
        stored = np.load(verification_dir / "ddpm" / name / "high_res_var.pkl", allow_pickle=True)
        assert stored.dtype == np.float64 and np.allclose(stored, samples.var(0))
        assert os.path.exists(verification_dir / "log" / "figures" / f"{name}.png")
    assert results["mean"]["mse"] == pytest.approx(np.mean(mses))
    assert results["var"]["var_error"] == pytest.approx(np.mean(var_errors))
    assert set(results) >= {"mean", "var", "mean_model_vs_truth", "ddpm_mean_vs_truth", "calibration"}
    assert "exact" not in results  # not testbed images
    assert os.path.exists(verification_dir / "log" / "results_grid.png")


def test_verification_bad_inputs(verification_dir):
    assert_user_error(run_script(_verify_args(num_samples="5"), cwd=verification_dir, check=False),
                      "'n00000000_0' has 3 of the 5 samples")
    assert_user_error(run_script(_verify_args(num_samples="1"), cwd=verification_dir, check=False),
                      "--num_samples 1 should be at least 2 (one sample has no variance)")
    assert_user_error(run_script(_verify_args(mean_model_step="8"), cwd=verification_dir, check=False),
                      "high_res_mean_8.png", "sr_mean_test.py")
    assert_user_error(run_script(_verify_args(var_model_step="8"), cwd=verification_dir, check=False),
                      "high_res_var_8.pkl", "sr_var_test.py")
    os.makedirs(verification_dir / "ddpm_empty")
    assert_user_error(run_script(_verify_args(ddpm_sr_output_dir="ddpm_empty"), cwd=verification_dir, check=False),
                      "has 0 of the 3 samples")


def test_pc_verification_on_the_testbed_scores_the_exact_components_perfectly(testbed_dir):
    """
    Exact posterior samples, the exact mean and variance, and as the PC model's output the
    exact top-3 principal components (C0's eigenvectors at E[s^2 | y] lambda_k): the
    verification gives overlap, captured variance and every variance ratio 1, and its
    sample-PCA numbers equal a direct computation. Auto-detection, "none", a missing step.
    """
    from imaging import area_downsample, to_float
    from sr_var import principal_components as pcs
    from sr_var.data import flatten_data_info, load_data_info
    from testbed import ExactCovariance, load_testbed, quantize

    data = testbed_dir / "data"
    tb = load_testbed(str(data / "testbed.json"))
    names = [n for n, _ in flatten_data_info(load_data_info(str(data / "to_sample_data_info.pkl")))]
    rng = np.random.default_rng(0)
    direct = []
    for name in names:
        truth = np.array(Image.open(data / "images" / f"{name}.png"))
        y = area_downsample(to_float(th.from_numpy(truth).permute(2, 0, 1)[None]), 4).double().numpy()[0]
        samples = np.moveaxis(quantize(tb.sample_posterior(y, 12, rng)), 1, -1)
        for i, sample in enumerate(samples):
            save_png(sample, str(testbed_dir / "pcv" / "ddpm" / name / "high_res_samples" / f"sample_{i}.png"))
        out = testbed_dir / "pcv" / "sr" / name
        save_png(quantize(np.moveaxis(tb.posterior_mean(y), 0, -1)), str(out / "high_res_mean_1.png"))
        save_pickle(np.moveaxis(tb.posterior_variance(y), 0, -1).astype(np.float32) * 127.5 ** 2,
                    str(out / "high_res_var_1.pkl"))
        directions, variances = ExactCovariance(tb, y).top(3)
        pcs.save_pcs(str(out / "high_res_pcs_7.npz"), directions.reshape(3, 16, 16, 3), variances)
        # as the quantile model's output, the exact posterior quantiles
        save_quantiles(str(out / "high_res_quantiles_5.npz"), (0.05, 0.5, 0.95),
                       (tb.posterior_quantiles(y, (0.05, 0.5, 0.95)) + 1) * 127.5)
        direct.append(pcs.vs_samples(directions.astype(np.float32).astype(np.float64),
                                     variances.astype(np.float32), samples.astype(np.float64)))
    args = ["sr_var_verification.py", "--data_dir", "data/images", "--data_info_dict_path",
            "data/to_sample_data_info.pkl", "--large_size", "16", "--small_size", "4", "--ddpm_sr_output_dir",
            "pcv/ddpm", "--num_samples", "12", "--sr_model_output_dir", "pcv/sr", "--mean_model_step", "1",
            "--var_model_step", "1"]
    run_script([*args, "--log_dir", "pcv/log"], cwd=testbed_dir)
    results = json.load(open(testbed_dir / "pcv" / "log" / "results.json"))
    assert results["pc_model_step"] == "7" and results["quantile_model_step"] == "5"
    # the exact quantiles as the model: no error to them (float32 storage aside), and their 5-95% interval
    # leaves out 10% of each pixel's posterior mass
    assert all(results["quantiles"][t]["vs_exact"] < 1e-4 for t in ("0.05", "0.5", "0.95"))
    intervals = results["intervals"]
    assert intervals["quantile model"]["before_calibration"]["exact_risk"] == pytest.approx(0.1, abs=1e-4)
    assert {"variance model", "DDPM-SR samples", "exact posterior samples"} <= set(intervals)
    model = results["pcs"]["exact"]["model"]
    for key in ("overlap", "captured"):
        assert model[key] == pytest.approx(1, abs=1e-5)
    for key in ("variance_ratio", "to_eigenvalue"):
        assert model[key] == {k: pytest.approx(1, abs=1e-5) for k in ("1", "2", "3")}
    assert 0.99 < model["captured_vs_target"] <= 1 + 1e-6  # the stored mean is rounded to uint8
    for ref in ("ddpm", "mc_floor"):  # 12 samples see part of the top-3 subspace
        assert 0 < results["pcs"]["exact"][ref]["captured"] < 1
    expected = metrics.average(direct)
    assert results["pcs"]["vs_samples"] == {k: pytest.approx(v) for k, v in expected.items()}
    assert 0 < results["pcs"]["split_half"]["captured"] < 1
    assert sorted(os.listdir(testbed_dir / "pcv" / "log" / "pc_figures")) == [f"{n}.png" for n in sorted(names)]
    run_script([*args, "--log_dir", "pcv/log_none", "--pc_model_step", "none"], cwd=testbed_dir)
    assert "pcs" not in json.load(open(testbed_dir / "pcv" / "log_none" / "results.json"))
    assert_user_error(run_script([*args, "--log_dir", "pcv/log_bad", "--pc_model_step", "8"], cwd=testbed_dir,
                                 check=False), "high_res_pcs_8.npz", "sr_pc_test.py")
    few = [*args, "--log_dir", "pcv/log_bad"]
    few[few.index("12")] = "3"
    assert_user_error(run_script(few, cwd=testbed_dir, check=False), "3 components", "at most 2")
    assert not os.path.exists(testbed_dir / "pcv" / "log_bad")
