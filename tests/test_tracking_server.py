"""`harness run` against a real MLflow tracking server on localhost (not the embedded store)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness.cli import app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tmp_path: Path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "artifacts"),
         "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.skip("mlflow server could not start here")
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.skip("mlflow server did not answer within 90 s")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_run_logs_to_a_tracking_server(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    result = CliRunner().invoke(app, ["run", "quickstart", "--tracking-uri", server, "--set", "epochs=1"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("quickstart")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`harness.kind` = 'variant'")
    assert run.info.status == "FINISHED" and "test_acc" in run.data.metrics
    assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the embedded store
