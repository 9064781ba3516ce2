"""
The exact testbeds as files: testbed.json (the parameters, with the kind), the image folder a
study or the mini run trains on, and uint8 rounding as the PNGs store it.
"""

import json
import os

import numpy as np

from imaging import to_255
from runkit import UserError, check_choice
from runkit.fileio import atomic_write, save_pickle, save_png

from .covariance_mixture import CovarianceMixture, CovarianceMixtureParams
from .gaussian_scale_mixture import GaussianScaleMixture, TestbedParams

# testbed.json's "kind" -> its class (a testbed.json without one is the first testbed's, as
# every earlier file is)
TESTBED_KINDS = {cls.kind: cls for cls in (GaussianScaleMixture, CovarianceMixture)}


def testbed_from_json(text):
    kind = json.loads(text).get("kind", GaussianScaleMixture.kind)
    if kind not in TESTBED_KINDS:
        raise ValueError(f"unknown testbed kind {kind!r} (one of {', '.join(TESTBED_KINDS)})")
    return TESTBED_KINDS[kind].from_json(text)


def load_testbed(path, flag="model_path", sizes=None, channels=None):
    """
    Read a testbed description (testbed.json) written by `write_testbed_dataset`; with
    `sizes` (large, small) or `channels`, one of other sizes or channels is refused in one
    line, before any work.
    """
    try:
        with open(path) as f:
            testbed = testbed_from_json(f.read())
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"{path!r} (--{flag}) is not a testbed description: {e}") from None
    if sizes is not None and (testbed.params.large_size, testbed.params.small_size) != tuple(sizes):
        raise UserError(f"the testbed {path!r} (--{flag}) is {testbed.params.small_size}->"
                        f"{testbed.params.large_size} px, the flags {sizes[1]}->{sizes[0]} px; set --small_size and "
                        f"--large_size to match")
    if channels is not None and testbed.params.channels != channels:
        raise UserError(f"the testbed {path!r} (--{flag}) has {testbed.params.channels} channel(s), the images "
                        f"{channels}: a testbed describes the images it is used with")
    return testbed


def is_testbed_file(path):
    return path.endswith(".json")


def quantize(x):
    """[-1, 1] floats -> uint8 images, rounding to the nearest level."""
    return np.clip(np.round(to_255(x)), 0, 255).astype(np.uint8)


def image_prefix(testbed):
    """The file-name prefix of a testbed's images and classes: gsm{k}_000123 (first testbed), cm{k}_000123."""
    return "gsm" if testbed.kind == GaussianScaleMixture.kind else "cm"


def as_testbed(testbed_or_params):
    """A testbed, given itself or its parameters (TestbedParams or CovarianceMixtureParams)."""
    if isinstance(testbed_or_params, TestbedParams):
        return GaussianScaleMixture(testbed_or_params)
    if isinstance(testbed_or_params, CovarianceMixtureParams):
        return CovarianceMixture(testbed_or_params)
    return testbed_or_params


def write_testbed_dataset(out_dir, testbed=TestbedParams(), num_train=2000, num_eval=16, seed=0):
    """
    Draw images from the prior (a testbed, or its parameters) and save them as an image folder
    `{out_dir}/images` of PNG files, with `train_data_info.pkl`, `to_sample_data_info.pkl` and
    `testbed.json`. Images are named `{prefix}{k}_{i:06d}` and grouped into one "class" per
    mixture component. Returns the testbed.
    """
    testbed = as_testbed(testbed)
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    x, k = testbed.sample_prior(num_train + num_eval, rng)
    prefix = image_prefix(testbed)
    train_info, eval_info = {}, {}
    for i in range(num_train + num_eval):
        name = f"{prefix}{k[i]}_{i:06d}"
        save_png(quantize(x[i]).transpose(1, 2, 0), os.path.join(image_dir, f"{name}.png"))
        info = train_info if i < num_train else eval_info
        info.setdefault(f"{prefix}{k[i]}", {"y": int(k[i]), "file_names": []})["file_names"].append(name)
    sort = lambda d: dict(sorted(d.items()))  # noqa: E731
    save_pickle(sort(train_info), os.path.join(out_dir, "train_data_info.pkl"))
    save_pickle(sort(eval_info), os.path.join(out_dir, "to_sample_data_info.pkl"))
    atomic_write(os.path.join(out_dir, "testbed.json"), lambda f: f.write(testbed.to_json().encode()))
    return testbed


def study_testbed(kind, large_size, small_size, length_scale=2.0):
    """A study's testbed by kind, at the given sizes, with its other parameters at their defaults
    (the first testbed's kernel length from `length_scale`); a bad kind or size is one line."""
    kind = check_choice(kind, tuple(TESTBED_KINDS), "testbed")
    try:
        if kind == GaussianScaleMixture.kind:
            return GaussianScaleMixture(TestbedParams(large_size=large_size, small_size=small_size,
                                                      length_scale=length_scale))
        return CovarianceMixture(CovarianceMixtureParams(large_size=large_size, small_size=small_size))
    except ValueError as e:
        raise UserError(str(e)) from None


def testbed_beside(data_dir):
    """The testbed.json next to an image folder (a testbed's `{out_dir}/images`), or None."""
    candidate = os.path.join(os.path.dirname(os.path.normpath(data_dir)), "testbed.json")
    return candidate if data_dir and os.path.exists(candidate) else None


def check_flips(data_dir, random_flip):
    """
    Random flips augment real photos; on a testbed they train on the flipped prior, which is
    another one unless the testbed is symmetric under flips (the covariance mixture's oriented
    components are not): refused in one line.
    """
    path = testbed_beside(data_dir)
    if random_flip and path and not load_testbed(path, "data_dir").flip_symmetric:
        raise UserError(f"the testbed {path!r} beside --data_dir is not symmetric under horizontal flips (a flip turns "
                        f"a component at angle theta into one at -theta): random flips would train on another prior; "
                        f"pass --random_flip False")
