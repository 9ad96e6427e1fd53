"""Helpers shared by the test modules: `harness` (and Python) in a fresh process or in this one
(`harness_here`), the one-line error promise, queries of an MLflow store or an Optuna study,
experiment files, and waits on a running command.

Imported as `from helpers import ...` (pytest puts tests/ on sys.path, as for conftest.py and
uiserver.py). `conftest.harness(capsys, ...)`, next to the fixtures, is `harness_here` in the
working folder. MLflow and Optuna are imported when a query runs, not with this module.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.reporter import Reporter

if TYPE_CHECKING:
    import optuna
    from mlflow.entities import Run

REPO = Path(__file__).resolve().parent.parent
QUICKSTART_STUDY = "quickstart-lenet_relu"  # `harness tune quickstart`'s default study name



class Collected(Reporter):
    """A reporter that keeps what the library reports (`reporter=Collected()` in the API)."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.warnings: list[str] = []

    def status(self, message: str) -> None:
        self.statuses.append(message)

    def warning(self, message: str) -> None:
        self.warnings.append(f"warning: {message}")


# ----------------------------------------------------------------- processes


def python(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None,
           timeout: float | None = 300) -> subprocess.CompletedProcess[str]:
    """`python ARGS` (this interpreter) in `cwd`, run to its end: `env` is laid over os.environ,
    output captured as text; fails (TimeoutExpired) after `timeout` seconds."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def python_popen(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None,
                 **popen: Any) -> subprocess.Popen[str]:
    """`python ARGS` started in `cwd` (`env` over os.environ), stdout and stderr piped as text;
    `popen`: more `subprocess.Popen` arguments (start_new_session=True, ...)."""
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def harness(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = 300) -> subprocess.CompletedProcess[str]:
    """`python -m harness ARGS` (the real command, in its own process) run to its end; see `python`."""
    return python("-m", "harness", *args, cwd=cwd, env=env, timeout=timeout)


def harness_here(*args: str, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`harness ARGS` as `harness` runs it, but in this process: the console entry point
    (`harness.cli.main`) in `cwd`, with `env` laid over os.environ and stdout/stderr captured
    (not a terminal, as when piped). What a command changes in the process (the working folder,
    the environment, torch's thread count) is put back afterwards.

    For tests whose subject is what the command does, not its process: a fresh interpreter
    costs about 10 s of CPU here (importing torch and MLflow), this about 2 s. Output that goes
    around sys.stdout and sys.stderr (a logging handler bound at import) is not captured."""
    import io
    from contextlib import redirect_stderr, redirect_stdout
    from unittest import mock

    import torch

    from harness.cli import main

    saved_env, saved_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with mock.patch.object(sys, "argv", ["harness", *args]), redirect_stdout(out), redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                if exc.code is not None and not isinstance(exc.code, int):  # sys.exit("message"), as Python prints it
                    print(exc.code, file=sys.stderr)
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["harness", *args], code, out.getvalue(), err.getvalue())


def harness_popen(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None,
                  **popen: Any) -> subprocess.Popen[str]:
    """`python -m harness ARGS` started, not waited for; see `python_popen`."""
    return python_popen("-m", "harness", *args, cwd=cwd, env=env, **popen)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def busy_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that a socket listens on (accepting nothing) until the block ends."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def start_mlflow_server(folder: Path, port: int, startup_timeout: float = 90) -> subprocess.Popen[bytes]:
    """`mlflow server` on 127.0.0.1:`port` with its store and artifacts in `folder`, in its own
    process group (end it with os.killpg), once /health answers; skips the test when it cannot
    start or does not answer within `startup_timeout` seconds."""
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination", str(folder / "artifacts"),
         "--workers", "1"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + startup_timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                pytest.skip("mlflow server could not start here")
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.skip(f"mlflow server did not answer within {startup_timeout:g} s")


