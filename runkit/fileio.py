"""
Files: atomic writes (temporary file, then rename, so a killed run never leaves a
truncated file under a final name), a restricted unpickler for the pickles the scripts
read, and checkpoint loading that names the flag most likely behind a mismatch.
"""

import errno
import glob
import io
import json
import os
import pickle
import re
import tempfile
import warnings

import numpy as np
import torch as th
from PIL import Image

from .errors import UserError
from .finite import first_nan, json_safe, require_finite_state_dict
from .paths import require_file

TMP_MARK = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write_fn, fsync=False):
    """
    Write a file through `write_fn(binary_file)` to a temporary name, then rename it. A
    failure leaves nothing behind and is an OSError that names `path` (a full disk, a
    read-only folder), which the scripts report as one line.
    """
    directory = os.path.dirname(path) or "."
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}{TMP_MARK}")
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), path) from None
        if isinstance(e, RuntimeError) and "write" in str(e).lower():  # torch.save's writer
            raise OSError(errno.EIO, f"cannot write the file ({str(e).splitlines()[0][:120]})", path) from None
        raise


def remove_stale_tmp(directory):
    """Delete temporary files that a killed run left in `directory`."""
    for path in glob.glob(os.path.join(directory, f".*{TMP_MARK}*")):
        os.unlink(path)


def save_torch(obj, path):
    """torch.save, atomically and synced to disk (checkpoints)."""
    atomic_write(path, lambda f: th.save(obj, f), fsync=True)


def save_pickle(obj, path):
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def save_json(obj, path):
    """
    Write `obj` as (strictly valid) JSON. A NaN in it is a UserError naming the key: a score
    that is not a number is a failure upstream, never a result (infinities are written as
    "inf" / "-inf", see finite.json_safe).
    """
    where = first_nan(obj)
    if where:
        raise UserError(f"refusing to write NaN into {path!r} (at {where}): a value it is computed from is not "
                        f"finite")
    text = json.dumps(json_safe(obj), indent=1, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()))


def cached_json(path, compute):
    """
    What compute() returns, saved as JSON at `path` the first time and read back from there
    every time (so a rerun continues, and a first run and a rerun see the same values).
    """
    if not os.path.exists(path):
        save_json(compute(), path)
    with open(path) as f:
        return json.load(f)


def read_text(path, flag=None, hint=""):
    """The text of a UTF-8 file given by --flag; a missing or binary file is one line naming both."""
    where = f" (--{flag})" if flag else ""
    with open(require_file(path, flag, hint), "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path!r}{where} is not a text file: byte {e.start} is not UTF-8") from None


def read_json(path, flag=None, hint=""):
    """The JSON value in a file given by --flag; a file that is not JSON is one line naming both."""
    text = read_text(path, flag, hint)
    try:
        return json.loads(text)
    except ValueError as e:
        where = f" (--{flag})" if flag else ""
        raise UserError(f"{path!r}{where} is not JSON ({e}){'; ' + hint if hint else ''}") from None


def save_png(array, path):
    """Save an HWC (or HW) uint8 array as a PNG file, atomically."""
    image = Image.fromarray(np.ascontiguousarray(array))
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def record_run_flags(path, flags, folder_flag, write=True):
    """
    The record of the flags that define a run folder, as JSON at `path`: the first run writes
    it, and a later run whose flags contradict it is refused with one line naming the flag,
    so that one folder never mixes the work of two different runs. `folder_flag` names the
    flag that chose the folder (for the advice to choose another). write=False only checks.
    """
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{path!r} is not a readable record of a run's flags: {e}") from None
        for key, value in flags.items():
            if key in saved and saved[key] != value:
                raise UserError(f"--{key} {value!r} contradicts {path!r}, which has {key}={saved[key]!r}; "
                                f"keep the flags of the run in this --{folder_flag} or choose another")
        if write and set(flags) - set(saved):
            save_json({**saved, **flags}, path)
        return
    if write:
        save_json(flags, path)


