"""
sr_ddpm_train.py, the DDPM-SR upsampler's training (guided-diffusion's super_res_train.py):
its loss terms against a hand computation, the vb term's stop-gradient on the mean, the
importance sampler against upstream's algorithm, a stopped and resumed run against an
uninterrupted one (byte for byte), two ranks, its checkpoints sampled by ddpm_sr_sample.py,
and bad inputs as one line.
"""

import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch as th
from torch.utils.data import DataLoader

from guided_diffusion.resample import LossSecondMomentResampler, UniformSampler, create_named_schedule_sampler
from guided_diffusion.script_util import (
    SR_FLAG_NAMES,
    diffusion_from_flags,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
)
from imaging import area_downsample, to_float
from runkit import UserError
from runkit.fileio import check_state_dict, load_pickle, torch_load
from runkit.training import resolve_resume_checkpoint
from sr_var.data import ImageDataset, iterate_images, training_batches
from sr_var.ddpm_training import UPSAMPLER, UpsamplerLoss, train_upsampler, training_parser
from tests.conftest import ROOT, assert_user_error, files_in, run_script
from tests.helpers import make_image_folder, snapshot

# A tiny upsampler (GroupNorm(32) needs 32 channels) on a 4 -> 16 px testbed.
MODEL_FLAGS = ("--large_size 16 --small_size 4 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 "
               "--attention_resolutions 8 --num_heads 2 --resblock_updown True --class_cond True "
               "--learn_sigma True").split()
GD_FLAGS = "--diffusion_steps 4 --noise_schedule cosine".split()  # 4 steps: the importance sampler warms up
SCRIPT_FLAGS = ("--data_dir data/images --data_info_dict_path data/train_data_info.pkl --batch_size 8 "
                "--microbatch 4 --schedule_sampler loss-second-moment --save_interval 4 --log_interval 2 "
                "--num_workers 0 --image_interval 4 --resume_checkpoint latest").split()
STEPS = 12
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # a tiny model: one thread is as fast, and spares a busy machine


def _flags_dict(**overrides):
    flags = sr_model_and_diffusion_defaults()
    flags.update(large_size=16, small_size=4, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                 attention_resolutions="8", num_heads=2, resblock_updown=True, class_cond=True, learn_sigma=True)
    flags.update(overrides)
    return flags


# ---------------------------------------------------------------------------------------
# The loss terms by hand
# ---------------------------------------------------------------------------------------

