"""
The exact testbed: a Gaussian scale mixture prior on images, whose super-resolution
posterior is known in closed form (SPEC.md, "Exact testbed").

Prior on x (C x H x W values in [-1, 1] units): pick scale s_k with probability pi_k, then
x ~ N(0, s_k^2 S) with S = R (x) K (x) K: a channel correlation R and a Gaussian kernel K
over rows and over columns (stationary, unit diagonal). The low-res image is y = D x, D the
area (box) downsampling by the SR factor. With M = S D^T (D S D^T)^-1 and C0 = S - M D S:

    p(k | y)       ~ pi_k N(y; 0, s_k^2 D S D^T)
    E[x | y]       = M y                       (the same for every k)
    Var[x_i | y]   = E[s^2 | y] C0_ii          (its level changes from image to image)
    Cov[x | y]     = E[s^2 | y] C0             (the principal directions are C0's, for every y)

Everything factorises over channels, rows and columns, and one eigendecomposition of
C0 = R (x) C0s makes the exact denoiser of a diffusion sampler cheap (`denoise`).
"""

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch as th

from runkit import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, multiple_of

from .mixture import ExactTestbed
from .oracles import ExactCovariance


@dataclass(frozen=True)
class TestbedParams:
    large_size: int = 32
    small_size: int = 8
    channels: int = 3
    scales: tuple = (0.08, 0.16, 0.3)
    weights: tuple = (1 / 3, 1 / 3, 1 / 3)
    length_scale: float = 2.0  # of the Gaussian kernel, in high-res pixels
    channel_correlation: float = 0.5

    def __post_init__(self):
        """Refuse parameters that define no valid prior (ValueError, one line)."""
        if self.small_size < 1 or self.large_size < 1 or self.large_size % self.small_size:
            raise ValueError(f"large_size {self.large_size} must be a positive multiple of small_size "
                             f"{self.small_size}")
        if self.channels < 1:
            raise ValueError(f"channels {self.channels} must be at least 1")
        if not self.scales or len(self.scales) != len(self.weights):
            raise ValueError("one weight per scale, and at least one scale")
        if not all(s > 0 and np.isfinite(s) for s in self.scales):
            raise ValueError(f"scales {self.scales} must all be above 0")
        if not all(w >= 0 for w in self.weights) or abs(sum(self.weights) - 1) > 1e-9:
            raise ValueError(f"weights {self.weights} must be 0 or more and sum to 1")
        if not (self.length_scale > 0 and np.isfinite(self.length_scale)):
            raise ValueError(f"length_scale {self.length_scale} must be above 0")
        low = -1 / (self.channels - 1) if self.channels > 1 else -np.inf
        if not low < self.channel_correlation < 1:
            raise ValueError(f"channel_correlation {self.channel_correlation} must lie in ({low:g}, 1) for "
                             f"{self.channels} channels (else the channel covariance is not positive definite)")


# The numeric rules of the flags that describe a testbed (make_testbed.py and the studies).
TESTBED_RULES = dict(large_size=AT_LEAST_ONE, small_size=AT_LEAST_ONE, length_scale=POSITIVE, num_eval=AT_LEAST_ONE,
                     seed=NON_NEGATIVE)
TESTBED_CHECKS = (multiple_of("large_size", "small_size"),)


