"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working folder with its own MLflow store, checkpoints and experiments (quickstart)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # in-process runs set it globally
    monkeypatch.setenv("HARNESS_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("HARNESS_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "quickstart.py").write_text((REPO / "experiments" / "quickstart.py").read_text())
    return tmp_path
