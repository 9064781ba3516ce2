"""
Paths the flags name, checked before any work: "did you mean ..." when a close path exists;
a writable folder probed before a run starts; a lock that keeps two live runs out of one
folder.
"""

import difflib
import errno
import fcntl
import os

from .errors import UserError


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


def _require(path, flag, hint, kind, is_kind, other, is_other):
    if not path:
        raise UserError(f"--{flag} is required" + (f"; {hint}" if hint else ""))
    if is_other(path):
        raise UserError(f"{path!r} (--{flag}) is a {other}, a {kind} is expected")
    if not is_kind(path):
        raise _missing(path, flag, kind, hint)
    return path


def require_file(path, flag=None, hint=None):
    """Return `path` if it is a file; otherwise raise a UserError naming the flag."""
    return _require(path, flag, hint, "file", os.path.isfile, "directory", os.path.isdir)


def require_dir(path, flag=None, hint=None):
    """Return `path` if it is a directory; otherwise raise a UserError naming the flag."""
    return _require(path, flag, hint, "directory", os.path.isdir, "file", os.path.isfile)


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
