"""
Comparing the mean and variance models with DDPM-SR samples (the paper's check of
Theorem 2.2), and beyond the paper: with the true high-res image (accuracy and
calibration), on the exact testbed with the exact posterior, and, when the PC model's
outputs are there, its principal directions with those of the samples (and of the exact
covariance).

Per image the "ground truth" of the paper is the mean and variance of N DDPM-SR samples,
written next to them as high_res_mean.png and high_res_var.pkl (float64 HWC, [0, 255]^2).
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.special import ndtr

from imaging import VAR_SCALE, area_downsample, metrics, to_255, to_float
from runkit import (
    AT_LEAST_ONE,
    AT_LEAST_TWO_SAMPLES,
    FRACTION,
    NON_NEGATIVE,
    UserError,
    logger,
    require_dir,
    require_file,
    require_writable_dir,
)
from runkit.fileio import atomic_write, save_json, save_pickle, save_png
from testbed import load_testbed
from testbed.files import testbed_beside
from testbed.scoring import exact_posterior, group_by_component, name_seed  # noqa: F401 (exact_posterior: its old home)

from . import baselines
from . import principal_components as pcs
from . import quantiles
from .data import (
    IMAGE_CHANNELS,
    flatten_data_info,
    load_data_info,
    load_image,
    read_image,
    require_image_size,
    resolve_images,
)
from .kinds import MEAN, PC, QUANTILE, VAR

TILE_TITLES = ("ground truth", "DDPM-SR mean", "mean model", "|truth - mean model|", "DDPM-SR std",
               "variance-model std", "exact posterior std")


def verification_defaults():
    """Flags of sr_var_verification.py (the original's, with the seed's paths)."""
    return dict(
        data_dir="../datasets/imagenet/train",
        data_info_dict_path="data/sr_imagenet/to_sample_data_info.pkl",
        large_size=256,
        small_size=64,
        ddpm_sr_output_dir="outputs/ddpm_sr/64_256_step_250",
        num_samples=100,
        sr_model_output_dir="outputs/sr_var/64_256",
        mean_model_step=90000,
        var_model_step=50000,
        log_dir="logs/sr_compare",
        testbed_path="",  # "" = use {data_dir}/../testbed.json when it exists
        num_grid_images=8,
        max_tensorboard_images=100,
        # the PC model's outputs (sr_pc_test.py): "auto" = the step found in the output folder, if any;
        # "none" = skip them
        pc_model_step="auto",
        # the quantile model's outputs (sr_quantile_test.py), the same way; with them, and with the
        # variance model and the samples, intervals calibrated with a guarantee (RCPS, conformal risk
        # control) on half of the images and tested on the other half, over --calibration_splits splits
        quantile_model_step="auto",
        interval_delta=0.1,
        calibration_splits=200,
        # on a testbed, the closed-form baselines (sr_var.baselines) are fitted on these training
        # images: "" = the train_data_info.pkl beside --data_info_dict_path, if there; "none" = skip them
        train_data_info_dict_path="",
        baseline_max_images=10000,
    )


# One sample has a variance of 0 everywhere: no comparison of variances can be made from it.
VERIFICATION_RULES = dict(large_size=AT_LEAST_ONE, small_size=AT_LEAST_ONE, num_samples=AT_LEAST_TWO_SAMPLES,
                          mean_model_step=NON_NEGATIVE, var_model_step=NON_NEGATIVE, num_grid_images=NON_NEGATIVE,
                          max_tensorboard_images=NON_NEGATIVE, baseline_max_images=AT_LEAST_ONE,
                          interval_delta=FRACTION, calibration_splits=AT_LEAST_ONE)


def check_samples(ddpm_dir, file_name, num_samples):
    """The paths of an image's first num_samples samples; a UserError when some are missing."""
    folder = os.path.join(ddpm_dir, file_name, "high_res_samples")
    paths = [os.path.join(folder, f"sample_{i}.png") for i in range(num_samples)]
    have = sum(os.path.exists(p) for p in paths)
    if have < num_samples:
        raise UserError(f"image {file_name!r} has {have} of the {num_samples} samples that --num_samples asks for "
                        f"in {folder!r}; run ddpm_sr_sample.py with --num_samples_per_image {num_samples} "
                        f"(it resumes) or lower --num_samples")
    return paths


