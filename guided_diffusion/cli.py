"""
What every stage script shares at its front: a flag parser whose errors are one line, the
`UserError` that ends a run with one line and exit status 2, and path checks that say
"did you mean ..." when a close path exists.
"""

import argparse
import difflib
import functools
import os
import sys


class UserError(Exception):
    """A mistake the user can fix (a path, a flag); reported as one line, exit status 2."""


class FlagParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single line (no usage dump), exit status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def run_main(main):
    """Run `main()`, turning a UserError into one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            prog = os.path.basename(sys.argv[0])
            sys.stderr.write(f"{prog}: error: {e}\n")
            sys.exit(2)

    return wrapper


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