def http_get(url: str, timeout: float = 30) -> bytes:
    """The body of a GET of `url`, which must answer 200."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        return response.read()


# ----------------------------------------------------------------- what the user sees


def one_line(stderr: str) -> str:
    """stderr's only line: fails on a traceback or on more (or fewer) than one non-empty line."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def beyond_warnings(stderr: str) -> list[str]:
    """stderr's non-empty lines that are not `warning: ` lines (tune warns of trials too short to
    prune or to learn, which tests train on purpose): empty when nothing went wrong."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("warning: ")]


def one_error_line(stderr: str) -> str:
    """The single line the user sees, which starts `error: `; fails on a traceback or any other line."""
    line = one_line(stderr)
    assert line.startswith("error: "), stderr
    return line


def cli_error_line(outcome: tuple[int, str, str], *, code: int = 2, with_stdout: bool = False) -> str:
    """The one error line of an in-process `conftest.harness(capsys, ...)` outcome (exit code,
    stdout, stderr): the exit code must be `code` (2: a user error) and stderr, or stdout and
    stderr together with `with_stdout`, exactly one `error: ` line."""
    got, out, err = outcome
    assert got == code, (got, out, err)
    return one_error_line(out + err if with_stdout else err)


# ----------------------------------------------------------------- stores and experiments


def sqlite_uri(folder: Path) -> str:
    """The URI of the MLflow store `folder/mlflow.db` (what `harness` uses when run in `folder`)."""
    return f"sqlite:///{folder}/mlflow.db"


def folder_env(root: Path, checkpoints: str = "ckpt") -> dict[str, str]:
    """The environment that keeps a `harness` command in `root`: its MLflow store (root/mlflow.db),
    checkpoints (root/`checkpoints`) and experiments (root/experiments)."""
    return {"MLFLOW_TRACKING_URI": sqlite_uri(root), "HARNESS_CHECKPOINT_DIR": str(root / checkpoints),
            "HARNESS_EXPERIMENTS_DIR": str(root / "experiments")}


def write_experiment(folder: Path, name: str, source: str) -> Path:
    """`folder/experiments/NAME.py` holding `source` (the folder is made if need be); its path."""
    path = folder / "experiments" / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return path


def copy_experiment(folder: Path, name: str = "quickstart") -> Path:
    """The repository's experiments/NAME.py copied to `folder/experiments`; its path."""
    return write_experiment(folder, name, (REPO / "experiments" / f"{name}.py").read_text())


# A fine experiment file: format with name=...; one variant, "net", of the default config.
GOOD_EXPERIMENT = """
from harness.config import TrainConfig
from harness.experiment import Experiment

experiment = Experiment(name="{name}", description="fine", variants={{"net": TrainConfig()}})
"""

SYNTHETIC_EXPERIMENT = """
from harness.config import TrainConfig
from harness.experiment import Experiment

experiment = Experiment(name="{name}", description="fault test", variants={{
    "net": TrainConfig(model="lenet_relu", dataset="synthetic", epochs={epochs}, train_limit={limit}, batch_size=32),
}})
"""


def write_synthetic_experiment(folder: Path, name: str, epochs: int = 2, limit: int = 500) -> Path:
    """Experiment NAME in `folder`: one variant, "net", a lenet_relu on `limit` synthetic images
    (a second an epoch or so) for `epochs` epochs."""
    return write_experiment(folder, name, SYNTHETIC_EXPERIMENT.format(name=name, epochs=epochs, limit=limit))


# ----------------------------------------------------------------- MLflow queries


def runs(uri: str) -> list[Run]:
    """Every run of every experiment of the MLflow store at `uri` (up to 1000)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000) if ids else []


def runs_in(folder: Path) -> list[Run]:
    """Every run of the store folder/mlflow.db; none when that file does not exist (opening a store
    creates it, which takes seconds and would hide that the command made none)."""
    return runs(sqlite_uri(folder)) if (folder / "mlflow.db").exists() else []


def children(uri: str) -> list[Run]:
    """The runs of the store at `uri` that have a parent (variants, trials, seeds), oldest first."""
    return sorted((r for r in runs(uri) if "mlflow.parentRunId" in r.data.tags), key=lambda r: r.info.start_time)


def child(uri: str) -> Run:
    """The one run with a parent in the store at `uri` (fails unless there is exactly one)."""
    (run,) = children(uri)
    return run


def assert_none_running(found: list[Run]) -> None:
    """None of `found` (`runs(uri)`, `runs_in(folder)`) is left RUNNING."""
    running = [r.info.run_name for r in found if r.info.status == "RUNNING"]
    assert not running, f"MLflow runs left RUNNING: {running}"


def experiment_runs(experiment: str, kind: str | None = None, *, parent: str | None = None,
                    uri: str | None = None) -> list[Run]:
    """The runs of the experiment named `experiment`, oldest first: only those tagged harness.kind
    `kind` and those under the run `parent`, where given. `uri`: the store (default: the process's
    tracking URI)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    where = [f"tags.`harness.kind` = '{kind}'"] * (kind is not None)
    where += [f"tags.`mlflow.parentRunId` = '{parent}'"] * (parent is not None)
    return client.search_runs([exp.experiment_id], filter_string=" and ".join(where), max_results=1000,
                              order_by=["attributes.start_time ASC"])


