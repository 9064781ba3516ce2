import os
import subprocess
import sys

import pytest
import torch as th

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

# Two cores: keep each test process to them and quiet.
th.set_num_threads(2)


def files_in(path):
    """The files of a folder, without hidden ones (a run's .lock)."""
    return sorted(f for f in os.listdir(path) if not f.startswith("."))


def fixture_path(name):
    return os.path.join(FIXTURES, name)


def run_script(args, cwd=None, check=True, env=None, timeout=600):
    """Run a project script as a user would; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    if args[0].endswith(".py"):
        args = [sys.executable, os.path.join(ROOT, args[0]) if not os.path.isabs(args[0]) else args[0], *args[1:]]
    proc = subprocess.run(args, cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def assert_user_error(proc, *needles):
    """A user mistake: exit status 2, one line on stderr naming what is wrong, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path