def _sym_sqrt(eigvals, eigvecs):
    return (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T


class GaussianScaleMixture(ExactTestbed):
    """The testbed's prior, posterior and exact denoiser (float64 numpy / torch)."""

    kind = "gaussian_scale_mixture"

    def __init__(self, params=TestbedParams()):
        self.params = p = params
        H, f = p.large_size, p.large_size // p.small_size
        self.factor = f
        offsets = np.arange(H)[:, None] - np.arange(H)[None, :]
        self.K1 = np.exp(-offsets ** 2 / (2 * p.length_scale ** 2))  # 1-D kernel (rows or columns)
        self.A = np.kron(np.eye(p.small_size), np.full((1, f), 1 / f))  # 1-D area downsampling
        C = p.channels
        self.R = np.full((C, C), p.channel_correlation) + (1 - p.channel_correlation) * np.eye(C)

        G = self.A @ self.K1 @ self.A.T  # 1-D D S D^T
        self.G_inv = np.linalg.inv(G)
        self.R_inv = np.linalg.inv(self.R)
        self.M1 = self.K1 @ self.A.T @ self.G_inv  # 1-D M: M = I (x) M1 (x) M1
        B1 = self.M1 @ self.A @ self.K1
        C0s = np.kron(self.K1, self.K1) - np.kron(B1, B1)  # spatial part: C0 = R (x) C0s
        self.lam_s, self.U_s = np.linalg.eigh(C0s)
        self.lam_s = np.clip(self.lam_s, 0, None)
        self.lam_r, self.U_r = np.linalg.eigh(self.R)
        # Eigenvalues of C0, laid out [C, H*W] like the eigenvector coordinates.
        self.lam = np.outer(self.lam_r, self.lam_s)
        # diag(C0) as an image [C, H, W]; R has a unit diagonal.
        self.c0_diag = np.broadcast_to(np.diag(C0s).reshape(1, H, H), (C, H, H)).copy()
        self.K1_sqrt = _sym_sqrt(*np.linalg.eigh(self.K1))
        self.R_sqrt = _sym_sqrt(self.lam_r, self.U_r)
        self.C0s_sqrt = _sym_sqrt(self.lam_s, self.U_s)
        self.log_weights = np.log(np.asarray(p.weights))
        self.scales = np.asarray(p.scales, dtype=np.float64)
        self._torch_cache = {}

    @property
    def num_components(self):
        return len(self.scales)

    @property
    def component_labels(self):
        return [f"s={s:g}" for s in self.scales]

    flip_symmetric = True  # S = R (x) K (x) K: a flipped draw is a draw of the same prior

    # -- numpy: prior, posterior -----------------------------------------------------------------

    def sample_prior(self, n, rng, components=None):
        """n images [n, C, H, W] and their mixture components (drawn, or the given `components` [n])."""
        p = self.params
        k = rng.choice(len(p.scales), size=n, p=np.asarray(p.weights)) if components is None else np.asarray(components)
        z = rng.standard_normal((n, p.channels, p.large_size, p.large_size))
        x = np.einsum("ca,hi,naij,wj->nchw", self.R_sqrt, self.K1_sqrt, z, self.K1_sqrt, optimize=True)
        return x * self.scales[k][:, None, None, None], k

    def prior_component_posterior(self, x, pixel_noise=0.0):
        """
        p(k | x) for high-res images [..., C, H, W] drawn from the prior: the class
        posterior of the mixture (the exact target of a classifier of k). With `pixel_noise`
        (a variance in [-1, 1]^2 units, e.g. uint8 rounding's (1/127.5)^2 / 12), x is taken
        as a prior draw plus independent noise of that variance: x ~ N(0, s_k^2 S + v I).
        Without it, a kernel of length >= ~1.5 px makes S so ill-conditioned that rounding
        alone decides p(k | x).
        """
        n = x.shape[-3] * x.shape[-2] * x.shape[-1]
        lam_k, U_k = np.linalg.eigh(self.K1)
        lam = np.einsum("c,h,w->chw", self.lam_r, lam_k, lam_k)  # eigenvalues of S = R (x) K (x) K
        coords = np.einsum("ca,hi,...chw,wj->...aij", self.U_r, U_k, x, U_k, optimize=True)  # U^T x
        var = self.scales[:, None, None, None] ** 2 * lam[None] + pixel_noise  # [K, C, H, W]
        flat = coords.reshape(*coords.shape[:-3], 1, n) ** 2
        log_w = self.log_weights - 0.5 * np.log(var).reshape(len(self.scales), n).sum(-1) \
            - 0.5 * (flat / var.reshape(len(self.scales), n)).sum(-1)
        log_w -= log_w.max(axis=-1, keepdims=True)
        w = np.exp(log_w)
        return w / w.sum(axis=-1, keepdims=True)

    def log_evidence_terms(self, y):
        """y^T (D S D^T)^-1 y for low-res images [..., C, h, w]."""
        whitened = np.einsum("ca,ih,...ahw,jw->...cij", self.R_inv, self.G_inv, y, self.G_inv, optimize=True)
        return np.sum(y * whitened, axis=(-3, -2, -1))

    def component_posterior(self, y):
        """p(k | y) for low-res images [..., C, h, w] -> [..., K]."""
        m = y.shape[-3] * y.shape[-2] * y.shape[-1]
        q = self.log_evidence_terms(y)[..., None]
        log_w = self.log_weights - m * np.log(self.scales) - q / (2 * self.scales ** 2)
        log_w -= log_w.max(axis=-1, keepdims=True)
        w = np.exp(log_w)
        return w / w.sum(axis=-1, keepdims=True)

    def posterior_mean(self, y):
        """E[x | y] = M y, images [..., C, H, W]."""
        return np.einsum("hi,...cij,wj->...chw", self.M1, y, self.M1, optimize=True)

    def posterior_variance(self, y):
        """Var[x_i | y] = E[s^2 | y] C0_ii, images [..., C, H, W]."""
        e_s2 = self.component_posterior(y) @ self.scales ** 2
        return e_s2[..., None, None, None] * self.c0_diag

    def pixel_marginals(self, y):
        """Each pixel's posterior as a mixture over k: (weights [..., K], means and stds [..., K, C, H, W])."""
        w = self.component_posterior(y)
        mean = self.posterior_mean(y)[..., None, :, :, :]
        stds = self.scales[:, None, None, None] * np.sqrt(self.c0_diag)[None]
        return w, np.broadcast_to(mean, mean.shape[:-4] + stds.shape), np.broadcast_to(stds, mean.shape[:-4] + stds.shape)

    def covariance(self, y):
        """Cov[x | y] of one low-res image y [C, h, w] on the verification's layout (oracles.ExactCovariance)."""
        return ExactCovariance(self, y)

    def sample_posterior(self, y, n, rng):
        """n exact posterior samples [n, C, H, W] for one low-res image y [C, h, w]."""
        p = self.params
        k = rng.choice(len(p.scales), size=n, p=self.component_posterior(y))
        z = rng.standard_normal((n, p.channels, p.large_size * p.large_size))
        noise = np.einsum("ca,nai,ji->ncj", self.R_sqrt, z, self.C0s_sqrt, optimize=True)
        noise = noise.reshape(n, p.channels, p.large_size, p.large_size)
        return self.posterior_mean(y)[None] + self.scales[k][:, None, None, None] * noise

    # -- numpy: the posterior covariance in C0's eigenbasis ----------------------------------------

    def posterior_covariance_eigenvalues(self, y):
        """Eigenvalues of Cov[x | y] = E[s^2 | y] C0 for one low-res image y [C, h, w]: [C, H*W]."""
        return float(self.component_posterior(y) @ self.scales ** 2) * self.lam

    def to_eigen(self, images):
        """U^T x: images [..., C, H, W] -> coordinates [..., C, H*W] in C0's eigenbasis."""
        flat = images.reshape(*images.shape[:-2], self.params.large_size ** 2)
        return np.einsum("ca,...cn,nm->...am", self.U_r, flat, self.U_s, optimize=True)

    def eigenvectors(self, flat_indices):
        """C0's eigenvectors [k, C, H, W] at flat indices into the [C, H*W] eigenvalue layout."""
        c, j = np.unravel_index(np.asarray(flat_indices), self.lam.shape)
        vectors = self.U_r[:, c].T[:, :, None] * self.U_s[:, j].T[:, None, :]  # [k, C, H*W]
        return vectors.reshape(len(c), self.params.channels, self.params.large_size, self.params.large_size)

    # -- torch: the exact denoiser of a diffusion sampler ----------------------------------------

    def _tensors(self, device):
        if device not in self._torch_cache:
            t = lambda a, dtype=th.float64: th.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa: E731
            self._torch_cache[device] = dict(
                M1=t(self.M1), lam=t(self.lam), scales=t(self.scales), log_weights=t(self.log_weights),
                R_inv=t(self.R_inv), G_inv=t(self.G_inv), U_s=t(self.U_s), U_r=t(self.U_r),
                U_s32=t(self.U_s, th.float32), U_r32=t(self.U_r, th.float32),
                U_s2_32=t(self.U_s ** 2, th.float32), U_r2_32=t(self.U_r ** 2, th.float32),
            )
        return self._torch_cache[device]

    def denoise(self, x_t, alpha_bar, y):
        """
        The exact posterior of x_0 given the noisy image and the low-res image.

        :param x_t: [B, C, H, W], x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps.
        :param alpha_bar: [B] cumulative alphas.
        :param y: [B, C, h, w] low-res images (area-downsampled, [-1, 1] units).
        :return: (E[x_0 | x_t, y], diag Cov[x_0 | x_t, y]), both [B, C, H, W], float64.
        """
        T = self._tensors(x_t.device)
        B, C, H, W = x_t.shape
        x_t, y = x_t.double(), y.double()
        # One noise level for the whole batch (as in sampling): the per-component terms are
        # computed once, [1, K, C, H*W], instead of once per sample.
        same_level = bool((alpha_bar == alpha_bar[0]).all())
        levels = alpha_bar.double()[:1] if same_level else alpha_bar.double()
        a = levels.sqrt().view(-1, 1, 1, 1)
        b2 = (1 - levels).view(-1, 1, 1, 1)
        s2 = (T["scales"] ** 2).view(1, -1, 1, 1)  # [1, K, 1, 1]
        lam = T["lam"][None, None]  # eigenvalues of C0: [1, 1, C, H*W]

        def to_pixels(v, U_r=T["U_r32"], U_s=T["U_s32"]):  # U v for U = U_r (x) U_s; v [..., C, H*W]
            # The orthogonal transforms are the cost; float32 GEMMs run them twice as fast
            # (relative error ~1e-6), while every other step stays in float64.
            shape = v.shape
            v = v.float().reshape(-1, shape[-1]) @ U_s.T  # one GEMM over all rows
            return th.matmul(U_r, v.reshape(shape)).double()

        log_prior_k = self._log_component_prior(y, T)  # log p(k | y) + const: [B, K]

        # x_t | y, k ~ N(a M y, a^2 s_k^2 C0 + b^2 I), diagonal in C0's eigenbasis.
        mean_y = th.einsum("hi,bcij,wj->bchw", T["M1"], y, T["M1"])
        r = (x_t - a * mean_y).reshape(B, C, H * W)
        r_eig = to_pixels(r, T["U_r32"].T, T["U_s32"].T)[:, None]  # U^T r: [B, 1, C, H*W]
        denom = a ** 2 * s2 * lam + b2  # [1 or B, K, C, H*W]
        if same_level:  # the quadratic form of every sample and component as one GEMM
            log_lik = -0.5 * (th.log(denom[0]).sum(dim=(1, 2)) + th.einsum("bcn,kcn->bk", r_eig[:, 0] ** 2,
                                                                          1 / denom[0]))
        else:
            log_lik = -0.5 * (th.log(denom) + r_eig ** 2 / denom).sum(dim=(2, 3))
        w = th.softmax(log_prior_k + log_lik, dim=1)  # p(k | x_t, y): [B, K]
        # Components without weight anywhere in the batch add nothing (and cost a transform).
        active = (w > 1e-12).any(dim=0)
        w, s2, denom = w[:, active], s2[:, active], denom[:, active]
        gain = a * s2 * lam / denom  # E[x | x_t, y, k] = M y + U (gain_k U^T r)
        shrink = s2 * lam * b2 / denom  # Cov[x | x_t, y, k] = U diag(shrink_k) U^T
        w4 = w[:, :, None, None]
        if w.shape[1] == 1:  # one component: its mean is the mean, and nothing spreads
            mean = to_pixels(gain[:, 0] * r_eig[:, 0])
            spread = 0.0
        else:  # the spread of the components' means needs each of them in pixels
            mean_k = to_pixels(gain * r_eig)  # [B, K, C, H*W]
            mean = (w4 * mean_k).sum(1)
            spread = (w4 * (mean_k - mean[:, None]) ** 2).sum(1)
        # diag(U diag(v) U^T) = (U o U) v, and U o U = (U_r o U_r) (x) (U_s o U_s). At one
        # noise level for the whole batch it is one transform per component.
        if same_level:
            within = th.einsum("bk,kcn->bcn", w, to_pixels(shrink[0], T["U_r2_32"], T["U_s2_32"]))
        else:
            within = to_pixels((w4 * shrink).sum(1), T["U_r2_32"], T["U_s2_32"])
        x0 = mean_y + mean.reshape(B, C, H, W)
        return x0, (within + spread).reshape(B, C, H, W)

    def sample_exact_chain(self, y, alphas_cumprod, normal, uniform):
        """
        Exact posterior samples through the chain of exact reverse transitions (SPEC, "Exact
        testbed"), over the steps of a (respaced) schedule, from its first noise level down.

        With u = U^T (x_0 - M y) in C0's eigenbasis and w_t = U^T (x_t - a_t M y) = a_t u +
        b_t eps', every coordinate is its own scalar diffusion given the scale k: u_j ~
        N(0, s_k^2 lam_j). The step t -> s is the mixture over k, with weights
        p(k | x_t, y), of the Gaussians q(x_s | x_t, x_0) integrated over x_0 | x_t, y, k:
        mean coef1 E[u | w_t, k] + coef2 w_t and variance beta~_t + coef1^2 Var[u | w_t, k],
        diagonal in this basis. The chain starts from the exact marginal of x_T given y and
        its last step (to alphabar = 1) is an exact draw of x_0 given x_1, so the samples are
        exact posterior samples whatever the number of steps: no network, no discretisation.

        :param y: [B, C, h, w] low-res images ([-1, 1] units), one per sample.
        :param alphas_cumprod: the schedule's cumulative alphas (numpy), step 0 first.
        :param normal: normal(shape) -> [B, *shape] standard normals (per-sample streams).
        :param uniform: uniform() -> [B] uniforms in [0, 1).
        :return: [B, C, H, W] float32 samples (not clipped).
        """
        T = self._tensors(y.device)
        B, C = y.shape[:2]
        H = self.params.large_size
        y = y.double()
        lam = T["lam"][None, None]  # [1, 1, C, H*W]
        s2 = (T["scales"] ** 2).view(1, -1, 1, 1)  # [1, K, 1, 1]
        log_prior_k = self._log_component_prior(y, T)  # [B, K], unnormalised log p(k | y)
        ab = np.asarray(alphas_cumprod, dtype=np.float64)
        ab_prev = np.append(1.0, ab[:-1])

        def draw_component(log_w):  # one k per sample, by inverse CDF
            cdf = th.cumsum(th.softmax(log_w, dim=1), dim=1)
            u = uniform().to(cdf) * cdf[:, -1]
            return (cdf <= u[:, None]).sum(1).clamp(max=cdf.shape[1] - 1)

        # x_T | y: mixture over k of N(a M y, a^2 s_k^2 C0 + b^2 I), diagonal in the eigenbasis.
        k = draw_component(log_prior_k)
        w = ((ab[-1] * s2 * lam + (1.0 - ab[-1])).sqrt()[0][k]) * normal((C, H * H)).double()
        for i in range(len(ab) - 1, -1, -1):
            a, b2 = np.sqrt(ab[i]), 1.0 - ab[i]
            beta = 1.0 - ab[i] / ab_prev[i]
            coef1, coef2 = np.sqrt(ab_prev[i]) * beta / b2, np.sqrt(1.0 - beta) * (1.0 - ab_prev[i]) / b2
            step_var = beta * (1.0 - ab_prev[i]) / b2  # beta~: 0 at the last step
            denom = (a ** 2 * s2 * lam + b2)[0]  # [K, C, N]
            # log N(w; 0, diag(denom_k)) per sample and component; the quadratic form as a GEMM
            log_lik = -0.5 * (th.log(denom).sum(dim=(1, 2)) + th.einsum("bcn,kcn->bk", w ** 2, 1 / denom))
            k = draw_component(log_prior_k + log_lik)
            # Per component k: w_s = coef1 E[u | w_t, k] + coef2 w_t + sqrt(beta~ + coef1^2 Var[u | w_t, k]) z,
            # with E[u | w_t, k] = (a s_k^2 lam / denom_k) w_t and Var[u | w_t, k] = s_k^2 lam b^2 / denom_k.
            scale = coef1 * a * s2[0] * lam[0] / denom + coef2  # [K, C, N]
            std = (step_var + coef1 ** 2 * s2[0] * lam[0] * b2 / denom).sqrt()
            w = scale[k] * w + std[k] * normal((C, H * H)).double()
        x = self._from_eigen(w, T)
        mean_y = th.einsum("hi,bcij,wj->bchw", T["M1"], y, T["M1"])
        return (mean_y + x.reshape(B, C, H, H)).float()

    def _from_eigen(self, w, T):
        """U w for eigen coordinates w [B, C, H*W] (float64)."""
        return th.matmul(T["U_r"], w @ T["U_s"].T)

    def _log_component_prior(self, y, T):
        """log p(k | y) up to a constant per image, for low-res images y [B, C, h, w] (float64)."""
        m = y.shape[1] * y.shape[2] * y.shape[3]
        whitened = th.einsum("ca,ih,bahw,jw->bcij", T["R_inv"], T["G_inv"], y, T["G_inv"])
        q = (y * whitened).sum(dim=(1, 2, 3))[:, None]
        return T["log_weights"] - m * th.log(T["scales"]) - q / (2 * T["scales"] ** 2)

    # -- files -----------------------------------------------------------------------------------

    def to_json(self):
        return json.dumps({"kind": self.kind, **asdict(self.params)}, indent=1)

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        if d.pop("kind", None) != cls.kind:
            raise ValueError("not a Gaussian scale mixture testbed")
        d["scales"], d["weights"] = tuple(d["scales"]), tuple(d["weights"])
        return cls(TestbedParams(**d))