def ddpm_ground_truth(ddpm_dir, file_name, num_samples):
    """
    Mean (clipped to [0, 255]) and variance (ddof 0) of the first num_samples samples, and
    the samples themselves [N, H, W, C], float64.
    """
    paths = check_samples(ddpm_dir, file_name, num_samples)
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes outside the GIL
        samples = np.stack(list(pool.map(read_image, paths))).astype(np.float64)
    mean = np.clip(samples.mean(axis=0), 0, 255)
    var = samples.var(axis=0)
    save_png(np.round(mean).astype(np.uint8), os.path.join(ddpm_dir, file_name, "high_res_mean.png"))
    save_pickle(var, os.path.join(ddpm_dir, file_name, "high_res_var.pkl"))
    return mean, var, samples


def model_output_paths(output_dir, file_name, mean_step, var_step):
    """The paths of an image's mean- and variance-model outputs; a UserError when one is missing."""
    found = []
    for kind, step, step_flag, what in ((MEAN, mean_step, "mean_model_step", "mean"),
                                        (VAR, var_step, "var_model_step", "var")):
        paths = kind.output_paths(output_dir, file_name, step)
        if not os.path.exists(paths[what]):
            raise kind.missing_output(paths[what], step_flag)
        found.append(paths)
    return found


def model_outputs(output_dir, file_name, mean_step, var_step, size):
    mean_paths, var_paths = model_output_paths(output_dir, file_name, mean_step, var_step)
    mean, var = MEAN.read(mean_paths), VAR.read(var_paths)
    if mean.shape != (size, size, 3) or var.shape != (size, size, 3):
        raise UserError(f"model outputs of {file_name!r} are {mean.shape} / {var.shape}, "
                        f"not ({size}, {size}, 3): check --large_size")
    return mean, var


def find_output_step(args, names, kind, prefix, path_of, flag):
    """
    The step of an optional model's outputs to compare (None: none there), from --{flag}
    ("auto": the one step found in the output folder; "none": skip), checked for every image.
    """
    step = str(getattr(args, flag))
    if step == "none":
        return None
    if step == "auto":
        folder = os.path.join(args.sr_model_output_dir, names[0])
        found = sorted(f[len(prefix):-len(".npz")] for f in os.listdir(folder)
                       if f.startswith(prefix) and f.endswith(".npz")) if os.path.isdir(folder) else []
        if not found:
            return None
        if len(found) > 1:
            raise UserError(f"{folder!r} holds {kind.title}-model outputs of steps {', '.join(found)}: choose one with "
                            f"--{flag} (or none)")
        step = found[0]
    for name in names:
        path = path_of(args.sr_model_output_dir, name, step)
        if not os.path.exists(path):
            raise UserError(f"missing {kind.title}-model output {path!r}: run {kind.stage} with this --output_dir, "
                            f"or set --{flag} (none skips the comparison)")
    return step


def find_pc_step(args, names):
    return find_output_step(args, names, PC, "high_res_pcs_", pcs.pcs_path, "pc_model_step")


def find_quantile_step(args, names):
    return find_output_step(args, names, QUANTILE, "high_res_quantiles_", quantiles.quantiles_path,
                            "quantile_model_step")


