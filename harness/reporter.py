"""Where the library's progress and status lines go: one reporter, picked by the caller.

Library code never prints; it calls `status(...)`, `warning(...)` or opens `bars()` on the
current reporter, which `harness.run`, `harness.tune`, `harness.lr_find` and `harness.predict`
install for the length of the call (`reporter=` in the API; the CLI uses "auto"):

- "rich": a live progress display on a terminal (bars per epoch / per lr-find step);
- "plain": one line per epoch, trial or event (what a log file or a pipe should get);
- "notebook": in Jupyter, one text line per bar updated in place (no widgets needed);
- "silent": no status and no progress; warnings still go to stderr (they say something is off);
- "auto" (the default): notebook in a Jupyter kernel, rich when stdout is a terminal, else plain.

A `Reporter` subclass can be passed instead of a name (e.g. to collect lines in a test or a GUI).
The current reporter is process-wide, not per thread: `harness tune --n-jobs 2` runs trials in
threads that must report to the same place.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

NAMES = ("auto", "rich", "plain", "notebook", "silent")
ENV = "HARNESS_REPORTER"  # what a launched worker process reports with (set by the process that started it)


class Bars:
    """A group of progress bars shown while one loop runs (an epoch's batches, lr-find's steps).
    `close()` it when the loop ends, also after an error, so a terminal is left clean. The base
    class shows nothing: reporters that are not `live` hand out this one."""

    def add(self, description: str, total: int | None = None) -> int:
        """A new bar; returns its handle for `update`."""
        return 0

    def update(self, bar: int, *, completed: int | None = None, total: int | None = None,
               stats: str | None = None) -> None:
        """Move `bar` to `completed` of `total` steps and show `stats` beside it."""

    def close(self) -> None:
        """Stop the display."""


class Reporter:
    """Plain lines: status on stdout (or `stream`), warnings on stderr, no live bars (`live` is
    False, so the loops report a line per epoch instead of per batch)."""

    name = "plain"  # what a launched worker process is told to report with (see `worker_name`)
    live = False

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream  # None: sys.stdout as it is when a line is written

    def status(self, message: str) -> None:
        """One line about what is happening (a run resumed, a trial ended, an epoch's metrics)."""
        print(message, file=self.stream or sys.stdout, flush=True)

    def warning(self, message: str) -> None:
        """One line about something the user should know is off; training goes on."""
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def bars(self) -> Bars:
        """A new group of progress bars (see `Bars`)."""
        return Bars()


class SilentReporter(Reporter):
    """No status and no progress; warnings still reach stderr."""

    name = "silent"

    def status(self, message: str) -> None:
        pass


class _RichBars(Bars):
    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), transient=False,
        )
        self._progress.start()

    def add(self, description: str, total: int | None = None) -> int:
        return int(self._progress.add_task(description, total=total, stats=""))

    def update(self, bar: int, *, completed: int | None = None, total: int | None = None,
               stats: str | None = None) -> None:
        fields: dict[str, Any] = {} if stats is None else {"stats": stats}
        self._progress.update(bar, completed=completed, total=total, **fields)  # type: ignore[arg-type]

    def close(self) -> None:
        self._progress.stop()


class RichReporter(Reporter):
    """A rich live display on the terminal; status lines print above it."""

    name = "rich"
    live = True

    def bars(self) -> Bars:
        return _RichBars()


def _bar_text(description: str, completed: int, total: int | None, stats: str) -> str:
    if total:
        done = min(max(completed / total, 0.0), 1.0)
        filled = round(done * 30)
        shown = f"[{'#' * filled}{'.' * (30 - filled)}] {completed}/{total}"
    else:
        shown = f"{completed}" if completed else ""
    return "  ".join(part for part in (description, shown, stats) if part)


class _NotebookBars(Bars):
    def __init__(self) -> None:
        self._bars: list[tuple[Any, list[Any]]] = []  # (display handle, [description, completed, total, stats])

    def add(self, description: str, total: int | None = None) -> int:
        from IPython.display import Pretty, display

        state: list[Any] = [description, 0, total, ""]
        # Pretty: shown as the text itself (a str would show as its repr, in quotes).
        handle = display(Pretty(_bar_text(description, 0, total, "")), display_id=True)  # type: ignore[no-untyped-call]
        self._bars.append((handle, state))
        return len(self._bars) - 1

    def update(self, bar: int, *, completed: int | None = None, total: int | None = None,
               stats: str | None = None) -> None:
        handle, state = self._bars[bar]
        for i, value in ((1, completed), (2, total), (3, stats)):
            if value is not None:
                state[i] = value
        if handle is not None:
            from IPython.display import Pretty

            handle.update(Pretty(_bar_text(*state)))  # type: ignore[no-untyped-call]


class NotebookReporter(Reporter):
    """In Jupyter: each bar one output line updated in place (IPython display handles, so no
    widget extension is needed); status lines print below."""

    name = "notebook"
    live = True

    def bars(self) -> Bars:
        return _NotebookBars()


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython with a kernel attached)."""
    if "ipykernel" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def make(choice: str | Reporter = "auto") -> Reporter:
    """The reporter for `choice`: a `Reporter` itself, or one of NAMES ("auto" also follows the
    HARNESS_REPORTER variable a launching process sets for its workers)."""
    if isinstance(choice, Reporter):
        return choice
    if choice not in NAMES:
        from harness.errors import ConfigError

        raise ConfigError(f"reporter must be one of {', '.join(NAMES)} or a harness.Reporter (got {choice!r}).")
    if choice == "auto":
        choice = os.environ.get(ENV, "") if os.environ.get(ENV, "") in NAMES[1:] else (
            "notebook" if in_notebook() else "rich" if sys.stdout.isatty() else "plain")
    return {"rich": RichReporter, "plain": Reporter, "notebook": NotebookReporter,
            "silent": SilentReporter}[choice]()


def worker_name(chosen: Reporter) -> str:
    """What a launched worker process reports with for `chosen`: its name, but plain lines for a
    notebook's (the worker is no kernel; its stdout reaches the notebook as text)."""
    return "plain" if chosen.name == "notebook" else chosen.name


_lock = threading.Lock()
_current: Reporter | None = None


def current() -> Reporter:
    """The reporter installed by the running API call (`using`), else "auto"'s."""
    chosen = _current
    return chosen if chosen is not None else make("auto")


@contextlib.contextmanager
def using(choice: str | Reporter) -> Iterator[Reporter]:
    """Install `choice` as the current reporter for the block; the previous one comes back after."""
    global _current
    chosen = make(choice)
    with _lock:
        before, _current = _current, chosen
    try:
        yield chosen
    finally:
        with _lock:
            _current = before


def status(message: str) -> None:
    """A status line through the current reporter."""
    current().status(message)


def warning(message: str) -> None:
    """A warning line through the current reporter."""
    current().warning(message)
