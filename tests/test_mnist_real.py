"""The real MNIST sample in ../shared/data/mnist-t10k, written out in torchvision's raw layout."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness.bench.mnist_sample import SAMPLE_DIR as SAMPLE
from harness.bench.mnist_sample import write_mnist_raw
from harness.cli import app


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real MNIST sample not found at {SAMPLE}")
def test_relu_lenet_reaches_95_percent_on_real_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = write_mnist_raw(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("HARNESS_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    mlflow.set_tracking_uri(uri)
    result = CliRunner().invoke(app, [
        "run", "quickstart", "--data-dir", str(data_dir), "--tracking-uri", uri,
        "--set", "dataset=mnist", "--set", "epochs=3", "--set", "batch_size=64", "--set", "lr=0.05",
    ])
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("quickstart")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`harness.kind` = 'variant'")
    assert run.data.params["dataset"] == "mnist"
    assert run.data.metrics["test_acc"] >= 0.95, run.data.metrics
    print(f"MNIST sample, ReLU LeNet, 3 epochs: test_acc = {run.data.metrics['test_acc']:.4f}")