def quantile_metrics(levels, model_q, samples, exact=None, exact_q=None):
    """
    The quantile model's levels [L, H, W, C] against the samples' empirical quantiles (the
    paper-style comparison) and the samples' coverage of each level; on the testbed against the
    exact quantiles (in posterior stds), beside the empirical quantiles of the N exact samples.
    """
    sample_q = np.quantile(samples, levels, axis=0)
    out = {}
    for j, tau in enumerate(levels):
        r = {"vs_samples": float(np.mean(np.abs(model_q[j] - sample_q[j]))),
             "sample_coverage": float(np.mean(samples <= model_q[j][None]))}
        if exact is not None:
            std = np.sqrt(exact["var"])
            floor_q = np.quantile(exact["mc_samples"], tau, axis=0)
            r.update(vs_exact=float(np.mean(np.abs(model_q[j] - exact_q[j]) / std)),
                     samples_vs_exact=float(np.mean(np.abs(sample_q[j] - exact_q[j]) / std)),
                     mc_floor_vs_exact=float(np.mean(np.abs(floor_q - exact_q[j]) / std)))
        out[f"{tau:g}"] = r
    return out


def pc_metrics(directions, variances, samples, exact=None, model_mean=None):
    """
    The PC model's directions [K, D] (HWC-flat) and variances [K] against the PCA of the
    samples [N, H, W, C], with the split-half floor of that PCA; on the testbed (`exact`, with
    its "cov" and "mc_samples") against the exact covariance, beside the PCA of the N
    DDPM-SR samples and of N exact samples, and the captured share of what the model
    learns, Cov + b b^T with b = E[x | y] - m (its stored mean-model output).
    """
    k = len(directions)
    sample_pca = pcs.sample_pcs(samples, k)
    result = {"vs_samples": pcs.vs_samples(directions, variances, samples, sample_pca)}
    if len(samples) // 2 > k:  # each half has k components to compare
        result["split_half"] = pcs.split_half(samples, k)
    if exact is not None:
        cov = exact["cov"]
        result["exact"] = {
            "model": pcs.vs_exact(cov, directions, variances, bias=(exact["mean"] - model_mean).ravel()),
            "ddpm": pcs.vs_exact(cov, sample_pca[0]),
            "mc_floor": pcs.vs_exact(cov, pcs.sample_pcs(exact["mc_samples"], k)[0]),
        }
    return result


def pc_tiles(mean, directions, variances, count=3):
    """
    The model mean, then mean + 2 sigma_k w_k and mean - 2 sigma_k w_k for the first `count`
    directions, then the directions w_k themselves (grey 128 = 0, each scaled to its largest
    value), which show what the +- tiles spread over many pixels (uint8, one row).
    """
    tiles, shown = [mean], []
    for w, v in list(zip(directions, variances))[:count]:
        w = w.reshape(mean.shape)
        tiles += [mean + 2 * np.sqrt(max(v, 0)) * w, mean - 2 * np.sqrt(max(v, 0)) * w]
        shown.append(128 + 127 * w / max(np.abs(w).max(), 1e-12))
    return np.concatenate([np.clip(np.round(t), 0, 255).astype(np.uint8) for t in tiles + shown], axis=1)


