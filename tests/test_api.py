"""The public Python API (`harness.run`, `harness.tune`, `harness.compare`, ...): in-process, on an
experiment defined inline or by name, giving the same records as the CLI; `import harness` stays
free of PyTorch until a function is called."""

from __future__ import annotations

import os
import signal
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


DATA_PARALLEL = """
from harness.config import TrainConfig
from harness.experiment import Experiment

experiment = Experiment(name="dp_api", description="data-parallel from Python", variants={
    "net": TrainConfig(model="lenet_relu", dataset="synthetic", epochs=1, train_limit=256, batch_size=16, lr=0.02,
                       seed=3),
})
"""


def test_run_on_two_processes_from_python(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    """`nproc_per_node=2`: two gloo CPU processes train data-parallel, each `python -m harness run
    dp_api ...`; the call returns their records, read back from MLflow, and leaves this process's
    environment as it was. The processes report as the caller asked (silent: no epoch lines)."""
    from mlflow import MlflowClient

    from harness.launch import OUTCOME_ENV
    from harness.reporter import ENV as REPORTER_ENV
    from harness.tracking import LAUNCH_ENV

    (workdir / "experiments" / "dp_api.py").write_text(DATA_PARALLEL)
    monkeypatch.setenv("HARNESS_DIST_TIMEOUT", "60")

    def launcher_state() -> tuple[object, ...]:  # what the launch sets for its processes, or for itself
        names = (LAUNCH_ENV, OUTCOME_ENV, REPORTER_ENV, "OMP_NUM_THREADS", "TORCH_CPP_LOG_LEVEL")
        return (*(os.environ.get(n) for n in names), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))

    before = launcher_state()
    result = harness.run("dp_api", nproc_per_node=2, device="cpu", set={"net.lr": 0.03}, system_metrics=False,
                         reporter="silent")
    assert launcher_state() == before
    assert "net epoch 1/" not in capfd.readouterr().out
    assert result.launched and result.status == "FINISHED" and not result.failed
    (record,) = result.variants
    assert (record.variant, record.label, record.config.lr, record.config.batch_size) == ("net", "net", 0.03, 16)
    assert record.best_val_acc is not None and record.test_acc is not None
    run = MlflowClient().get_run(record.run_id)
    assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert (run.data.params["world_size"], run.data.params["backend"], run.data.params["per_device_batch_size"]) == \
        ("2", "gloo", "8")
    assert list(result.table["variant"]) == ["net"] and result.table.iloc[0]["status"] == "FINISHED"
    assert harness.compare("dp_api")["run_id"].tolist() == [record.run_id]


@pytest.mark.parametrize("call, says", [
    (lambda: harness.run(Experiment(name="inline", description="", variants={"a": TrainConfig()}), nproc_per_node=2,
                         device="cpu"), "was not loaded from"),
    (lambda: harness.run("quickstart", nproc_per_node=2, device="cpu", callbacks=[CountEpochs()]),
     "callbacks cannot reach the processes"),
    (lambda: harness.tune(Experiment(name="inline", description="", variants={"a": TrainConfig()}), nproc_per_node=2,
                          device="cpu"), "was not loaded from"),
    (lambda: harness.run("quickstart", nproc_per_node=0), "nproc_per_node must be at least 1"),
    (lambda: harness.run("quickstart", resume="yes"), "resume must be True, False or 'auto'"),
    (lambda: harness.compare("quickstart", write=True, only=["x"]), "only= picks child runs"),
])
def test_what_cannot_be_launched_is_refused_before_anything_starts(bare_workdir: Path, call, says: str) -> None:
    with pytest.raises(HarnessError, match=says):
        call()
    assert not (bare_workdir / "mlflow.db").exists()  # nothing was started, not even the store


def test_the_processes_command_line_is_the_cli_s_options() -> None:
    from harness.launch import worker_command

    assert worker_command("run", "dp", {"set": ["epochs=1", "a.lr=0.1"], "seeds": "0,1", "repeat": None,
                                        "resume": "auto", "system_metrics": False, "register": None,
                                        "backend": "gloo", "data_dir": Path("d"), "timeout": 1.5}) == [
        "run", "dp", "--set", "epochs=1", "--set", "a.lr=0.1", "--seeds", "0,1", "--resume", "auto",
        "--no-system-metrics", "--dist-backend", "gloo", "--data-dir", "d", "--timeout", "1.5"]


@pytest.mark.parametrize("call, says", [
    (lambda: harness.run("no_such_experiment"), "no_such_experiment"),
    (lambda: harness.run("quickstart", set={"lrr": 0.1}), "Did you mean 'lr'"),
    (lambda: harness.run("quickstart", set="epochs=1"), "must be a mapping"),
    (lambda: harness.run(42), "experiment must be"),  # type: ignore[arg-type]
])
def test_user_errors_are_typed_exceptions(workdir: Path, call, says: str) -> None:  # noqa: ANN001
    with pytest.raises(HarnessError, match=says):
        call()