def _approx_cdf(x):
    """guided-diffusion's approximation of the standard normal CDF (its decoder likelihood uses it)."""
    return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_hybrid_loss_terms_match_a_hand_computation():
    th.manual_seed(0)
    steps = 50
    model, diffusion = sr_create_model_and_diffusion(**_flags_dict(diffusion_steps=steps))
    with th.no_grad():  # the zero-initialised output layer would give eps = 0 and the middle variance
        for p in model.out.parameters():
            p.normal_(0, 0.3)
    rng = np.random.default_rng(0)
    uint8 = rng.integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)
    uint8[:, :, 0, :2] = (0, 255)  # the decoder's edge bins
    x0 = to_float(th.from_numpy(uint8))
    low_res = area_downsample(x0, 4)
    y = th.tensor([3, 1, 4, 1, 5, 9])
    t = th.tensor([0, 0, 1, 17, 33, 49])
    weights = th.tensor([0.5, 1.0, 2.0, 1.5, 0.25, 1.0])
    noise = th.randn(x0.shape)
    loss_fn = UpsamplerLoss(diffusion, UniformSampler(diffusion), class_cond=True)
    loss, output = loss_fn(model, x0, low_res, y, t, weights, noise)
    logged = loss_fn.values()

    # The schedule and every term in float64, from the formulas (Ho et al.; Nichol & Dhariwal).
    betas = np.linspace(1000 / steps * 1e-4, 1000 / steps * 0.02, steps)
    alpha_bar = np.cumprod(1 - betas)
    alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
    post_var = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    post_log_var = np.log(np.append(post_var[1], post_var[1:]))
    b = lambda a: a[t.numpy()][:, None, None, None]  # noqa: E731
    x0_, noise_ = x0.double().numpy(), noise.double().numpy()
    x_t = np.sqrt(b(alpha_bar)) * x0_ + np.sqrt(1 - b(alpha_bar)) * noise_
    # the network saw this x_t
    with th.no_grad():
        again = model(th.from_numpy(x_t).float(), t, low_res=low_res, y=y)
    assert th.allclose(again, output, atol=1e-5)
    out = output.detach().double().numpy()
    eps, v = out[:, :3], out[:, 3:]
    mse = ((noise_ - eps) ** 2).mean(axis=(1, 2, 3))

    x0_pred = (x_t - np.sqrt(1 - b(alpha_bar)) * eps) / np.sqrt(b(alpha_bar))  # no clipping in training

    def posterior_mean(start):
        return (b(betas) * np.sqrt(b(alpha_bar_prev)) / (1 - b(alpha_bar)) * start
                + (1 - b(alpha_bar_prev)) * np.sqrt(1 - b(betas)) / (1 - b(alpha_bar)) * x_t)

    frac = (v + 1) / 2
    model_log_var = frac * np.log(b(betas)) + (1 - frac) * b(post_log_var)
    true_mean, model_mean = posterior_mean(x0_), posterior_mean(x0_pred)
    kl = 0.5 * (-1 + model_log_var - b(post_log_var) + np.exp(b(post_log_var) - model_log_var)
                + (true_mean - model_mean) ** 2 * np.exp(-model_log_var))
    kl_bits = kl.mean(axis=(1, 2, 3)) / np.log(2)
    inv_std = np.exp(-0.5 * model_log_var)
    plus = _approx_cdf(inv_std * (x0_ - model_mean + 1 / 255))
    minus = _approx_cdf(inv_std * (x0_ - model_mean - 1 / 255))
    prob = np.where(x0_ < -0.999, plus, np.where(x0_ > 0.999, 1 - minus, plus - minus))
    nll_bits = -np.log(np.maximum(prob, 1e-12)).mean(axis=(1, 2, 3)) / np.log(2)
    vb = np.where(t.numpy() == 0, nll_bits, kl_bits)
    w = weights.double().numpy()

    assert np.isclose(loss.item(), (w * (mse + vb)).mean(), rtol=1e-4)
    assert np.isclose(logged["mse"], (w * mse).mean(), rtol=1e-4)
    assert np.isclose(logged["vb"], (w * vb).mean(), rtol=1e-4)
    quartile = 4 * t.numpy() // steps  # upstream's log_loss_dict: 0, 0, 0, 1, 2, 3
    for q in range(4):
        sel = quartile == q
        assert np.isclose(logged[f"vb_q{q}"], (w * vb)[sel].mean(), rtol=1e-4)
        assert np.isclose(logged[f"mse_q{q}"], (w * mse)[sel].mean(), rtol=1e-4)
        assert np.isclose(logged[f"loss_q{q}"], (w * (mse + vb))[sel].mean(), rtol=1e-4)
    assert loss_fn.values() == {}  # read once, then reset

    # RESCALED_MSE (--rescale_learned_sigmas True) scales the bound by T / 1000, as upstream
    _, rescaled = sr_create_model_and_diffusion(**_flags_dict(diffusion_steps=steps, rescale_learned_sigmas=True))
    terms = rescaled.training_losses(lambda *_, **__: output, x0, t, noise=noise)
    assert np.allclose(terms["vb"].detach().double().numpy(), vb * steps / 1000, rtol=1e-4)


def test_the_vb_term_trains_only_the_variance_channels():
    _, diffusion = sr_create_model_and_diffusion(**_flags_dict(diffusion_steps=50))
    gen = th.Generator().manual_seed(1)
    x0 = th.rand((4, 3, 16, 16), generator=gen) * 2 - 1
    output = th.randn((4, 6, 16, 16), generator=gen).requires_grad_(True)
    t = th.tensor([0, 10, 25, 49])
    terms = diffusion.training_losses(lambda *_, **__: output, x0, t, noise=th.randn(x0.shape, generator=gen))
    terms["vb"].sum().backward()
    assert (output.grad[:, :3] == 0).all() and (output.grad[:, 3:] != 0).any()  # the mean gets no vb gradient
    output.grad = None
    terms = diffusion.training_losses(lambda *_, **__: output, x0, t, noise=th.randn(x0.shape, generator=gen))
    terms["mse"].sum().backward()
    assert (output.grad[:, 3:] == 0).all() and (output.grad[:, :3] != 0).any()  # the variance gets no mse gradient