def image_metrics(truth, ddpm_mean, ddpm_var, model_mean, model_var, exact=None, samples=None, baselines=None):
    """
    All metrics of one image (arrays HWC, float64, [0, 255] and [0, 255]^2 units). With the
    DDPM-SR samples [N, H, W, C]: their split-half floor. With the exact posterior (`exact`,
    from exact_posterior): every estimate against it (absolute and relative errors), the
    Monte Carlo floor of N exact samples, the variance model against its own target, the
    variance ratios, and the closed-form baselines' estimates ({"mean", "var_constant",
    "var_quadratic"}) beside them.
    """
    result = {
        "mean": metrics.mean_metrics(ddpm_mean, model_mean),
        "var": metrics.var_metrics(ddpm_var, model_var),
        "mean_model_vs_truth": metrics.mean_metrics(truth, model_mean),
        "ddpm_mean_vs_truth": metrics.mean_metrics(truth, ddpm_mean),
        "calibration": {
            "models": metrics.coverage(truth, model_mean, model_var),
            "ddpm": metrics.coverage(truth, ddpm_mean, ddpm_var),
        },
    }
    if samples is not None and len(samples) >= 2:
        result["split_half"] = metrics.split_half(samples)
    if exact is not None:
        # What the variance model learns is E[(x - m)^2 | y] = Var[x | y] + (m - E[x | y])^2,
        # with m its mean model (here its stored, rounded output). Against exact truth the N
        # samples' variance is taken unbiased (ddof 1); the paper's file and comparison keep ddof 0.
        target = exact["var"] + (model_mean - exact["mean"]) ** 2
        n = len(samples)
        ddpm_var_unbiased = ddpm_var * n / (n - 1)
        mean_vs = lambda m: metrics.exact_mean_metrics(exact["mean"], exact["var"], m)  # noqa: E731
        var_vs = lambda v: metrics.exact_var_metrics(exact["var"], v)  # noqa: E731
        result["exact"] = {
            "ddpm_mean": mean_vs(ddpm_mean),
            "mean_model": mean_vs(model_mean),
            "bilinear": mean_vs(exact["bilinear"]),
            "ddpm_var": var_vs(ddpm_var_unbiased),
            "var_model": var_vs(model_var),
            "var_model_vs_target": metrics.exact_var_metrics(target, model_var),
            "calibration": metrics.coverage(truth, exact["mean"], exact["var"]),
        }
        if baselines is not None:
            result["exact"].update({f"baseline_{name}": (mean_vs if name == "mean" else var_vs)(value)
                                    for name, value in baselines.items()})
        result["mc_floor"] = {"mean": mean_vs(exact["mc_mean"]), "var": var_vs(exact["mc_var"])}
        result["exact"]["var_ratio"] = {"ddpm": result["exact"]["ddpm_var"]["var_ratio"],
                                        "mc_floor": result["mc_floor"]["var"]["var_ratio"],
                                        "var_model": result["exact"]["var_model"]["var_ratio"],
                                        "var_model_to_target": result["exact"]["var_model_vs_target"]["var_ratio"]}
    return result


def figure_tiles(truth, ddpm_mean, model_mean, ddpm_var, model_var, exact_var=None):
    """
    ground truth | DDPM-SR mean | mean model | |truth - mean model| | DDPM-SR std | model std
    (| exact posterior std, on the testbed), as one uint8 image. The error and std tiles are
    grey (averaged over the colour channels); the std maps share one scale, so that they compare.
    """
    gray = lambda a: np.repeat(a.mean(axis=-1, keepdims=True), 3, axis=-1)  # noqa: E731
    error = gray(np.abs(truth - model_mean))
    stds = [np.sqrt(gray(np.maximum(v, 0))) for v in (ddpm_var, model_var, exact_var) if v is not None]
    std_max = max(max(s.max() for s in stds), 1e-12)
    tiles = [truth, ddpm_mean, model_mean, error / max(error.max(), 1e-12) * 255, *(s / std_max * 255 for s in stds)]
    return np.concatenate([np.clip(np.round(t), 0, 255).astype(np.uint8) for t in tiles], axis=1)


def save_grid(rows, names, path):
    """A paper-style grid: one row per image, the columns (six, or seven on the testbed) titled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    size = rows[0].shape[0]
    columns = rows[0].shape[1] // size
    fig, axes = plt.subplots(n, columns, figsize=(2 * columns, 2 * n + 0.4), squeeze=False)
    for r, (row, name) in enumerate(zip(rows, names)):
        for c in range(columns):
            ax = axes[r][c]
            ax.imshow(row[:, c * size:(c + 1) * size])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(TILE_TITLES[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def find_testbed(args):
    path = args.testbed_path or testbed_beside(args.data_dir)
    if not path:
        return None
    testbed = load_testbed(path, "testbed_path", sizes=(args.large_size, args.small_size), channels=IMAGE_CHANNELS)
    testbed.path = path
    return testbed


def component_groups(testbed, images, per_image):
    """
    Every exact-posterior metric per mixture component: testbed images are grouped by their
    class, which is the component k they were drawn from; each group with its interval.
    """
    rows = [{"exact": r["exact"], "mc_floor": r["mc_floor"]} for r in per_image]
    groups = group_by_component(rows, [y for _, y in images], testbed.component_labels)
    return {key: {"num_images": len(group), **metrics.average(group), "ci95": metrics.bootstrap_interval(group)}
            for key, group in groups.items()}


def baseline_training_info(args):
    """The training images' data-info pickle the baselines are fitted on (None: no baselines)."""
    path = args.train_data_info_dict_path
    if path == "none":
        return None
    if not path:
        candidate = os.path.join(os.path.dirname(args.data_info_dict_path), "train_data_info.pkl")
        return candidate if os.path.exists(candidate) else None
    require_file(path, "train_data_info_dict_path")
    return path


