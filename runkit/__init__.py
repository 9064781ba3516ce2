"""
The run kit beneath every stage script (both experiments, the studies, the benchmarks):
what a stage needs to start, stop and write safely, and nothing about models or data.

    errors.py           UserError: a mistake the user can fix (one line, exit status 2)
    flags.py            the flag parser: spelt-out flags, "did you mean", numeric rules that
                        each script declares beside its defaults
    run.py              run_main (one-line errors, exit 2 / 75 / 130), stop signals and check_stop
    paths.py            path checks with "did you mean", writable folders, run-folder locks
    fileio.py           atomic writes, run-folder records, restricted unpickling, checkpoint
                        loading that names the flag (or the other stage) behind a mismatch
    finite.py           the one guard against NaN and inf in weights, outputs and scores
    logger.py           logging (text, CSV, TensorBoard) and progress bars
    dist_util.py        the process group (MPI launchers) and this process's device
    mixed_precision.py  fp16 training with fp32 master weights and loss scaling
    training.py         the one training loop: checkpoints, resume, SIGTERM, DDP, fp16

The names a stage script uses most are importable from the package itself.
"""

from .errors import EXIT_USER_ERROR, UserError
from .flags import (
    AT_LEAST_ONE,
    AT_LEAST_TWO_SAMPLES,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    UNSET_OR_AT_LEAST_ONE,
    FlagParser,
    Rule,
    add_dict_to_argparser,
    args_to_dict,
    check_choice,
    check_flags,
    comma_list,
    create_argparser,
    explicit_flags,
    list_flags,
    multiple_of,
    str2bool,
)
from .paths import closest_path, lock_folder, require_dir, require_file, require_writable_dir
from .run import (
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    FORWARDED_STOP,
    STOP_SIGNALS,
    Preempted,
    check_stop,
    ignore_stop_signals,
    os_error_line,
    run_main,
    stop_requested,
    stop_signals,
)

__all__ = [
    "EXIT_INTERRUPTED", "EXIT_PREEMPTED", "EXIT_USER_ERROR", "FORWARDED_STOP", "STOP_SIGNALS", "AT_LEAST_ONE",
    "AT_LEAST_TWO_SAMPLES", "FRACTION", "NON_NEGATIVE", "POSITIVE", "UNSET_OR_AT_LEAST_ONE", "FlagParser", "Preempted",
    "Rule", "UserError",
    "add_dict_to_argparser", "args_to_dict", "check_choice", "check_flags", "check_stop", "closest_path",
    "comma_list", "create_argparser", "explicit_flags", "ignore_stop_signals", "list_flags", "lock_folder",
    "multiple_of", "os_error_line", "require_dir", "require_file", "require_writable_dir", "run_main",
    "stop_requested", "stop_signals", "str2bool",
]
