"""Faults of `harness tune` / `harness study`, table-driven: a case, how it is caused, what the
user must see, and what MLflow and Optuna must hold afterwards.

Every case checks the exit code, that stderr is one line without a traceback (trial lines of
successful trials go to stdout and are ignored), and that no MLflow run or Optuna trial is left
RUNNING. The commands run as subprocesses (`python -m harness`) in their own working folders;
the one-line errors, which train nothing, start all at once to keep the file fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from helpers import (
    assert_none_running,
    beyond_warnings,
    copy_experiment,
    folder_env,
    harness_here,
    harness_popen,
    one_error_line,
    one_line,
    runs_in,
    sqlite_uri,
    steps,
    trials,
    wait_for_checkpoint,
    wait_for_running_trial,
)

PASSWORD = "s3cr3t"
STUDY = "quickstart-lenet_relu"
# Trials long enough to be interrupted mid-way (Ctrl-C, kill -9): each epoch takes about a second.
LONG = ["--pruner", "none", "--heartbeat", "1", "--set", "epochs=500"]


@dataclass(frozen=True)
class Case:
    """One user-visible fault: the command's arguments, its exit code and the text its one
    stderr line must contain (and must not)."""

    name: str
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]
    never: tuple[str, ...] = ()


def _folder(root: Path) -> Path:
    """`root`, holding the quickstart experiment."""
    copy_experiment(root)
    return root


def _harness(folder: Path, *args: str) -> subprocess.Popen:
    """`python -m harness ARGS` in `folder`, with its store, checkpoints and experiments there."""
    return harness_popen(*args, cwd=folder, env=folder_env(folder, checkpoints="checkpoints"))


def _here(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`harness ARGS` as `_harness` runs it, run to its end in this process (no signal, no kill)."""
    return harness_here(*args, cwd=folder, env=folder_env(folder, checkpoints="checkpoints"))


def _nothing_running(folder: Path, storage: str | None = None) -> None:
    assert_none_running(runs_in(folder))
    storage = storage or f"sqlite:///{folder}/optuna.db"
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        return
    assert not [t.number for t in trials(storage) if t.state == optuna.trial.TrialState.RUNNING]


UNREACHABLE = f"postgresql://user:{PASSWORD}@127.0.0.1:1/db"
SHOWN = "postgresql://user:***@127.0.0.1:1/db"

ONE_LINE_ERRORS = [
    Case("optuna storage password (tune)", ("tune", "quickstart", "--storage", UNREACHABLE), 2,
         ("Cannot open Optuna storage", SHOWN), (PASSWORD,)),
    Case("optuna storage password (study)", ("study", "quickstart", "--storage", UNREACHABLE), 2,
         ("Cannot open Optuna storage", SHOWN), (PASSWORD,)),
    Case("journal file in a missing folder", ("tune", "quickstart", "--storage", "journal:missing/dir/j.log"), 2,
         ("Cannot open the Optuna journal file 'missing/dir/j.log'", "No such file or directory")),
    Case("heartbeat 0", ("tune", "quickstart", "--heartbeat", "0"), 2, ("error: heartbeat must be at least 1",),
         ("database is reachable",)),
    Case("negative timeout", ("tune", "quickstart", "--timeout", "-1"), 2,
         ("error: timeout must be a positive number",)),
    Case("zero timeout", ("tune", "quickstart", "--timeout", "0"), 2, ("error: timeout must be a positive number",)),
    Case("n-jobs 0", ("tune", "quickstart", "--n-jobs", "0"), 2, ("error: n_jobs must be at least 1 (got 0)",)),
    Case("trials 0", ("tune", "quickstart", "--trials", "0"), 2, ("error: trials must be at least 1 (got 0)",)),
]


@pytest.fixture(scope="module")
def one_line_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int, str, str]]:
    """Every case of ONE_LINE_ERRORS run at once, each in its own folder: name -> (folder, code, out, err)."""
    root = tmp_path_factory.mktemp("faults")
    done = {}
    for i, case in enumerate(ONE_LINE_ERRORS):
        folder = _folder(root / f"case{i}")
        result = _here(folder, *case.args)
        done[case.name] = (folder, result.returncode, result.stdout, result.stderr)
    return done