def intervals_of_image(parts, truth, model_mean, model_var, samples, exact, model_quantiles=None):
    """
    Collect one image's interval sources (HWC, [0, 255]): the variance model's m +- sigma and the
    samples' median with their empirical 5% / 95% quantile offsets; or, given `model_quantiles`
    (levels, [L, H, W, C]), the quantile model's median with its outer levels' offsets.
    """
    sources = parts["sources"]
    if model_quantiles is not None:
        levels, q = model_quantiles
        mid = int(np.argmin(np.abs(np.asarray(levels) - 0.5)))
        sources.setdefault("quantile model", []).append((q[mid], q[mid] - q[0], q[-1] - q[mid]))
        parts["levels"] = (levels[0], levels[-1])
        return
    parts["truth"].append(truth)
    std = np.sqrt(np.maximum(model_var, 0))
    sources.setdefault("variance model", []).append((model_mean, std, std))
    low, median, high = np.quantile(samples, (0.05, 0.5, 0.95), axis=0)
    sources.setdefault("DDPM-SR samples", []).append((median, median - low, high - median))
    if exact is not None:
        low, median, high = np.quantile(exact["mc_samples"], (0.05, 0.5, 0.95), axis=0)
        sources.setdefault("exact posterior samples", []).append((median, median - low, high - median))


def calibrated_intervals(parts, testbed, images, args):
    """
    imaging.risk_control.repeated_splits over the images: alpha = 1 - the quantile model's outer
    levels' span (0.1 without a quantile model, matching the samples' 5% / 95% quantiles); on a
    testbed with each test image's exact risk, per mixture component.
    """
    from imaging import risk_control

    low, high = parts.get("levels", (0.05, 0.95))
    alpha = 1 - (high - low)
    sources = {name: tuple(np.stack(a) for a in zip(*rows)) for name, rows in parts["sources"].items()}
    exact_risk, groups = None, None
    if testbed is not None:
        ys = np.stack(parts["y"])
        ks = [y for _, y in images]
        groups = {label: [i for i, k in enumerate(ks) if k == kk]
                  for label, kk in zip(testbed.component_labels, range(testbed.num_components)) if kk in ks}

        def exact_risk(low, high):  # HWC in [0, 255] -> each image's expected share of pixels outside
            w, means, stds = testbed.pixel_marginals(ys)
            means, stds = to_255(means), stds * 127.5
            cdf = lambda v: (w[:, :, None, None, None] * ndtr((np.moveaxis(v, -1, 1)[:, None] - means) / stds)).sum(1)  # noqa: E731
            return (1 - cdf(high) + cdf(low)).reshape(len(ys), -1).mean(1)

    return risk_control.repeated_splits(np.stack(parts["truth"]), sources, alpha, args.interval_delta,
                                        args.calibration_splits, seed=0, groups=groups, exact_risk=exact_risk)


