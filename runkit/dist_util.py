"""
The process group of a run, from whichever launcher started it (its environment says which):

- torchrun / torch elastic: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT;
- SLURM's srun: SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS), the
  first host of SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST) as the master, MASTER_PORT or a
  port derived from SLURM_JOB_ID;
- an MPI launcher (mpiexec / mpirun, PMI_SIZE and the like): through mpi4py, which is
  imported only then, so a machine without it runs single-process and under torchrun.

Each process then joins one torch.distributed group: NCCL on GPUs (one GPU per process, by
its local rank), gloo on CPUs. A launcher's variables that contradict each other are a
one-line UserError; a rank that cannot reach the others within RUNKIT_DIST_TIMEOUT_S seconds
(default 300) says so and exits non-zero. Started by none of them, a script runs as a single
process and nothing is initialised. Also keep_freed_memory, a process setting for CPU
training.
"""

import atexit
import contextlib
import ctypes
import ctypes.util
import datetime
import os
import re
import socket
import sys
import tempfile

import torch as th
import torch.distributed as dist

from .errors import UserError

# Environment variables by which MPI launchers announce the world size.
_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_VAR = "RUNKIT_DIST_TIMEOUT_S"


def _launched_world_size(env=os.environ):
    for var in _MPI_SIZE_VARS:
        if env.get(var):
            return _whole_number(env, var)
    return 1


def require_single_process(stage):
    """
    Refuse a launch as one of several processes for a stage that runs as one (it never calls
    setup_dist): each copy would do the whole work and write the same files. A plain call
    inside an sbatch allocation (SLURM_NTASKS > 1 but no srun step) is a single process, and
    so is one whose launcher variables are incomplete or malformed (it never reads them).
    """
    try:
        launched = launcher_of()
    except UserError:
        return
    if launched is None or launched[3] <= 1:
        return
    name, world = launched[0], launched[3]
    if name == "SLURM" and not os.environ.get("SLURM_STEP_NUM_TASKS"):
        return
    var = {"torchrun": "WORLD_SIZE", "SLURM": "SLURM_STEP_NUM_TASKS"}.get(name) or next(
        v for v in _MPI_SIZE_VARS if os.environ.get(v))
    raise UserError(f"{stage} runs as one process, but {name} started it as one of {world} ({var}={world}): "
                    f"every copy would do the whole work and write the same files; start it without {name}")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _whole_number(env, var, launcher="the launcher"):
    value = env.get(var)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"{launcher} set {var}={value!r}, which is not a whole number") from None


def first_host(nodelist):
    """The first host of a SLURM host list: "gpu[07-09,12],cpu1" -> "gpu07"."""
    first = re.split(r",(?![^\[]*\])", nodelist.strip())[0]
    m = re.match(r"^([^\[]*)\[([^\]]*)\](.*)$", first)
    if not m:
        return first
    prefix, ranges, suffix = m.groups()
    return prefix + ranges.split(",")[0].split("-")[0] + suffix


