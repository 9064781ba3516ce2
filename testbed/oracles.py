"""
The exact posterior in the forms the stages use: its mean as a mean model (`ExactMeanModel`,
a drop-in for a trained one) and its covariance on the verification's HWC-flat vectors
(`ExactCovariance`), both in closed form.
"""

import numpy as np
import torch as th

from imaging import VAR_SCALE, bilinear_upsample


class ExactMeanModel(th.nn.Module):
    """
    The exact testbed's posterior mean E[x | y] = M y as a mean model (an oracle): forward
    takes the bilinear low-res input as a trained mean model does. Bilinear upsampling has
    full column rank, so y is recovered from it exactly (least squares); the whole map is
    one fixed linear operator per channel.
    """

    def __init__(self, testbed):
        super().__init__()
        p = testbed.params
        n = p.small_size ** 2
        basis = th.eye(n, dtype=th.float64).reshape(n, 1, p.small_size, p.small_size)
        upsample = bilinear_upsample(basis, p.large_size).reshape(n, -1).T  # [H*W, h*w]
        posterior_mean = np.kron(testbed.M1, testbed.M1)  # y (h*w) -> E[x | y] (H*W), per channel
        operator = posterior_mean @ np.linalg.pinv(upsample.numpy())
        self.register_buffer("operator", th.as_tensor(operator, dtype=th.float32))
        self.large_size = p.large_size

    def forward(self, low_res_up):
        B, C, H, W = low_res_up.shape
        return (low_res_up.float().reshape(B * C, H * W) @ self.operator.T).reshape(B, C, H, W)


class ExactCovariance:
    """
    The testbed's Cov[x | y] for one low-res image y [C, h, w], on HWC-flat vectors in
    [0, 255] units (the verification's layout): diagonal in C0's eigenbasis.
    """

    def __init__(self, testbed, y):
        self.testbed = testbed
        p = testbed.params
        self.shape = (p.large_size, p.large_size, p.channels)
        self.eigenvalues = (testbed.posterior_covariance_eigenvalues(y) * VAR_SCALE).ravel()

    def coefficients(self, vectors):
        """HWC-flat vectors [K, D] -> their coordinates [K, D] in the eigenbasis."""
        chw = np.moveaxis(vectors.reshape(-1, *self.shape), -1, -3)
        return self.testbed.to_eigen(chw).reshape(len(vectors), -1)

    def along(self, directions):
        """w_k^T Cov w_k for directions [K, D]."""
        return np.sum(self.coefficients(directions) ** 2 * self.eigenvalues, axis=1)

    def top(self, k):
        """The top k eigenvectors [k, D] (HWC-flat) and eigenvalues [k]."""
        order = np.argsort(self.eigenvalues)[::-1][:k]
        vectors = np.moveaxis(self.testbed.eigenvectors(order), -3, -1).reshape(len(order), -1)
        return vectors, self.eigenvalues[order]

    def top_eigenvalues_plus(self, bias, k):
        """The top k eigenvalues of Cov + b b^T (what a model trained on x - m learns, b = E[x | y] - m)."""
        from scipy.sparse.linalg import LinearOperator, eigsh

        b = self.coefficients(np.asarray(bias, np.float64).reshape(1, -1))[0]
        d = self.eigenvalues
        op = LinearOperator((len(d), len(d)), matvec=lambda v: d * v.ravel() + b * (b @ v.ravel()), dtype=np.float64)
        return np.sort(eigsh(op, k=k, which="LA", return_eigenvectors=False))[::-1]
