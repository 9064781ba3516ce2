"""
The model flags of a run, from the command line or from its args pickle
(`{kind}_model_args.pkl`), with the checks that turn a contradiction between them into a
one-line error; and the frozen mean model that the variance and PC stages need (a trained
one, or the testbed's exact posterior mean).
"""

import argparse
import os

from guided_diffusion.script_util import parse_channel_mult
from runkit import UserError, args_to_dict, dist_util, logger
from runkit.fileio import load_model_weights, load_pickle
from testbed import ExactMeanModel, is_testbed_file, load_testbed

from .data import IMAGE_CHANNELS
from .kinds import MEAN
from .networks import MEAN_FLAG_NAMES, mean_model_defaults

# Flags of the args pickles that choose how a model runs, not what it is.
RUNTIME_FLAGS = {"use_fp16", "use_checkpoint", "dropout"}


def _normal_form(key, value, flags):
    """Compare flags by meaning: "16, 8" == "16,8", channel_mult "" == its size default."""
    if key == "attention_resolutions":
        return tuple(int(r) for r in str(value).split(","))
    if key == "channel_mult":
        try:
            return parse_channel_mult(value, flags.get("large_size"), {256: (1, 1, 2, 2, 4, 4),
                                                                      512: (0.5, 1, 1, 2, 2, 4, 4)})
        except ValueError:
            return value
    return value


def check_flags_match(saved, args, explicit, source, advice="drop the flag or use the run it belongs to"):
    """Raise a UserError when a flag given on the command line contradicts `saved`."""
    for key, saved_value in saved.items():
        if key in RUNTIME_FLAGS or key not in explicit or not hasattr(args, key):
            continue
        given = getattr(args, key)
        if _normal_form(key, given, vars(args)) != _normal_form(key, saved_value, saved):
            raise UserError(f"--{key} {given!r} contradicts {source!r}, which has {key}={saved_value!r}; {advice}")


def model_args_for_run(args, explicit, kind, pickle_path, fresh_run=False):
    """
    The model flags of a run of `kind` (a kinds.ModelKind): read from `pickle_path` when it exists (checked against the
    flags given on the command line), else taken from the command line. A fresh training
    (`fresh_run`) takes the command line's and refuses an args pickle that holds other
    flags: the log_dir belongs to another run, whose checkpoints it describes.
    """
    defaults = kind.defaults()
    if os.path.exists(pickle_path):
        saved = load_pickle(pickle_path, what=f"{kind.name}-model args pickle")
        if not isinstance(saved, dict) or set(saved) - set(defaults):
            raise UserError(f"{pickle_path!r} is not a {kind.name}-model args pickle "
                            f"(expected the keys of {kind.name}_model_defaults())")
        if fresh_run:
            given = args_to_dict(args, defaults.keys())
            check_flags_match(saved, argparse.Namespace(**given), set(given), pickle_path,
                              advice="choose another --log_dir for a new run, or resume that run")
            return given
        check_flags_match(saved, args, explicit, pickle_path)
        model_args = {**defaults, **saved}
        # Runtime flags given explicitly win over the pickle.
        model_args.update({k: getattr(args, k) for k in RUNTIME_FLAGS & explicit})
        logger.log(f"model flags from {pickle_path}")
        return model_args
    return args_to_dict(args, defaults.keys())


def load_mean_model(mean_model_path, mean_model_args_path, device, use_fp16, sizes=None):
    """
    The trained mean model (eval mode) that the variance stages need; `sizes` (large, small)
    are the variance model's, which the mean run must share. A testbed description
    (testbed.json) as --mean_model_path gives its exact posterior mean (ExactMeanModel).
    """
    if is_testbed_file(mean_model_path):
        testbed = load_testbed(mean_model_path, "mean_model_path", sizes, channels=IMAGE_CHANNELS)
        return ExactMeanModel(testbed).to(device).eval()
    if not mean_model_args_path:
        raise UserError("--mean_model_args_path is required (the mean run's log_dir/mean_model_args.pkl)")
    saved = load_pickle(mean_model_args_path, "mean_model_args_path", what="mean-model args pickle")
    if not isinstance(saved, dict) or set(saved) - set(mean_model_defaults()):
        raise UserError(f"{mean_model_args_path!r} (--mean_model_args_path) is not a mean-model args pickle")
    mean_args = {**mean_model_defaults(), **saved}
    if sizes is not None and (mean_args["large_size"], mean_args["small_size"]) != tuple(sizes):
        raise UserError(f"the mean run of {mean_model_args_path!r} is {mean_args['small_size']}->"
                        f"{mean_args['large_size']} px, the variance model {sizes[1]}->{sizes[0]} px; "
                        f"use a mean run of the same sizes or set --small_size / --large_size to match")
    model = MEAN.build(mean_args)
    if not mean_model_path:
        raise UserError("--mean_model_path is required (a checkpoint of sr_mean_train.py)")
    load_model_weights(model, mean_model_path, "mean_model_path", MEAN_FLAG_NAMES)
    model.to(device).eval()
    if use_fp16 and device.type == "cuda":
        model.convert_to_fp16()
    return model


def use_fp16_here(use_fp16):
    """fp16 runs on a GPU only; on a CPU warn once and use fp32."""
    if use_fp16 and dist_util.dev().type != "cuda":
        logger.warn_once("--use_fp16 True needs a GPU; running in fp32 on the CPU")
        return False
    return use_fp16