@pytest.mark.parametrize("case", ONE_LINE_ERRORS, ids=[c.name for c in ONE_LINE_ERRORS])
def test_user_mistake_is_one_line_and_creates_nothing(case: Case, one_line_errors: dict) -> None:
    folder, code, out, err = one_line_errors[case.name]
    assert code == case.code, (out, err)
    line = one_error_line(err)
    for text in case.says:
        assert text in line, line
    for text in case.never:
        assert text not in line + out, line
    # Rejected before any study or study run exists.
    assert not [r for r in runs_in(folder) if r.data.tags.get("harness.kind") == "study"]
    assert not (folder / "optuna.db").exists() or not trials(f"sqlite:///{folder}/optuna.db")
    _nothing_running(folder)


def test_ctrl_c_is_one_line_trial_fail_and_runs_killed(tmp_path: Path) -> None:
    """Ctrl-C mid-trial: only the CLI's line (not Optuna's KeyboardInterrupt traceback); the
    trial is FAIL in Optuna, its run and the study run KILLED."""
    folder = _folder(tmp_path)
    storage = f"sqlite:///{folder}/optuna.db"
    proc = _harness(folder, "tune", "quickstart", "--trials", "2", *LONG)
    wait_for_running_trial(proc, storage)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert one_line(err) == "Interrupted: re-run the same command to continue the study."
    (trial,) = trials(storage)
    assert trial.state == optuna.trial.TrialState.FAIL
    runs = {r.info.run_id: r for r in runs_in(folder)}
    run = runs[trial.user_attrs["mlflow_run_id"]]
    assert run.info.status == "KILLED" and run.data.tags["harness.trial_state"] == "FAIL"
    assert runs[run.data.tags["mlflow.parentRunId"]].info.status == "KILLED"
    _nothing_running(folder)


def test_worker_killed_9_its_study_run_is_recognised_as_dead(tmp_path: Path) -> None:
    """kill -9 mid-trial leaves the study run RUNNING; once its heartbeat is 3 intervals old,
    `harness runs` shows (and records) it KILLED, "worker stopped (no heartbeat)", with its trial
    run; the next worker fails the Optuna trial and retries its params."""
    folder = _folder(tmp_path)
    storage = f"sqlite:///{folder}/optuna.db"
    proc = _harness(folder, "tune", "quickstart", "--trials", "1", *LONG)
    wait_for_running_trial(proc, storage)
    proc.kill()
    proc.communicate(timeout=60)
    (parent,) = [r for r in runs_in(folder) if r.data.tags.get("harness.kind") == "study"]
    assert parent.info.status == "RUNNING" and "harness.heartbeat" in parent.data.tags
    time.sleep(3.5)  # past 3 heartbeats of 1 s

    listed = _here(folder, "runs", "quickstart")
    out, err = listed.stdout, listed.stderr
    assert listed.returncode == 0 and not err.strip(), err
    assert "worker stopped (no heartbeat)" in out and "RUNNING" not in out, out
    runs = {r.info.run_id: r for r in runs_in(folder)}
    assert runs[parent.info.run_id].info.status == "KILLED"
    assert runs[parent.info.run_id].data.tags["harness.failure_reason"] == "worker stopped (no heartbeat)"
    _nothing_running(folder, storage="sqlite:///nowhere.db")  # MLflow side; Optuna's trial waits for a worker

    # The next worker of the study: Optuna's heartbeat fails the dead trial and retries its params.
    (dead,) = trials(storage)
    worker = _here(folder, "tune", "quickstart", "--trials", "1", "--heartbeat", "1", "--set", "epochs=1")
    out, err = worker.stdout, worker.stderr
    assert worker.returncode == 0 and not beyond_warnings(err), err
    after = trials(storage)
    assert after[dead.number].state == optuna.trial.TrialState.FAIL
    assert any(t.params == dead.params and t.number != dead.number for t in after)
    _nothing_running(folder)


RETRY_COMMAND = ("tune", "quickstart", "--trials", "1", "--pruner", "none", "--heartbeat", "1", "--set", "epochs=25")


def _kill_after_first_checkpoint(proc: subprocess.Popen, folder: Path) -> None:
    """kill -9 the tune worker `proc` once its trial has written its first checkpoint."""
    wait_for_checkpoint(proc, folder / "checkpoints")
    proc.kill()
    proc.communicate(timeout=60)


