"""
Theorem 2.1 measured as a reviewer would (issue 29): p on held-out images, noisy-label runs
independent of the clean model, second label draws of one p (the floor), the seed study and
the exact classification testbed end to end at tiny sizes, and the testbed's class
posterior and exact targets.
"""

import hashlib
import json
import os
import pickle

import numpy as np
import pytest
import torch as th

from noisy_mnist import exact_classes, scores, seeds, sweep, tasks
from noisy_mnist.model import SimpleCNN, create_model, predict_logits
from noisy_mnist.noise import (
    heldout_noise_path,
    label_rng,
    load_heldout_noise,
    load_noisy_labels,
    noise_distribution,
)
from runkit import UserError
from tests.conftest import run_script
from tests.test_mnist_pipeline import N_TEST, N_TRAIN, fit_runs, mnist_args, write_data


@pytest.fixture(autouse=True)
def one_thread():
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("mnist"))


def test_noise_files_carry_p_on_the_test_images_and_the_analysis_scores_it(data_dir, tmp_path):
    common = dict(data_dir=data_dir, log_dir=str(tmp_path / "logs"), max_step=4, save_interval=4, log_interval=2,
                  model_save_dir=str(tmp_path / "clean"))
    tasks.run(mnist_args(task="train", **common), console=False)
    data = tasks.load_data(data_dir)
    test_labels = data.test_y.numpy()
    uniform = tasks.run(mnist_args(task="generate_noisy_label", noise_type="uniform", alpha=0.7, **common),
                        console=False)
    np.testing.assert_array_equal(load_heldout_noise(heldout_noise_path(uniform), N_TEST),
                                  noise_distribution("uniform", 0.7, test_labels))
    path = tasks.run(mnist_args(task="generate_noisy_label", noise_type="model", alpha=0.7, **common), console=False)
    p_test = load_heldout_noise(heldout_noise_path(path), N_TEST)
    clean = tasks.load_trained_model(mnist_args(**common), common["model_save_dir"], "")[0]
    logits = predict_logits(clean, data.test_x, 2000).numpy()  # the clean model's softmax through the formula
    np.testing.assert_array_equal(p_test, noise_distribution("model", 0.7, test_labels, logits))
    run_dir = str(tmp_path / "model")
    run_common = dict(common, model_save_dir=run_dir, noise_label_file=path)
    tasks.run(mnist_args(task="train_on_noisy_label", **run_common), console=False)
    result = tasks.run(mnist_args(task="predict_analysis", **run_common), console=False)
    model = tasks.load_trained_model(mnist_args(**common), run_dir, "")[0]
    softmax = th.softmax(predict_logits(model, data.test_x, 2000).double(), 1).numpy()
    assert result["tv_mean_test"] == pytest.approx(scores.tv(softmax, p_test).mean(), rel=1e-9)
    low, high = result["tv_mean_test_ci95"]
    assert low < result["tv_mean_test"] < high and high - low < 0.2
    assert result["ce_minimum_test"] == pytest.approx(scores.entropy(p_test).mean(), rel=1e-9)
    assert result["init"] == "independent" and result["init_seed"] == tasks.run_seed(mnist_args(), path) != 0
    # A noise file without its held-out p (made elsewhere): the analysis is on the training images only.
    os.remove(heldout_noise_path(path))
    result = tasks.run(mnist_args(task="predict_analysis", **run_common), console=False)
    assert result["tv_mean_test"] is None and result["tv_mean"] > 0
    # A held-out p of another test set is refused in one line.
    with open(heldout_noise_path(path), "wb") as f:
        pickle.dump(np.full((3, 10), 0.1), f)
    with pytest.raises(UserError, match="should hold p for the 100 test images"):
        tasks.run(mnist_args(task="predict_analysis", **run_common), console=False)


