"""One meaning of "best" for every consumer, and early stopping that tests the right weights.

Validation results are scripted (the real evaluation runs, then its loss and accuracy are
replaced), so the lowest val_loss and the highest val_acc fall in different epochs on purpose.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import torch
from helpers import experiment_runs, history, steps, write_experiment
from mlflow import MlflowClient
from typer.testing import CliRunner

import harness.train
from harness import checkpoint
from harness.cli import app
from harness.config import TrainConfig
from harness.data import load_data
from harness.lifecycle import STOP_TAG, RunContext, checkpoint_root, open_run, train_variant
from harness.tracking import Tracker
from harness.train import Callback, FitState, Trainer, build_trainer, evaluate

# Epochs 1-3: the lowest val_loss is epoch 2 (0.40), the highest val_acc epoch 3 (0.70).
VAL_LOSS = [0.50, 0.40, 0.45]
VAL_ACC = [0.60, 0.55, 0.70]

EXPERIMENT = '''
from harness.config import TrainConfig
from harness.experiment import Experiment

experiment = Experiment(name="best", description="best-epoch test", variants={
    "net": TrainConfig(model="lenet_relu", dataset="digits", epochs=3, batch_size=32, lr=0.05, train_limit=300),
})
'''


def scripted_validation(losses: list[float], accs: list[float]) -> Callable[..., object]:
    """`harness.train.evaluate` whose validation results follow `losses` / `accs` epoch by epoch."""
    real = evaluate  # the module's own, never an earlier fake
    values: Iterator[tuple[float, float]] = iter(zip(losses, accs))

    def fake(t: Trainer, split: object, model: object = None):  # noqa: ANN202
        result = real(t, split, model)
        if split is t.data.val:
            loss, acc = next(values)
            return dataclasses.replace(result, loss=loss, acc=acc)
        return result

    return fake


def test_every_consumer_reads_best_from_the_best_epoch(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_experiment(workdir, "best", EXPERIMENT)
    monkeypatch.setattr(harness.train, "evaluate", scripted_validation(VAL_LOSS, VAL_ACC))
    result = CliRunner().invoke(app, ["run", "best"])
    assert result.exit_code == 0, result.output

    (run,) = experiment_runs("best", "variant")
    logged = [value for _, value in history(None, run.info.run_id, "val_acc")]
    assert logged == VAL_ACC  # the script reached MLflow as written
    # MLflow metrics: epoch 2 (lowest val_loss) with its own accuracy, not the maximum 0.70.
    assert run.data.metrics["best_epoch"] == 2
    assert run.data.metrics["best_val_acc"] == pytest.approx(0.55)
    assert run.data.metrics["best_val_loss"] == pytest.approx(0.40)
    # `harness run`'s closing table: val acc 0.5500 in the best-epoch 2 row.
    table = result.output[result.output.index("best: 1 variant of run"):]  # after the epoch lines
    assert re.search(r"│ net .*│ 0\.5500 +│ 2 +│", table), table
    assert "0.7000" not in table

    # `harness compare` reads the same numbers.
    compared = CliRunner().invoke(app, ["compare", "best", "--format", "json"])
    assert compared.exit_code == 0, compared.output
    (row,) = json.loads(compared.stdout)["rows"]
    assert row["best_epoch"] == 2 and row["best_val_acc"] == pytest.approx(0.55)

    # `harness tune`'s objective is the same definition.
    monkeypatch.setattr(harness.train, "evaluate", scripted_validation(VAL_LOSS, VAL_ACC))
    tuned = CliRunner().invoke(app, ["tune", "best", "--trials", "1", "--pruner", "none"])
    assert tuned.exit_code == 0, tuned.output
    study = optuna.load_study(study_name="best-net", storage=f"sqlite:///{workdir}/optuna.db")
    assert study.best_value == pytest.approx(0.55)
    (trial_run,) = experiment_runs("best", "trial")
    assert trial_run.data.metrics["best_val_acc"] == pytest.approx(0.55)
    assert trial_run.data.metrics["best_epoch"] == 2


def test_best_val_acc_follows_the_monitored_metric() -> None:
    """With early_stopping_metric=val_acc the best epoch is the most accurate one."""
    state = FitState(epoch=3, history=[{"val_loss": loss, "val_acc": a, "train_loss": 1.0, "train_acc": 0.5}
                                       for loss, a in zip(VAL_LOSS, VAL_ACC)], best_epoch=3)
    assert state.best_metrics() == {"best_epoch": 3, "best_val_loss": 0.45, "best_val_acc": 0.70}
    assert FitState().best_metrics() == {}


class WeightsPerEpoch(Callback):
    """Copies of the weights at the end of every epoch."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None:
        self.weights[state.epoch] = copy.deepcopy(t.model.state_dict())


def test_early_stopping_stops_at_patience_and_tests_the_best_weights(workdir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Best at epoch 2, then two epochs without improvement: patience 2 stops after epoch 4.
    losses = [0.50, 0.40, 0.45, 0.46, 0.30, 0.20]
    monkeypatch.setattr(harness.train, "evaluate", scripted_validation(losses, [0.5] * len(losses)))
    config = TrainConfig(model="lenet_relu", dataset="digits", epochs=6, batch_size=32, lr=0.05, train_limit=300,
                         early_stopping_patience=2)
    tracker = Tracker.open()
    experiment_id = tracker.ensure_experiment("early")
    ctx = RunContext(tracker, experiment_id, tracker.start_run(experiment_id, "parent", {}))
    run_id = open_run(ctx, "net", config, {})
    weights = WeightsPerEpoch()
    result = train_variant(ctx, run_id, "net", config, callbacks=[weights])

    assert result.status == "FINISHED"
    assert result.metrics["epochs_run"] == 4 and result.metrics["best_epoch"] == 2
    assert sorted(weights.weights) == [1, 2, 3, 4]
    assert "early stopping" in (result.stop_reason or "")
    run = MlflowClient().get_run(run_id)
    assert "early stopping" in run.data.tags[STOP_TAG]
    assert steps(None, run_id, "val_loss") == [1, 2, 3, 4]

    # The best checkpoint holds epoch 2's weights, and test_acc was scored with them.
    best = checkpoint.load(checkpoint_root() / run_id / checkpoint.BEST)
    assert best["epoch"] == 2
    for key, value in weights.weights[2].items():
        assert torch.equal(best["model"][key], value), key
    assert not all(torch.equal(best["model"][k], v) for k, v in weights.weights[4].items())
    t = build_trainer(config, load_data(config))
    t.model.load_state_dict(weights.weights[2])
    assert evaluate(t, t.data.test).acc == pytest.approx(result.metrics["test_acc"], abs=1e-12)
    assert run.data.metrics["test_acc"] == pytest.approx(result.metrics["test_acc"], abs=1e-12)
