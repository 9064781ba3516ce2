"""
Logging for the stage scripts: messages to stdout and `log.txt`; key/value diagnostics to
`log.txt`, `progress.csv` and TensorBoard; images to TensorBoard. Only rank 0 writes.

    logger.configure(log_dir)
    logger.log("text")
    logger.logkv_mean("loss", loss)      # averaged until the next dumpkvs
    logger.dumpkvs(step)
    logger.write_image("train_images", uint8_chw, step)
"""

import csv
import os
import sys
import time
from collections import defaultdict

import numpy as np

DEFAULT_FORMATS = ("stdout", "log", "csv", "tensorboard")


def _to_number(value):
    if hasattr(value, "item"):
        value = value.item()
    return value


class _TextOutput:
    """Messages, and optionally key/value tables, written to a stream."""

    def __init__(self, stream, owns=False, show_kvs=True):
        self.stream = stream
        self.owns = owns
        self.show_kvs = show_kvs

    def write_kvs(self, kvs, step):
        if not self.show_kvs:
            return
        rows = [(str(k), f"{v:<8.4g}" if isinstance(v, float) else str(v)) for k, v in kvs.items()]
        if step is not None:
            rows.insert(0, ("step", str(step)))
        kw = max(len(k) for k, _ in rows)
        vw = max(len(v) for _, v in rows)
        line = "-" * (kw + vw + 7)
        body = "\n".join(f"| {k:<{kw}} | {v:<{vw}} |" for k, v in rows)
        self.write_text(f"{line}\n{body}\n{line}")

    def write_text(self, text):
        if self.stream is sys.stdout:
            from tqdm import tqdm  # keeps progress bars intact

            tqdm.write(text, file=sys.stdout)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self):
        if self.owns:
            self.stream.close()


class _CSVOutput:
    """progress.csv; a key that appears later widens the header (the file is rewritten)."""

    def __init__(self, path):
        self.path = path
        self.keys = []
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, newline="") as f:
                self.keys = next(csv.reader(f), [])
        self.file = open(path, "a", newline="")

    def write_kvs(self, kvs, step):
        row = dict(kvs)
        if step is not None:
            row = {"step": step, **row}
        new_keys = [k for k in row if k not in self.keys]
        if new_keys:
            self.file.close()
            old_rows = []
            if os.path.exists(self.path):
                with open(self.path, newline="") as f:
                    old_rows = list(csv.DictReader(f))
            self.keys += new_keys
            with open(self.path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.keys)
                writer.writeheader()
                writer.writerows(old_rows)
            self.file = open(self.path, "a", newline="")
        csv.DictWriter(self.file, fieldnames=self.keys).writerow(row)
        self.file.flush()

    def close(self):
        self.file.close()


class _TensorBoardOutput:
    def __init__(self, log_dir):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir)

    def write_kvs(self, kvs, step):
        for k, v in kvs.items():
            if isinstance(v, (int, float, np.floating, np.integer)):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def write_image(self, tag, image, step):
        image = np.asarray(image)
        fmt = "HWC" if image.ndim == 3 and image.shape[-1] in (1, 3) else "CHW"
        if image.ndim == 2:
            fmt = "HW"
        self.writer.add_image(tag, image, step, dataformats=fmt)
        self.writer.flush()

    def close(self):
        self.writer.close()


class Logger:
    def __init__(self, log_dir=None, format_strs=("stdout",)):
        self.dir = log_dir
        self.outputs = {}
        self.name2sum = defaultdict(float)
        self.name2count = defaultdict(int)
        self.warned = set()
        self.early = []  # what a logger without a folder said: configure() puts it into log.txt
        for fmt in format_strs:
            if fmt == "stdout":
                # The terminal gets messages; the progress bar shows the loss, and the
                # key/value tables go to log.txt.
                self.outputs[fmt] = _TextOutput(sys.stdout, show_kvs=False)
            elif fmt == "log":
                self.outputs[fmt] = _TextOutput(open(os.path.join(log_dir, "log.txt"), "a"), owns=True)
            elif fmt == "csv":
                self.outputs[fmt] = _CSVOutput(os.path.join(log_dir, "progress.csv"))
            elif fmt == "tensorboard":
                self.outputs[fmt] = _TensorBoardOutput(log_dir)
            else:
                raise ValueError(f"unknown log format {fmt!r}")

    def logkv(self, key, value):
        self.name2sum[key] = _to_number(value)
        self.name2count[key] = 1

    def logkv_mean(self, key, value):
        self.name2sum[key] += _to_number(value)
        self.name2count[key] += 1

    def dumpkvs(self, step=None):
        kvs = {k: self.name2sum[k] / self.name2count[k] if self.name2count[k] > 1 else self.name2sum[k]
               for k in self.name2sum}
        if kvs:
            for out in self.outputs.values():
                out.write_kvs(kvs, step)
        self.name2sum.clear()
        self.name2count.clear()
        return kvs

    def log(self, *args):
        text = " ".join(str(a) for a in args)
        if self.dir is None:
            self.early.append(text)
        for fmt in ("stdout", "log"):
            if fmt in self.outputs:
                self.outputs[fmt].write_text(text)

    def warn_once(self, message):
        if message not in self.warned:
            self.warned.add(message)
            self.log(f"warning: {message}")

    def write_image(self, tag, image, step):
        if "tensorboard" in self.outputs:
            self.outputs["tensorboard"].write_image(tag, image, step)

    def close(self):
        for out in self.outputs.values():
            out.close()
        self.outputs = {}


_current = Logger()


def configure(log_dir, format_strs=DEFAULT_FORMATS, rank=0):
    """
    Send the log to `log_dir` (created if needed). Other ranks write only their messages,
    to `{log_dir}/rank{r}/log.txt`.
    """
    global _current
    _current.close()
    early = _current.early if _current.dir is None else []
    if rank != 0:
        rank_dir = os.path.join(log_dir, f"rank{rank}")
        os.makedirs(rank_dir, exist_ok=True)
        _current = Logger(rank_dir, format_strs=("log",))
        return _current
    os.makedirs(log_dir, exist_ok=True)
    _current = Logger(log_dir, format_strs=format_strs)
    if "log" in _current.outputs:  # the checks before the folder existed, already on stdout
        for text in early:
            _current.outputs["log"].write_text(text)
    _current.log(f"logging to {log_dir} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
    return _current


def get_current():
    return _current


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar on stdout (stderr is kept for the one-line errors), shown on rank 0 only."""
    from tqdm.auto import tqdm

    from .dist_util import get_rank

    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", get_rank() != 0)
    return tqdm(iterable, file=sys.stdout, **kwargs)


def get_dir():
    return _current.dir


def log(*args):
    _current.log(*args)


def warn_once(message):
    _current.warn_once(message)


def logkv(key, value):
    _current.logkv(key, value)


def logkv_mean(key, value):
    _current.logkv_mean(key, value)


def dumpkvs(step=None):
    return _current.dumpkvs(step)


def write_image(tag, image, step):
    _current.write_image(tag, image, step)