def png_is_complete(path):
    """True for a PNG file that ends with its IEND chunk (cheap check for a valid sample)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            f.seek(-12, os.SEEK_END)
            return f.read(12)[4:8] == b"IEND"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------------------

_SAFE_GLOBALS = {
    ("builtins", name)
    for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str",
                 "bytes", "bytearray", "bool", "slice", "range")
} | {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.dtypes", "Float64DType"),
    ("numpy.dtypes", "Float32DType"),
    ("numpy.dtypes", "Int64DType"),
    ("numpy.dtypes", "UInt8DType"),
    ("_codecs", "encode"),  # numpy arrays pickled with protocol 2 store bytes this way
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_pickle(path, flag=None, what="pickle file"):
    """
    Load a pickle that may hold only plain containers, numbers, strings and numpy arrays.
    A missing file or any other content is a UserError naming the flag.
    """
    require_file(path, flag)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError) as e:
        where = f" (--{flag})" if flag else ""
        raise UserError(f"{path!r}{where} is not a readable {what}: {e}") from None


def loads_pickle(data):
    return _RestrictedUnpickler(io.BytesIO(data)).load()


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------

def torch_load(path):
    """
    torch.load(weights_only=True) on the CPU, without torch's warnings about the file's
    pickle protocol (a one-line error, or none, is what the scripts print).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return th.load(path, map_location="cpu", weights_only=True)


def torch_load_error(e):
    """
    Why torch.load(weights_only=True) refused a file, in one line and without torch's advice
    to retry with weights_only=False (which would run whatever code the file carries).
    """
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in lines:
        found = re.search(r"GLOBAL ([\w.]+)", line)
        if found:
            return f"it holds objects other than tensors ({found.group(1)}), refused"
        if "Unsupported operand" in line:
            return f"its bytes are not a pickle of tensors ({line[line.index('Unsupported'):][:80]})"
    first = lines[0] if lines else type(e).__name__
    if "weights_only" in first or "Weights only" in first:
        return "it holds objects other than tensors, refused"
    return first[:200]


def load_state_dict(path, flag=None):
    """Read a state_dict with `weights_only=True`; a bad file is a UserError."""
    require_file(path, flag)
    where = f" (--{flag})" if flag else ""
    try:
        state_dict = torch_load(path)
    except Exception as e:  # torch raises many kinds for a corrupt or foreign file
        raise UserError(f"{path!r}{where} is not a readable PyTorch checkpoint: {torch_load_error(e)}") from None
    if isinstance(state_dict, dict) and {"state", "param_groups"} <= set(state_dict):
        raise UserError(f"{path!r}{where} is an optimizer state (opt*.pt), not a model; give the model*.pt "
                        f"file of the same step")
    if not isinstance(state_dict, dict) or not all(th.is_tensor(v) for v in state_dict.values()):
        raise UserError(f"{path!r}{where} does not hold a model state_dict")
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return require_finite_state_dict(state_dict, f"checkpoint {path!r}{where}")


def _block_index(key, prefix):
    m = re.match(rf"{prefix}\.(\d+)\.", key)
    return int(m.group(1)) if m else -1


