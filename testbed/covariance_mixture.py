"""
The second exact testbed: a Gaussian mixture whose components differ in covariance, not
only in scale (SPEC.md, "Second exact testbed"). Its posterior mean is nonlinear in y and
its covariance's eigenvectors turn with the image, so that neither a least-squares line
nor one fixed set of directions holds the answers, while every quantity stays in closed form.

Component k (weight pi_k) draws x ~ N(0, S_k), S_k = s_k^2 (R (x) K_k) + j I: a channel
correlation R, an oriented anisotropic Gaussian kernel over high-res pixel offsets d,
K_k(d) = exp(-1/2 d^T U(theta_k) diag(l1_k^-2, l2_k^-2) U(theta_k)^T d), and a small jitter j
(the image's own fine texture; it also keeps uint8 rounding, variance (1/127.5)^2 / 12, a
small share of every direction's variance). With y = D x (area downsampling):

    p(k | y)      ~ pi_k N(y; 0, D S_k D^T)
    M_k           = S_k D^T (D S_k D^T)^-1,   C_k = S_k - M_k D S_k
    E[x | y]      = sum_k p(k | y) M_k y                                  (nonlinear in y)
    Cov[x | y]    = sum_k p(k | y) (C_k + (M_k y - E)(M_k y - E)^T)      (turns with y)

Every operator is R (x) (spatial): in R's eigenbasis (eigenvalues r_c) it splits into one
spatial problem per (k, c), S_kc = s_k^2 r_c K_k + j I, which is solved once, densely, with
its own eigenbasis of C_kc. Memory grows as (H W)^2 per block: meant for H, W <= 32.
"""

import functools
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.linalg
import torch as th

from .mixture import ExactTestbed
from .oracles import MixtureCovariance


@dataclass(frozen=True)
class Component:
    """One mixture component: its weight, scale s, kernel lengths (l1, l2) in high-res pixels, angle (radians)."""

    weight: float
    scale: float
    lengths: tuple
    angle: float = 0.0


# The defaults (docs/testbed.md, "The second testbed", says how they were chosen and what they
# give): a short isotropic texture at a small scale; two strokes along the rows at close
# scales, which the low-res image often cannot tell apart (a genuine mixture); two strokes at
# 60 and 120 degrees at larger scales, which dominate the pooled covariance.
DEFAULT_COMPONENTS = (
    Component(0.2, 0.1, (1.0, 1.0), 0.0),
    Component(0.2, 0.15, (4.0, 0.8), 0.0),
    Component(0.2, 0.17, (4.0, 0.8), 0.0),
    Component(0.2, 0.25, (4.0, 0.8), math.pi / 3),
    Component(0.2, 0.3, (4.0, 0.8), 2 * math.pi / 3),
)


@dataclass(frozen=True)
class CovarianceMixtureParams:
    large_size: int = 32
    small_size: int = 8
    channels: int = 3
    components: tuple = DEFAULT_COMPONENTS
    channel_correlation: float = 0.5
    jitter: float = 1e-4  # in [-1, 1]^2 units: a std of 1.3 grey levels

    def __post_init__(self):
        """Refuse parameters that define no valid prior (ValueError, one line)."""
        if self.small_size < 1 or self.large_size < 1 or self.large_size % self.small_size:
            raise ValueError(f"large_size {self.large_size} must be a positive multiple of small_size "
                             f"{self.small_size}")
        if self.large_size > 48:
            raise ValueError(f"large_size {self.large_size}: the covariance mixture stores dense (H W)^2 blocks "
                             f"and is meant for images of at most 48 px")
        if self.channels < 1:
            raise ValueError(f"channels {self.channels} must be at least 1")
        if not self.components:
            raise ValueError("at least one component")
        for c in self.components:
            if not (c.weight >= 0 and c.scale > 0 and len(c.lengths) == 2 and all(l > 0 for l in c.lengths)
                    and all(np.isfinite([c.weight, c.scale, c.angle, *c.lengths]))):
                raise ValueError(f"component {c}: weight >= 0, scale > 0 and two lengths > 0 are needed")
        if abs(sum(c.weight for c in self.components) - 1) > 1e-9:
            raise ValueError(f"the component weights {[c.weight for c in self.components]} must sum to 1")
        if not (self.jitter > 0 and np.isfinite(self.jitter)):
            raise ValueError(f"jitter {self.jitter} must be above 0")
        low = -1 / (self.channels - 1) if self.channels > 1 else -np.inf
        if not low < self.channel_correlation < 1:
            raise ValueError(f"channel_correlation {self.channel_correlation} must lie in ({low:g}, 1) for "
                             f"{self.channels} channels (else the channel covariance is not positive definite)")


