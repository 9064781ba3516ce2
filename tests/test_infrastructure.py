"""
The shared machinery of the stage scripts: flags, one-line errors, files, logging, the
training loop, mixed precision and the diffusion utilities.
"""

import csv
import glob
import os
import pickle
import signal

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F

from guided_diffusion.fp16_util import MixedPrecisionTrainer
from guided_diffusion.script_util import (
    SR_FLAG_NAMES,
    create_gaussian_diffusion,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
)
from runkit import (
    FlagParser,
    Preempted,
    UserError,
    add_dict_to_argparser,
    closest_path,
    explicit_flags,
    logger,
    require_file,
    str2bool,
)
from runkit.fileio import atomic_write, check_state_dict, load_pickle, png_is_complete, save_png
from runkit.training import TrainLoop
from tests.conftest import files_in


@pytest.mark.parametrize("text,value", [("True", True), ("yes", True), ("1", True), ("y", True),
                                        ("False", False), ("no", False), ("0", False), ("N", False)])
def test_str2bool(text, value):
    assert str2bool(text) is value


def test_explicit_flags_and_one_line_parser_error(capsys):
    parser = FlagParser()
    add_dict_to_argparser(parser, dict(lr=1e-4, use_fp16=False, name="x"))
    assert explicit_flags(parser, ["--lr", "0.1", "--use_fp16", "yes"]) == {"lr", "use_fp16"}
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--use_fp16", "maybe"])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_closest_path_finds_the_seeds_slips(tmp_cwd):
    os.makedirs("logs/sr_mean/64_256")
    os.makedirs("data/sr_imagenet")
    open("logs/sr_mean/64_256/mean_model_args.pkl", "wb").close()
    open("data/sr_imagenet/to_sample_data_info.pkl", "wb").close()
    assert closest_path("logs/sr_mean/64_256mean_model_args.pkl") == "logs/sr_mean/64_256/mean_model_args.pkl"
    assert closest_path("data/imagenet/to_sample_data_info.pkl") == "data/sr_imagenet/to_sample_data_info.pkl"
    assert closest_path("nowhere/at/all.pkl") is None
    with pytest.raises(UserError, match="did you mean 'data/sr_imagenet/to_sample_data_info.pkl'"):
        require_file("data/imagenet/to_sample_data_info.pkl", "data_info_dict_path")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "out.bin"

    def fail(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(str(path), fail)
    assert not path.exists() and os.listdir(tmp_path) == []
    save_png(np.zeros((4, 4, 3), np.uint8), str(tmp_path / "a.png"))
    assert png_is_complete(str(tmp_path / "a.png"))
    with open(tmp_path / "a.png", "rb") as f:
        data = f.read()
    with open(tmp_path / "cut.png", "wb") as f:
        f.write(data[:-5])
    assert not png_is_complete(str(tmp_path / "cut.png"))


def test_restricted_unpickler(tmp_path):
    good = {"n01440764": {"y": 0, "file_names": ["a", "b"]}, "arr": np.arange(3.0), "t": (1, np.float64(2.5))}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"good{protocol}.pkl"
        path.write_bytes(pickle.dumps(good, protocol=protocol))
        loaded = load_pickle(str(path))
        assert loaded["n01440764"] == good["n01440764"] and np.array_equal(loaded["arr"], good["arr"])

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match="refusing to load"):
        load_pickle(str(bad), "data_info_dict_path")


def _tiny_sr(**overrides):
    args = sr_model_and_diffusion_defaults()
    args.update(large_size=32, small_size=8, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                attention_resolutions="16", class_cond=True, learn_sigma=True, resblock_updown=True)
    args.update(overrides)
    return sr_create_model_and_diffusion(**args)[0]


@pytest.mark.parametrize("overrides,flag", [
    (dict(class_cond=False), "--class_cond"),
    (dict(num_channels=64), "--num_channels"),
    (dict(learn_sigma=False), "--learn_sigma"),
    (dict(resblock_updown=False), "--resblock_updown"),
    (dict(attention_resolutions="8"), "--attention_resolutions"),
    (dict(use_scale_shift_norm=False), "--use_scale_shift_norm"),
    (dict(channel_mult="1,2,2"), "--channel_mult"),
])
def test_checkpoint_mismatch_names_the_flag(overrides, flag):
    checkpoint = _tiny_sr().state_dict()
    with pytest.raises(UserError) as e:
        check_state_dict(_tiny_sr(**overrides), checkpoint, "model.pt", "model_path", SR_FLAG_NAMES)
    message = str(e.value)
    assert "\n" not in message and f"the flag that most likely differs: {flag}" in message