def likely_flag(model_shapes, ckpt_shapes, flag_names):
    """
    Guess which model flag makes a checkpoint differ from the model built from the flags.
    `flag_names` maps roles to this model family's flag names: "width", "classes",
    "out", "in" (e.g. {"width": "num_channels", "classes": "class_cond", "out": "learn_sigma"});
    a plain string is the answer for models with a single shape flag.
    """
    if isinstance(flag_names, str):
        return flag_names
    def has(shapes, pattern):
        return any(re.search(pattern, k) for k in shapes)

    def shape(shapes, key):
        return tuple(shapes[key]) if key in shapes else None

    if has(model_shapes, r"^time_embed\.") != has(ckpt_shapes, r"^time_embed\."):
        return "model_path (a diffusion checkpoint and a mean/variance model are not interchangeable)"
    if has(model_shapes, r"^label_emb\.") != has(ckpt_shapes, r"^label_emb\."):
        return flag_names.get("classes", "class_cond")
    first_m, first_c = shape(model_shapes, "input_blocks.0.0.weight"), shape(ckpt_shapes, "input_blocks.0.0.weight")
    if first_m and first_c:
        if first_m[0] != first_c[0]:
            return flag_names.get("width", "num_channels")
        if first_m[1] != first_c[1]:
            return flag_names.get("in", "in_channels")
    out_m, out_c = shape(model_shapes, "out.2.weight"), shape(ckpt_shapes, "out.2.weight")
    if out_m and out_c and out_m[0] != out_c[0]:
        return flag_names.get("out", "out_channels")
    for key in sorted(model_shapes.keys() & ckpt_shapes.keys()):
        # scale-shift doubles the embedding projection of a block whose width is unchanged
        width_key = key.replace("emb_layers.1.weight", "out_layers.0.weight")
        if key.endswith("emb_layers.1.weight") and shape(model_shapes, width_key) == shape(ckpt_shapes, width_key):
            a, b = model_shapes[key][0], ckpt_shapes[key][0]
            if a != b and max(a, b) == 2 * min(a, b):
                return "use_scale_shift_norm"
    resample = r"\.0\.(op|conv)\.weight$"
    if has(model_shapes, resample) != has(ckpt_shapes, resample):
        return "resblock_updown"
    n_model = max(_block_index(k, "input_blocks") for k in model_shapes)
    n_ckpt = max(_block_index(k, "input_blocks") for k in ckpt_shapes)
    if n_model != n_ckpt:
        return f"channel_mult / num_res_blocks / {flag_names.get('size', 'large_size')}"
    attn_m = {k for k in model_shapes if ".qkv." in k}
    attn_c = {k for k in ckpt_shapes if ".qkv." in k}
    if attn_m != attn_c:
        return "attention_resolutions"
    return "channel_mult"


def checkpoint_kind(shapes):
    """What a state_dict's keys and shapes say it is ("a mean model (sr_mean_train.py)"), or None."""
    if "conv1.weight" in shapes and "fc3.weight" in shapes:
        return "an MNIST classifier (mnist_classification.py)"
    if any(k.startswith("time_embed.") for k in shapes):
        return "a DDPM-SR upsampler (a diffusion UNet: sr_ddpm_train.py trains it, ddpm_sr_sample.py samples it)"
    first, out = shapes.get("input_blocks.0.0.weight"), shapes.get("out.2.weight")
    if not (first and out):
        return None
    c_in, c_out = first[1], out[0]
    if c_in == c_out and c_in % 2:
        return "a mean model (sr_mean_train.py)"
    if c_in == 2 * c_out:
        return "a variance model (sr_var_train.py; or a PC model of one component)"
    if c_in % 2 == 0 and c_out % (c_in // 2) == 0:
        return f"a PC model of {c_out // (c_in // 2)} components (sr_pc_train.py)"
    return None


def check_state_dict(model, state_dict, path, flag, flag_names):
    """Raise a one-line UserError when `state_dict` does not fit `model` exactly."""
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ckpt_shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [k for k in model_shapes if k not in ckpt_shapes]
    unexpected = [k for k in ckpt_shapes if k not in model_shapes]
    reshaped = [k for k in model_shapes if k in ckpt_shapes and model_shapes[k] != ckpt_shapes[k]]
    if not (missing or unexpected or reshaped):
        return
    found, wanted = checkpoint_kind(ckpt_shapes), checkpoint_kind(model_shapes)
    if found != wanted and found and wanted:  # another stage's checkpoint: no flag would make it fit
        raise UserError(f"checkpoint {path!r} (--{flag}) holds the weights of {found}, not of {wanted}: "
                        f"give --{flag} a checkpoint of that stage")
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:2])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:2])})")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} keys of another shape (first: {k} is "
                     f"{list(ckpt_shapes[k])} in the checkpoint, {list(model_shapes[k])} in the model)")
    guess = likely_flag(model_shapes, ckpt_shapes, flag_names)
    raise UserError(f"checkpoint {path!r} (--{flag}) does not fit the model flags: "
                    f"{'; '.join(parts)}; the flag that most likely differs: --{guess}")


def load_model_weights(model, path, flag, flag_names):
    """Load a checkpoint into `model` strictly, or fail with one line naming the likely flag."""
    state_dict = load_state_dict(path, flag)
    check_state_dict(model, state_dict, path, flag, flag_names)
    model.load_state_dict(state_dict)
    return model
