"""`harness tune` / `harness study`: Optuna studies recorded in Optuna and MLflow."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import harness
from helpers import experiment_runs, harness_here, harness_popen, steps, wait_for_checkpoint, write_experiment
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness.cli import app

SMALL = ["--set", "epochs=3"]


def test_small_study_is_recorded_in_optuna_and_mlflow(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.lifecycle

    loads: list[str] = []
    real_load = harness.lifecycle.load_data
    monkeypatch.setattr(harness.lifecycle, "load_data", lambda config, data_dir=None: loads.append(config.dataset)
                        or real_load(config, data_dir))
    result = CliRunner().invoke(app, ["tune", "quickstart", "--trials", "6", "--pruner", "median", *SMALL])
    assert result.exit_code == 0, result.output
    assert loads == ["digits"]  # trials differ in training settings only: the data is loaded once
    assert "best trial" in result.output
    study = optuna.load_study(study_name="quickstart-lenet_relu", storage=f"sqlite:///{workdir}/optuna.db")
    states = [t.state for t in study.trials]
    assert len(states) == 6
    assert optuna.trial.TrialState.PRUNED in states
    assert optuna.trial.TrialState.COMPLETE in states
    assert study.metric_names == ["val_acc"]  # how optuna-dashboard and Optuna's plots label the objective
    # One line per trial, pruned ones included: number, state, the epoch it stopped at, its value.
    for trial in study.trials:
        line = next(ln for ln in result.output.splitlines() if ln.startswith(f"trial {trial.number} "))
        assert f"trial {trial.number} {trial.state.name} at epoch {trial.last_step}" in line, line
        assert "lr=" in line and (trial.state.name != "COMPLETE" or f"val_acc {trial.value:.4f}" in line), line

    client = MlflowClient()
    runs = experiment_runs("quickstart", "trial")
    assert len(runs) == 6
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.info.run_name == f"trial-{trial.number}"
        assert run.data.tags["optuna.study_name"] == "quickstart-lenet_relu"
        assert run.data.tags["harness.trial_state"] == trial.state.name  # Optuna's own spelling
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) >= 1
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert run.data.metrics["best_val_acc"] == pytest.approx(trial.value)

    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    best = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/best_params.json")
    assert best == pytest.approx(study.best_params)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"trials.csv", "plots/optimization_history.png", "plots/slice.png", "plots/parallel_coordinate.png"} <= arts

    # re-running resumes: --trials means finished trials in total
    result = CliRunner().invoke(app, ["tune", "quickstart", "--trials", "8", *SMALL])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="quickstart-lenet_relu", storage=f"sqlite:///{workdir}/optuna.db")
    assert len(study.trials) == 8
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == len(params), "a resumed study must not replay the same samples"

    shown = CliRunner().invoke(app, ["study", "quickstart"])
    assert shown.exit_code == 0 and "8 finished trials" in shown.output and "PRUNED" in shown.output


def test_seeds_nest_under_each_trial_and_the_value_is_their_mean(workdir: Path) -> None:
    """`--repeat 2 --pruner wilcoxon`: study parent -> trial run -> one run per seed; Optuna holds
    the mean as the value and the std as a user attribute; `harness study` shows mean ± std."""
    result = CliRunner().invoke(app, ["tune", "quickstart", "--trials", "3", "--repeat", "2", "--pruner", "wilcoxon",
                                      "--set", "epochs=2"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="quickstart-lenet_relu", storage=f"sqlite:///{workdir}/optuna.db")
    assert len(study.trials) == 3
    runs = experiment_runs("quickstart")
    by_id = {r.info.run_id: r for r in runs}
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE  # 3 trials of 2 seeds: too few for Wilcoxon to prune
        trial_run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert trial_run.data.tags["harness.kind"] == "trial"
        assert by_id[trial_run.data.tags["mlflow.parentRunId"]].data.tags["harness.kind"] == "study"
        seeds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == trial_run.info.run_id]
        assert sorted(r.data.tags["harness.seed"] for r in seeds) == ["0", "1"]
        assert all(r.data.tags["harness.kind"] == "seed" and r.info.status == "FINISHED" for r in seeds)
        values = [r.data.metrics["best_val_acc"] for r in sorted(seeds, key=lambda r: r.data.tags["harness.seed"])]
        assert trial.value == pytest.approx(sum(values) / 2)
        assert trial.user_attrs["val_acc_std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
        assert trial.user_attrs["seed_values"] == pytest.approx(values)
        assert trial.intermediate_values == pytest.approx(dict(enumerate(values)))  # Wilcoxon: one step per seed
        assert trial_run.data.metrics["best_val_acc"] == pytest.approx(trial.value)
    shown = CliRunner().invoke(app, ["study", "quickstart"])
    assert shown.exit_code == 0 and "mean ± std" in shown.output and " ± " in shown.output


def test_with_seeds_the_median_pruner_judges_the_first_seed_only(workdir: Path) -> None:
    # Sampler seed 0 and 3-epoch trials: trial 2 is pruned in its first seed (training is deterministic here).
    result = CliRunner().invoke(app, ["tune", "quickstart", "--trials", "4", "--repeat", "2", "--set", "epochs=3"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="quickstart-lenet_relu", storage=f"sqlite:///{workdir}/optuna.db")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [t.state for t in study.trials]
    for trial in study.trials:
        seeds = experiment_runs("quickstart", parent=trial.user_attrs["mlflow_run_id"])
        assert len(seeds) == (1 if trial in pruned else 2), trial.number
        assert max(trial.intermediate_values) <= 3  # epochs of the first seed are the steps
    line = next(ln for ln in result.output.splitlines() if ln.startswith(f"trial {pruned[0].number} "))
    assert f"PRUNED at epoch {pruned[0].last_step} of its first seed" in line, line


def test_retrain_best_trains_on_train_plus_val_and_tests_once(quickstart_store: Path) -> None:
    # The session's finished `harness tune quickstart --trials 3 --retrain-best` (conftest).
    client = MlflowClient()
    exp = client.get_experiment_by_name("quickstart")
    (run,) = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'retrain-best'")
    assert run.info.status == "FINISHED"
    assert run.data.params["val_fraction"] == "0.0"
    assert "test_acc" in run.data.metrics
    import mlflow.pytorch

    assert mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model") is not None


def _tune(*args: str, cwd: Path) -> subprocess.Popen:
    return harness_popen("tune", *args, cwd=cwd)


def test_killed_study_resumes_to_exactly_n_finished_trials(workdir: Path) -> None:
    storage = f"sqlite:///{workdir}/optuna.db"
    # Many cheap epochs (256 images each): a trial lasts long after its first checkpoint, so the
    # kill lands mid-trial even on a loaded machine, and the resumed trials cost little.
    args = ["quickstart", "--trials", "4", "--heartbeat", "1", "--pruner", "none", "--set", "epochs=30",
            "--set", "train_limit=256"]
    proc = _tune(*args, cwd=workdir)
    wait_for_checkpoint(proc, workdir / "checkpoints", timeout=180)  # kill once a trial is under way
    proc.kill()
    proc.wait()
    study = optuna.load_study(study_name="quickstart-lenet_relu", storage=storage)
    killed = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert killed, "the test meant to kill a trial mid-way"
    time.sleep(4)  # past the 3-heartbeat grace period

    # The resume needs no process of its own: the same command in-process.
    resumed = CliRunner().invoke(app, ["tune", *args])
    assert resumed.exit_code == 0, resumed.output
    study = optuna.load_study(study_name="quickstart-lenet_relu", storage=storage)
    finished = [t for t in study.trials
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 4
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    dead = study.trials[killed[0].number]
    assert dead.state == optuna.trial.TrialState.FAIL
    # Retried with the same params, and its MLflow run is not left RUNNING: the retry continued it
    # (checkpoints are in this folder, so reachable) when the dead trial had written one, and it was
    # marked KILLED and left otherwise (test_faults_tune covers both cases on purpose).
    retry = next(t for t in study.trials if t.params == dead.params and t.number != dead.number)
    run = MlflowClient().get_run(dead.user_attrs["mlflow_run_id"])
    if retry.user_attrs.get("continues_trial") == dead.number:
        assert retry.user_attrs["mlflow_run_id"] == run.info.run_id and run.info.status == "FINISHED"
    else:
        assert run.info.status == "KILLED"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sampler", "tpee"], "Unknown sampler 'tpee'. Did you mean 'tpe'"),
        (["--pruner", "medain"], "Unknown pruner 'medain'. Did you mean 'median'"),
        (["--storage", "postgresql://nobody@127.0.0.1:9/none"], "Cannot open Optuna storage"),
        (["--variant", "resnet"], "Unknown variant of 'quickstart' 'resnet'"),
        (["--pruner", "wilcoxon"], "error: pruner 'wilcoxon' compares a trial's seeds: add repeat=K"),
        (["--repeat", "0"], "error: repeat must be at least 1"),
    ],
)
def test_bad_tune_input_is_one_clear_line(workdir: Path, args: list[str], expected: str) -> None:
    proc = harness_here("tune", "quickstart", "--trials", "1", *args, cwd=workdir)
    err = proc.stderr
    assert proc.returncode == 2, (proc.stdout, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert expected in err


def test_search_space_name_must_be_a_config_field(workdir: Path) -> None:
    write_experiment(workdir, "badspace",
        "from harness.config import TrainConfig\n"
        "from harness.experiment import Experiment\n"
        "from harness.search_space import FloatRange\n"
        "experiment = Experiment(name='badspace', description='x', variants={'a': TrainConfig()},\n"
        "                        search_space={'learning_rate': FloatRange(1e-3, 1e-1, log=True)})\n"
    )
    proc = harness_here("tune", "badspace", cwd=workdir)
    err = proc.stderr
    assert proc.returncode == 2 and "Traceback" not in err
    assert "Search-space name 'learning_rate'" in err and "not a config field" in err


def test_show_prints_the_search_space(workdir: Path) -> None:
    result = CliRunner().invoke(app, ["show", "quickstart", "--json"])
    assert result.exit_code == 0
    import json

    space = json.loads(result.output)["search_space"]
    assert set(space) == {"lr", "momentum", "batch_size", "weight_decay"} and "log" in space["lr"]


def test_parallel_trials_in_one_process_log_into_their_own_runs(workdir: Path) -> None:
    result = CliRunner().invoke(app, ["tune", "quickstart", "--trials", "4", "--n-jobs", "2", "--pruner", "none",
                                      "--set", "epochs=2"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="quickstart-lenet_relu", storage=f"sqlite:///{workdir}/optuna.db")
    assert len(study.trials) >= 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    runs = experiment_runs("quickstart", "trial")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == [t.number for t in study.trials]
    for run in runs:
        trial = study.trials[int(run.data.tags["optuna.trial_number"])]
        assert steps(None, run.info.run_id, "val_acc") == [1, 2], "each trial's curve only in its own run"
        assert run.data.metrics["best_val_acc"] == pytest.approx(trial.value)
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])


def test_a_pruner_that_cannot_act_on_one_epoch_trials_says_so(workdir: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`--set epochs=1` with the median pruner (it judges a trial from epoch 2): one warning line;
    `--pruner none` asks for no pruning, so it gets none."""
    code, _, err = harness(capsys, "tune", "quickstart", "--trials", "1", "--set", "epochs=1", "--set",
                           "train_limit=200")
    assert code == 0, err
    assert err.strip().splitlines()[0] == (
        "warning: pruner 'median' stops a trial only after epoch 2, and trials train 1 epoch(s): no trial will be "
        "pruned; train epochs=3 or more, or say pruner none."), err
    code, _, err = harness(capsys, "tune", "quickstart", "--trials", "2", "--pruner", "none", "--set", "epochs=1",
                           "--set", "train_limit=200")
    assert code == 0 and "pruner" not in err, err


