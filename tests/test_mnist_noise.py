"""
The MNIST experiment's building blocks: noise distributions and label drawing (the
statistics SPEC.md asks for), the noisy-label pickle, the network, the batch order.
"""

import pickle

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F

from noisy_mnist.data import train_batches
from noisy_mnist.model import SimpleCNN
from noisy_mnist.noise import (
    alpha_for_ratio,
    draw_labels,
    expected_correct_ratio,
    label_rng,
    load_noisy_labels,
    model_noise_distribution,
    noise_distribution,
    noise_file_name,
    noise_summary,
    save_noisy_labels,
)
from runkit import UserError
from runkit.fileio import load_pickle

N = 20000


@pytest.fixture
def clean_labels():
    return np.random.default_rng(1).integers(0, 10, N)


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


def original_model_noise(logits, labels, alpha):
    """
    A direct transcription of the original code (GenNoisyLabelLoop.forward_backward in
    classification/utils.py): float32 softmax, then per image in numpy.
    """
    pred_prob = F.softmax(th.as_tensor(logits, dtype=th.float32), dim=1).detach().cpu().numpy()
    rows = []
    for i in range(len(labels)):
        category = int(labels[i])
        new_prob = np.copy(pred_prob[i])
        right_prob = new_prob[category]
        beta = (1. - right_prob * alpha) / (1. - right_prob + 1e-6)
        new_prob = new_prob * beta
        new_prob[category] = right_prob * alpha
        new_prob = new_prob / np.sum(new_prob)
        rows.append(new_prob)
    return np.stack(rows)


def random_logits(n, seed=2, scale=4.0):
    return np.random.default_rng(seed).normal(scale=scale, size=(n, 10)).astype(np.float32)


def clean_model_logits(labels, margin):
    """Logits of a clean model that favours the true class by `margin` (20: saturated in float32)."""
    logits = random_logits(len(labels), scale=1.0)
    logits[np.arange(len(labels)), labels] += margin
    return logits


@pytest.mark.parametrize("margin", [0.0, 4.0, 12.0, 20.0])
@pytest.mark.parametrize("alpha", [0.9, 0.5, 0.2])
def test_model_noise_is_the_original_arithmetic(margin, alpha):
    labels = np.random.default_rng(1).integers(0, 10, 2000)
    logits = clean_model_logits(labels, margin)
    p = model_noise_distribution(logits, labels, alpha)
    want = original_model_noise(logits, labels, alpha)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p, want, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    q = F.softmax(th.from_numpy(logits), dim=1).numpy()
    saturated = 1.0 - q[np.arange(2000), labels] < 1e-6
    if margin == 20.0:
        assert saturated.mean() > 0.9
        # where the model is saturated p stays near the clean label, far above alpha q[c]
        p_true = p[np.arange(2000), labels][saturated]
        assert p_true.min() > alpha and p_true.mean() > (1 + alpha) / 2
    assert noise_distribution("model", alpha, labels, logits) is not None


def test_model_noise_original_on_a_saturated_row():
    logits = np.zeros((2, 10), dtype=np.float32)
    logits[0, 3] = 100.0  # float32 softmax: q[c] == 1 exactly
    logits[1] = random_logits(1)[0]
    p = model_noise_distribution(logits, np.array([3, 4]), 0.8)
    assert np.isfinite(p).all()
    # 1 - q[c] = 0: beta = (1 - 0.8) / 1e-6 multiplies the others' q, which are ~e^-100: p[c] = 1.
    assert p[0, 3] == pytest.approx(1.0, abs=1e-12)
    q1 = F.softmax(th.from_numpy(logits[1]), dim=0).double().numpy()
    assert p[1, 4] == pytest.approx(q1[4] * 0.8 / (q1[4] * 0.8 + (1 - q1[4]) * (1 - q1[4] * 0.8)
                                                  / (1 - q1[4] + 1e-6)), rel=1e-6)


@pytest.mark.parametrize("margin", [0.0, 20.0, 60.0])
def test_model_noise_precise(clean_labels, margin):
    logits = clean_model_logits(clean_labels, margin)
    alpha = 0.55
    p = model_noise_distribution(logits, clean_labels, alpha, "precise")
    rows = np.arange(N)
    q = th.softmax(th.from_numpy(logits).double(), dim=1).numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p[rows, clean_labels], q[rows, clean_labels] * alpha, rtol=1e-12)
    # The other classes share 1 - alpha q[c] in q's proportions, even where 1 - q[c] underflows.
    k, m = (clean_labels + 3) % 10, (clean_labels + 5) % 10
    log_q = th.log_softmax(th.from_numpy(logits).double(), dim=1).numpy()
    np.testing.assert_allclose(np.log(p[rows, k] / p[rows, m]), log_q[rows, k] - log_q[rows, m], atol=1e-9)
    assert np.isfinite(p).all() and (p > 0).all()


def test_alpha_for_ratio_solves_the_formula_in_use(clean_labels):
    for margin in (4.0, 20.0):
        logits = clean_model_logits(clean_labels, margin)
        for variant in ("original", "precise"):
            for target in (0.7, 0.5, 0.25):
                alpha = alpha_for_ratio(target, "model", clean_labels, logits, variant)
                got = expected_correct_ratio("model", alpha, clean_labels, logits, variant)
                assert got == pytest.approx(target, abs=1e-4), (margin, variant, target, alpha)
                if variant == "original" and margin == 20.0:
                    assert alpha < target - 0.1  # saturation lifts the ratio above alpha
    assert alpha_for_ratio(0.4274, "uniform", clean_labels) == 0.4274
    assert alpha_for_ratio(0.99, "model", clean_labels, random_logits(N, scale=0.1)) == 1.0  # out of reach


def test_each_noise_file_is_an_independent_reproducible_draw(clean_labels):
    draws = {a: draw_labels(noise_distribution("uniform", a, clean_labels), label_rng(0, "uniform", a))
             for a in (0.8, 0.6)}
    wrong1, wrong2 = draws[0.8] != clean_labels, draws[0.6] != clean_labels
    conditional = wrong2[wrong1].mean()
    standard_error = np.sqrt(0.4 * 0.6 / wrong1.sum())
    assert abs(conditional - 0.4) < 4 * standard_error, conditional  # the same stream would give 1.0
    again = draw_labels(noise_distribution("uniform", 0.8, clean_labels), label_rng(0, "uniform", 0.8))
    np.testing.assert_array_equal(again, draws[0.8])
    other_type = draw_labels(noise_distribution("fix", 0.8, clean_labels), label_rng(0, "fix", 0.8))
    assert (other_type != clean_labels)[wrong1].mean() < 0.3  # fix 0.8: 0.2 wrong, independently of uniform's


@pytest.mark.parametrize("noise_type,alpha", [("uniform", 0.4274), ("fix", 0.8054), ("model", 0.9)])
def test_correct_label_ratio_within_three_standard_errors(clean_labels, noise_type, alpha):
    p = noise_distribution(noise_type, alpha, clean_labels, random_logits(N))
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