def test_logger_files(tmp_path):
    logger.configure(str(tmp_path), format_strs=("log", "csv", "tensorboard"))
    logger.log("hello")
    logger.logkv("a", 1.0)
    logger.dumpkvs(1)
    logger.logkv_mean("a", 2.0)
    logger.logkv_mean("a", 4.0)
    logger.logkv("b", 5)  # a new column: the csv header widens
    logger.dumpkvs(2)
    logger.write_image("img", np.zeros((3, 8, 8), np.uint8), 1)
    logger.get_current().close()
    rows = list(csv.DictReader(open(tmp_path / "progress.csv")))
    assert [r["a"] for r in rows] == ["1.0", "3.0"] and rows[0]["b"] == "" and rows[1]["b"] == "5"
    assert "hello" in (tmp_path / "log.txt").read_text()
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    logger.configure(str(tmp_path / "again"), format_strs=())


def _linear_problem(seed=0):
    th.manual_seed(seed)
    X = th.randn(256, 4)
    Y = X @ th.randn(4, 2)

    def batches():
        g = th.Generator().manual_seed(seed)
        while True:
            i = th.randint(0, 256, (32,), generator=g)
            yield X[i], Y[i]

    def loss_fn(model, x, y):
        out = model(x)
        return F.mse_loss(out, y), out

    return batches, loss_fn


def _loop(tmp_path, model, **kwargs):
    batches, loss_fn = _linear_problem()
    args = dict(model=model, data=batches(), loss_fn=loss_fn, batch_size=32, lr=1e-2,
                model_save_dir=str(tmp_path / "ckpt"), save_interval=10, log_interval=5, progress=False)
    args.update(kwargs)
    return TrainLoop(**args)


def test_train_loop_resume_and_refusal(tmp_path):
    logger.configure(str(tmp_path / "log"), format_strs=("csv",))
    th.manual_seed(0)
    _loop(tmp_path, th.nn.Linear(4, 2), max_step=20).run_loop()
    assert files_in(tmp_path / "ckpt") == ["model000010.pt", "model000020.pt",
                                                     "opt000010.pt", "opt000020.pt"]
    # Starting fresh over existing checkpoints would lose work: refused.
    with pytest.raises(UserError, match="--resume_checkpoint model000020.pt"):
        _loop(tmp_path, th.nn.Linear(4, 2), max_step=30)
    with pytest.raises(UserError, match="is not in --model_save_dir"):
        _loop(tmp_path, th.nn.Linear(4, 2), max_step=30, resume_checkpoint="model000015.pt")
    loop = _loop(tmp_path, th.nn.Linear(4, 2), max_step=30, resume_checkpoint="latest")
    assert loop.step == 20 and loop.opt.state_dict()["state"]  # optimizer state restored
    loop.run_loop()
    assert os.path.exists(tmp_path / "ckpt" / "model000030.pt")
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "log" / "progress.csv"))]
    assert steps == [5, 10, 15, 20, 25, 30]


def test_train_loop_checkpoints_on_sigterm(tmp_path):
    logger.configure(str(tmp_path / "log"), format_strs=())
    batches, loss_fn = _linear_problem()

    def signalling_batches():
        for i, batch in enumerate(batches()):
            if i == 7:
                os.kill(os.getpid(), signal.SIGTERM)  # what a cluster sends before pre-emption
            yield batch

    with pytest.raises(Preempted, match="SIGTERM at step 8 of 1000; checkpoint model000008.pt saved"):
        _loop(tmp_path, th.nn.Linear(4, 2), data=signalling_batches(), max_step=1000, save_interval=500).run_loop()
    assert files_in(tmp_path / "ckpt") == ["model000008.pt", "opt000008.pt"]
    # the next loop in this process starts with no stop pending
    _loop(tmp_path, th.nn.Linear(4, 2), max_step=10, save_interval=500, resume_checkpoint="latest").run_loop()
    assert "model000010.pt" in files_in(tmp_path / "ckpt")


def test_microbatches_give_the_full_batch_gradient(tmp_path):
    logger.configure(str(tmp_path / "log"), format_strs=())
    models = []
    for microbatch in (-1, 8):
        th.manual_seed(0)
        model = th.nn.Linear(4, 2)
        _loop(tmp_path / str(microbatch), model, microbatch=microbatch, max_step=3).run_loop()
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert th.allclose(a, b, atol=1e-6)