def test_a_noisy_label_run_has_initial_weights_of_its_own(data_dir, tmp_path):
    args = mnist_args(seed=3)
    assert tasks.run_seed(args, "") == 3  # the clean model: --seed
    own = tasks.run_seed(args, "x/model_noisy_label_0.5.pkl")
    assert own != 3 and own == tasks.run_seed(args, "y/model_noisy_label_0.5.pkl")  # the file's name decides
    assert own != tasks.run_seed(args, "x/model_noisy_label_0.6.pkl")
    assert own != tasks.run_seed(mnist_args(seed=3, label_draw=1), "x/model_noisy_label_0.5.pkl")
    assert tasks.run_seed(mnist_args(seed=3, init="shared"), "x/model_noisy_label_0.5.pkl") == 3
    # A stack gives each run the weights `fit` would: a SimpleCNN right after th.manual_seed(run_seed).
    seeds_ = [tasks.run_seed(args, ""), own]
    stack = create_model(256, "128,64", "cpu", num_runs=2, seeds=seeds_)
    for state, seed in zip(stack.unstack(), seeds_):
        th.manual_seed(seed)
        for key, value in SimpleCNN().state_dict().items():
            assert th.equal(state[key], value)
    assert not th.equal(stack.unstack()[0]["fc3.weight"], stack.unstack()[1]["fc3.weight"])
    # A stack of one trains as that run alone, with its own seed.
    alone = fit_runs(data_dir, tmp_path / "alone", ["shuffled"], 4, stacked=False, init="independent")
    stacked = fit_runs(data_dir, tmp_path / "stacked", ["shuffled"], 4, stacked=True, init="independent")
    want = th.load(os.path.join(alone[0].model_save_dir, "model000004.pt"), weights_only=True)
    got = th.load(os.path.join(stacked[0].model_save_dir, "model000004.pt"), weights_only=True)
    for key in want:
        th.testing.assert_close(got[key], want[key], rtol=0, atol=5e-6)
    th.manual_seed(0)
    clean_start = SimpleCNN().state_dict()
    assert (want["fc3.weight"] - clean_start["fc3.weight"]).abs().max() > 0.01  # not the clean model's start


def test_a_second_label_draw_is_another_draw_of_the_same_p():
    first = label_rng(0, "uniform", 0.5).random(1000)
    again = label_rng(0, "uniform", 0.5, draw=0).random(1000)
    second = label_rng(0, "uniform", 0.5, draw=1).random(1000)
    np.testing.assert_array_equal(first, again)
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.1
    # draw 0 is the stream of every earlier file: sha256 of "seed/type/alpha"
    digest = hashlib.sha256(b"0/uniform/0.5").digest()
    np.testing.assert_array_equal(first, np.random.default_rng(int.from_bytes(digest[:16], "little")).random(1000))


def test_a_sweep_made_before_init_existed_is_read_as_shared(data_dir, tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep_flags.json").write_text(json.dumps(dict(noise_types="uniform", levels="0.5", seed=0,
                                                          model_noise="original",
                                                          data_dir=os.path.realpath(data_dir))))
    cfg = dict(sweep.sweep_defaults(), data_dir=data_dir, out_dir=str(out), max_step=2, save_interval=2,
               levels="0.5", noise_types="uniform", workers=1, figures=False)
    with pytest.raises(UserError, match="--init 'independent' contradicts .* init='shared'"):
        sweep.run_sweep(cfg)
    rows = sweep.run_sweep(dict(cfg, init="shared"))
    assert [r["init"] for r in rows] == ["shared", "shared"] and rows[1]["target_ratio"] == 0.5


