"""`harness run` against a real MLflow tracking server on localhost (not the embedded store)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from helpers import experiment_runs, free_port, start_mlflow_server
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness.cli import app


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("server")
    port = free_port()
    proc = start_mlflow_server(tmp_path, port)
    yield f"http://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_tracker_reads_and_writes_through_the_server(server: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind of call the commands make, through one Tracker on the server's URI; the
    process-wide MLflow URI is never touched, also not by model logging."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import numpy as np
    import torch

    from harness.tracking import FAILURE_TAG, KIND_TAG, Tracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")
    before = mlflow.get_tracking_uri()
    tracker = Tracker.open(server)
    exp_id = tracker.ensure_experiment("tracker-test", "about it")
    assert tracker.ensure_experiment("tracker-test") == exp_id and tracker.find_experiment("tracker-test") == exp_id
    parent = tracker.start_run(exp_id, "parent", {KIND_TAG: "run"})
    child = tracker.start_run(exp_id, "child", {"k": "v"}, parent_id=parent)
    tracker.log_params(child, {"lr": 0.1, "long": "x" * 7000})
    tracker.log_epochs(child, [(1, {"train_loss": 0.5}, 1000), (2, {"train_loss": 0.25}, 2000)])
    tracker.log_metrics(child, {"test_acc": 0.9}, step=2)
    tracker.set_tags(child, {"t": "1"})
    tracker.log_text(child, "hello", "notes/a.txt")
    tracker.log_dict(child, {"classes": ["a", "b"]}, "classes.json")
    tracker.log_array(child, np.eye(2), "arr.npy")
    figure, _ = plt.subplots()
    tracker.log_figure(child, figure, "plots/f.png")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    tracker.log_model(child, model, np.zeros((2, 1, 2, 2), dtype=np.float32))
    tracker.end_run(child, "FAILED", "because")

    assert tracker.metric_history(child, "train_loss") == [(1, 0.5), (2, 0.25)]
    assert [r.run_id for r in tracker.children(exp_id, parent)] == [child]
    assert tracker.latest_parent_run(exp_id).run_id == parent
    assert tracker.find_run("0" * 32) is None
    downloaded = tracker.download_artifact(child, "notes/a.txt", tmp_path / "dl")
    assert downloaded is not None and downloaded.read_text() == "hello"
    assert tracker.download_artifact(child, "notes/missing.txt", tmp_path / "dl") is None
    assert mlflow.get_tracking_uri() == before  # nothing process-wide was changed

    client = MlflowClient(server)
    run = client.get_run(child)
    assert run.info.status == "FAILED" and run.data.tags[FAILURE_TAG] == "because"
    assert run.data.params["lr"] == "0.1" and run.data.params["long"].endswith("...")
    assert run.data.metrics["test_acc"] == 0.9 and run.data.tags["t"] == "1"
    assert {"notes", "classes.json", "arr.npy", "plots"} <= {a.path for a in client.list_artifacts(child)}
    (logged,) = client.search_logged_models(experiment_ids=[exp_id])  # in the run's experiment, on the server
    assert logged.source_run_id == child and logged.name == "model"
    assert MlflowClient(before).get_experiment_by_name("tracker-test") is None  # nothing went to the process default


def test_run_logs_to_a_tracking_server(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    result = CliRunner().invoke(app, ["run", "quickstart", "--tracking-uri", server, "--set", "epochs=1"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(server)
    (run,) = experiment_runs("quickstart", "variant", uri=server)
    assert run.info.status == "FINISHED" and "test_acc" in run.data.metrics
    assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the embedded store