STILL = """
from harness.config import TrainConfig
from harness.experiment import Experiment
from harness.search_space import FloatRange

experiment = Experiment(name="still", description="learns nothing", variants={
    "net": TrainConfig(model="lenet_relu", dataset="digits", epochs=1, optimizer="sgd", momentum=0.0),
}, search_space={"lr": FloatRange(1e-9, 1e-8, log=True)})
"""


def test_a_study_whose_trials_all_stay_at_chance_says_so(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Learning rates of 1e-9: every trial's validation accuracy stays at chance (10 digits: 0.1),
    and the study says so in one warning; a study that learns (quickstart) does not."""
    write_experiment(workdir, "still", STILL)
    code, _, err = harness(capsys, "tune", "still", "--trials", "2", "--pruner", "none")
    assert code == 0, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert line.startswith("warning: no trial of study 'still-net' learned anything: the best val_acc is ")
    assert "chance for 10 classes is 0.1000" in line, line
    write_experiment(workdir, "learns", STILL.replace('"still"', '"learns"').replace("1e-9, 1e-8", "0.04, 0.06")
                     .replace("momentum=0.0", "momentum=0.9").replace("epochs=1", "epochs=2"))
    code, _, err = harness(capsys, "tune", "learns", "--trials", "1", "--pruner", "none")
    assert code == 0 and not err.strip(), err
    study = optuna.load_study(study_name="learns-net", storage=f"sqlite:///{workdir}/optuna.db")
    assert study.best_value > 0.5  # it learned, so no warning