def test_seed_study_end_to_end(data_dir, tmp_path):
    """scripts/mnist_seeds.py at a tiny size: seeds, the model-noise floor on one p, the shared-init twin."""
    out = tmp_path / "study"
    command = ["scripts/mnist_seeds.py", "--data_dir", data_dir, "--out_dir", str(out), "--seeds", "2",
               "--noise_types", "model", "--levels", "0.06", "--max_step", "4", "--save_interval", "4",
               "--log_interval", "2"]
    run_script(command)
    results = seeds.load_results(str(out))
    assert set(results["sweeps"]) == {"seed0", "seed1", "seed0_draw1", "seed0_shared"}
    clean, model = results["groups"]
    assert clean["noise_type"] == "clean" and clean["seeds"] == [0, 1] and model["noise_type"] == "model"
    assert clean["floor_runs"] == ["seed0/clean", "seed1/clean"] and "mean_over_seeds_tv_test" in clean
    assert [r.split("/")[0] for r in model["floor_runs"]] == ["seed0", "seed0_draw1"]
    assert model["init"]["shared"]["test_accuracy"] >= 0 and "tv_test" in model
    # The floor sweeps use seed 0's clean model itself, hence its p; their labels are another draw.
    final = "checkpoints/clean/model000004.pt"
    assert (out / "seed0" / final).read_bytes() == (out / "seed0_draw1" / final).read_bytes()
    name = f"labels/model_noisy_label_{model['alphas'][0]}.pkl"
    labels0, p0 = load_noisy_labels(str(out / "seed0" / name), N_TRAIN)
    labels1, p1 = load_noisy_labels(str(out / "seed0_draw1" / name), N_TRAIN)
    labels_shared, _ = load_noisy_labels(str(out / "seed0_shared" / name), N_TRAIN)
    np.testing.assert_array_equal(p0, p1)
    assert (labels0 != labels1).any() and (labels0 == labels_shared).all()
    for key in ("tv_train", "tv_test", "floor_test"):
        low, high = model[key]["ci95"]
        assert 0 <= low <= model[key]["mean"] <= high <= 1
    assert (out / "accuracy_vs_ratio_seeds.png").stat().st_size > 1000
    assert "| model (generated) | 0.06 |" in (out / "results.md").read_text()
    # A rerun (here in this process) trains nothing and reports the same numbers; other labels'
    # flags are refused.
    before = os.path.getmtime(out / "seed1" / final)
    cfg = dict(seeds.seeds_defaults(), data_dir=data_dir, out_dir=str(out), seeds=2, noise_types="model",
               levels="0.06", max_step=4, save_interval=4, log_interval=2)
    seeds.run_study(cfg)
    assert os.path.getmtime(out / "seed1" / final) == before
    assert seeds.load_results(str(out))["groups"] == results["groups"]
    with pytest.raises(UserError, match="--levels '0.5' contradicts"):
        seeds.run_study(dict(cfg, levels="0.5"))


def gsm(scales, length_scale=0.6):
    from testbed import GaussianScaleMixture, TestbedParams
    return GaussianScaleMixture(TestbedParams(large_size=28, small_size=7, channels=1, scales=tuple(scales),
                                              weights=(1 / len(scales),) * len(scales), length_scale=length_scale))


def test_the_testbed_classes_posterior_is_calibrated_on_stored_images():
    """
    p(k | stored image) with the rounding as pixel noise is calibrated: among the images, the
    share whose class is j matches the mean p(j | x) in every bin of p (within 4 binomial
    standard errors), on a prior whose classes overlap; and a prior of far-apart scales
    gives near-certain classes.
    """
    from testbed import quantize
    prior = gsm([0.18 * 1.03 ** k for k in range(10)])
    rng = np.random.default_rng(0)
    images, labels, posterior, check = exact_classes.draw_split(prior, 3000, rng)
    x, _ = prior.sample_prior(50, np.random.default_rng(1))
    np.testing.assert_array_equal(exact_classes.store_uint8(x), quantize(x))  # the testbed's storage map
    assert images.dtype == np.uint8 and images.shape == (3000, 28, 28) and posterior.shape == (3000, 10)
    np.testing.assert_allclose(posterior.sum(1), 1)
    assert check["clipped_pixel_share"] < 1e-4 and check["tv_unrounded_vs_stored"]["mean"] < 0.02
    summary = exact_classes.prior_summary(posterior, labels)
    assert 0.3 < summary["bayes_accuracy"] < 0.7 and summary["share_max_posterior_below_0_9"] > 0.8
    p, hit = posterior.ravel(), (labels[:, None] == np.arange(10)).ravel()
    for low in np.arange(0, 1, 0.1):
        inside = (p >= low) & (p < low + 0.1)
        if inside.sum() > 50:
            mean_p = p[inside].mean()
            assert abs(hit[inside].mean() - mean_p) < 4 * np.sqrt(mean_p * (1 - mean_p) / inside.sum()) + 1e-3
    apart = exact_classes.draw_split(gsm([0.05, 0.3]), 200, rng)
    assert exact_classes.prior_summary(apart[2], apart[1])["bayes_accuracy"] == 1.0 and (apart[2][:, 2:] == 0).all()


