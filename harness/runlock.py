"""A run held by one process at a time: `harness run` locks its parent run for its lifetime, so a
second `--resume` of the same run refuses instead of training it twice.

The lock is `fcntl.flock` on `<checkpoint folder>/<run id>.lock`: the kernel releases it when
the holding process ends, however it ends (kill -9 included), so a dead run never leaves a
stale lock. It guards processes that share the checkpoint folder (one machine, or a shared file
system that supports flock). Where `fcntl` does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.errors import ResumeError, WriteError, os_error_reason

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


@contextmanager
def run_lock(run_id: str, folder: Path) -> Iterator[None]:
    """Hold run `run_id` for the block; a HarnessError if another live process holds it."""
    if fcntl is None:
        yield
        return
    path = Path(folder) / f"{run_id}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held open for the whole block
    except OSError as exc:
        raise WriteError(f"Cannot create the run's lock file ({os_error_reason(exc)}); choose a writable "
                         "checkpoint folder with HARNESS_CHECKPOINT_DIR.") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            raise ResumeError(f"Run {run_id} is being trained by another process"
                              f"{f' (pid {holder})' if holder else ''}; "
                              "wait for it to end (a second resume of the same run is refused).") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