def test_lr_annealing_stops_at_anneal_steps(tmp_path):
    logger.configure(str(tmp_path / "log"), format_strs=())
    loop = _loop(tmp_path, th.nn.Linear(4, 2), lr_anneal_steps=8, max_step=100)
    loop.run_loop()
    assert loop.step == 8 and abs(loop.opt.param_groups[0]["lr"] - 1e-2 * (1 - 7 / 8)) < 1e-12


class _HalfNet(th.nn.Module):
    """A conv net with the UNets' fp16 interface."""

    def __init__(self):
        super().__init__()
        self.body = th.nn.Conv2d(2, 2, 1)
        self.norm = th.nn.GroupNorm(1, 2)
        self.dtype = th.float32

    def convert_to_fp16(self):
        self.body.half()
        self.dtype = th.float16

    def forward(self, x):
        return self.norm(self.body(x.type(self.dtype)).float())


def test_mixed_precision_skips_overflow_and_keeps_fp32_masters():
    th.manual_seed(0)
    model = _HalfNet()
    trainer = MixedPrecisionTrainer(model=model, use_fp16=True, initial_lg_loss_scale=20.0)
    assert model.body.weight.dtype == th.float16 and trainer.master_params[0].dtype == th.float32
    opt = th.optim.AdamW(trainer.master_params, lr=1e-2)
    x = th.randn(4, 2, 3, 3)

    trainer.zero_grad()
    trainer.backward(model(x).square().mean() * 1e30)  # overflows in fp16
    before = [m.clone() for m in trainer.master_params]
    assert trainer.optimize(opt) is False
    assert trainer.lg_loss_scale == 19.0
    assert all(th.equal(a, b) for a, b in zip(before, trainer.master_params))

    trainer.zero_grad()
    trainer.backward(model(x).square().mean())
    assert trainer.optimize(opt) is True
    assert not th.equal(before[0], trainer.master_params[0])
    assert th.equal(model.body.weight, trainer.master_params[0].half())
    state = trainer.master_params_to_state_dict()
    assert state["body.weight"].dtype == th.float32


def test_diffusion_losses_and_samplers_run():
    th.manual_seed(0)
    diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, timestep_respacing="ddim10")
    model = _tiny_sr()
    x0 = th.rand(2, 3, 32, 32) * 2 - 1
    kwargs = dict(low_res=th.randn(2, 3, 8, 8), y=th.tensor([3, 4]))
    losses = diffusion.training_losses(model, x0, th.tensor([0, 9]), model_kwargs=kwargs)
    assert set(losses) == {"loss", "mse", "vb"} and th.isfinite(losses["loss"]).all()
    for loop in (diffusion.p_sample_loop, diffusion.ddim_sample_loop):
        out = loop(model, (2, 3, 32, 32), model_kwargs=kwargs, progress=True)
        # the last step returns the clipped x_0 prediction
        assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1 + 1e-5
    # q_sample has the right marginal: mean sqrt(alphabar) x0, variance 1 - alphabar
    t = th.full((4000,), 5)
    xt = diffusion.q_sample(th.full((4000, 1), 0.5), t)
    ab = diffusion.alphas_cumprod[5]
    assert abs(xt.mean().item() - 0.5 * np.sqrt(ab)) < 0.05 and abs(xt.var().item() - (1 - ab)) < 0.05


FAULTS_PER_STEP = """
import resource, sys
import torch as th
from runkit import dist_util
from noisy_mnist.model import create_model
from noisy_mnist.tasks import stacked_cross_entropy_loss
th.set_num_threads(1)
if sys.argv[1] == "keep":
    assert dist_util.keep_freed_memory()
model = create_model(256, "128,64", "cpu", num_runs=4)
opt = th.optim.Adam(model.parameters(), lr=1e-4)
x, y = th.rand(128, 1, 28, 28).contiguous(memory_format=th.channels_last), th.randint(0, 10, (128, 4))

def step():
    opt.zero_grad()
    stacked_cross_entropy_loss(model, x, y)[0].backward()
    opt.step()

for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(not (os.uname().sysname == "Linux" and os.confstr("CS_GNU_LIBC_VERSION")),
                    reason="a glibc setting")
def test_keep_freed_memory_stops_the_page_faults_of_a_step():
    """A training step of a stack of 4 MNIST networks, in fresh processes: page faults per step."""
    import subprocess
    import sys

    def faults(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, mode], capture_output=True, text=True,
                             check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return float(out.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    if default < 100:
        pytest.skip(f"this malloc faults only {default} times per step by default: nothing to stop")
    assert kept < default / 10, (default, kept)