# ---------------------------------------------------------------------------------------
# The importance sampler
# ---------------------------------------------------------------------------------------

class _UpstreamLossSecondMoment:
    """guided-diffusion's LossSecondMomentResampler history, as its algorithm reads (a row shifts)."""

    def __init__(self, num_timesteps, history=10):
        self.history = np.zeros((num_timesteps, history))
        self.counts = np.zeros(num_timesteps, dtype=int)

    def update(self, ts, losses):
        for t, loss in zip(ts, losses):
            if self.counts[t] == self.history.shape[1]:
                self.history[t, :-1] = self.history[t, 1:]
                self.history[t, -1] = loss
            else:
                self.history[t, self.counts[t]] = loss
                self.counts[t] += 1


def test_loss_second_moment_sampler_keeps_upstreams_history_and_weights():
    _, diffusion = sr_create_model_and_diffusion(**_flags_dict(diffusion_steps=6, noise_schedule="cosine"))
    ours, upstream = LossSecondMomentResampler(diffusion), _UpstreamLossSecondMoment(6)
    rng = np.random.default_rng(0)
    assert np.all(ours.weights() == 1)  # uniform until every timestep has 10 losses
    for size in (3, 40, 1, 25, 7, 60):  # batches with repeats, some of more than 10 at one timestep
        ts, losses = rng.integers(0, 6, size), rng.random(size) * (1 + np.arange(size) % 3)
        ours.update_with_local_losses(th.from_numpy(ts), th.from_numpy(losses))
        upstream.update(ts, losses)
        assert np.array_equal(ours._loss_counts, upstream.counts)
        # the same multiset of the last 10 losses per timestep (their order in a row differs)
        assert np.array_equal(np.sort(ours._loss_history, axis=1), np.sort(upstream.history, axis=1))
    assert ours._warmed_up()
    expected = np.sqrt((upstream.history ** 2).mean(axis=1))
    expected = expected / expected.sum() * 0.999 + 0.001 / 6
    assert np.allclose(ours.weights(), expected, rtol=1e-12) and not np.allclose(expected, 1 / 6)
    # importance weights keep the objective: w = 1 / (T p(t))
    t, w = ours.sample(1000, "cpu", np.random.default_rng(1))
    assert np.allclose(w.numpy(), 1 / (6 * expected[t.numpy()]), rtol=1e-6)
    # a non-finite loss is not recorded; the state travels in the optimizer file
    ours.update_with_local_losses(th.tensor([0]), th.tensor([float("nan")]))
    assert np.isfinite(ours.weights()).all()
    restored = create_named_schedule_sampler("loss-second-moment", diffusion)
    restored.load_state_dict(ours.state_dict())
    assert np.array_equal(restored.weights(), ours.weights())
    _, other = sr_create_model_and_diffusion(**_flags_dict(diffusion_steps=8, noise_schedule="cosine"))
    with pytest.raises(ValueError, match="history"):
        LossSecondMomentResampler(other).load_state_dict(ours.state_dict())


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def upsampler_run(tmp_path_factory):
    """An uninterrupted run (a) and one stopped twice and resumed (b): max_step, then --run_time (exit 75)."""
    from testbed import TestbedParams, write_testbed_dataset

    root = tmp_path_factory.mktemp("ddpm_train")
    write_testbed_dataset(str(root / "data"), TestbedParams(large_size=16, small_size=4), num_train=24, num_eval=2)
    flags = [*MODEL_FLAGS, *GD_FLAGS, *SCRIPT_FLAGS]
    run_script(["sr_ddpm_train.py", *flags, "--max_step", str(STEPS), "--log_dir", "logs/a", "--model_save_dir",
                "ck/a"], cwd=root, env=ONE_THREAD)
    run_b = ["sr_ddpm_train.py", *flags, "--log_dir", "logs/b", "--model_save_dir", "ck/b"]
    run_script([*run_b, "--max_step", "8"], cwd=root, env=ONE_THREAD)
    stopped = run_script([*run_b, "--max_step", str(STEPS), "--run_time", "1e-9"], cwd=root, check=False,
                         env=ONE_THREAD)
    assert stopped.returncode == 75, stopped.stderr
    assert "--run_time 1e-09 h used up at step 9" in stopped.stderr
    run_script([*run_b, "--max_step", str(STEPS)], cwd=root, env=ONE_THREAD)
    return root