def launcher_of(env=os.environ):
    """
    (launcher, rank, local_rank, world_size, master_addr, master_port) of the launcher that
    started this process, from its environment; None when none did (a single process).
    MPI's addresses are agreed on over MPI itself (master None here).
    """
    if any(var in env for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK")):
        missing = [var for var in _TORCHRUN_VARS if not env.get(var)]
        if missing:
            given = ", ".join(f"{v}={env[v]}" for v in _TORCHRUN_VARS if env.get(v))
            raise UserError(f"the environment sets {given} but not {', '.join(missing)}: start the run with "
                            f"torchrun, or set all of {', '.join(_TORCHRUN_VARS)}")
        numbers = [_whole_number(env, var, "torchrun") for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")]
        found = ("torchrun", *numbers[:3], env["MASTER_ADDR"], numbers[3])
    elif env.get("SLURM_PROCID") and (env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")):
        size_var = "SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"
        world = _whole_number(env, size_var, "SLURM")
        if world <= 1:
            return None
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodes:
            raise UserError("SLURM set SLURM_PROCID but no SLURM_JOB_NODELIST: cannot tell the ranks where to meet")
        if env.get("MASTER_PORT"):
            port = _whole_number(env, "MASTER_PORT", "the environment")
        else:  # the same on every rank without talking: derived from the job
            port = 20000 + _whole_number(env, "SLURM_JOB_ID", "SLURM") % 20000 if env.get("SLURM_JOB_ID") else 29500
        found = ("SLURM", _whole_number(env, "SLURM_PROCID", "SLURM"),
                 _whole_number(env, "SLURM_LOCALID", "SLURM") if env.get("SLURM_LOCALID") else 0,
                 world, first_host(nodes), port)
    elif _launched_world_size(env) > 1:
        return ("MPI", None, None, _launched_world_size(env), None, None)
    else:
        return None
    name, rank, local_rank, world, _, port = found
    if world < 1:
        raise UserError(f"{name} gives a world size of {world}; it should be at least 1")
    if not 0 <= rank < world:
        raise UserError(f"{name} gives rank {rank} in a world of {world} processes; ranks run from 0 to {world - 1}")
    if local_rank < 0 or not 0 < port < 65536:
        raise UserError(f"{name} gives local rank {local_rank} and port {port}; neither can be")
    return found


def _timeout_s():
    value = os.environ.get(TIMEOUT_VAR, "300")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise UserError(f"{TIMEOUT_VAR}={value!r} should be a number of seconds above 0")
    return seconds


@contextlib.contextmanager
def _native_stderr_quiet():
    """
    c10d's C++ retry and timeout messages go straight to file descriptor 2, a dozen lines per
    failed connection; within the block they go to a temporary file instead (the failure
    itself is reported as one line).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def setup_dist():
    """
    Join the process group of the launcher that started this process (torchrun, SLURM,
    mpiexec); returns (is_distributed, rank). A single process: (False, 0), nothing set up.
    """
    if dist.is_initialized():
        return True, dist.get_rank()
    found = launcher_of()
    if found is None:
        return False, 0
    name, rank, local_rank, world, master, port = found
    timeout = _timeout_s()
    if name == "MPI":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED)
        rank, local_rank, world = comm.rank, node_comm.Get_rank(), comm.size
        single_node = node_comm.Get_size() == comm.size
        master = comm.bcast("127.0.0.1" if single_node else socket.gethostbyname(socket.getfqdn()), root=0)
        port = comm.bcast(_free_port() if comm.rank == 0 else None, root=0)
    backend = "nccl" if th.cuda.is_available() else "gloo"
    if backend == "nccl":
        th.cuda.set_device(local_rank % th.cuda.device_count())
    os.environ.update(MASTER_ADDR=master, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(local_rank))
    try:
        with _native_stderr_quiet():
            dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, OSError) as e:  # torch's DistNetworkError / DistStoreError are RuntimeErrors
        raise UserError(f"rank {rank} of {world} ({name}) could not reach the other ranks at {master}:{port} within "
                        f"{timeout:g} s ({str(e).splitlines()[0][:160]}); check the launcher, or set "
                        f"{TIMEOUT_VAR}") from None
    # Without this, gloo's threads abort the process at interpreter exit.
    atexit.register(dist.destroy_process_group)
    return True, rank


def keep_freed_memory():
    """
    Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.
    By default blocks of more than a few MB are returned on free, so a CPU step that
    allocates its activations afresh page-faults all of them in again. On the 2-core test
    machine that was 1,700 faults per step of a stack of 4 MNIST networks (40 ms per step
    instead of 31) and 4,100 for a stack of 5; an evaluation pass took 2.4x as long. Freed
    memory up to about 1 GB then stays with the process. Returns whether the setting took
    (False off glibc, e.g. macOS or musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    # Both are set: setting either one alone turns off glibc's adaptive thresholds.
    return bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, 1 << 30))


def get_rank():
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier():
    if dist.is_initialized():
        dist.barrier()


def dev():
    """The device of this process: its GPU when there is one, else the CPU."""
    if th.cuda.is_available():
        return th.device("cuda", th.cuda.current_device())
    return th.device("cpu")


def device_name():
    """What dev() is, in words, for a report's timings: the GPU's name, or cpu_name()."""
    if th.cuda.is_available():
        return th.cuda.get_device_name(th.cuda.current_device())
    return cpu_name()


def cpu_name():
    """This machine's CPU in a report's words: its core count."""
    return f"CPU ({os.cpu_count()} cores)"


def shard(items):
    """This rank's share of `items` (round robin), so that no item is done twice."""
    return items[get_rank()::get_world_size()]


def sync_params(params):
    """Broadcast parameters from rank 0 so that every rank starts from the same weights."""
    if not dist.is_initialized():
        return
    for p in params:
        with th.no_grad():
            dist.broadcast(p, 0)


def all_reduce_sum(value):
    """Sum a Python number over ranks."""
    if not dist.is_initialized():
        return value
    t = th.tensor(float(value), dtype=th.float64, device=dev() if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.item()
