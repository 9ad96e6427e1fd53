"""The one signal path: SIGTERM, SIGHUP and SIGUSR1 stop a command the way Ctrl-C does.

`kill PID`, `timeout`, systemd and batch schedulers (SLURM sends SIGTERM, or SIGUSR1 with
`--signal`, before preempting a job) send SIGTERM; a closed terminal or ssh session sends SIGHUP.
Their default action ends the process at once, leaving its MLflow runs RUNNING forever. Inside
`stop_signals_as_interrupt` each raises `Terminated` (a KeyboardInterrupt naming the signal)
instead, so every handler that marks runs KILLED and keeps checkpoints for Ctrl-C covers them.
`lifecycle.ended_on_error`, which every run-opening command enters, installs it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from harness.errors import Terminated

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGUSR1") if hasattr(signal, name))
_stopped: str | None = None  # the stop signal received inside the outermost block, if any
_depth = 0


def raise_if_stopped() -> None:
    """Raise `Terminated` again for a stop signal already received: one that lands while a
    finalizer runs (SQLAlchemy's, a `__del__`) is printed as "Exception ignored" and lost, and
    the command would train on. The train loop calls this once per step."""
    if _stopped is not None:
        raise Terminated(_stopped)


@contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """While the block runs (in the main thread), STOP_SIGNALS raise `Terminated`; the previous
    handlers come back after it, so nested blocks (a trial inside a study) restore in order.
    Elsewhere than the main thread Python cannot install handlers: signals are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        global _stopped
        _stopped = signal.Signals(signum).name
        raise Terminated(_stopped)

    global _depth, _stopped
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _stopped = None  # the next command in this process (a notebook's) starts clean
        for sig, old in previous.items():
            signal.signal(sig, old)
