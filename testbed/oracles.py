"""
The exact posterior in the forms the stages use: its mean as a mean model (`ExactMeanModel`,
a drop-in for a trained one) and its covariance on the verification's HWC-flat vectors in
[0, 255]^2 units (`ExactCovariance` for the scale mixture, diagonal in one fixed basis;
`MixtureCovariance` for the covariance mixture, an operator whose top eigenpairs come from
Lanczos iterations), all in closed form.
"""

import numpy as np
import torch as th

from imaging import VAR_SCALE, bilinear_upsample


class ExactMeanModel(th.nn.Module):
    """
    A testbed's posterior mean E[x | y] as a mean model (an oracle): forward takes the
    bilinear low-res input as a trained mean model does. Bilinear upsampling has full column
    rank, so y is recovered from it exactly (least squares), then E[x | y] is the testbed's
    closed form (M y on the scale mixture, sum_k p(k | y) M_k y on the covariance mixture).
    """

    def __init__(self, testbed):
        super().__init__()
        p = testbed.params
        n = p.small_size ** 2
        basis = th.eye(n, dtype=th.float64).reshape(n, 1, p.small_size, p.small_size)
        upsample = bilinear_upsample(basis, p.large_size).reshape(n, -1).T  # [H*W, h*w]
        self.register_buffer("recover", th.as_tensor(np.linalg.pinv(upsample.numpy()), dtype=th.float64))
        self.testbed = testbed

    def forward(self, low_res_up):
        B, C, H, W = low_res_up.shape
        s = self.testbed.params.small_size
        y = (low_res_up.double().reshape(B * C, H * W) @ self.recover.T).reshape(B, C, s, s)
        mean = self.testbed.posterior_mean(y.cpu().numpy())
        return th.as_tensor(mean, dtype=th.float32, device=low_res_up.device)


def _hwc_to_chw(vectors, shape):
    return np.moveaxis(vectors.reshape(-1, *shape), -1, -3)


def _chw_to_hwc(images):
    return np.moveaxis(images, -3, -1).reshape(len(images), -1)


class _Covariance:
    """What both oracles share: w^T Cov w from a matvec, and the top eigenvalues of Cov + b b^T."""

    def along(self, directions):
        """w_k^T Cov w_k for directions [K, D]."""
        directions = np.asarray(directions, np.float64)
        return np.sum(directions * self.matvec(directions), axis=1)

    def _lanczos(self, matvec, k, vectors):
        from scipy.sparse.linalg import LinearOperator, eigsh

        d = int(np.prod(self.shape))
        op = LinearOperator((d, d), matvec=lambda v: matvec(v.reshape(1, -1))[0], dtype=np.float64)
        # a fixed start vector: the same eigenpairs on every run
        vals, vecs = eigsh(op, k=k, which="LA", v0=np.ones(d), return_eigenvectors=True)
        order = np.argsort(vals)[::-1]
        return (vecs[:, order].T, vals[order]) if vectors else vals[order]

    def top_eigenvalues_plus(self, bias, k):
        """The top k eigenvalues of Cov + b b^T (what a model trained on x - m learns, b = E[x | y] - m)."""
        b = np.asarray(bias, np.float64).reshape(1, -1)
        return self._lanczos(lambda v: self.matvec(v) + (v @ b.T) * b, k, vectors=False)


class ExactCovariance(_Covariance):
    """
    The scale mixture's Cov[x | y] = E[s^2 | y] C0 for one low-res image y [C, h, w], on
    HWC-flat vectors in [0, 255]^2 units (the verification's layout): diagonal in C0's eigenbasis.
    """

    def __init__(self, testbed, y):
        self.testbed = testbed
        p = testbed.params
        self.shape = (p.large_size, p.large_size, p.channels)
        self.eigenvalues = (testbed.posterior_covariance_eigenvalues(y) * VAR_SCALE).ravel()

    def coefficients(self, vectors):
        """HWC-flat vectors [K, D] -> their coordinates [K, D] in the eigenbasis."""
        return self.testbed.to_eigen(_hwc_to_chw(vectors, self.shape)).reshape(len(vectors), -1)

    def along(self, directions):
        return np.sum(self.coefficients(directions) ** 2 * self.eigenvalues, axis=1)

    def matvec(self, vectors):
        tb, (H, W, C) = self.testbed, self.shape
        coef = (self.coefficients(vectors) * self.eigenvalues).reshape(len(vectors), C, H * W)
        chw = np.einsum("ca,kam,nm->kcn", tb.U_r, coef, tb.U_s, optimize=True)  # back to pixels: U (lam c)
        return _chw_to_hwc(chw.reshape(len(vectors), C, H, W))

    def top(self, k):
        """The top k eigenvectors [k, D] (HWC-flat) and eigenvalues [k]."""
        order = np.argsort(self.eigenvalues)[::-1][:k]
        vectors = _chw_to_hwc(self.testbed.eigenvectors(order))
        return vectors, self.eigenvalues[order]

    def top_eigenvalues_plus(self, bias, k):
        from scipy.sparse.linalg import LinearOperator, eigsh

        b = self.coefficients(np.asarray(bias, np.float64).reshape(1, -1))[0]
        d = self.eigenvalues
        op = LinearOperator((len(d), len(d)), matvec=lambda v: d * v.ravel() + b * (b @ v.ravel()), dtype=np.float64)
        return np.sort(eigsh(op, k=k, which="LA", return_eigenvectors=False))[::-1]


class MixtureCovariance(_Covariance):
    """
    The covariance mixture's Cov[x | y] = sum_k p(k | y) (C_k + d_k d_k^T), d_k = M_k y - E[x | y],
    for one low-res image y [C, h, w], on HWC-flat vectors in [0, 255]^2 units. Its eigenvectors
    depend on y; the top ones come from Lanczos iterations on the matvec (scipy's eigsh).
    """

    def __init__(self, testbed, y):
        self.testbed = testbed
        p = testbed.params
        self.shape = (p.large_size, p.large_size, p.channels)
        self.weights, self.deviations = testbed.covariance_operator(y)
        self._top = {}

    def matvec(self, vectors):
        chw = _hwc_to_chw(np.asarray(vectors, np.float64), self.shape)
        return _chw_to_hwc(self.testbed.covariance_matvec(self.weights, self.deviations, chw)) * VAR_SCALE

    def top(self, k):
        """The top k eigenvectors [k, D] (HWC-flat) and eigenvalues [k]."""
        if k not in self._top:
            self._top[k] = self._lanczos(self.matvec, k, vectors=True)
        return self._top[k]