def test_a_retried_trial_continues_the_dead_trials_checkpoint_and_run(tmp_path: Path) -> None:
    """A worker killed -9 mid-trial, checkpoints on storage the next worker reaches: the retry
    (a new Optuna trial with the same params) continues that checkpoint in the same MLflow run,
    so the run has one history with no epoch trained twice, and says which trial it continues."""
    folder = _folder(tmp_path)
    storage = f"sqlite:///{folder}/optuna.db"
    command = RETRY_COMMAND
    _kill_after_first_checkpoint(_harness(folder, *command), folder)
    (dead,) = trials(storage)
    dead_run = dead.user_attrs["mlflow_run_id"]
    time.sleep(3.5)  # past 3 heartbeats of 1 s: the next worker fails the dead trial and retries it

    worker = _here(folder, *command)
    out, err = worker.stdout, worker.stderr
    assert worker.returncode == 0 and not err.strip(), err
    assert f"trial-1: retries trial 0: continues its checkpoint and MLflow run {dead_run}." in out, out
    assert "resuming after epoch" in out
    first, retry = trials(storage)
    assert first.state == optuna.trial.TrialState.FAIL and retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.params == dead.params and retry.user_attrs["continues_trial"] == 0
    assert retry.user_attrs["mlflow_run_id"] == dead_run  # one MLflow run for both
    assert sorted(retry.intermediate_values) == list(range(1, 26))  # the dead trial's epochs count for the pruner
    runs = {r.info.run_id: r for r in runs_in(folder)}
    run = runs[dead_run]
    assert run.info.status == "FINISHED" and run.data.tags["harness.trial_state"] == "COMPLETE"
    assert run.data.tags["optuna.trial_number"] == "1" and run.data.tags["harness.continues_trial"] == "0"
    epochs = steps(sqlite_uri(folder), dead_run)
    assert sorted(epochs) == list(range(1, 26)), epochs  # continuous, no epoch twice
    assert len([r for r in runs.values() if r.data.tags.get("harness.kind") == "trial"]) == 1
    _nothing_running(folder)


