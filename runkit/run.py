"""
How a stage ends and how it stops:

- `run_main` ends a run with one line on stderr: a `UserError` (a mistake the user can fix)
  or an OSError (naming the flag whose path failed) with exit status 2, a pre-emption
  (`Preempted`: SIGTERM / SIGUSR1 or a time limit, work saved) with exit status 75, an
  interruption (Ctrl-C, SIGINT: work saved where a loop was running) with exit status 130;
- `stop_signals` turns SIGTERM / SIGUSR1 / SIGINT into a flag that a loop checks at its safe
  points (`check_stop`), where it saves and raises Preempted;
- library warnings (PIL's, torch's) go to stdout and the log, once each, so that stderr holds
  only the run's own one-line error.
"""

import contextlib
import dataclasses
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
import threading
import warnings

from . import logger
from .errors import EXIT_USER_ERROR, UserError
from .flags import flag_of_path

# sysexits.h's EX_TEMPFAIL ("try again later"): stopped by SIGTERM / SIGUSR1 (or --run_time)
# after saving; the same command (training: with --resume_checkpoint latest) continues.
EXIT_PREEMPTED = 75
# The shell's status for a process ended by SIGINT (128 + 2): a user's Ctrl-C saves like a
# pre-emption but is not one, so a wrapper that requeues on 75 does not requeue it.
EXIT_INTERRUPTED = 130
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


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


def _warning_to_log(message, category, filename, lineno, file=None, line=None):
    """A library's warning, once, on stdout and in the log (never on stderr, which holds the one-line error)."""
    del filename, lineno, file, line
    text = str(message).strip().splitlines()
    logger.warn_once(f"{category.__name__}: {text[0] if text else ''}")


def run_main(main=None, *, distributed=False):
    """
    Run `main()`. A UserError or an OSError ends it with one line on stderr and exit status 2;
    a pre-emption with one line and exit status 75 (EXIT_PREEMPTED), or 130 (EXIT_INTERRUPTED)
    when the stop was a SIGINT (Ctrl-C), also one that came before any loop listened.
    A stage that runs on several processes says so (`@run_main(distributed=True)`); every
    other stage refuses a launch as one of several (dist_util.require_single_process).
    """
    if main is None:
        return functools.partial(run_main, distributed=distributed)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        prog = os.path.basename(sys.argv[0])
        shown, warnings.showwarning = warnings.showwarning, _warning_to_log
        in_main_thread = threading.current_thread() is threading.main_thread()  # signals need it
        handlers = ({s: signal.signal(s, _raise_on_stop_signal) for s in (*STOP_SIGNALS, FORWARDED_STOP)}
                    if in_main_thread else {})
        try:
            if not distributed and _LAUNCHER_VARS & set(os.environ):
                from .dist_util import require_single_process  # torch, only where a launcher may be
                require_single_process(prog)
            return main(*args, **kwargs)
        except UserError as e:
            sys.stderr.write(f"{prog}: error: {e}\n")
            sys.exit(EXIT_USER_ERROR)
        except OSError as e:
            sys.stderr.write(f"{prog}: error: {os_error_line(e)}\n")
            sys.exit(EXIT_USER_ERROR)
        except Preempted as e:
            sys.stderr.write(f"{prog}: stopped: {e}\n")
            sys.exit(EXIT_INTERRUPTED if stop_requested() == "SIGINT" else EXIT_PREEMPTED)
        finally:
            warnings.showwarning = shown
            for s, handler in handlers.items():
                signal.signal(s, handler)

    return wrapper


# the variables by which dist_util.launcher_of may find a launcher
_LAUNCHER_VARS = {"WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_PROCID", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                  "MV2_COMM_WORLD_SIZE", "PMIX_SIZE"}


# ---------------------------------------------------------------------------------------
# Stopping on SIGTERM / SIGUSR1 / SIGINT
# ---------------------------------------------------------------------------------------

_stop = {"signal": None, "depth": 0}
# What a process that runs others (the MNIST sweep) forwards to them: a stop request that
# never counts as the "second signal" below, so a signal sent to the whole process group
# and its forwarded copy do not kill a worker that is saving.
FORWARDED_STOP = signal.SIGUSR2


