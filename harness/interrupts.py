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
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from harness.errors import Terminated

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGUSR1") if hasattr(signal, name))
_stopped: str | None = None  # the stop signal received inside the outermost block, if any
_depth = 0


def raise_if_stopped() -> None:
    """Raise `Terminated` again for a stop signal already received: one that lands while a
    finalizer runs (SQLAlchemy's, a `__del__`) is swallowed by Python, and the command would
    train on. The train loop calls this once per step."""
    if _stopped is not None:
        raise Terminated(_stopped)


def _keep_lost_interrupts(
    previous: Callable[[sys.UnraisableHookArgs], object],
) -> Callable[[sys.UnraisableHookArgs], None]:
    """An unraisable hook that records a Ctrl-C or stop signal swallowed by a finalizer (for
    `raise_if_stopped`) instead of printing its traceback as "Exception ignored"; every other
    unraisable exception goes to the hook that was there before."""

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        global _stopped
        error = unraisable.exc_value
        if isinstance(error, KeyboardInterrupt):
            _stopped = _stopped or (error.signal if isinstance(error, Terminated) else "SIGINT")
            return
        previous(unraisable)

    return hook


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
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _keep_lost_interrupts(previous_hook)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _stopped = None  # the next command in this process (a notebook's) starts clean
        sys.unraisablehook = previous_hook
        for sig, old in previous.items():
            signal.signal(sig, old)