def verify(args):
    """The body of sr_var_verification.py; returns the results dict (also in results.json)."""
    info = load_data_info(args.data_info_dict_path)
    images = flatten_data_info(info)
    names = [name for name, _ in images]
    paths = resolve_images(args.data_dir, names, args.data_info_dict_path)
    require_dir(args.ddpm_sr_output_dir, "ddpm_sr_output_dir")
    require_dir(args.sr_model_output_dir, "sr_model_output_dir")
    testbed = find_testbed(args)
    if testbed:
        require_image_size(paths, args.large_size, testbed.path)
    for name in names:  # every input is there (readable, of its size, finite) before anything is written
        check_samples(args.ddpm_sr_output_dir, name, args.num_samples)
        model_outputs(args.sr_model_output_dir, name, args.mean_model_step, args.var_model_step, args.large_size)
    pc_step = find_pc_step(args, names)
    if pc_step is not None:
        num_pcs = max(len(pcs.load_pcs(pcs.pcs_path(args.sr_model_output_dir, name, pc_step), args.large_size)[1])
                      for name in names)  # each one readable and finite before anything is written
        if args.num_samples <= num_pcs:
            raise UserError(f"the PC model gives {num_pcs} components and --num_samples {args.num_samples} samples "
                            f"have at most {args.num_samples - 1}: compare with more samples or --pc_model_step none")
    quantile_step = find_quantile_step(args, names)
    if quantile_step is not None:  # each one readable and finite before anything is written
        for name in names:
            quantiles.load_quantiles(quantiles.quantiles_path(args.sr_model_output_dir, name, quantile_step),
                                     args.large_size)
    train_info = baseline_training_info(args) if testbed else None
    if train_info:
        load_data_info(train_info, "train_data_info_dict_path")  # checked before anything is written
    require_writable_dir(args.log_dir, "log_dir")
    logger.configure(args.log_dir)
    if testbed:
        logger.log(f"images come from the exact testbed {testbed.path}: comparing with the exact posterior too")
    fitted = None
    if train_info:
        fitted = baselines.fit_on_image_folder(args.data_dir, train_info, args.large_size, args.small_size,
                                               args.baseline_max_images)
        logger.log(f"closed-form baselines fitted on {fitted.num_train} training images of {train_info}")

    per_image, grid_rows = [], []
    interval_parts = {"truth": [], "sources": {}, "y": []}  # per image, for the calibrated intervals
    # the grid shows images spread over the list (data infos are ordered by class)
    grid_images = set(np.linspace(0, len(names) - 1, min(args.num_grid_images, len(names))).round().astype(int))
    for i, (name, path) in enumerate(zip(names, paths)):
        truth_chw = load_image(path, args.large_size)
        truth = truth_chw.permute(1, 2, 0).numpy().astype(np.float64)
        ddpm_mean, ddpm_var, samples = ddpm_ground_truth(args.ddpm_sr_output_dir, name, args.num_samples)
        model_mean, model_var = model_outputs(args.sr_model_output_dir, name, args.mean_model_step,
                                              args.var_model_step, args.large_size)
        exact, baseline = None, None
        if testbed:
            exact = exact_posterior(testbed, truth_chw, args.small_size, args.num_samples, name_seed(name))
        if fitted is not None:
            y = area_downsample(to_float(truth_chw[None]), args.small_size).double().numpy()
            baseline = {key: np.moveaxis(value[0], 0, -1) * (VAR_SCALE if key.startswith("var") else 1)
                        for key, value in baselines.estimates(fitted, y).items()}
            baseline["mean"] = to_255(baseline["mean"])
        per_image.append(image_metrics(truth, ddpm_mean, ddpm_var, model_mean, model_var, exact, samples, baseline))
        intervals_of_image(interval_parts, truth, model_mean, model_var, samples, exact)
        if quantile_step is not None:
            levels, model_q, crossing = quantiles.load_quantiles(
                quantiles.quantiles_path(args.sr_model_output_dir, name, quantile_step), args.large_size)
            exact_q = None
            if exact is not None:
                y = area_downsample(to_float(truth_chw[None]), args.small_size).double().numpy()[0]
                exact_q = np.moveaxis(to_255(testbed.posterior_quantiles(y, levels)), 1, -1)
            per_image[-1]["quantiles"] = quantile_metrics(levels, model_q, samples, exact, exact_q)
            per_image[-1]["quantiles"]["crossing"] = crossing
            intervals_of_image(interval_parts, None, None, None, None, None, (levels, model_q))
        if exact is not None:
            interval_parts["y"].append(area_downsample(to_float(truth_chw[None]), args.small_size).double().numpy()[0])
        if pc_step is not None:
            directions, variances = pcs.load_pcs(pcs.pcs_path(args.sr_model_output_dir, name, pc_step),
                                                 args.large_size)
            per_image[-1]["pcs"] = pc_metrics(directions, variances, samples, exact, model_mean)
            save_png(pc_tiles(model_mean, directions, variances), os.path.join(args.log_dir, "pc_figures",
                                                                                f"{name}.png"))
        tiles = figure_tiles(truth, ddpm_mean, model_mean, ddpm_var, model_var, exact["var"] if exact else None)
        save_png(tiles, os.path.join(args.log_dir, "figures", f"{name}.png"))
        if i < args.max_tensorboard_images:
            logger.write_image("results", tiles, i + 1)
        if i in grid_images:
            grid_rows.append(tiles)
        if (i + 1) % 100 == 0:
            logger.log(f"compared {i + 1} of {len(names)} images")

    results = metrics.average(per_image)
    results["ci95"] = metrics.bootstrap_interval(per_image)
    if len(names) >= 4:
        results["intervals"] = calibrated_intervals(interval_parts, testbed, images, args)
    if testbed:
        results["by_component"] = component_groups(testbed, images, per_image)
    results.update(num_images=len(names), num_samples=args.num_samples, mean_model_step=args.mean_model_step,
                   var_model_step=args.var_model_step, pc_model_step=pc_step, quantile_model_step=quantile_step,
                   gaussian_coverage=metrics.GAUSSIAN_COVERAGE,
                   units="images in [0, 255], variances in [0, 255]^2",
                   per_image={name: r for name, r in zip(names, per_image)})
    save_json(results, os.path.join(args.log_dir, "results.json"))
    save_grid(grid_rows, [names[i] for i in sorted(grid_images)], os.path.join(args.log_dir, "results_grid.png"))
    log_summary(results)
    return results


