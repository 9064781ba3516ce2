"""
The one guard against non-finite values (NaN, inf) in what a stage reads or writes: loaded
weights, model outputs, saved scores. A non-finite value never travels on silently; it is a
one-line UserError that names the file or checkpoint it came from.
"""

import math

import numpy as np
import torch as th

from .errors import UserError


def count_non_finite(value):
    """How many entries of a tensor, array or number are NaN or inf (0 for integers)."""
    if th.is_tensor(value):
        return 0 if not (value.is_floating_point() or value.is_complex()) else int((~th.isfinite(value)).sum())
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.inexact):
        return 0
    return int((~np.isfinite(array)).sum())


def require_finite(value, what):
    """Raise a UserError naming `what` (e.g. "variance output 'x.pkl'") when `value` holds NaN or inf."""
    bad = count_non_finite(value)
    if bad:
        size = value.numel() if th.is_tensor(value) else np.asarray(value).size
        raise UserError(f"{what} holds {bad} NaN or inf values of {size}")
    return value


def require_finite_state_dict(state_dict, what):
    """Raise a UserError naming the first weight that holds NaN or inf (a diverged or damaged checkpoint)."""
    for key, tensor in state_dict.items():
        bad = count_non_finite(tensor)
        if bad:
            raise UserError(f"{what} holds NaN or inf in {key!r} ({bad} of {tensor.numel()} values): it is not "
                            f"a usable model; take an earlier checkpoint")
    return state_dict


def first_nan(obj, where=""):
    """The key path of the first NaN in a JSON-like object ("a.b[3]"), or None."""
    if isinstance(obj, float):
        return where or "(top level)" if math.isnan(obj) else None
    if isinstance(obj, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for key, value in items:
        found = first_nan(value, key)
        if found:
            return found
    return None


def json_safe(obj):
    """
    A copy of a JSON-like object with numpy numbers as Python ones and +-inf as the strings
    "inf" / "-inf" (a PSNR of identical images): JSON has no infinity, and a file we write
    stays valid JSON. NaN has no meaning to keep: the caller refuses it (first_nan).
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    return obj
