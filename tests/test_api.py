"""The public Python API (`harness.run`, `harness.tune`, `harness.compare`, ...): in-process, on an
experiment defined inline or by name, giving the same records as the CLI; `import harness` stays
free of PyTorch until a function is called."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import harness as cli

import harness
from harness import Callback, Experiment, HarnessError, TrainConfig

TINY = {"epochs": 2}


def test_import_harness_loads_no_torch_until_called() -> None:
    code = ("import sys, harness; harness.run; harness.tune; harness.Experiment; harness.TrainConfig; "
            "print(sorted(m for m in ('torch', 'mlflow', 'pandas', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


class CountEpochs(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, t, state, record) -> None:  # noqa: ANN001 - the train loop's hook
        self.epochs.append(state.epoch)


def test_run_an_inline_experiment_with_callbacks_table_and_model(workdir: Path) -> None:
    exp = Experiment(name="inline", description="defined in the notebook", variants={
        "small": TrainConfig(model="lenet_relu", dataset="digits", epochs=3, lr=0.05),
        "slow": TrainConfig(model="lenet_relu", dataset="digits", epochs=3, lr=0.001),
    })
    counter = CountEpochs()
    result = harness.run(exp, set={"epochs": 2, "slow.lr": 0.002}, callbacks=[counter], system_metrics=False)
    assert result.status == "FINISHED" and not result.failed
    assert [v.variant for v in result.variants] == ["small", "slow"]
    assert result.record("slow").config.lr == 0.002 and all(v.config.epochs == 2 for v in result.variants)
    assert counter.epochs == [1, 2, 1, 2]  # both variants' loops called the user's callback
    table = result.table
    assert set(table["variant"]) == {"small", "slow"}
    assert table.iloc[0]["best_val_acc"] == max(v.best_val_acc for v in result.variants)
    assert result.record("small").best_val_acc > 0.3  # well above chance (0.1) on digits
    import torch

    model = result.load_model("small")
    with torch.inference_mode():
        logits = model(torch.zeros(4, 1, 28, 28))
    assert tuple(logits.shape) == (4, 10)
    # compare() reads the same numbers back from MLflow.
    again = harness.compare("inline", run_id=result.parent_run_id)
    assert sorted(again["best_val_acc"]) == sorted(table["best_val_acc"])
    with pytest.raises(HarnessError, match="variant of this run"):
        result.record("nope")


def test_the_cli_and_the_api_give_the_same_records(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "run", "quickstart", "--set", "epochs=2", "--no-system-metrics")
    assert code == 0, err
    by_cli = harness.compare("quickstart")
    by_api = harness.run("quickstart", set=TINY, system_metrics=False).table
    for column in ("variant", "best_val_acc", "best_epoch", "test_acc", "epochs_run"):
        assert list(by_cli[column]) == list(by_api[column]), column
    recent = harness.runs("quickstart")
    assert len(recent) >= 2


def test_tune_returns_the_study_and_its_trials(workdir: Path) -> None:
    result = harness.tune("quickstart", trials=2, set={"epochs": 1}, system_metrics=False)
    assert result is not None and len(result.study.trials) == 2
    assert set(result.best_params) == set(result.study.best_params) and result.best_value is not None
    table = result.trials_table
    assert len(table) == 2 and {"number", "state", "mlflow_run_id"} <= set(table.columns)
    assert any(c == "value" or c.startswith("value_") for c in table.columns)


@pytest.mark.parametrize("call, says", [
    (lambda: harness.run("no_such_experiment"), "no_such_experiment"),
    (lambda: harness.run("quickstart", set={"lrr": 0.1}), "Did you mean 'lr'"),
    (lambda: harness.run("quickstart", set="epochs=1"), "must be a mapping"),
    (lambda: harness.run(42), "experiment must be"),  # type: ignore[arg-type]
])
def test_user_errors_are_typed_exceptions(workdir: Path, call, says: str) -> None:  # noqa: ANN001
    with pytest.raises(HarnessError, match=says):
        call()
