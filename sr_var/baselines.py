"""
The simple baselines every model must beat, fitted in closed form on the same training pairs
(x, y = D x) the networks see, with no network at all:

    mean        the least-squares linear map x ~ W y + b (the best linear estimator of E[x | y])
    variance    the best y-independent map, mean over training of (x - (W y + b))^2 per pixel,
                and the least-squares fit of those squared residuals on [1, y_j^2] (a quadratic
                in y: the posterior variance is even in y, so a linear fit could not move)
    PCs         the top K principal directions of the pooled training residuals x - (W y + b),
                the same for every image, with their variances
    quantiles   the linear estimate plus each pixel's empirical tau-quantile of those residuals

All in [-1, 1] units (variances [-1, 1]^2), images [..., C, H, W], low-res [..., C, h, w].
The normal equations are accumulated over chunks, so the whole training set is never held
as float64.
"""

import numpy as np

MAX_QUANTILE_RESIDUALS = 10000  # residual images kept for the empirical quantiles


def _features(y):
    flat = y.reshape(len(y), -1)
    return np.concatenate([np.ones((len(flat), 1)), flat], axis=1)


def _solve(gram, cross):
    """Least squares from the normal equations, with a tiny ridge for a (near) singular Gram matrix."""
    ridge = 1e-10 * np.trace(gram) / len(gram)
    return np.linalg.solve(gram + ridge * np.eye(len(gram)), cross)


class LinearBaselines:
    """
    The baselines fitted on training pairs. `chunks` yields (x [n, C, H, W], y [n, C, h, w])
    float arrays in [-1, 1] units; it is called twice (two passes over the data).
    """

    def __init__(self, chunks, num_pcs=5, seed=0):
        gram = cross = None
        total = 0
        for x, y in chunks():
            total += len(x)
            f = _features(y)
            gram = f.T @ f if gram is None else gram + f.T @ f
            c = f.T @ x.reshape(len(x), -1)
            cross = c if cross is None else cross + c
            self.image_shape, self.low_shape = x.shape[1:], y.shape[1:]
        self.W = _solve(gram, cross)  # [1 + m, n]

        count, sq_sum, res_gram = 0, 0.0, 0.0
        q_gram = q_cross = None
        kept, rng = [], np.random.default_rng([seed, 0xB45E])  # a stream of its own, not the data's
        for x, y in chunks():
            r = x.reshape(len(x), -1) - _features(y) @ self.W
            count += len(r)
            sq_sum = sq_sum + (r ** 2).sum(0)
            res_gram = res_gram + r.T @ r
            g = _features(y ** 2)
            q_gram = g.T @ g if q_gram is None else q_gram + g.T @ g
            qc = g.T @ r ** 2
            q_cross = qc if q_cross is None else q_cross + qc
            kept.append(r[rng.random(len(r)) < MAX_QUANTILE_RESIDUALS / total].astype(np.float32))  # a uniform subsample
        self.num_train = count
        self.constant_var = sq_sum / count  # [n]
        self.Q = _solve(q_gram, q_cross)
        cov = res_gram / count  # the pooled residuals' covariance (they have mean ~0: the fit has an intercept)
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1][:num_pcs]
        self.pc_directions, self.pc_variances = vecs[:, order].T, vals[order]
        residuals = np.concatenate(kept)
        self.residuals = residuals[:MAX_QUANTILE_RESIDUALS]

    def _image(self, flat):
        return flat.reshape(*flat.shape[:-1], *self.image_shape)

    def mean(self, y):
        """The least-squares linear estimate W y + b."""
        return self._image(_features(y) @ self.W)

    def variance_constant(self, y):
        """The y-independent variance map (the same for every image)."""
        return np.broadcast_to(self._image(self.constant_var), (len(y), *self.image_shape)).copy()

    def variance_quadratic(self, y):
        """The least-squares fit of the squared residuals on [1, y_j^2]."""
        return self._image(_features(y ** 2) @ self.Q)

    def principal_components(self, count):
        """The pooled residuals' top directions [K, C, H, W] (unit flat vectors) and variances [K], for `count` images."""
        k = len(self.pc_variances)
        return (np.broadcast_to(self._image(self.pc_directions), (count, k, *self.image_shape)).copy(),
                np.broadcast_to(self.pc_variances, (count, k)).copy())

    def quantiles(self, y, levels):
        """[L, N, C, H, W]: the linear estimate plus each pixel's empirical residual quantile."""
        offsets = np.quantile(self.residuals, levels, axis=0)  # [L, n]
        return self.mean(y)[None] + self._image(offsets)[:, None]


def fit_on_image_folder(data_dir, data_info_path, large_size, small_size, max_images=10000, num_pcs=5, seed=0):
    """
    The baselines fitted on (the first `max_images` of) the training images of a data-info
    pickle, through the stages' own image loader and degradation (y = area downsampling).
    """
    import torch as th

    from imaging import area_downsample, to_float

    from .data import flatten_data_info, load_all_images, load_data_info, resolve_images

    names = [n for n, _ in flatten_data_info(load_data_info(data_info_path, "train_data_info_dict_path"))][:max_images]
    uint8 = load_all_images(resolve_images(data_dir, names, data_info_path), large_size)

    def chunks():
        for i in range(0, len(uint8), 2000):
            x = to_float(uint8[i:i + 2000]).double()
            yield x.numpy(), area_downsample(x, small_size).numpy()

    with th.no_grad():
        return LinearBaselines(chunks, num_pcs=num_pcs, seed=seed)


def estimates(baselines, y):
    """The baselines' mean and variance maps for low-res images y [N, C, h, w], in [-1, 1] units."""
    return {"mean": baselines.mean(y), "var_constant": baselines.variance_constant(y),
            "var_quadratic": baselines.variance_quadratic(y)}