def _raise_on_stop_signal(signum, frame):
    """Outside the loops that save at a stop: end at once (the files written so far are whole)."""
    del frame
    _stop["signal"] = signal.Signals(signum).name
    raise Preempted(f"{_stop['signal']} outside a loop that saves; every file written so far is complete "
                    f"(atomic writes), and the same command continues or starts again")


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
    Within the block SIGTERM / SIGUSR1 / SIGINT only set a flag (`stop_requested`) that the loop
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
# Stages run as child processes (the studies)
# ---------------------------------------------------------------------------------------

def run_children(commands, cwd=None, env=None, names=None):
    """
    Run `commands` side by side and wait for all of them; returns their stdout texts. A stop
    signal to this process is passed on to the children (as FORWARDED_STOP, which never
    counts as their second signal: a Ctrl-C reaches them too), they save and stop, and
    Preempted is raised; a child stopped by itself the same. A child that fails otherwise is a
    UserError with its last stderr line. Output goes to files, never to pipes that can fill.
    """
    names = names or [os.path.basename(c[1] if len(c) > 1 else c[0]) for c in commands]
    jobs = [Job(f"{i}", c, name=n) for i, (c, n) in enumerate(zip(commands, names))]
    done = run_queue(jobs, slots=len(jobs), cwd=cwd, env=env)
    return [done[job.key]["stdout"] for job in jobs]


@dataclasses.dataclass
class Job:
    """A child process of run_queue: its key, command, the keys it must wait for, a name for messages, its env."""

    key: str
    command: list
    needs: tuple = ()
    name: str = ""
    env: dict = None


def run_queue(jobs, slots, cwd=None, env=None, on_done=None):
    """
    Run the jobs, at most `slots` at a time, each once the jobs it needs have finished; returns
    {key: {"stdout", "seconds"}} (its own wall time), and hands each to on_done(key, record) as
    it finishes (what a stop or a failure later would not return). Stops and failures as
    run_children: a stop is passed on to the running children and no new one starts; a failure
    lets the running ones finish, starts no new one, and is raised as a UserError with its last
    stderr line.
    """
    with stop_signals(), contextlib.ExitStack() as files:
        pending, running, done, failed, stopped = list(jobs), {}, {}, [], []
        forwarded = False

        def last_line(f):
            f.seek(0)
            return (f.read().strip().splitlines() or ["(no output)"])[-1]

        try:
            while pending or running:
                if stop_requested() and not forwarded:
                    for proc, *_ in running.values():
                        with contextlib.suppress(ProcessLookupError):
                            proc.send_signal(FORWARDED_STOP)
                    forwarded = True
                if not (forwarded or failed or stopped):
                    for job in [j for j in pending if all(n in done for n in j.needs)]:
                        if len(running) >= slots:
                            break
                        out = files.enter_context(tempfile.TemporaryFile("w+"))
                        err = files.enter_context(tempfile.TemporaryFile("w+"))
                        proc = subprocess.Popen(job.command, cwd=cwd, env=job.env or env, stdout=out, stderr=err,
                                                text=True)
                        running[job.key] = (proc, out, err, time.time(), job)
                        pending.remove(job)
                if not running:
                    break  # what is left waits for a job that failed or stopped
                for key, (proc, out, err, start, job) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[key]
                    name = job.name or key
                    if proc.returncode in (EXIT_PREEMPTED, EXIT_INTERRUPTED):
                        stopped.append(name)
                    elif proc.returncode != 0:
                        failed.append(f"{name} failed ({proc.returncode}): {last_line(err)}")
                    else:
                        out.seek(0)
                        done[key] = {"stdout": out.read(), "seconds": time.time() - start}
                        if on_done:
                            on_done(key, done[key])
                if running:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        next(iter(running.values()))[0].wait(timeout=0.2)
        finally:
            for proc, *_ in running.values():  # an error in this process: no child outlives it
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if forwarded or stopped:
            raise Preempted(f"{stop_requested() or 'a stage stopped'}: {', '.join(stopped) or 'the running stages'} "
                            f"saved their work and stopped; the same command continues")
        if failed:
            raise UserError(failed[0])
        if pending:  # waiting for a job that is not in the queue: the caller's mistake
            raise ValueError(f"jobs {[j.key for j in pending]} need jobs that are not in the queue")
        return done