def test_a_stopped_and_resumed_run_is_byte_for_byte_the_uninterrupted_one(upsampler_run):
    a, b = upsampler_run / "ck" / "a", upsampler_run / "ck" / "b"
    last = [f"model{STEPS:06d}.pt", f"ema_0.9999_{STEPS:06d}.pt", f"opt{STEPS:06d}.pt"]
    assert files_in(a) == sorted(f"{kind}{s:06d}.pt" for kind in ("model", "ema_0.9999_", "opt")
                                 for s in range(4, STEPS + 1, 4))
    for name in last:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # the importance sampler had warmed up before the stop, so the resumed draws depended on its history
    state = torch_load(str(b / "opt000008.pt"))["extra_state"]
    assert state["name"] == "loss-second-moment" and (state["loss_counts"] == 10).all()
    # the EMA is an average, not the weights
    model, ema = torch_load(str(a / last[0])), torch_load(str(a / last[1]))
    assert model.keys() == ema.keys() and not all(th.equal(model[k], ema[k]) for k in model)
    csv = (upsampler_run / "logs" / "a" / "progress.csv").read_text().splitlines()
    header = csv[0].split(",")
    for key in ("loss", "mse", "vb", "loss_q0", "mse_q3", "vb_q2", "lr"):
        assert key in header, header
    assert len(csv) == 1 + STEPS // 2


def test_its_checkpoints_load_and_sample_as_openais_does(upsampler_run):
    root = upsampler_run
    flags = load_pickle(str(root / "logs" / "a" / "ddpm_sr_model_args.pkl"))
    assert flags == _flags_dict(diffusion_steps=4, noise_schedule="cosine")
    model, _ = sr_create_model_and_diffusion(**flags)
    for name in (f"model{STEPS:06d}.pt", f"ema_0.9999_{STEPS:06d}.pt"):
        state = torch_load(str(root / "ck" / "a" / name))
        assert list(state) == list(model.state_dict())
    run_script(["ddpm_sr_sample.py", *MODEL_FLAGS, *GD_FLAGS, "--timestep_respacing", "2", "--data_dir",
                "data/images", "--model_path", f"ck/a/ema_0.9999_{STEPS:06d}.pt", "--to_sample_images_dict_path",
                "data/to_sample_data_info.pkl", "--num_samples_per_image", "2", "--batch_size", "2",
                "--output_dir", "samples"], cwd=root, env=ONE_THREAD)
    evaluation = [n for v in load_pickle(str(root / "data" / "to_sample_data_info.pkl")).values()
                  for n in v["file_names"]]
    assert len(evaluation) == 2
    for name in evaluation:
        assert files_in(root / "samples" / name / "high_res_samples") == ["sample_0.png", "sample_1.png"]