def children_of(experiment: str, parent_kind: str = "run", uri: str | None = None) -> list[Run]:
    """The runs (oldest first) under the experiment's latest run of harness.kind `parent_kind`
    (by default the latest `harness run`: its variants)."""
    parent = experiment_runs(experiment, parent_kind, uri=uri)[-1]
    return experiment_runs(experiment, parent=parent.info.run_id, uri=uri)


def quickstart_run_ids() -> tuple[str, str]:
    """(parent run id, its variant's run id) of the latest `harness run quickstart` in the process's store."""
    parent = experiment_runs("quickstart", "run")[-1].info.run_id
    return parent, experiment_runs("quickstart", parent=parent)[-1].info.run_id


def history(uri: str | None, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every point of the run's metric `key`, by step (`uri` None: the process's store)."""
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def steps(uri: str | None, run_id: str, key: str = "train_loss") -> list[int]:
    """The steps (epochs) at which the run logged `key`, in order; one twice if logged twice."""
    return [step for step, _ in history(uri, run_id, key)]


# ----------------------------------------------------------------- Optuna


def trials(storage: str, study: str = QUICKSTART_STUDY) -> list[optuna.trial.FrozenTrial]:
    """The trials of `study` in `storage`; none when there is no such study."""
    import optuna

    try:
        return optuna.load_study(study_name=study, storage=storage).trials
    except KeyError:  # no such study: nothing was created
        return []


def wait_for_running_trial(proc: subprocess.Popen, storage: str, study: str = QUICKSTART_STUDY,
                           timeout: float = 120, settle: float = 1.0) -> None:
    """Until a trial of `study` is RUNNING with its MLflow run opened, then `settle` seconds more
    (an epoch under way); fails if `proc` ends first or after `timeout` seconds."""
    import optuna

    wait_until(lambda: any(t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("mlflow_run_id")
                           for t in trials(storage, study)),
               proc, timeout=timeout, what="a trial started", interval=0.2)
    time.sleep(settle)


# ----------------------------------------------------------------- waiting on a running command


def wait_until(ready: Callable[[], object], proc: subprocess.Popen, *, timeout: float, what: str,
               interval: float = 0.05) -> None:
    """Poll `ready()` every `interval` seconds until it is true; fails with the command's output if
    `proc` ends first, and saying `what` did not happen if `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(interval)


def wait_for_checkpoint(proc: subprocess.Popen, folder: Path, timeout: float = 120) -> None:
    """Until a run's first checkpoint (`folder/<run id>/last.pt`) is on disk; see `wait_until`."""
    wait_until(lambda: list(folder.glob("*/last.pt")), proc, timeout=timeout,
               what=f"a checkpoint written under {folder}", interval=0.02)


# ----------------------------------------------------------------- browsers


def browser_kit() -> tuple[Any, str, Path]:
    """What a browser test needs: (playwright.sync_api, the Chromium binary to drive, the folder for
    screenshots); skips, saying why, without Playwright for Python or a Chromium."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                                   "(pip install -e '.[dev]'); no browser download is needed")
    return sync_api, chromium_path(), screenshot_folder()


def chromium_path() -> str:
    """Path of a Chromium binary: $HARNESS_CHROMIUM, else Debian's chromium on PATH (no browser
    download); skips the test when there is none."""
    for candidate in (os.environ.get("HARNESS_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no Chromium found (/usr/bin/chromium); install Debian's with `bash .ci/chromium.sh` "
                "or set HARNESS_CHROMIUM")


def screenshot_folder() -> Path:
    """The folder for browser screenshots: $HARNESS_TEST_ARTIFACTS/browser, else test-artifacts/browser."""
    root = Path(os.environ.get("HARNESS_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder = root / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
