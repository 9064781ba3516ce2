"""
The posterior principal components: Gram-Schmidt and the loss learn ordered principal
directions and their variances; the PC model's output; the sample-PCA numbers.
"""

import numpy as np
import pytest
import torch as th

from sr_var import principal_components as pcs
from sr_var.networks import create_pc_model, gram_schmidt, pc_model_defaults


def test_gram_schmidt_is_orthonormal_and_each_gradient_stops_at_the_earlier_vectors():
    v = th.randn(2, 3, 10, requires_grad=True)
    q, norms = gram_schmidt(v)
    assert th.allclose(q @ q.transpose(1, 2), th.eye(3).expand(2, 3, 3), atol=1e-6)
    assert th.allclose(q[:, 0], v[:, 0] / v[:, 0].norm(dim=-1, keepdim=True))
    assert th.allclose(norms[:, 0], v[:, 0].norm(dim=-1))
    outside = v[:, 1] - (v[:, 1] * q[:, 0]).sum(-1, keepdim=True) * q[:, 0]  # v_2 without its part along w_1
    assert th.allclose(norms[:, 1], outside.norm(dim=-1), atol=1e-6)
    q[:, 2].sum().backward()  # the last direction's gradient reaches only its own raw vector
    assert v.grad[:, :2].abs().max() == 0 and v.grad[:, 2].abs().max() > 0


def test_the_loss_learns_the_top_principal_components_in_order_and_their_variances():
    """
    Free vectors, parameterised as the PC model's output (Gram-Schmidt; variance = squared
    norm), trained with principal_components_loss on draws from a Gaussian with known
    covariance (eigenvalues 9, 5, 3, 1, ...): the k-th direction meets the k-th eigenvector
    (|cos| > 0.98) and its variance the eigenvalue (within 10%).
    """
    th.manual_seed(0)
    dim, k = 12, 3
    eigvals = th.tensor([9.0, 5.0, 3.0, 1.0] + [0.3] * (dim - 4))
    basis = th.linalg.qr(th.randn(dim, dim))[0]
    raw = (0.3 * th.randn(k, dim)).requires_grad_()
    opt = th.optim.Adam([raw], lr=0.05)
    for step in range(600):
        if step == 400:
            opt.param_groups[0]["lr"] = 0.005
        e = (th.randn(512, dim) * eigvals.sqrt()) @ basis.T
        directions, norms = gram_schmidt(raw[None])
        loss = pcs.principal_components_loss(directions.expand(len(e), k, dim), (norms ** 2).expand(len(e), k), e)
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned, norms = (t[0].detach() for t in gram_schmidt(raw[None]))
    cosines = (learned @ basis[:, :k]).diagonal().abs()
    assert (cosines > 0.98).all(), cosines
    assert th.allclose(norms ** 2, eigvals[:k], rtol=0.1), norms ** 2


def test_the_pc_model_outputs_orthonormal_directions_and_a_variance_each():
    flags = dict(pc_model_defaults(), large_size=16, small_size=4, model_channels=32, num_res_blocks=1,
                 attention_resolutions="8", channel_mult="1,2", num_pcs=4)
    model = create_pc_model(**flags)
    directions, variances = model(th.randn(2, 6, 16, 16))
    assert directions.shape == (2, 4, 3, 16, 16) and variances.shape == (2, 4)
    flat = directions.flatten(2)
    assert th.allclose(flat @ flat.transpose(1, 2), th.eye(4).expand(2, 4, 4), atol=1e-5)
    assert (variances > 0).all() and (variances < 1).all()  # the output layer starts small, not at zero
    with pytest.raises(ValueError, match="num_pcs 0"):
        create_pc_model(**dict(flags, num_pcs=0))


def test_sample_pca_and_the_subspace_numbers():
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((30, 8)) * np.array([5, 4, 3, 2, 1, 1, 1, 1.0])
    dirs, vals = pcs.sample_pcs(samples, 3)
    eigvals, eigvecs = np.linalg.eigh(np.cov(samples.T, bias=True))
    assert np.allclose(vals, eigvals[::-1][:3])
    assert np.allclose(np.abs(dirs @ eigvecs[:, ::-1][:, :3]), np.eye(3), atol=1e-8)
    assert np.allclose(pcs.SampleCovariance(samples).along(dirs), vals)
    assert pcs.subspace_overlap(dirs, dirs) == pytest.approx(1)
    assert pcs.subspace_overlap(eigvecs[:, :2].T, dirs) == pytest.approx(0, abs=1e-12)  # the bottom two
    # a sample PCA against its own covariance captures all of its top K; the split halves less
    assert pcs.compare(dirs, vals, vals, dirs, vals) == {
        "overlap": pytest.approx(1), "captured": pytest.approx(1),
        "variance_ratio": {str(i): pytest.approx(1) for i in (1, 2, 3)},
        "to_eigenvalue": {str(i): pytest.approx(1) for i in (1, 2, 3)}}
    half = pcs.split_half(samples, 3)
    assert 0 < half["captured"] < 1 and 0 < half["overlap"] < 1


def test_bad_pc_inputs_are_one_line_errors(tmp_path):
    """A damaged or mis-sized PC output, and a testbed mean model of other sizes, are UserErrors naming the problem."""
    from runkit import UserError
    from sr_var.models import load_mean_model
    from testbed import GaussianScaleMixture, TestbedParams

    damaged = tmp_path / "high_res_pcs_1.npz"
    damaged.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="is not a PC-model output"):
        pcs.load_pcs(str(damaged), 16)
    pcs.save_pcs(str(tmp_path / "small.npz"), np.zeros((2, 8, 8, 3)), np.ones(2))
    with pytest.raises(UserError, match="check --large_size"):
        pcs.load_pcs(str(tmp_path / "small.npz"), 16)
    testbed = tmp_path / "testbed.json"
    testbed.write_text(GaussianScaleMixture(TestbedParams(large_size=16, small_size=4)).to_json())
    with pytest.raises(UserError, match="4->16 px, the flags 8->32 px"):
        load_mean_model(str(testbed), "", th.device("cpu"), False, sizes=(32, 8))
