"""Shared fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parent.parent
QUICKSTART_MODEL = "quickstart-lenet"  # registered by the `quickstart_store` run
QUICKSTART_TUNED_MODEL = "quickstart-tuned"  # registered by its study's retrain-best


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _empty_store: Path) -> Path:
    """A fresh working folder with its own MLflow store (empty), checkpoints and experiments
    (quickstart). The store is a copy of one MLflow created for this test process: creating the
    tables costs about a second of CPU per store, a copy 0.03 s. Tests of what exists before a
    command opens its store use `bare_workdir`; every subprocess test still creates its own."""
    _point_at(monkeypatch, tmp_path)
    _copy_store(_empty_store, tmp_path)
    return tmp_path


@pytest.fixture()
def bare_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`workdir` without its store: no mlflow.db until a command creates one."""
    _point_at(monkeypatch, tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the store MLflow creates on first use (mlflow.db, no runs), made once per test process."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("empty_store")
    MlflowClient(f"sqlite:///{folder}/mlflow.db").search_experiments()
    return folder


def _copy_store(template: Path, folder: Path) -> None:
    """template/mlflow.db as folder/mlflow.db, its Default experiment's artifacts under folder/mlruns
    (where MLflow puts them when it creates the store in `folder`)."""
    import sqlite3
    from contextlib import closing

    shutil.copyfile(template / "mlflow.db", folder / "mlflow.db")
    with closing(sqlite3.connect(folder / "mlflow.db")) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                   (str(folder / "mlruns" / "0"),))


@pytest.fixture(scope="session")
def _quickstart_session(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """One folder per test process holding a finished `harness run quickstart` (2 epochs) and a
    finished 3-trial `harness tune quickstart --retrain-best` (2 epochs each), each with
    `--register` (QUICKSTART_MODEL, QUICKSTART_TUNED_MODEL): the results that predict, report,
    registry and dashboard tests read. Building it costs about 50 s: under pytest-xdist the first
    worker to need it builds it once, and every worker works on its own copy (its own MLflow and
    Optuna databases; the artifacts they name stay in the built folder, read-only in effect)."""
    if worker_id == "master":  # not under xdist
        return _build_quickstart_store(tmp_path_factory.mktemp("quickstart_store"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the same for every worker of this session
    built = shared / "quickstart_store"
    with FileLock(str(shared / "quickstart_store.lock")):
        if not (built / ".complete").is_file():
            shutil.rmtree(built, ignore_errors=True)  # a worker that died half-way
            built.mkdir()
            _build_quickstart_store(built)
            (built / ".complete").touch()
    mine = tmp_path_factory.mktemp("quickstart_store")
    shutil.copytree(built, mine, dirs_exist_ok=True)
    return mine


def _build_quickstart_store(folder: Path) -> Path:
    from typer.testing import CliRunner

    from harness.cli import app

    with pytest.MonkeyPatch.context() as mp:
        _point_at(mp, folder)
        for args in (["run", "quickstart", "--set", "epochs=2", "--register", QUICKSTART_MODEL],
                     ["tune", "quickstart", "--trials", "3", "--set", "epochs=2", "--retrain-best",
                      "--register", QUICKSTART_TUNED_MODEL]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.output
    return folder


def _point_at(mp: pytest.MonkeyPatch, folder: Path) -> None:
    """Work in `folder` as `workdir` does: its own store, checkpoints and experiments (quickstart)."""
    mp.chdir(folder)
    uri = f"sqlite:///{folder}/mlflow.db"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mp.setenv("HARNESS_CHECKPOINT_DIR", str(folder / "checkpoints"))
    mp.setenv("HARNESS_EXPERIMENTS_DIR", str(folder / "experiments"))
    (folder / "experiments").mkdir(exist_ok=True)
    (folder / "experiments" / "quickstart.py").write_text((REPO / "experiments" / "quickstart.py").read_text())


@pytest.fixture()
def quickstart_store(_quickstart_session: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session's finished quickstart run and study, as the working folder. Shared by the tests
    that use it: they may add to it (a registered model, a logged report) but never change or
    delete what is there."""
    _point_at(monkeypatch, _quickstart_session)
    return _quickstart_session


def harness(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the console entry point (`harness.cli.main`, which turns user errors into one line and
    exit code 2) in-process, in the working folder (`helpers.harness_here`): (exit code, stdout,
    stderr). What pytest captured before the command is dropped, not mixed into it."""
    from helpers import harness_here

    capsys.readouterr()
    result = harness_here(*args)
    return result.returncode, result.stdout, result.stderr
