"""`harness ui` without a browser: the command line it builds, port errors, and a real server it starts."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from helpers import busy_port, http_get
from mlflow import MlflowClient
from uiserver import harness_command, harness_ui

from harness import ui, uris
from harness.errors import HarnessError


def test_server_command_serves_the_store_and_mlruns_of_harness_run(tmp_path: Path) -> None:
    planned = ui.plan("postgresql://me:s3cr3t@db/mlflow", "127.0.0.1", 0, cwd=tmp_path)
    command, env = planned.command, planned.env
    args = dict(zip(command[4::2], command[5::2]))  # after: python -m mlflow server
    assert command[1:4] == ["-m", "mlflow", "server"]
    # The store travels in the environment `mlflow server` reads, never on its command line (`ps`).
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://me:s3cr3t@db/mlflow"
    assert "--backend-store-uri" not in command and not any("s3cr3t" in part for part in command)
    # the absolute ./mlruns that MLflow's client uses for `harness run` in that folder
    assert env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] == str(tmp_path / "mlruns")
    assert "--default-artifact-root" not in command
    assert args["--host"] == "127.0.0.1" and int(args["--port"]) > 0 and args["--workers"] == "1"
    assert "--allowed-hosts" not in command  # MLflow's defaults accept localhost
    allowed = ui.allowed_hosts("192.0.2.7", 5001).split(",")
    assert {"192.0.2.7", "192.0.2.7:5001", "localhost", "127.0.0.1"} <= set(allowed)
    assert ui.allowed_hosts("0.0.0.0", 5001) is None and ui.allowed_hosts("localhost", 5001) is None
    assert ui.artifact_root("postgresql://u:p@db/mlflow", tmp_path) == str(tmp_path / "mlruns")
    assert ui.artifact_root("file:///data/mlruns", tmp_path) == "file:///data/mlruns"  # a file store keeps its own
    assert ui.artifact_root("store", tmp_path) == str(tmp_path / "store")


def test_addresses_and_redaction() -> None:
    assert ui.UiServer("x", "x", "0.0.0.0", 5000, []).url == "http://127.0.0.1:5000"
    assert ui.UiServer("x", "x", "::1", 5001, []).url == "http://[::1]:5001"
    assert uris.redact("postgresql://me:secret@db/mlflow") == "postgresql://me:***@db/mlflow"
    assert uris.redact("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert ui.is_remote("https://mlflow.example.com") and not ui.is_remote("sqlite:///mlflow.db")


def test_bad_port_values_are_one_sentence_errors() -> None:
    with pytest.raises(HarnessError, match="not a TCP port"):
        ui.pick_port("127.0.0.1", 70000)
    with pytest.raises(HarnessError, match="^host 'no such host.invalid'"):
        ui.pick_port("no such host.invalid", 0)


def test_port_in_use_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default store in tmp_path
    with busy_port() as port:
        result = subprocess.run([*harness_command(), "ui", "--port", str(port)], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120, env=env, check=False)
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"error: Port {port} on 127.0.0.1 is already in use"), result.stderr
    assert "pick another port" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server's naming
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


def test_a_tracking_server_uri_starts_nothing_and_prints_its_address() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        printed: list[str] = []
        ui.serve(f"http://user:pw@127.0.0.1:{port}", echo=printed.append)
        expected = (f"MLflow UI for http://user:***@127.0.0.1:{port} is that tracking server's own: "
                    f"open http://127.0.0.1:{port} (nothing to start here).")
        assert printed == [expected]
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(HarnessError, match="does not answer"):
        ui.serve(f"http://127.0.0.1:{port}", echo=printed.append)


def _command_lines() -> list[str]:
    """Every process's command line, as `ps` shows them (Linux /proc; empty elsewhere)."""
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # the process ended meanwhile
            continue
    return lines


def test_ui_serves_the_store_and_artifacts_then_stops_on_ctrl_c(workdir: Path) -> None:
    # A run with an artifact, logged the way `harness run` logs (embedded store, ./mlruns).
    client = MlflowClient()
    exp_id = client.create_experiment("ui_check")
    run_id = client.create_run(exp_id, run_name="variant_a").info.run_id
    client.log_metric(run_id, "test_acc", 0.75)
    client.log_text(run_id, "hello from harness", "notes/hello.txt")
    client.set_terminated(run_id)
    assert client.get_run(run_id).info.artifact_uri.startswith(str(workdir / "mlruns"))

    with harness_ui(workdir) as server:
        assert f"MLflow UI for sqlite:///{workdir}/mlflow.db at http://127.0.0.1:" in server.lines[0]
        assert http_get(server.url + "/health") == b"OK"
        store = f"sqlite:///{workdir}/mlflow.db"
        assert store not in " ".join(_command_lines()), "the store URI is visible in `ps`"
        found = json.loads(http_get(server.url + "/ajax-api/2.0/mlflow/experiments/search?max_results=100"))
        assert "ui_check" in {e["name"] for e in found["experiments"]}
        # the UI's own artifact endpoints find the file where the client logged it
        listing = json.loads(http_get(server.url + f"/ajax-api/2.0/mlflow/artifacts/list?run_id={run_id}&path=notes"))
        assert [f["path"] for f in listing["files"]] == ["notes/hello.txt"]
        query = urllib.parse.urlencode({"path": "notes/hello.txt", "run_uuid": run_id})
        assert http_get(server.url + f"/get-artifact?{query}") == b"hello from harness"

        port = int(server.url.rsplit(":", 1)[1])
        assert server.interrupt() == 0
        output = server.drain()
    assert "MLflow UI stopped." in output and "Traceback" not in output
    ui.pick_port("127.0.0.1", port)  # the server is gone: its port is free again
    assert not (workdir / "mlartifacts").exists()