def test_exact_targets():
    rng = np.random.default_rng(0)
    posterior = rng.dirichlet(np.ones(10), 50)
    uniform = exact_classes.exact_target("uniform", 0.7, posterior)
    np.testing.assert_allclose(uniform, 0.7 * posterior + 0.3 / 9 * (1 - posterior))
    fix = exact_classes.exact_target("fix", 0.6, posterior)
    np.testing.assert_allclose(fix, 0.6 * posterior + 0.4 * np.roll(posterior, 1, axis=1))
    logits = rng.normal(size=(50, 10))
    model = exact_classes.exact_target("model", 0.5, posterior, logits)
    by_class = [noise_distribution("model", 0.5, np.full(50, c), logits) for c in range(10)]
    np.testing.assert_allclose(model, np.einsum("nc,cnk->nk", posterior, np.stack(by_class)))
    np.testing.assert_allclose(model.sum(1), 1)
    one_hot = np.eye(10)[rng.integers(0, 10, 50)]  # a class that is a function of x: T is p at that class
    np.testing.assert_allclose(exact_classes.exact_target("fix", 0.6, one_hot),
                               noise_distribution("fix", 0.6, one_hot.argmax(1)))
    assert exact_classes.exact_target("clean", 1.0, posterior) is posterior


def test_classification_testbed_end_to_end(tmp_path):
    out = tmp_path / "testbed"
    command = ["scripts/classification_testbed.py", "--out_dir", str(out), "--num_train", "300", "--num_test", "200",
               "--noise_types", "uniform,model", "--levels", "0.3", "--max_step", "4", "--save_interval", "4",
               "--log_interval", "2", "--shared_init", "False"]
    run_script(command)
    images, labels = th.load(out / "data" / "training.pt", weights_only=True)
    assert images.dtype == th.uint8 and images.shape == (300, 28, 28) and labels.dtype == th.int64
    posterior = exact_classes.load_posterior(str(out / "data"), dict(train=300, test=200))
    results = json.loads((out / "results.json").read_text())
    assert set(results["sweeps"]) == {"seed0", "seed1", "seed0_draw1"}
    groups = {g["noise_type"]: g for g in results["groups"]}
    assert set(groups) == {"clean", "uniform", "model"}
    # Clean labels: the target is p(k | x), and p(k | x) is far from the one-hot class.
    assert groups["clean"]["tv_target_vs_p_test"]["mean"] == pytest.approx(
        np.mean(1 - posterior["test"][np.arange(200), th.load(out / "data" / "test.pt", weights_only=True)[1]]))
    for g in groups.values():
        assert 0 <= g["tv_exact_test"]["mean"] <= 1 and g["excess_ce_test"]["mean"] > -1e-9
        assert "floor_test" in g
    assert 0 < results["data"]["test"]["summary"]["bayes_accuracy"] < 1
    assert "| uniform | 0.3 |" in (out / "results.md").read_text()
    with pytest.raises(UserError, match="--scales '0.1,0.2' contradicts"):  # another prior into the same folder
        exact_classes.prepare_data(gsm([0.1, 0.2]), dict(scales="0.1,0.2", length_scale=0.6, small_size=7),
                                   str(out / "data"), 300, 200, 0)
