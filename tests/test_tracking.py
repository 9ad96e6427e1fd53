"""Epoch metrics are batched into few MLflow writes but never lost; store errors hide passwords."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness import tracking
from harness.callbacks import MlflowEpochLogger
from harness.errors import HarnessError
from harness.train import FitState


def _store(tmp_path: Path) -> tuple[tracking.Tracker, MlflowClient, str]:
    tracker = tracking.Tracker.open(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = tracker.start_run(tracker.ensure_experiment("t"), "r", {})
    return tracker, MlflowClient(tracker.uri), run_id


def test_epoch_logger_batches_writes_until_flushed(tmp_path: Path) -> None:
    tracker, client, run_id = _store(tmp_path)
    logger = MlflowEpochLogger(tracker, run_id, flush_seconds=3600)
    state = FitState()
    for epoch in (1, 2, 3):
        state.epoch = epoch
        logger.on_epoch_end(None, state, {"train_loss": 1.0 / epoch})  # type: ignore[arg-type]
    assert client.get_metric_history(run_id, "train_loss") == []  # buffered: one write for all three
    logger.on_fit_end(None, state, None)  # type: ignore[arg-type]  # what `fit` calls however it ends
    history = client.get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]


def test_epoch_logger_writes_every_epoch_when_epochs_are_long(tmp_path: Path) -> None:
    tracker, client, run_id = _store(tmp_path)
    logger = MlflowEpochLogger(tracker, run_id, flush_seconds=0)
    state = FitState(epoch=1)
    logger.on_epoch_end(None, state, {"train_loss": 0.7})  # type: ignore[arg-type]
    assert [m.value for m in client.get_metric_history(run_id, "train_loss")] == [0.7]


def test_unusable_store_error_hides_the_password() -> None:
    with pytest.raises(HarnessError) as info:
        tracking.Tracker.open("postgresql://me:s3cret@127.0.0.1:9/none")
    message = str(info.value)
    assert "Cannot use MLflow tracking store 'postgresql://me:***@127.0.0.1:9/none'" in message
    assert "s3cret" not in message
