"""Start `harness ui` through the real CLI entry point, for test_ui.py and test_ui_browser.py."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ADDRESS = re.compile(r"MLflow UI for (?P<uri>\S+) at (?P<url>http://\S+) \(Ctrl-C to stop\)")


def harness_command() -> list[str]:
    """The installed `harness` console script next to this interpreter, else `python -m harness.cli`."""
    script = Path(sys.executable).with_name("harness")
    return [str(script)] if script.exists() else [sys.executable, "-m", "harness.cli"]


@dataclass
class UiProcess:
    """A running `harness ui` and everything it printed so far."""

    proc: subprocess.Popen
    url: str = ""
    startup_timeout: float = 150
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue = field(default_factory=queue.Queue)

    def read_until(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Collect output lines until one matches `pattern`; fails with the output so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None and self._queue.empty():
                    break
                continue
            if line is None:
                break
            self.lines.append(line)
            if match := pattern.search(line):
                return match
        raise AssertionError(f"`harness ui` did not print {pattern.pattern!r} within {timeout:.0f} s "
                             f"(exit code {self.proc.poll()}); output:\n" + "".join(self.lines))

    def wait_ready(self) -> str:
        """Wait for the address line; returns (and sets) the UI's URL."""
        self.url = self.read_until(ADDRESS, self.startup_timeout)["url"]
        return self.url

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C: SIGINT to `harness ui` only (the server is its own child); returns its exit code."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=timeout)
        self.drain()
        return code

    def drain(self) -> str:
        """All output, including what came after the address line."""
        while True:
            try:
                line = self._queue.get(timeout=2 if self.proc.poll() is not None else 0.1)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return "".join(self.lines)


def start_harness(cwd: Path, *args: str) -> UiProcess:
    """`harness ARGS` started in `cwd`, its output (stdout and stderr) collected line by line."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # A shell that started pytest in the background leaves SIGINT ignored, and an ignored signal
    # stays ignored across exec: catch it here for the moment of the spawn (a caught signal is
    # reset to the default in the child), so the test's Ctrl-C reaches the command as a real one.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([*harness_command(), *args], cwd=cwd, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        signal.signal(signal.SIGINT, previous)
    started = UiProcess(proc)

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            started._queue.put(line)
        started._queue.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return started


@contextmanager
def harness_ui(cwd: Path, *args: str, startup_timeout: float = 150, wait: bool = True) -> Iterator[UiProcess]:
    """`harness ui --port 0 ARGS` in `cwd`, yielded once it printed its address (at once with `wait=False`:
    then call `wait_ready`); always stopped afterwards."""
    ui = start_harness(cwd, "ui", "--port", "0", *args)
    proc = ui.proc
    ui.startup_timeout = startup_timeout
    try:
        if wait:
            ui.wait_ready()
        yield ui
    finally:
        if proc.poll() is None:  # SIGTERM: `harness ui` stops its server, then exits
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
