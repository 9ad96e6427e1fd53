"""The exception types for mistakes a user can fix: `HarnessError` and a few subclasses saying
which kind of mistake (a bad value, an unknown name, broken data, an unusable store...).

The same messages reach Python callers and the CLI, so a message names a parameter by its Python API
name (`repeat`, `nproc_per_node`, `top_k`, `min_lr`), which the CLI spells as the flag with dashes
(`--repeat`, `--nproc-per-node`; `run_id` is `--run`, `backend` is `--dist-backend`), and writes a
suggested value as the parameter and value ("use device 'cpu'", "use repeat=K"); only a whole
command a user is told to run (`harness compare X --run ID`) spells CLI flags.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class HarnessError(Exception):
    """A user-facing error: its message is one sentence saying what is wrong and how to fix it.

    The CLI prints it on one line and exits non-zero, without a traceback. The subclasses below
    say which kind of mistake it is; catching `HarnessError` catches them all.
    """


class ConfigError(HarnessError):
    """A value that cannot work: a config field or `--set` override out of range or unparsable, a
    command-line option (or option pair) refused, a schedule or setting this machine cannot run."""


class UnknownNameError(HarnessError):
    """A name that names nothing: not in a registry (model, dataset, optimizer, metric, format...;
    the message suggests the closest registered name), or an experiment, variant, study, run id or
    registered model that is not found, or has no finished record to act on yet."""


class ExperimentFileError(HarnessError):
    """An experiment file (or `Experiment` definition) that cannot be used: it fails to import,
    defines no `experiment`, one with another name, or no valid variants."""


class DataError(HarnessError):
    """Data that is missing, corrupt or unreadable: a dataset or image folder, an image file,
    downloaded files or pretrained weights that cannot be fetched or read."""


class TrackingError(HarnessError):
    """The MLflow tracking store or the Optuna storage cannot be used: unreachable, refused, read-only
    or locked, or a read or write to it failed; the message is one line naming the store or path.

    `unreachable` is True when the store did not answer at all (a tracking server that is down):
    training can go on and the record be completed later with `--resume`."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class ModelFormatError(HarnessError):
    """A logged model that harness will not or cannot load: refused as unsafe (see
    `harness.model_format.UntrustedModelError`), not an MLflow model, or without the metadata
    (classes, input shape) harness needs."""


class ResumeError(HarnessError):
    """A run that cannot be resumed: nothing interrupted to resume, other options than it was started
    with, a checkpoint missing, damaged or trained with other settings, or the run held by another process."""


class WriteError(HarnessError):
    """A file or folder harness must write cannot be written: read-only, full disk, permission
    denied, or a file where a folder is needed (checkpoints, lock files, reports, comparisons)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGUSR1 (a scheduler preempting the job, a launcher stopping its processes):
    handled like Ctrl-C (checkpoints kept, runs marked KILLED); `signal` names which."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal = signal_name


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name), for one-line errors."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def retry(fn: Callable[[], T], attempts: int = 3, delay: float = 1.0,
          when: Callable[[Exception], bool] = lambda exc: True) -> T:
    """Call `fn`, retrying on any exception (`when` it says so); for writes that race when several
    workers make the same thing at the same moment (a fresh database's schema, a new dataset)."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not when(exc):
                raise
            time.sleep(delay * (attempt + 1))
    raise AssertionError("unreachable")


# What a failed write most often means, in the words a user acts on.
_OS_REASONS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EDQUOT: "disk quota exceeded"}


def os_error_reason(exc: OSError) -> str:
    """'<path>: no space left on the device' (or the system's own words for other errors)."""
    reason = _OS_REASONS.get(exc.errno or -1) or exc.strerror or first_line(exc)
    path = exc.filename if exc.filename is not None else None
    return f"{path}: {reason}" if path else reason
