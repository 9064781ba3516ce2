"""
The flag parser of every stage script: errors are one line (exit status 2); flags must be
spelt out (argparse would read `--max` as `--max_step`), a misspelt one gets "did you mean";
numeric flags are checked by the rules that each script declares beside its defaults
(`create_argparser(defaults, rules)`, rules such as `AT_LEAST_ONE`), before any work.
"""

import argparse
import difflib
import math
import os
import re
import sys
from typing import Callable, NamedTuple

from .errors import EXIT_USER_ERROR, UserError


class Rule(NamedTuple):
    """What a numeric flag may be: `ok(value)`, and the words an error uses for it."""

    ok: Callable[[float], bool]
    allowed: str


AT_LEAST_ONE = Rule(lambda v: v >= 1, "at least 1")
NON_NEGATIVE = Rule(lambda v: v >= 0, "0 or more")
POSITIVE = Rule(lambda v: v > 0, "above 0")
UNSET_OR_AT_LEAST_ONE = Rule(lambda v: v == -1 or v >= 1, "-1 (unset) or at least 1")
FRACTION = Rule(lambda v: 0 <= v < 1, "in [0, 1)")
AT_LEAST_TWO_SAMPLES = Rule(lambda v: v >= 2, "at least 2 (one sample has no variance)")


def multiple_of(name, divisor_name):
    """A check across two flags: --{name} must be a multiple of --{divisor_name}."""

    def check(args):
        value, divisor = getattr(args, name, None), getattr(args, divisor_name, None)
        if isinstance(value, int) and isinstance(divisor, int) and divisor and value % divisor:
            raise UserError(f"--{name} {value} is not a multiple of --{divisor_name} {divisor}")

    return check


def comma_list(value, flag, item=str, choices=None, example=None):
    """
    A comma-separated flag as a tuple of item(...) values. A blank item ("1,,2", ","), one that
    `item` cannot read, or one outside `choices` is a UserError naming the flag; an empty
    string is the empty tuple (a flag whose empty value means "the defaults" says so itself,
    and `list_flags` below refuses an empty value the user typed).
    """
    text = str(value).strip()
    if not text:
        return ()
    parts = [p.strip() for p in text.split(",")]
    hint = f", e.g. {example}" if example else ""
    if not all(parts):
        raise UserError(f"--{flag} {value!r} has an empty item; give a comma-separated list{hint}")
    try:
        values = tuple(item(p) for p in parts)
    except ValueError:
        raise UserError(f"--{flag} {value!r} should be a comma-separated list of {item.__name__}s{hint}") from None
    for v in values:
        if choices is not None and v not in choices:
            raise UserError(f"--{flag}: {v!r} is not one of: {', '.join(map(str, choices))}")
    return values


def list_flags(*names):
    """
    A check that refuses an empty value typed for one of these list flags (`--levels ""`):
    their empty default means "the defaults", hours of work nobody asked for when it was
    meant as a list. Leaving the flag out keeps the defaults.
    """

    def check(args):
        typed = getattr(args, "_explicit", set())
        for name in names:
            if name in typed and not str(getattr(args, name, "")).strip(" ,"):
                raise UserError(f"--{name} {getattr(args, name)!r} is an empty list; give values, or leave the "
                                f"flag out for its defaults")

    return check


def check_flags(args, rules, checks=()):
    """A UserError for the first flag of `args` that breaks its rule, then for the first failed check."""
    for name, rule in rules.items():
        value = getattr(args, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not rule.ok(value):
            raise UserError(f"--{name} {value} should be {rule.allowed}")
    for check in checks:
        check(args)


class FlagParser(argparse.ArgumentParser):
    """
    ArgumentParser whose errors are a single line (no usage dump), exit status 2; flags must
    be spelt out (no prefix matching), a misspelt one gets a "did you mean", and the flags
    are checked by `rules` ({name: Rule}) and `checks` (functions of the parsed args).
    """

    def __init__(self, *args, rules=None, checks=(), **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.rules, self.checks = dict(rules or {}), tuple(checks)

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
            # the checks may ask which flags were typed (list_flags); the namespace keeps no trace of it
            parsed._explicit = explicit_flags(self, args)
            check_flags(parsed, self.rules, self.checks)
        except UserError as e:
            self.error(str(e))
        finally:
            vars(parsed).pop("_explicit", None)
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


def str2bool(v):
    """Parse a boolean flag: True/False, yes/no, t/f, y/n, 1/0 (any case)."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {v!r}")


def finite_float(v):
    """Parse a float flag; nan and inf are refused (no rule or check could mean them)."""
    try:
        value = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number expected, got {v!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"a finite number expected, got {v!r}")
    return value


def add_dict_to_argparser(parser, default_dict):
    """Add one `--key` flag per entry of `default_dict`, typed by its default value."""
    for k, v in default_dict.items():
        v_type = type(v)
        if v is None:
            v_type = str
        elif isinstance(v, bool):
            v_type = str2bool
        elif isinstance(v, float):
            v_type = finite_float
        parser.add_argument(f"--{k}", default=v, type=v_type)


def args_to_dict(args, keys):
    return {k: getattr(args, k) for k in keys}


def create_argparser(defaults, rules=None, checks=(), description=None):
    """A FlagParser with one `--key` flag per entry of `defaults`, checked by `rules` and `checks`."""
    unknown = set(rules or {}) - set(defaults)
    if unknown:
        raise ValueError(f"rules for flags that are not defaults: {sorted(unknown)}")
    parser = FlagParser(description=description, rules=rules, checks=checks)
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


def check_choice(value, choices, flag):
    if value not in choices:
        raise UserError(f"--{flag} {value!r} is not one of: {', '.join(choices)}")
    return value