def log_summary(results):
    m, v = results["mean"], results["var"]
    logger.log("Mean comparison (mean model vs DDPM-SR mean)")
    logger.log(f"mse:  {m['mse']:.4f}\npsnr: {m['psnr']:.4f}\nnmse: {m['nmse']:.4f}")
    logger.log("Variance comparison (variance model vs DDPM-SR variance)")
    logger.log(f"var error: {v['var_error']:.4f}\nstd error: {v['std_error']:.4f}")
    t, d = results["mean_model_vs_truth"], results["ddpm_mean_vs_truth"]
    logger.log(f"vs the true high-res image: mean model psnr {t['psnr']:.2f}, DDPM-SR mean psnr {d['psnr']:.2f}")
    for who in ("models", "ddpm"):
        c = results["calibration"][who]
        logger.log(f"coverage of |truth - mean| <= 1/2/3 std ({who}): "
                   f"{c['1']:.3f} / {c['2']:.3f} / {c['3']:.3f} (Gaussian 0.683 / 0.954 / 0.997)")
    n = results["num_samples"]
    if "split_half" in results:
        s = results["split_half"]
        logger.log(f"split-half floor of {n} samples: mse {s['mean']['mse']:.3f}, "
                   f"var error {s['var']['var_error']:.3f}, std error {s['var']['std_error']:.3f}")
    if "exact" in results:
        e, f = results["exact"], results["mc_floor"]
        base = (f", least-squares linear baseline {e['baseline_mean']['mse']:.3f}" if "baseline_mean" in e else "")
        logger.log(f"vs the exact posterior mean, mse (relative to the mean posterior variance): DDPM-SR "
                   f"{e['ddpm_mean']['mse']:.3f} ({e['ddpm_mean']['rel_mse']:.4f}), mean model {e['mean_model']['mse']:.3f} "
                   f"({e['mean_model']['rel_mse']:.4f}), bilinear {e['bilinear']['mse']:.3f}{base}, {n} exact samples "
                   f"(the Monte Carlo floor) {f['mean']['mse']:.3f} ({f['mean']['rel_mse']:.4f})")
        base = (f", baselines: y-independent {e['baseline_var_constant']['var_error']:.3f}, quadratic in y "
                f"{e['baseline_var_quadratic']['var_error']:.3f}" if "baseline_var_constant" in e else "")
        logger.log(f"vs the exact posterior variance, var error (relative std error): DDPM-SR "
                   f"{e['ddpm_var']['var_error']:.3f} ({e['ddpm_var']['rel_std_error']:.4f}), variance model "
                   f"{e['var_model']['var_error']:.3f} ({e['var_model']['rel_std_error']:.4f}; vs its target Var + "
                   f"(m - E)^2: {e['var_model_vs_target']['var_error']:.3f}){base}, {n} exact samples "
                   f"{f['var']['var_error']:.3f} ({f['var']['rel_std_error']:.4f}); sample variances with ddof 1")
        for group, r in results.get("by_component", {}).items():
            logger.log(f"{group} ({r['num_images']} images): variance ratio to exact: DDPM-SR "
                       f"{r['exact']['var_ratio']['ddpm']:.3f}, {n} exact samples {r['exact']['var_ratio']['mc_floor']:.3f}, "
                       f"variance model {r['exact']['var_ratio']['var_model']:.3f}; relative mean MSE: mean model "
                       f"{r['exact']['mean_model']['rel_mse']:.4f}, floor {r['mc_floor']['mean']['rel_mse']:.4f}")
    if "quantiles" in results:
        for tau, r in results["quantiles"].items():
            if tau == "crossing":
                continue
            exact = (f"; vs the exact quantile {r['vs_exact']:.3f} posterior stds (the {n} samples' own "
                     f"{r['samples_vs_exact']:.3f}, {n} exact samples' {r['mc_floor_vs_exact']:.3f})"
                     if "vs_exact" in r else "")
            logger.log(f"quantile model, level {tau}: mean |q - sample quantile| {r['vs_samples']:.3f}, share of "
                       f"samples below {r['sample_coverage']:.3f}{exact}")
    for name, src in results.get("intervals", {}).items():
        if not isinstance(src, dict):
            continue
        for method in ("rcps_hb", "crc"):
            r = src[method]
            if "realised_risk" in r:
                exact = f", exact risk {r['exact_risk']:.3f}" if "exact_risk" in r else ""
                logger.log(f"intervals from the {name}, {method}: lambda {r['lam']:.3f}, test risk "
                           f"{r['realised_risk']:.3f} (above alpha in {r['exceeds_alpha']:.0%} of the splits), width "
                           f"{r['width']:.2f}{exact}")
    if "pcs" in results:
        p = results["pcs"]
        logger.log(f"PC model (step {results['pc_model_step']}) vs the PCA of the {n} samples: overlap "
                   f"{p['vs_samples']['overlap']:.3f}, captured variance {p['vs_samples']['captured']:.3f}"
                   + (f" (split-half floor of the sample PCA: {p['split_half']['overlap']:.3f}, "
                      f"{p['split_half']['captured']:.3f})" if "split_half" in p else ""))
        if "exact" in p:
            pe = p["exact"]
            logger.log(f"vs the exact covariance's top K, overlap / captured: PC model {pe['model']['overlap']:.3f} / "
                       f"{pe['model']['captured']:.3f} (of its target Cov + bb^T: "
                       f"{pe['model']['captured_vs_target']:.3f}), PCA of {n} DDPM-SR samples "
                       f"{pe['ddpm']['overlap']:.3f} / {pe['ddpm']['captured']:.3f}, PCA of {n} exact samples "
                       f"{pe['mc_floor']['overlap']:.3f} / {pe['mc_floor']['captured']:.3f}")