def oriented_kernel(size, lengths, angle):
    """K(d) over the offsets d between the pixels of a size x size grid: [size^2, size^2]."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    points = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float64)
    d = points[:, None, :] - points[None, :, :]
    c, s = math.cos(angle), math.sin(angle)
    along = d[..., 0] * c + d[..., 1] * s  # the offset along the first axis (length l1) and across it
    across = -d[..., 0] * s + d[..., 1] * c
    return np.exp(-0.5 * ((along / lengths[0]) ** 2 + (across / lengths[1]) ** 2))


class _Block:
    """
    The spatial problem of one component k and one channel eigenvalue r (float64): the prior
    covariance P = s_k^2 r K_k + j I, the conditioning on y (G = A P A^T, M, C = P - M A P), and,
    when a teacher first needs it, C's eigenbasis.
    """

    def __init__(self, prior_cov, A2):
        self.prior_cov = prior_cov
        self.prior_chol = np.linalg.cholesky(prior_cov)
        G = A2 @ prior_cov @ A2.T
        self.G_inv = np.linalg.inv(G)
        self.G_logdet = np.linalg.slogdet(G)[1]
        self.M = prior_cov @ A2.T @ self.G_inv  # [n, m]
        C = prior_cov - self.M @ A2 @ prior_cov
        self.C = (C + C.T) / 2
        self.diag = np.clip(np.diag(self.C), 0, None)

    @functools.cached_property
    def eig(self):
        """(eigenvalues, eigenvectors) of C: each step of the denoiser and of the exact chain is diagonal there."""
        lam, U = np.linalg.eigh(self.C)
        return np.clip(lam, 0, None), U


class CovarianceMixture(ExactTestbed):
    """The second testbed's prior, exact posterior, denoiser and exact reverse chain (float64 numpy / torch)."""

    kind = "covariance_mixture"
    PRIOR_CUTOFF = 1e-6  # the exact chain leaves out components of p(k | y) at or below this (_candidates)

    def __init__(self, params=CovarianceMixtureParams()):
        self.params = p = params
        L, l, C = p.large_size, p.small_size, p.channels
        self.factor = f = L // l
        A = np.kron(np.eye(l), np.full((1, f), 1 / f))  # 1-D area downsampling
        self.A = A
        A2 = np.kron(A, A)  # [l^2, L^2] on row-major pixels
        R = np.full((C, C), p.channel_correlation) + (1 - p.channel_correlation) * np.eye(C)
        self.R = R
        self.lam_r, self.U_r = np.linalg.eigh(R)
        self.weights = np.array([c.weight for c in p.components], dtype=np.float64)
        self.log_weights = np.log(np.maximum(self.weights, 1e-300))
        self.scales = np.array([c.scale for c in p.components], dtype=np.float64)
        self.kernels = [oriented_kernel(L, c.lengths, c.angle) for c in p.components]
        # one block per (k, channel eigenvalue); equal eigenvalues (R's are 1 + (C-1) rho and 1 - rho) share it
        self.blocks = []
        for comp, K in zip(p.components, self.kernels):
            cache, row = {}, []
            for r in self.lam_r:
                key = round(float(r), 12)
                if key not in cache:
                    cache[key] = _Block(comp.scale ** 2 * r * K + p.jitter * np.eye(L * L), A2)
                row.append(cache[key])
            self.blocks.append(row)
        self._torch_cache = {}

    @property
    def num_components(self):
        return len(self.params.components)

    @property
    def component_labels(self):
        return [f"k={i} (s={c.scale:g}, {c.lengths[0]:g}x{c.lengths[1]:g} px, {math.degrees(c.angle):.0f} deg)"
                for i, c in enumerate(self.params.components)]

    @property
    def flip_symmetric(self):
        """
        Whether a horizontal flip maps the prior to itself: it maps a component at angle theta to
        one at -theta, so each must have its mirror image (or be isotropic, or lie along an axis).
        """
        def key(c, angle):
            turn = 0.0 if c.lengths[0] == c.lengths[1] else round(angle % math.pi, 9) % round(math.pi, 9)
            return (round(c.weight, 12), c.scale, tuple(c.lengths), turn)

        comps = self.params.components
        return sorted(key(c, c.angle) for c in comps) == sorted(key(c, -c.angle) for c in comps)

    # -- helpers: R's eigenbasis over the channel axis -------------------------------------------

    def _to_r(self, a, axis=-3):
        """Channel axis into R's eigenbasis (U_r^T a)."""
        return np.moveaxis(np.tensordot(self.U_r.T, np.moveaxis(a, axis, 0), axes=1), 0, axis)

    def _from_r(self, a, axis=-3):
        return np.moveaxis(np.tensordot(self.U_r, np.moveaxis(a, axis, 0), axes=1), 0, axis)

    # -- numpy: prior ----------------------------------------------------------------------------

    def sample_prior(self, n, rng, components=None):
        """n images [n, C, H, W] and their mixture components (drawn, or the given `components` [n])."""
        p = self.params
        L, C = p.large_size, p.channels
        k = rng.choice(self.num_components, size=n, p=self.weights) if components is None else np.asarray(components)
        return self._from_r(self._prior_draws(k, rng.standard_normal((n, C, L * L))).reshape(n, C, L, L)), k

    def _prior_draws(self, k, z):
        """Prior draws of components k [n] in R's eigenbasis, flat [n, C, H*W], from standard normals z of that shape."""
        out = np.empty_like(z)
        for kk in range(self.num_components):
            sel = k == kk
            if sel.any():
                out[sel] = np.stack([z[sel, c] @ block.prior_chol.T for c, block in enumerate(self.blocks[kk])], axis=1)
        return out

    def prior_component_posterior(self, x, pixel_noise=0.0):
        """p(k | x) for high-res images [..., C, H, W] (plus independent pixel noise of variance `pixel_noise`)."""
        L = self.params.large_size
        xr = self._to_r(x).reshape(*x.shape[:-2], L * L)  # [..., C, n]
        log_w = []
        for kk, row in enumerate(self.blocks):
            terms = self.log_weights[kk]
            for c, block in enumerate(row):
                chol = block.prior_chol if pixel_noise == 0 else np.linalg.cholesky(
                    block.prior_cov + pixel_noise * np.eye(L * L))
                white = scipy.linalg.solve_triangular(chol, xr[..., c, :].reshape(-1, L * L).T, lower=True)
                terms = terms - np.log(np.diag(chol)).sum() - 0.5 * (white ** 2).sum(0).reshape(xr.shape[:-2])
            log_w.append(terms)
        return _softmax(np.stack(log_w, axis=-1))

    # -- numpy: posterior ------------------------------------------------------------------------

    def _flat_low(self, y):
        """y [..., C, h, w] -> R's eigenbasis, flat [..., C, h*w]."""
        return self._to_r(y).reshape(*y.shape[:-2], -1)

    def component_posterior(self, y):
        """p(k | y) for low-res images [..., C, h, w] -> [..., K]."""
        yr = self._flat_low(y)
        log_w = []
        for kk, row in enumerate(self.blocks):
            terms = self.log_weights[kk]
            for c, block in enumerate(row):
                v = yr[..., c, :]
                terms = terms - 0.5 * (block.G_logdet + np.einsum("...i,ij,...j->...", v, block.G_inv, v))
            log_w.append(terms)
        return _softmax(np.stack(log_w, axis=-1))

    def component_means(self, y):
        """M_k y for every k: [..., K, C, H, W]."""
        L = self.params.large_size
        yr = self._flat_low(y)
        means = [np.stack([yr[..., c, :] @ block.M.T for c, block in enumerate(row)], axis=-2) for row in self.blocks]
        means = np.stack(means, axis=-3)  # [..., K, C, n] in R's eigenbasis
        return self._from_r(means.reshape(*means.shape[:-1], L, L))

    def component_variances(self):
        """diag(C_k) in pixels for every k: [K, C, H, W]."""
        L, C = self.params.large_size, self.params.channels
        diag_r = np.array([[block.diag for block in row] for row in self.blocks])  # [K, C(eig), n]
        # Cov_k = (U_r (x) I) blockdiag(C_kc) (U_r (x) I)^T: pixel variance of channel i = sum_c U_r[i, c]^2 C_kc,pp
        return np.einsum("ic,kcn->kin", self.U_r ** 2, diag_r).reshape(-1, C, L, L)

    def pixel_marginals(self, y):
        """Each pixel's posterior as a mixture over k: (weights [..., K], means and stds [..., K, C, H, W])."""
        return self.component_posterior(y), self.component_means(y), np.sqrt(self.component_variances())

    def posterior_mean(self, y):
        """E[x | y] = sum_k p(k | y) M_k y, images [..., C, H, W]."""
        w = self.component_posterior(y)
        return np.einsum("...k,...kchw->...chw", w, self.component_means(y))

    def posterior_variance(self, y):
        """Var[x_i | y] = sum_k p(k | y) (C_k,ii + (M_k y - E)_i^2), images [..., C, H, W]."""
        w = self.component_posterior(y)
        means = self.component_means(y)
        mean = np.einsum("...k,...kchw->...chw", w, means)
        spread = (means - mean[..., None, :, :, :]) ** 2
        return np.einsum("...k,...kchw->...chw", w, self.component_variances() + spread)

    def sample_posterior(self, y, n, rng):
        """
        n exact posterior samples [n, C, H, W] for one low-res image y [C, h, w]: k ~ p(k | y), then
        x = M_k y + (x' - M_k D x') for a prior draw x' of component k, which is N(M_k y, C_k).
        """
        p = self.params
        L, C = p.large_size, p.channels
        k = rng.choice(self.num_components, size=n, p=self.component_posterior(y))
        prior = self._from_r(self._prior_draws(k, rng.standard_normal((n, C, L * L))).reshape(n, C, L, L))
        return self.component_means(y)[k] + prior - self.component_means(self.downsample(prior))[np.arange(n), k]

    def covariance(self, y):
        """Cov[x | y] of one low-res image y [C, h, w] on the verification's layout (oracles.MixtureCovariance)."""
        return MixtureCovariance(self, y)

    def covariance_operator(self, y):
        """Cov[x | y] for one low-res image y [C, h, w] as (p(k | y), the deviations M_k y - E [K, C, H, W])."""
        w = self.component_posterior(y)
        means = self.component_means(y)
        mean = np.einsum("k,kchw->chw", w, means)
        return w, means - mean[None]

    def covariance_matvec(self, w, deviations, v):
        """Cov[x | y] v for images v [B, C, H, W] (numpy), given (w, deviations) of covariance_operator."""
        L = self.params.large_size
        shape = v.shape
        vr = self._to_r(v).reshape(shape[0], shape[1], L * L)
        out = np.zeros_like(vr)
        for kk, row in enumerate(self.blocks):
            if w[kk] < 1e-14:
                continue
            part = np.stack([vr[:, c] @ block.C for c, block in enumerate(row)], axis=1)
            out += w[kk] * part
        out = self._from_r(out.reshape(shape))
        flat_dev = deviations.reshape(len(w), -1)
        proj = v.reshape(shape[0], -1) @ flat_dev.T  # [B, K]
        return out + ((proj * w) @ flat_dev).reshape(shape)

    # -- torch: the exact denoiser and the exact reverse chain -----------------------------------

    def _tensors(self, device):
        if device not in self._torch_cache:
            t = lambda a, dtype=th.float64: th.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa: E731
            self._torch_cache[device] = dict(
                U_r=t(self.U_r),
                M=[t(np.stack([b.M for b in row])) for row in self.blocks],  # [C, n, m] per k
                U=[t(np.stack([b.eig[1] for b in row]), th.float32) for row in self.blocks],  # [C, n, n] per k
                U2=[t(np.stack([b.eig[1] ** 2 for b in row]), th.float32) for row in self.blocks],
                lam=[t(np.stack([b.eig[0] for b in row])) for row in self.blocks],  # [C, n] per k
                G_inv=[t(np.stack([b.G_inv for b in row])) for row in self.blocks],
                G_logdet=t([sum(b.G_logdet for b in row) for row in self.blocks]),
                log_weights=t(self.log_weights),
            )
        return self._torch_cache[device]

    def _log_component_prior(self, yr, T):
        """log p(k | y) up to a constant per image; yr [B, C, m] in R's eigenbasis (float64)."""
        quad = th.stack([th.einsum("bci,cij,bcj->b", yr, G_inv, yr) for G_inv in T["G_inv"]], dim=1)
        return T["log_weights"] - 0.5 * T["G_logdet"] - 0.5 * quad

    def _r_basis(self, a, T, inverse=False):
        """[B, C, ...] over the channel axis into (or out of) R's eigenbasis."""
        U = T["U_r"].to(a.dtype)
        return th.einsum("ca,bc...->ba...", U, a) if not inverse else th.einsum("ca,ba...->bc...", U, a)

    def _candidates(self, log_prior):
        """
        The exact chain's components: those that p(k | y) leaves a weight above PRIOR_CUTOFF for
        some image of the batch, and log p(k | y) over them, -inf where an image's own weight is
        not above it (each image keeps its own components whatever shares its batch). The chain's
        x_t are drawn from the true process, where p(k | x_t, y) averages to p(k | y): the cut
        changes a draw with probability below PRIOR_CUTOFF and saves the other components'
        transforms. The denoiser keeps every component: a sampler's x_t can lie where a component
        of negligible p(k | y) dominates p(k | x_t, y) (measured: ancestral sampling at 25 steps).
        """
        keep = th.softmax(log_prior, dim=1) > self.PRIOR_CUTOFF
        candidates = [kk for kk in range(self.num_components) if bool(keep[:, kk].any())]
        return candidates, log_prior[:, candidates].masked_fill(~keep[:, candidates], -math.inf)

    def denoise(self, x_t, alpha_bar, y):
        """
        The exact posterior of x_0 given the noisy image and the low-res image.

        :param x_t: [B, C, H, W], x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps.
        :param alpha_bar: [B] cumulative alphas.
        :param y: [B, C, h, w] low-res images (area-downsampled, [-1, 1] units).
        :return: (E[x_0 | x_t, y], diag Cov[x_0 | x_t, y]), both [B, C, H, W], float64.

        Given k, x_t | y ~ N(a M_k y, a^2 C_k + b^2 I), diagonal in C_k's eigenbasis; the
        components are weighted by p(k | x_t, y). Internally [C, B, n] (R's eigenbasis first),
        so that each transform is one batched GEMM per component, in float32 (the
        log-likelihoods and everything after in float64).
        """
        T = self._tensors(x_t.device)
        B, C, H, W = x_t.shape
        n = H * W
        same_level = bool((alpha_bar == alpha_bar[0]).all())
        level = alpha_bar.double()[:1] if same_level else alpha_bar.double()
        a = level.sqrt().view(1, -1, 1)  # [1, 1 or B, 1]
        b2 = (1 - level).view(1, -1, 1)
        xr = self._r_basis(x_t.double().reshape(B, C, n), T).transpose(0, 1)  # [C, B, n]
        yr = self._r_basis(y.double().reshape(B, C, -1), T)
        log_prior = self._log_component_prior(yr, T)
        candidates = range(self.num_components)  # every one (see _candidates); `active` below drops the negligible
        yr = yr.transpose(0, 1)  # [C, B, m]
        log_lik, parts = [], []
        for kk in candidates:
            mean_y = th.bmm(yr, T["M"][kk].transpose(1, 2))  # M_k y: [C, B, n]
            coords = th.bmm((xr - a * mean_y).float(), T["U"][kk]).double()  # U^T r
            lam = T["lam"][kk][:, None]  # [C, 1, n]
            denom = a ** 2 * lam + b2
            log_lik.append(-0.5 * (th.log(denom).sum(dim=(0, 2)).expand(B) + (coords ** 2 / denom).sum(dim=(0, 2))))
            parts.append((mean_y, coords, lam, denom))
        log_w = log_prior + th.stack(log_lik, dim=1)
        w = th.softmax(log_w, dim=1)  # p(k | x_t, y) over the candidates: [B, K']
        active = [j for j in range(len(candidates)) if bool((w[:, j] > 1e-12).any())]
        r2 = (T["U_r"] ** 2)
        means, variances = [], []
        for j in active:
            kk, (mean_y, coords, lam, denom) = candidates[j], parts[j]
            mean = mean_y + th.bmm((a * lam / denom * coords).float(), T["U"][kk].transpose(1, 2)).double()
            shrink = (lam * b2 / denom).float()  # Var[u | x_t, k] in C_k's eigenbasis: [C, 1 or B, n]
            var = th.bmm(shrink, T["U2"][kk].transpose(1, 2)).double()
            means.append(th.einsum("ca,abn->bcn", T["U_r"], mean))  # back to pixels: [B, C, n]
            # pixel variance of channel i: sum_c U_r[i, c]^2 var_c (Cov_k is block-diagonal in R's basis)
            variances.append(th.einsum("ca,abn->bcn", r2, var).expand(B, -1, -1))
        wa = w[:, active][:, :, None, None]
        if len(active) == 1:
            mean, var = means[0], variances[0]
        else:
            means, variances = th.stack(means, dim=1), th.stack(variances, dim=1)  # [B, K', C, n]
            mean = (wa * means).sum(1)
            var = (wa * (variances + (means - mean[:, None]) ** 2)).sum(1)
        return mean.reshape(B, C, H, W), var.reshape(B, C, H, W)

    def sample_exact_chain(self, y, alphas_cumprod, normal, uniform):
        """
        Exact posterior samples through the chain of exact reverse transitions over the steps
        of a (respaced) schedule (SPEC, "Second exact testbed"). Given k, with u = U_k^T
        (x_0 - M_k y) in C_k's eigenbasis and w = U_k^T (x_t - a_t M_k y) = a_t u + b_t eps', every
        coordinate is its own scalar diffusion, u_j ~ N(0, lam_kj); the step t -> s is the
        mixture over k, with weights p(k | x_t, y), of the Gaussians q(x_s | x_t, x_0)
        integrated over x_0 | x_t, y, k. The chain starts from the exact marginal of x_T
        given y; the samples are exact whatever the number of steps.

        :param y: [B, C, h, w] low-res images ([-1, 1] units), one per sample.
        :param alphas_cumprod: the schedule's cumulative alphas (numpy), step 0 first.
        :param normal: normal(shape) -> [B, *shape] standard normals (per-sample streams).
        :param uniform: uniform() -> [B] uniforms in [0, 1).
        :return: [B, C, H, W] float32 samples (not clipped).
        """
        T = self._tensors(y.device)
        B, C = y.shape[:2]
        L = self.params.large_size
        n = L * L
        yr = self._r_basis(y.double().reshape(B, C, -1), T)
        log_prior = self._log_component_prior(yr, T)
        candidates, log_prior = self._candidates(log_prior)
        yr = yr.transpose(0, 1)  # [C, B, m]: R's eigenbasis first, as in denoise
        mean_y = [th.bmm(yr, T["M"][kk].transpose(1, 2)) for kk in candidates]  # M_k y: [C, B, n]
        ab = np.asarray(alphas_cumprod, dtype=np.float64)
        ab_prev = np.append(1.0, ab[:-1])

        def draw_component(log_w):  # one of the candidates per sample, by inverse CDF
            cdf = th.cumsum(th.softmax(log_w, dim=1), dim=1)
            u = uniform().to(cdf) * cdf[:, -1]
            return (cdf <= u[:, None]).sum(1).clamp(max=cdf.shape[1] - 1)

        def set_pixels(x, j, sel, coords, a):  # x = a M_k y + U_k coords on the samples `sel`, in R's eigenbasis
            U = T["U"][candidates[j]]
            x[:, sel] = a * mean_y[j][:, sel] + th.bmm(coords.float(), U.transpose(1, 2)).double()

        k = draw_component(log_prior)
        a_T, b2_T = math.sqrt(ab[-1]), 1.0 - ab[-1]
        z = normal((C, n)).double().transpose(0, 1)  # [C, B, n]
        x = th.empty(C, B, n, dtype=th.float64, device=y.device)
        for j, kk in enumerate(candidates):
            sel = k == j
            if sel.any():
                set_pixels(x, j, sel, (a_T ** 2 * T["lam"][kk][:, None] + b2_T).sqrt() * z[:, sel], a_T)
        for i in range(len(ab) - 1, -1, -1):
            a, b2 = math.sqrt(ab[i]), 1.0 - ab[i]
            beta = 1.0 - ab[i] / ab_prev[i]
            coef1, coef2 = math.sqrt(ab_prev[i]) * beta / b2, math.sqrt(1.0 - beta) * (1.0 - ab_prev[i]) / b2
            step_var = beta * (1.0 - ab_prev[i]) / b2  # beta~: 0 at the last step
            a_s = math.sqrt(ab_prev[i])
            coords, log_lik = [], []
            for j, kk in enumerate(candidates):
                w = th.bmm((x - a * mean_y[j]).float(), T["U"][kk]).double()  # U_k^T (x_t - a M_k y)
                denom = a ** 2 * T["lam"][kk][:, None] + b2
                log_lik.append(-0.5 * (th.log(denom).sum() + (w ** 2 / denom).sum(dim=(0, 2))))
                coords.append(w)
            k = draw_component(log_prior + th.stack(log_lik, dim=1))
            z = normal((C, n)).double().transpose(0, 1)
            for j, kk in enumerate(candidates):
                sel = k == j
                if not sel.any():
                    continue
                lam = T["lam"][kk][:, None]
                denom = a ** 2 * lam + b2
                # w_s = coef1 E[u | w_t, k] + coef2 w_t + sqrt(beta~ + coef1^2 Var[u | w_t, k]) z, in C_k's eigenbasis,
                # around a_s M_k y
                scale = coef1 * a * lam / denom + coef2
                std = (step_var + coef1 ** 2 * lam * b2 / denom).sqrt()
                set_pixels(x, j, sel, scale * coords[j][:, sel] + std * z[:, sel], a_s)
        return self._r_basis(x.transpose(0, 1), T, inverse=True).reshape(B, C, L, L).float()

    # -- files -----------------------------------------------------------------------------------

    def to_json(self):
        d = asdict(self.params)
        d["components"] = [dict(weight=c.weight, scale=c.scale, lengths=list(c.lengths), angle=c.angle)
                           for c in self.params.components]
        return json.dumps({"kind": self.kind, **d}, indent=1)

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        if d.pop("kind", None) != cls.kind:
            raise ValueError("not a covariance mixture testbed")
        d["components"] = tuple(Component(c["weight"], c["scale"], tuple(c["lengths"]), c.get("angle", 0.0))
                                for c in d["components"])
        return cls(CovarianceMixtureParams(**d))


def _softmax(log_w):
    log_w = log_w - log_w.max(axis=-1, keepdims=True)
    w = np.exp(log_w)
    return w / w.sum(axis=-1, keepdims=True)
