"""`harness ui` never leaves its `mlflow server` behind: however the command ends (SIGKILL included),
every process of the server tree is gone and the port is closed within seconds (issue 24).

`harness dashboard` serves in its own process (no child server), so it has nothing to orphan.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest
from uiserver import harness_ui

from harness import ui

GONE_WITHIN_S = 15.0

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups and SIGKILL are POSIX")


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes still running. A zombie counts as gone: it runs nothing and holds no port, and
    reaping an orphan is its new parent's (init's) business, not the harness's."""
    alive = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_the_server_tree_dies_with_harness_ui(workdir: Path, sig: signal.Signals) -> None:
    with harness_ui(workdir) as server:
        port = int(server.url.rsplit(":", 1)[1])
        assert ui._answers(server.url + "/health")
        # psutil.Process equality includes the start time, so a reused pid is not mistaken for ours.
        tree = psutil.Process(server.proc.pid).children(recursive=True)
        assert len(tree) >= 2, f"expected `mlflow server` and its worker, got {tree}"
        try:
            os.kill(server.proc.pid, sig)
            server.proc.wait(timeout=60)
            deadline = time.monotonic() + GONE_WITHIN_S
            while (_alive(tree) or _accepts(port)) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in _alive(tree)]
            assert not left, f"still running {GONE_WITHIN_S:.0f} s after {sig.name} of `harness ui`: {left}"
            assert not _accepts(port), f"port {port} still accepts connections after {sig.name}"
        finally:  # a failing run leaves no orphans behind for the rest of the suite
            for proc in _alive(tree):
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
