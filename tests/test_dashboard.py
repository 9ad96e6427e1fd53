"""`harness dashboard`: optuna-dashboard on the study storage of `harness tune`.

The one-line errors run the CLI's `main` in this process (no server is started); the server
tests start the real command in the session's finished quickstart study (`quickstart_store`)
and stop it with Ctrl-C. The browser test skips, saying why, without Playwright or Chromium
(`bash .ci/chromium.sh`); its screenshots go where test_ui_browser.py's do.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from conftest import harness
from helpers import browser_kit, busy_port, cli_error_line, http_get
from uiserver import UiProcess, start_harness

from harness import dashboard
from harness.errors import HarnessError

STUDY = "quickstart-lenet_relu"  # `harness tune quickstart`'s default study name
ADDRESS = re.compile(r"^Optuna dashboard for (?P<storage>\S+) at (?P<url>http://\S+) \(Ctrl-C to stop\)$")
TIMEOUT_MS = 30_000  # optuna-dashboard's React app renders in a few seconds even on a busy 2-core machine
SECRET = "s3cr3t-pw"


def _error_line(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`harness ARGS` through the CLI's `main`: exit 2 and, stdout and stderr together, one `error:` line."""
    return cli_error_line(harness(capsys, *args), with_stdout=True)


def _storage_with_a_study(folder: Path) -> str:
    url = f"sqlite:///{folder}/optuna.db"
    optuna.create_study(study_name="s", storage=url)
    return url


def test_without_optuna_dashboard_one_line_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # `import optuna_dashboard` now fails
    line = _error_line(capsys, "dashboard", "--port", "0")
    assert "optuna-dashboard is not installed" in line and "pip install -e '.[dashboard]'" in line
    assert not re.search(r"pip install\s+['\"]?harness", line), "`harness` on PyPI is an unrelated project"
    assert not (tmp_path / "optuna.db").exists()  # failed before any storage was opened


def test_busy_port_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = _storage_with_a_study(tmp_path)
    with busy_port() as port:
        line = _error_line(capsys, "dashboard", "--storage", storage, "--port", str(port))
    assert line.startswith(f"error: Port {port} on 127.0.0.1 is already in use") and "pick another port" in line
    with pytest.raises(HarnessError, match="not a TCP port"):
        dashboard.open_dashboard(storage, port=70000)


def test_bad_storage_and_study_are_one_line_with_the_password_hidden(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    # Nothing listens on port 1: refused at once (after open_storage's retries, about 3 s).
    code, out, err = harness(capsys, "dashboard", "--port", "0",
                             "--storage", f"postgresql://harness:{SECRET}@127.0.0.1:1/optuna")
    line = cli_error_line((code, out, err), with_stdout=True)
    assert SECRET not in out + err and "postgresql://harness:***@127.0.0.1:1/optuna" in line
    # No storage file here: said so, and no empty optuna.db left behind.
    line = _error_line(capsys, "dashboard", "--port", "0")
    assert "No Optuna storage at optuna.db" in line and "harness tune" in line
    assert not (tmp_path / "optuna.db").exists()
    line = _error_line(capsys, "dashboard", "--port", "0", "--storage", f"journal:{tmp_path}/missing.log")
    assert "missing.log" in line and not (tmp_path / "missing.log").exists()
    storage = _storage_with_a_study(tmp_path)
    line = _error_line(capsys, "dashboard", "--port", "0", "--storage", storage, "--study", "t")
    assert "Unknown study" in line and line.endswith("Choose one of: s.")


def test_addresses() -> None:
    assert dashboard.http_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert dashboard.http_url("::1", 8080) == "http://[::1]:8080"
    assert dashboard.is_local_only("127.0.0.1") and dashboard.is_local_only("localhost")
    assert not dashboard.is_local_only("0.0.0.0")
    assert dashboard.missing_storage_file("sqlite:///:memory:") is None
    assert dashboard.missing_storage_file("postgresql://u:p@db/optuna") is None


@contextmanager
def harness_dashboard(cwd: Path, *args: str, timeout: float = 120) -> Iterator[UiProcess]:
    """`python -m harness dashboard --port 0 ARGS` in `cwd`, yielded once it printed its address."""
    server = start_harness(cwd, "dashboard", "--port", "0", *args)
    proc = server.proc
    try:
        server.url = server.read_until(ADDRESS, timeout)["url"]
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder}/optuna.db")


def test_dashboard_serves_the_study_in_process_and_stops_on_ctrl_c(quickstart_store: Path) -> None:
    study = _study(quickstart_store)
    with harness_dashboard(quickstart_store, "--study", STUDY) as server:
        assert ADDRESS.match(server.lines[0].strip())["storage"] == "sqlite:///optuna.db"  # the default, as tune's
        study_id = int(server.url.rsplit("/", 1)[1])
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith(f"/dashboard/studies/{study_id}")
        base = server.url.split("/dashboard")[0]
        detail = json.loads(http_get(f"{base}/api/studies/{study_id}"))
        assert detail["name"] == STUDY and len(detail["trials"]) == len(study.trials) >= 3
        assert all(t["intermediate_values"] for t in detail["trials"])  # the per-epoch val_acc reports
        # Served in-process: no child process, and the command line is what was typed (no storage added).
        pid = server.proc.pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [arg.decode() for arg in cmdline][-5:] == ["dashboard", "--port", "0", "--study", STUDY]
        children = [p.read_text().split() for p in Path(f"/proc/{pid}/task").glob("*/children")]
        assert not any(children), children
        _reset_connection(base)  # a browser dropping a kept-open connection: no traceback in the terminal
        assert server.interrupt() == 0
        output = server.drain()
    assert output.strip().splitlines()[1:] == ["Optuna dashboard stopped."], output  # the address, then this


def _reset_connection(base_url: str) -> None:
    """Open a connection, send half a request, and reset it (RST, as a closing browser may)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /api/studies HT")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.5)  # the server's request thread sees the reset at once; give it time to (not) report it


def test_dashboard_in_a_browser_lists_trials_and_intermediate_values(quickstart_store: Path) -> None:
    sync_api, chromium, shots = browser_kit()
    trials = _study(quickstart_store).trials
    assert len(trials) >= 3 and all(t.intermediate_values for t in trials)
    with harness_dashboard(quickstart_store, "--study", STUDY) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])  # root in CI
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            page.goto(server.url)  # the study page the command printed
            page.get_by_text(f"{STUDY} (id=", exact=False).first.wait_for()
            page.get_by_text("Intermediate values", exact=True).wait_for()
            for trial in trials:  # the intermediate-values plot's legend: one curve per trial
                page.get_by_text(f"trial #{trial.number}", exact=True).first.wait_for()
            page.screenshot(path=shots / "dashboard_study.png", full_page=True)

            page.goto(server.url + "/trials")
            page.get_by_text(f"{len(trials)} Trials", exact=True).wait_for()
            for trial in trials:
                page.get_by_text(f"Trial {trial.number}", exact=True).first.wait_for()
            page.get_by_text("Intermediate Values", exact=True).first.wait_for()
            page.screenshot(path=shots / "dashboard_trials.png", full_page=True)
        except Exception:
            page.screenshot(path=shots / "dashboard_failure.png", full_page=True)
            raise
        finally:
            browser.close()
        assert server.interrupt() == 0, server.drain()
    output = server.drain()
    assert "Traceback" not in output, output