def test_bad_inputs_are_one_line(upsampler_run):
    root = upsampler_run
    before = snapshot(root)
    flags = [*MODEL_FLAGS, *GD_FLAGS, *SCRIPT_FLAGS, "--max_step", str(STEPS + 2)]
    proc = run_script(["sr_ddpm_train.py", *flags, "--num_channels", "64", "--log_dir", "logs/a", "--model_save_dir",
                       "ck/a"], cwd=root, check=False, env=ONE_THREAD)
    assert_user_error(proc, "--num_channels 64 contradicts", "ddpm_sr_model_args.pkl")
    proc = run_script(["sr_ddpm_train.py", *flags, "--timestep_respacing", "250", "--log_dir", "logs/c",
                       "--model_save_dir", "ck/c"], cwd=root, check=False, env=ONE_THREAD)
    assert_user_error(proc, "--timestep_respacing '250' is a sampling flag", "ddpm_sr_sample.py")
    # a class index that a class-conditional upsampler cannot take, refused before anything is written
    info = load_pickle(str(root / "data" / "train_data_info.pkl"))
    bad_info = {synset: {**v, "y": 1000 if i == 0 else v["y"]} for i, (synset, v) in enumerate(info.items())}
    with open(root / "bad_info.pkl", "wb") as f:
        pickle.dump(bad_info, f)
    args = training_parser().parse_args([*flags, "--data_dir", str(root / "data/images"), "--data_info_dict_path",
                                         str(root / "bad_info.pkl"), "--log_dir", str(root / "logs/d"),
                                         "--model_save_dir", str(root / "ck/d")])
    with pytest.raises(UserError, match="has class index 1000 in --data_info_dict_path .*takes 0..999"):
        train_upsampler(args, set())
    os.unlink(root / "bad_info.pkl")
    assert snapshot(root) == before
    # a linear schedule too short for its betas (upstream: an AssertionError, or NaN at the last step)
    with pytest.raises(UserError, match="--diffusion_steps 20 with --noise_schedule linear gives a last beta of 1"):
        diffusion_from_flags(_flags_dict(diffusion_steps=20))
    diffusion_from_flags(_flags_dict(diffusion_steps=21))
    # an EMA file as the checkpoint to resume (its step would read as 0)
    with pytest.raises(UserError, match=f"is an EMA of the weights; resume from model{STEPS:06d}.pt"):
        resolve_resume_checkpoint(str(root / "ck" / "a"), f"ema_0.9999_{STEPS:06d}.pt")
    # another stage's checkpoint is named as such, both ways
    from sr_var.networks import create_mean_model, mean_model_defaults

    mean = create_mean_model(**{**mean_model_defaults(), "large_size": 16, "small_size": 4, "model_channels": 32,
                                "channel_mult": "1,2", "attention_resolutions": "8"})
    upsampler, _ = UPSAMPLER.build(load_pickle(str(root / "logs" / "a" / "ddpm_sr_model_args.pkl")))
    with pytest.raises(UserError, match=r"holds the weights of a mean model \(sr_mean_train.py\), not of a DDPM-SR "):
        check_state_dict(upsampler, mean.state_dict(), "x.pt", "resume_checkpoint", SR_FLAG_NAMES)
    with pytest.raises(UserError, match=r"holds the weights of a DDPM-SR upsampler .*sr_ddpm_train.py trains it"):
        check_state_dict(mean, upsampler.state_dict(), "x.pt", "resume_checkpoint", "model_channels")


def test_two_ranks_share_the_importance_samplers_losses(upsampler_run):
    """Under torchrun each rank records every rank's losses (the all_gather), and rank 0 saves them."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(port)]
    proc = subprocess.run([*torchrun, os.path.join(ROOT, "sr_ddpm_train.py"), *MODEL_FLAGS, *GD_FLAGS, *SCRIPT_FLAGS,
                           "--batch_size", "4", "--max_step", "2", "--log_dir", "logs/ddp", "--model_save_dir",
                           "ck/ddp"], cwd=upsampler_run, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert files_in(upsampler_run / "ck" / "ddp") == ["ema_0.9999_000002.pt", "model000002.pt", "opt000002.pt"]
    state = torch_load(str(upsampler_run / "ck" / "ddp" / "opt000002.pt"))["extra_state"]
    assert int(state["loss_counts"].sum()) == 2 * 4 * 2  # 2 ranks x 4 images x 2 steps


# ---------------------------------------------------------------------------------------
# Data order on resume
# ---------------------------------------------------------------------------------------

def test_a_resumed_run_continues_the_data_order(tmp_path):
    make_image_folder(str(tmp_path), num_classes=2, per_class=13)
    paths = sorted(str(tmp_path / n) for n in os.listdir(tmp_path))
    assert len(paths) == 26
    # the loader's order is DataLoader's own (shuffle=True with the epoch's generator)
    reference = [idx.tolist() for _, idx in DataLoader(ImageDataset(paths, 16), batch_size=5, shuffle=True,
                                                        drop_last=True, generator=th.Generator().manual_seed(7))]
    ours = [idx.tolist() for _, idx in iterate_images(paths, 16, 5, shuffle=True, drop_last=True, epoch_seed=7)]
    assert ours == reference
    for max_cache_gb in (2.0, 0.0):  # decoded into memory, streamed
        def batches(start):
            it = training_batches(paths, image_size=16, batch_size=5, num_workers=0, max_cache_gb=max_cache_gb,
                                  seed=3, start_batch=start, with_index=True)
            return [next(it)[1].tolist() for _ in range(12 - start)]

        full = batches(0)
        for start in (1, 5, 7):  # 5 batches an epoch: within the first, at a boundary, in the second
            assert batches(start) == full[start:], (max_cache_gb, start)
