"""`harness run` keeps MLflow in a child process: calls, errors, signals and lifetime."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from harness import tracking
from harness.errors import HarnessError
from harness.tracking_process import TrackingProcess


def _exits_within(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_forwarded_calls_write_through_the_child(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with TrackingProcess(uri) as proc:
        exp_id = tracking.ensure_experiment(proc, "e", "about e")
        run_id = tracking.start_run(proc, exp_id, "r", {"k": "v"})
        tracking.log_params(proc, run_id, {"lr": 0.1})
        tracking.log_epochs(proc, run_id, [(1, {"train_loss": 0.5}, 1000), (2, {"train_loss": 0.25}, 2000)])
        tracking.log_bytes(proc, run_id, b"\x89PNG fake", "plots/a.png")
        tracking.log_dict(proc, run_id, {"classes": ["a", "b"]}, "classes.json")
        assert tracking.metric_history(proc, run_id, "train_loss") == [(1, 0.5), (2, 0.25)]
        assert tracking.find_run(proc, "0" * 32) is None
        tracking.end_run(proc, run_id, "FINISHED")
        child = proc._proc
    assert child.pid != os.getpid()

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.1" and run.data.tags["k"] == "v"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"plots", "classes.json"}
    assert client.get_experiment(exp_id).tags["mlflow.note.content"] == "about e"
    assert child.wait(timeout=30) == 0, "the child outlived close()"


def test_errors_come_back_to_the_caller(tmp_path: Path) -> None:
    with TrackingProcess(f"sqlite:///{tmp_path}/mlflow.db") as proc:
        with pytest.raises(MlflowException):  # MLflow's own exception, as in-process
            tracking.end_run(proc, "0" * 32, "FINISHED")
        assert tracking.ensure_experiment(proc, "still-works")  # the child survives a failed call


def test_unusable_store_fails_the_first_call_with_one_line() -> None:
    with TrackingProcess("postgresql://nobody@127.0.0.1:9/none") as proc:
        with pytest.raises(HarnessError, match="Cannot use MLflow tracking store"):
            tracking.ensure_experiment(proc, "e")


def test_child_ignores_ctrl_c_so_runs_can_be_marked_killed(tmp_path: Path) -> None:
    with TrackingProcess(f"sqlite:///{tmp_path}/mlflow.db") as proc:
        exp_id = tracking.ensure_experiment(proc, "e")
        run_id = tracking.start_run(proc, exp_id, "r", {})
        os.kill(proc._proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to every process
        os.kill(proc._proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        tracking.end_run(proc, run_id, "KILLED", "interrupted")
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id).info.status == "KILLED"


def test_a_dead_child_is_one_clear_error(tmp_path: Path) -> None:
    with TrackingProcess(f"sqlite:///{tmp_path}/mlflow.db") as proc:
        tracking.ensure_experiment(proc, "e")
        proc._proc.kill()
        proc._proc.wait()
        with pytest.raises(HarnessError, match="MLflow tracking process ended unexpectedly"):
            tracking.ensure_experiment(proc, "e")


def test_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os
        from harness import tracking
        from harness.tracking_process import TrackingProcess
        proc = TrackingProcess("sqlite:///{tmp_path}/mlflow.db")
        tracking.ensure_experiment(proc, "e")
        print(proc._proc.pid, flush=True)
        os._exit(9)  # no cleanup, as after SIGKILL
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 9, out.stderr
    assert _exits_within(int(out.stdout.strip()), 30), "an orphaned tracking process kept running"


def test_harness_run_never_imports_mlflow_in_its_own_process(workdir: Path) -> None:
    script = textwrap.dedent("""
        import sys
        from harness.cli import main
        sys.argv = ["harness", "run", "quickstart", "--set", "epochs=1"]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        print("mlflow imported:", "mlflow" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "mlflow imported: False" in out.stdout
    run = next(r for r in MlflowClient().search_runs([MlflowClient().get_experiment_by_name("quickstart").experiment_id])
               if "mlflow.parentRunId" in r.data.tags)
    assert run.info.status == "FINISHED" and "startup_seconds" in run.data.metrics
