"""
How a stage ends and how it stops:

- `run_main` ends a run with one line on stderr: a `UserError` (a mistake the user can fix)
  or an OSError (naming the flag whose path failed) with exit status 2, a pre-emption
  (`Preempted`: SIGTERM / SIGUSR1 or a time limit, work saved) with exit status 75;
- `stop_signals` turns SIGTERM / SIGUSR1 into a flag that a loop checks at its safe points
  (`check_stop`), where it saves and raises Preempted.
"""

import contextlib
import functools
import os
import signal
import sys

from .errors import EXIT_USER_ERROR, UserError
from .flags import flag_of_path

# sysexits.h's EX_TEMPFAIL ("try again later"): stopped by SIGTERM / SIGUSR1 (or --run_time)
# after saving; the same command (training: with --resume_checkpoint latest) continues.
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """A run stopped by a signal (or its time limit) after saving its work; exit status 75."""


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
