"""The one exception type for mistakes a user can fix (bad names, values, missing data)."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class HarnessError(Exception):
    """A user-facing error: its message is one sentence saying what is wrong and how to fix it.

    The CLI prints it on one line and exits non-zero, without a traceback.
    """


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
