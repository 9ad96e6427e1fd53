"""The real MNIST sample in ../shared/data/mnist-t10k, written out in torchvision's raw layout."""

from __future__ import annotations

import gzip
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness.cli import app

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"


def idx_header_split(raw: bytes, start: int, stop: int) -> bytes:
    """Rows [start, stop) of an IDX file, with the count in its header rewritten."""
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    row = 1
    for d in dims[1:]:
        row *= d
    body = raw[4 + 4 * ndim :]
    header = raw[:4] + (stop - start).to_bytes(4, "big") + raw[8 : 4 + 4 * ndim]
    return header + body[start * row : stop * row]


def write_mnist_raw(root: Path, train: int = 8000) -> Path:
    """Images 0..train-1 as MNIST's training set, the rest as its test set (torchvision layout)."""
    raw_dir = root / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for kind in ("images", "labels"):
        suffix = "idx3" if kind == "images" else "idx1"
        raw = gzip.decompress((SAMPLE / f"t10k-{kind}-{suffix}-ubyte.gz").read_bytes())
        total = int.from_bytes(raw[4:8], "big")
        (raw_dir / f"train-{kind}-{suffix}-ubyte").write_bytes(idx_header_split(raw, 0, train))
        (raw_dir / f"t10k-{kind}-{suffix}-ubyte").write_bytes(idx_header_split(raw, train, total))
    return root


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
