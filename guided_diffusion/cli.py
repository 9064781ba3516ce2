"""
What every stage script shares at its front and at its end:

- a flag parser whose errors are one line: no abbreviated flags (argparse would read
  `--max` as `--max_step`), "did you mean" for a misspelt one, and every numeric flag
  checked by name (NUMERIC_RULES) before any work;
- `run_main`, which ends a run with one line on stderr: a `UserError` (a mistake the user
  can fix) or an OSError (naming the flag whose path failed) with exit status 2, a
  pre-emption (`Preempted`: SIGTERM / SIGUSR1, work saved) with exit status 75;
- path checks that say "did you mean ..." when a close path exists, and a lock that keeps
  two live runs out of one folder.
"""

import argparse
import contextlib
import difflib
import errno
import fcntl
import functools
import os
import re
import signal
import sys

EXIT_USER_ERROR = 2
# sysexits.h's EX_TEMPFAIL ("try again later"): stopped by SIGTERM / SIGUSR1 (or --run_time)
# after saving; the same command (training: with --resume_checkpoint latest) continues.
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class UserError(Exception):
    """A mistake the user can fix (a path, a flag); reported as one line, exit status 2."""


class Preempted(Exception):
    """A run stopped by a signal (or its time limit) after saving its work; exit status 75."""


# Numeric flags, checked by name in every script that has them: (test, what is allowed).
_AT_LEAST_ONE = (lambda v: v >= 1, "at least 1")
_NON_NEGATIVE = (lambda v: v >= 0, "0 or more")
_POSITIVE = (lambda v: v > 0, "above 0")
_HEADS = (lambda v: v == -1 or v >= 1, "-1 (unset) or at least 1")
NUMERIC_RULES = {
    **dict.fromkeys(("batch_size", "diffusion_steps", "eval_batch_size", "in_channels", "input_dim", "large_size",
                     "small_size", "log_interval", "max_step", "model_channels", "num_channels", "num_heads",
                     "num_res_blocks", "num_samples", "num_samples_per_image", "out_channels", "save_interval",
                     "stack", "workers", "num_per_class", "num_eval", "dims", "num_pcs"), _AT_LEAST_ONE),
    **dict.fromkeys(("image_interval", "lr_anneal_steps", "max_cache_gb", "max_tensorboard_batches",
                     "max_tensorboard_images", "num_grid_images", "num_workers", "weight_decay", "fp16_scale_growth",
                     "seed", "local_rank", "num_train", "mean_model_step", "var_model_step", "wall_time_s", "eta"),
                    _NON_NEGATIVE),
    **dict.fromkeys(("lr", "length_scale"), _POSITIVE),
    **dict.fromkeys(("num_head_channels", "num_heads_upsample"), _HEADS),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "alpha": (lambda v: 0 <= v <= 1, "in [0, 1] (the probability kept on the true class)"),
}


