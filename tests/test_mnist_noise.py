"""
The MNIST experiment's building blocks: noise distributions and label drawing (the
statistics SPEC.md asks for), the noisy-label pickle, the network, the batch order.
"""

import pickle

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F

from guided_diffusion.cli import UserError
from guided_diffusion.io_util import load_pickle
from noisy_mnist.data import train_batches
from noisy_mnist.model import SimpleCNN
from noisy_mnist.noise import (
    draw_labels,
    load_noisy_labels,
    noise_distribution,
    noise_file_name,
    noise_summary,
    save_noisy_labels,
)

N = 20000


@pytest.fixture
def clean_labels():
    return np.random.default_rng(1).integers(0, 10, N)


def random_softmax(n, seed=2, scale=4.0):
    logits = np.random.default_rng(seed).normal(scale=scale, size=(n, 10))
    return th.softmax(th.from_numpy(logits), dim=1).numpy()


def test_uniform_distribution(clean_labels):
    p = noise_distribution("uniform", 0.7, clean_labels)
    rows = np.arange(N)
    assert p.dtype == np.float64 and p.shape == (N, 10)
    np.testing.assert_allclose(p[rows, clean_labels], 0.7)
    others = np.ones_like(p, dtype=bool)
    others[rows, clean_labels] = False
    np.testing.assert_allclose(p[others], 0.3 / 9)


def test_fix_draws_only_c_or_next_class(clean_labels):
    p = noise_distribution("fix", 0.6, clean_labels)
    noisy = draw_labels(p, np.random.default_rng(0))
    assert set(np.unique((noisy - clean_labels) % 10)) == {0, 1}
    np.testing.assert_allclose(p[np.arange(N), (clean_labels + 1) % 10], 0.4)
    assert np.count_nonzero(p) == 2 * N


def test_model_distribution(clean_labels):
    q = random_softmax(N)
    alpha = 0.55
    p = noise_distribution("model", alpha, clean_labels, q)
    rows = np.arange(N)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p[rows, clean_labels], q[rows, clean_labels] * alpha, rtol=1e-12)
    # The other classes keep q's proportions.
    k = (clean_labels + 3) % 10
    m = (clean_labels + 5) % 10
    np.testing.assert_allclose(p[rows, k] / p[rows, m], q[rows, k] / q[rows, m], rtol=1e-9)


def test_model_distribution_when_the_model_is_certain():
    q = np.zeros((2, 10))
    q[0, 3] = 1.0  # 1 - q[c] underflows to 0: spread 1 - alpha uniformly
    q[1] = random_softmax(1)[0]
    p = noise_distribution("model", 0.8, np.array([3, 4]), q)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p[0], np.where(np.arange(10) == 3, 0.8, 0.2 / 9))
    np.testing.assert_allclose(p[1, 4], q[1, 4] * 0.8)


@pytest.mark.parametrize("noise_type,alpha", [("uniform", 0.4274), ("fix", 0.8054), ("model", 0.9)])
def test_correct_label_ratio_within_three_standard_errors(clean_labels, noise_type, alpha):
    p = noise_distribution(noise_type, alpha, clean_labels, random_softmax(N))
    p_true = p[np.arange(N), clean_labels]
    for seed in range(3):
        noisy = draw_labels(p, np.random.default_rng(seed))
        ratio = noise_summary(noisy, p, clean_labels)["correct_label_ratio"]
        expected = p_true.mean()
        standard_error = np.sqrt((p_true * (1 - p_true)).sum()) / N
        assert abs(ratio - expected) < 3 * standard_error, (ratio, expected, standard_error)


def test_drawn_labels_follow_each_row():
    p = np.tile(np.array([0.05, 0.0, 0.3, 0.15, 0.0, 0.1, 0.2, 0.0, 0.2, 0.0]), (N, 1))
    counts = np.bincount(draw_labels(p, np.random.default_rng(5)), minlength=10) / N
    assert np.all(counts[p[0] == 0] == 0)  # never a class of probability 0
    assert np.all(np.abs(counts - p[0]) < 3 * np.sqrt(p[0] * (1 - p[0]) / N) + 1e-12)