def test_a_retry_whose_checkpoint_is_unreachable_starts_over_saying_so(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    storage = f"sqlite:///{folder}/optuna.db"
    command = RETRY_COMMAND
    _kill_after_first_checkpoint(_harness(folder, *command), folder)
    (dead,) = trials(storage)
    shutil.rmtree(folder / "checkpoints")  # another machine's local disk, as far as this worker can tell
    time.sleep(3.5)
    worker = _here(folder, "tune", "quickstart", "--trials", "1", "--heartbeat", "1", "--set", "epochs=2")
    out, err = worker.stdout, worker.stderr
    assert worker.returncode == 0 and not beyond_warnings(err), err
    assert "trial-1: retries trial 0, but its checkpoint" in out and "is not reachable from here" in out, out
    retry = trials(storage)[1]
    assert retry.user_attrs["mlflow_run_id"] != dead.user_attrs["mlflow_run_id"]
    assert "continues_trial" not in retry.user_attrs
    _nothing_running(folder)


def test_next_worker_ends_only_dead_study_runs_of_its_study(workdir: Path) -> None:
    """`end_dead_study_parents` (run when `harness tune` starts): a RUNNING study run whose
    heartbeat is older than 3 of its intervals is ended KILLED with its running trials; a fresh
    one, one without the tag (nothing to judge by) and another study's are left alone."""
    from harness.study_liveness import DEAD_WORKER_REASON, end_dead_study_parents
    from harness.tracking import Tracker

    tracker = Tracker.open()
    exp_id = tracker.ensure_experiment("quickstart", "")
    now = int(time.time() * 1000)

    def parent(name: str, study: str, beat_age_s: float | None) -> str:
        tags = {"harness.kind": "study", "optuna.study_name": study}
        if beat_age_s is not None:
            tags |= {"harness.heartbeat": str(now - int(beat_age_s * 1000)), "harness.heartbeat_seconds": "10"}
        return tracker.start_run(exp_id, name, tags)

    dead = parent("dead", STUDY, 31)
    trial = tracker.start_run(exp_id, "trial-0", {"harness.kind": "trial"}, dead)
    alive, untagged, other = parent("alive", STUDY, 5), parent("untagged", STUDY, None), parent("other", "x", 60)
    assert end_dead_study_parents(tracker, exp_id, STUDY) == [dead]
    status = {r.info.run_name: r.info.status for r in runs_in(workdir)}
    assert status == {"dead": "KILLED", "trial-0": "KILLED", "alive": "RUNNING", "untagged": "RUNNING",
                      "other": "RUNNING"}
    assert tracker.find_run(trial).tags["harness.failure_reason"] == DEAD_WORKER_REASON
    for run_id in (alive, untagged, other):
        tracker.end_run(run_id, "FINISHED")


def test_median_pruner_never_prunes_after_the_first_epoch_only() -> None:
    """The median pruner's promise (README, Tune): a trial is judged from epoch 2 on, never on
    epoch 1 alone (step = epoch, counted from 1)."""
    from harness.tuning import PRUNERS

    study = optuna.create_study(direction="maximize", pruner=PRUNERS.get("median")())
    for _ in range(2):  # n_startup_trials complete trials, good at every epoch
        good = study.ask()
        for epoch in (1, 2):
            good.report(0.9, epoch)
        study.tell(good, 0.9)
    bad = study.ask()
    bad.report(0.1, 1)
    assert not bad.should_prune(), "pruned on epoch 1 alone"
    bad.report(0.1, 2)
    assert bad.should_prune()


POSTGRES = os.environ.get("HARNESS_TEST_POSTGRES_URL", "")


@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL server: set HARNESS_TEST_POSTGRES_URL (bash .ci/postgres.sh)")
def test_storage_password_never_shown_or_recorded_with_a_real_postgresql(tmp_path: Path) -> None:
    """A study on a real PostgreSQL whose URL holds a password: neither the output nor any MLflow
    param or tag holds it; a bad database name is one line with the password hidden."""
    import psycopg

    base, _ = POSTGRES.rsplit("/", 1)
    db = f"optuna_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES, connect_timeout=5, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    scheme, rest = base.split("://", 1)
    user_host = rest.split("@", 1)
    with_password = f"{scheme}://{user_host[0].split(':')[0]}:{PASSWORD}@{user_host[-1]}"  # trust auth ignores it
    folder = _folder(tmp_path)

    ok = _harness(folder, "tune", "quickstart", "--trials", "1", "--storage", f"{with_password}/{db}",
                  "--set", "epochs=1")
    out, err = ok.communicate(timeout=300)
    assert ok.returncode == 0 and not beyond_warnings(err), err
    assert PASSWORD not in out + err
    runs = runs_in(folder)
    assert runs
    for run in runs:
        recorded = " ".join([*run.data.params.values(), *run.data.tags.values()])
        assert PASSWORD not in recorded, run.info.run_name
    (study_run,) = [r for r in runs if r.data.tags.get("harness.kind") == "study"]
    assert study_run.data.params["storage"] == f"{with_password.replace(PASSWORD, '***')}/{db}"
    _nothing_running(folder, storage=f"{with_password}/{db}")

    missing = _here(folder, "study", "quickstart", "--storage", f"{with_password}/no_such_db_{db}")
    out, err = missing.stdout, missing.stderr
    assert missing.returncode == 2, (out, err)
    line = one_line(err)
    assert "Cannot open Optuna storage" in line and ":***@" in line and PASSWORD not in line


@pytest.mark.parametrize(
    ("uri", "shown", "message", "message_shown"),
    [
        (UNREACHABLE, SHOWN, f"auth failed: {PASSWORD}", "auth failed: ***"),
        ("postgresql://u@db/optuna?sslmode=require&password=s3cr3t",
         "postgresql://u@db/optuna?sslmode=require&password=***", "bad s3cr3t", "bad ***"),
        ("postgresql://u:s3%40cr3t@db/optuna", "postgresql://u:***@db/optuna", "bad s3@cr3t", "bad ***"),
        ("sqlite:///optuna.db", "sqlite:///optuna.db", "locked", "locked"),
        ("journal:/tmp/j.log", "journal:/tmp/j.log", "missing", "missing"),
    ],
)
def test_storage_uris_are_shown_without_their_password(uri: str, shown: str, message: str, message_shown: str) -> None:
    """`harness.uris`, the one redaction for both stores: the password after `user:` (as
    written, or percent-decoded in a driver's message) and a `password=` query value."""
    from harness.uris import redact, redact_text

    assert redact(uri) == shown
    assert redact_text(message, uri) == message_shown
