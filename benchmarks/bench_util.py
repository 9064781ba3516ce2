"""Small helpers the benchmark scripts share."""

import contextlib
import os
import statistics
import time

import torch as th


def sync(device):
    """Wait for the device's queued work, so that wall-clock times cover it."""
    if device.type == "cuda":
        th.cuda.synchronize(device)


def seconds_per_call(fn, calls, warmup, device):
    """Mean wall-clock seconds of fn() over `calls` calls after `warmup` untimed ones, the device's work included."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


def device_name(device):
    return th.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {th.get_num_threads()} threads"


def round_ratios(numerators, denominators):
    """
    Per round, numerators[i] / denominators[i], and their median (a speed-up: the reference's
    times over ours, or our rates over the reference's). A round's two timings are taken back
    to back, so a machine whose speed drifts during the run (a shared VM) biases these less than
    the ratio of each side's best round, which may come from different minutes of the run. The
    benchmarks print both.
    """
    ratios = [n / d for n, d in zip(numerators, denominators)]
    return ratios, statistics.median(ratios)


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (the C++ side too): torch.profiler's tracer prints start/stop lines there."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