def test_noise_file_name_is_the_originals():
    assert noise_file_name("model", 0.8) == "model_noisy_label_0.8.pkl"
    assert noise_file_name("uniform", 1) == "uniform_noisy_label_1.0.pkl"
    assert noise_file_name("fix", 0.6229) == "fix_noisy_label_0.6229.pkl"


def test_noise_pickle_format_and_order(tmp_path):
    labels = np.arange(50) % 10
    p = noise_distribution("uniform", 0.5, labels)
    noisy = draw_labels(p, np.random.default_rng(0))
    path = str(tmp_path / "uniform_noisy_label_0.5.pkl")
    save_noisy_labels(path, noisy, p)
    with open(path, "rb") as f:
        items = pickle.load(f)
    assert isinstance(items, list) and len(items) == 50
    for (label, row), want_label, want_row in zip(items, noisy, p):
        assert type(label) is int and label == want_label
        assert isinstance(row, np.ndarray) and row.dtype == np.float64 and row.shape == (10,)
        np.testing.assert_array_equal(row, want_row)
    assert len(load_pickle(path)) == 50  # the restricted unpickler admits it
    got_labels, got_p = load_noisy_labels(path, 50)
    np.testing.assert_array_equal(got_labels, noisy)
    np.testing.assert_array_equal(got_p, p)
    with pytest.raises(UserError, match="has 50 noisy labels but the training set has 60"):
        load_noisy_labels(path, 60)


def test_state_dict_keys_are_the_originals():
    shapes = {k: list(v.shape) for k, v in SimpleCNN().state_dict().items()}
    assert shapes == {
        "conv1.weight": [6, 1, 5, 5], "conv1.bias": [6],
        "conv2.weight": [16, 6, 5, 5], "conv2.bias": [16],
        "fc1.weight": [128, 256], "fc1.bias": [128],
        "fc2.weight": [64, 128], "fc2.bias": [64],
        "fc3.weight": [10, 64], "fc3.bias": [10],
    }


def test_pool_before_relu_is_the_originals_function_and_gradient():
    """Our forward (max-pool, then ReLU; channels_last) against the original's order."""
    th.manual_seed(0)
    model = SimpleCNN()
    x = (th.rand(32, 1, 28, 28) * (th.rand(32, 1, 28, 28) > 0.5)).round(decimals=2)  # zero background, as MNIST

    def original(m, x):
        relu = F.relu
        x = F.max_pool2d(relu(m.conv1(x)), 2)
        x = F.max_pool2d(relu(m.conv2(x)), 2)
        x = relu(m.fc1(x.view(-1, 256)))
        return m.fc3(relu(m.fc2(x)))

    y = th.randint(0, 10, (32,))
    grads = []
    for forward, fmt in ((original, th.contiguous_format), (SimpleCNN.forward, th.channels_last)):
        model.zero_grad()
        model.to(memory_format=fmt)
        out = forward(model, x.contiguous(memory_format=fmt))
        F.cross_entropy(out, y).backward()
        grads.append((out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    th.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for k in grads[0][1]:
        th.testing.assert_close(grads[0][1][k], grads[1][1][k], rtol=1e-4, atol=1e-6)


def test_batches_are_epochs_of_a_seeded_order_and_resume_exactly():
    inputs, targets = th.arange(10).float(), th.arange(10)
    batches = train_batches(inputs, targets, batch_size=3, seed=7)
    first = [next(batches)[1] for _ in range(9)]
    for epoch in range(3):  # 3 full batches per epoch, the 10th image dropped
        seen = th.cat(first[3 * epoch:3 * epoch + 3])
        assert len(seen.unique()) == 9
    assert not all(th.equal(a, b) for a, b in zip(first[:3], first[3:6]))
    resumed = train_batches(inputs, targets, batch_size=3, seed=7, start_step=4)
    for want in first[4:]:
        assert th.equal(next(resumed)[1], want)
