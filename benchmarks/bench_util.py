"""Small helpers the benchmark scripts share."""

import torch as th


def sync(device):
    """Wait for the device's queued work, so that wall-clock times cover it."""
    if device.type == "cuda":
        th.cuda.synchronize(device)


def device_name(device):
    return th.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {th.get_num_threads()} threads"