def check_numeric_flags(args):
    """A UserError for the first numeric flag of `args` that breaks its rule (NUMERIC_RULES)."""
    for name, (ok, allowed) in NUMERIC_RULES.items():
        value = getattr(args, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            raise UserError(f"--{name} {value} should be {allowed}")
    large, small = getattr(args, "large_size", None), getattr(args, "small_size", None)
    if isinstance(large, int) and isinstance(small, int) and large % small:
        raise UserError(f"--large_size {large} is not a multiple of --small_size {small}")


class FlagParser(argparse.ArgumentParser):
    """
    ArgumentParser whose errors are a single line (no usage dump), exit status 2; flags must
    be spelt out (no prefix matching), a misspelt one gets a "did you mean", and numeric
    flags are checked (NUMERIC_RULES).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            known = [s for s in self._option_string_actions if s.startswith("--")]
            for token in unknown.group(1).split():
                flag = token.split("=", 1)[0]
                if flag.startswith("--"):
                    # what argparse's prefix matching would have read it as, else the closest spelling
                    prefixed = [s for s in known if s.startswith(flag)]
                    guesses = (difflib.get_close_matches(flag, prefixed, n=3, cutoff=0)
                               or difflib.get_close_matches(flag, known, n=1, cutoff=0.6))
                    message = f"unknown flag {flag}" + (f"; did you mean {' or '.join(guesses)}?" if guesses else "")
                    break
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(EXIT_USER_ERROR)

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        try:
            check_numeric_flags(parsed)
        except UserError as e:
            self.error(str(e))
        _PATH_FLAGS.clear()
        _PATH_FLAGS.update({k: v for k, v in vars(parsed).items() if isinstance(v, str) and v})
        return parsed


# The string flags of the parsed command line: an OSError names the flag whose path failed.
_PATH_FLAGS = {}


def flag_of_path(path):
    """(flag, value) of the parsed flag whose path contains `path` (the longest), or None."""
    if not path:
        return None
    target = os.path.abspath(os.fsdecode(path))
    best = None
    for flag, value in _PATH_FLAGS.items():
        candidate = os.path.abspath(value)
        if target == candidate or target.startswith(candidate.rstrip(os.sep) + os.sep):
            if best is None or len(candidate) > len(os.path.abspath(best[1])):
                best = (flag, value)
    return best


def os_error_line(e):
    """An OSError as one line: what failed, on which path, under which flag."""
    what = e.strerror or str(e)
    if e.filename is None:
        return what
    found = flag_of_path(e.filename)
    where = f" (--{found[0]} {found[1]!r})" if found else ""
    return f"{what}: {os.fsdecode(e.filename)!r}{where}"


def run_main(main):
    """
    Run `main()`. A UserError or an OSError ends it with one line on stderr and exit status 2;
    a pre-emption with one line and exit status 75 (EXIT_PREEMPTED).
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        prog = os.path.basename(sys.argv[0])
        try:
            return main(*args, **kwargs)
        except UserError as e:
            sys.stderr.write(f"{prog}: error: {e}\n")
            sys.exit(EXIT_USER_ERROR)
        except OSError as e:
            sys.stderr.write(f"{prog}: error: {os_error_line(e)}\n")
            sys.exit(EXIT_USER_ERROR)
        except Preempted as e:
            sys.stderr.write(f"{prog}: stopped: {e}\n")
            sys.exit(EXIT_PREEMPTED)

    return wrapper


# ---------------------------------------------------------------------------------------
# Stopping on SIGTERM / SIGUSR1
# ---------------------------------------------------------------------------------------

_stop = {"signal": None, "depth": 0}
# What a process that runs others (the MNIST sweep) forwards to them: a stop request that
# never counts as the "second signal" below, so a signal sent to the whole process group
# and its forwarded copy do not kill a worker that is saving.
FORWARDED_STOP = signal.SIGUSR2


def _on_stop_signal(signum, frame):
    del frame
    if _stop["signal"] is not None and signum != FORWARDED_STOP:
        signal.signal(signum, signal.SIG_DFL)  # a second signal: stop now, the default way
        os.kill(os.getpid(), signum)
    if _stop["signal"] is None:
        _stop["signal"] = signal.Signals(signum).name


@contextlib.contextmanager
def stop_signals():
    """
    Within the block SIGTERM / SIGUSR1 only set a flag (`stop_requested`) that the loop
    checks at its next safe point (a step, a batch), where it saves and raises Preempted;
    a second one stops the process at once.
    """
    if _stop["depth"] == 0:
        _stop["signal"] = None
    _stop["depth"] += 1
    previous = {s: signal.signal(s, _on_stop_signal) for s in (*STOP_SIGNALS, FORWARDED_STOP)}
    try:
        yield
    finally:
        _stop["depth"] -= 1
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_requested():
    """The name of the stop signal received (e.g. "SIGTERM"), or None."""
    return _stop["signal"]


def ignore_stop_signals(*_):
    """For helper processes (data loader workers): leave stopping to the main process."""
    for s in (*STOP_SIGNALS, FORWARDED_STOP):
        signal.signal(s, signal.SIG_IGN)


def check_stop(what):
    """Raise Preempted at a loop's safe point when a stop signal came; `what` says what is saved."""
    if stop_requested():
        raise Preempted(f"{stop_requested()}: {what}")


# ---------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------

_held_locks = {}  # real path -> open lock file, held until the process ends


def lock_folder(path, flag):
    """
    Hold `{path}/.lock` for the life of the process: a second live run into the same folder
    is refused with one line (the lock goes with the process, also when it is killed).
    """
    os.makedirs(path, exist_ok=True)
    key = os.path.realpath(path)
    if key in _held_locks:
        return _held_locks[key]
    handle = open(os.path.join(path, ".lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"--{flag} {path!r} is in use by a run that is still going ({owner}); wait for it "
                        f"to finish or choose another --{flag}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
    handle.flush()
    _held_locks[key] = handle
    return handle


def require_writable_dir(path, flag):
    """Create `path` if needed and check that files can be written there (before any work)."""
    if not path:
        raise UserError(f"--{flag} is required")
    if os.path.isfile(path):
        raise UserError(f"{path!r} (--{flag}) is a file, a directory is expected")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to --{flag} {path!r}: {e.strerror or e}") from None
    return path


def str2bool(v):
    """Parse a boolean flag: True/False, yes/no, t/f, y/n, 1/0 (any case)."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {v!r}")


def add_dict_to_argparser(parser, default_dict):
    """Add one `--key` flag per entry of `default_dict`, typed by its default value."""
    for k, v in default_dict.items():
        v_type = type(v)
        if v is None:
            v_type = str
        elif isinstance(v, bool):
            v_type = str2bool
        parser.add_argument(f"--{k}", default=v, type=v_type)


def args_to_dict(args, keys):
    return {k: getattr(args, k) for k in keys}


def create_argparser(defaults, description=None):
    parser = FlagParser(description=description)
    add_dict_to_argparser(parser, defaults)
    return parser


def explicit_flags(parser, argv=None):
    """The names of the flags given on the command line (as opposed to defaults)."""
    sentinel = object()
    shadow = FlagParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            shadow.add_argument(*action.option_strings, dest=action.dest, default=sentinel,
                                type=action.type)
    parsed, _ = shadow.parse_known_args(argv)
    return {k for k, v in vars(parsed).items() if v is not sentinel}


def closest_path(path):
    """
    An existing path that `path` most likely meant, or None. Looks at the first missing
    component: a sibling that is a prefix of it (a missing "/", as in the seed's
    `logs/sr_mean/64_256mean_model_args.pkl`) or a sibling spelt like it
    (`data/imagenet` for `data/sr_imagenet`), keeping the rest of the path.
    """
    parts = [p for p in os.path.normpath(path).split(os.sep) if p]
    parent = os.sep if os.path.isabs(path) else "."
    for i, part in enumerate(parts):
        if not os.path.exists(os.path.join(parent, part)):
            break
        parent = os.path.join(parent, part)
    else:
        return None
    missing, rest = parts[i], parts[i + 1:]
    siblings = sorted(os.listdir(parent)) if os.path.isdir(parent) else []
    candidates = [
        os.path.join(parent, s, missing[len(s):], *rest)
        for s in siblings
        if missing.startswith(s) and len(missing) > len(s) and os.path.isdir(os.path.join(parent, s))
    ]
    candidates += [
        os.path.join(parent, s, *rest)
        for s in difflib.get_close_matches(missing, siblings, n=3, cutoff=0.6)
    ]
    for candidate in candidates:
        if os.path.exists(candidate):
            return os.path.relpath(candidate) if not os.path.isabs(path) else candidate
    return None


def _missing(path, flag, kind, hint):
    message = f"{kind} {path!r} (--{flag}) does not exist" if flag else f"{kind} {path!r} does not exist"
    close = closest_path(path) if path else None
    if close:
        message += f"; did you mean {close!r}?"
    elif hint:
        message += f"; {hint}"
    return UserError(message)


def require_file(path, flag=None, hint=None):
    """Return `path` if it is a file; otherwise raise a UserError naming the flag."""
    if not path:
        raise UserError(f"--{flag} is required" + (f"; {hint}" if hint else ""))
    if os.path.isdir(path):
        raise UserError(f"{path!r} (--{flag}) is a directory, a file is expected")
    if not os.path.isfile(path):
        raise _missing(path, flag, "file", hint)
    return path


def require_dir(path, flag=None, hint=None):
    """Return `path` if it is a directory; otherwise raise a UserError naming the flag."""
    if not path:
        raise UserError(f"--{flag} is required" + (f"; {hint}" if hint else ""))
    if os.path.isfile(path):
        raise UserError(f"{path!r} (--{flag}) is a file, a directory is expected")
    if not os.path.isdir(path):
        raise _missing(path, flag, "directory", hint)
    return path


def check_choice(value, choices, flag):
    if value not in choices:
        raise UserError(f"--{flag} {value!r} is not one of: {', '.join(choices)}")
    return value
