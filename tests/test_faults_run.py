"""Faults around `harness run`: full disks, read-only folders, an unusable or vanishing tracking
store, damaged or missing checkpoints, and two resumes of one run.

Each case: how it is caused, what the user must see (exit code, one `error:` line, no
traceback) and what MLflow must hold afterwards (no run left RUNNING, reasons recorded, no
epoch logged twice). Disk-full and read-only cases mount a tmpfs (root only; skipped with the
reason otherwise).
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    assert_none_running,
    child,
    folder_env,
    free_port,
    harness,
    harness_here,
    harness_popen,
    one_error_line,
    python,
    runs,
    start_mlflow_server,
    steps,
    wait_for_checkpoint,
    wait_until,
    write_synthetic_experiment,
)
from mlflow import MlflowClient

from harness.tracking import FAILURE_TAG


@pytest.fixture()
def folder(tmp_path: Path) -> dict[str, str]:
    """A working folder with its own store and checkpoints; returns the environment to run in."""
    return folder_env(tmp_path)


@pytest.fixture()
def mount(tmp_path: Path) -> Iterator[callable]:
    """`mount(name, options)`: a tmpfs at tmp_path/name (unmounted afterwards)."""
    mounted: list[Path] = []

    def make(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir(exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield make
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


# ----------------------------------------------------------------- full disks, read-only folders


def test_disk_full_while_checkpointing_fails_in_one_line_and_resume_continues(tmp_path: Path, folder: dict[str, str],
                                                                            mount) -> None:
    small = mount("small", "size=300k")  # best.pt (250 kB) fits, last.pt (weights + momentum) does not
    env = {**folder, "HARNESS_CHECKPOINT_DIR": str(small)}
    write_synthetic_experiment(tmp_path, "full")
    result = harness_here("run", "full", cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert "no space left on the device" in line and str(small) in line and "continue with resume=True" in line, line
    uri = folder["MLFLOW_TRACKING_URI"]
    assert_none_running(runs(uri))
    run = child(uri)
    assert run.info.status == "FAILED" and "no space left" in run.data.tags[FAILURE_TAG]
    assert not list(small.rglob("*.tmp")), "a partial checkpoint was left behind"

    subprocess.run(["mount", "-o", "remount,size=20m", str(small)], check=True)  # space freed
    resumed = harness_here("run", "full", "--resume", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    run = MlflowClient(uri).get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and FAILURE_TAG not in run.data.tags  # the old reason is gone
    assert steps(uri, run.info.run_id) == [1, 2]
    assert_none_running(runs(uri))


def test_disk_full_while_logging_artifacts_marks_runs_failed_with_the_reason(tmp_path: Path, folder: dict[str, str],
                                                                           mount) -> None:
    work = mount("work", "size=200k")  # ./mlruns (artifacts of the default store) fills up; the store itself does not
    write_synthetic_experiment(tmp_path, "fullart")
    result = harness_here("run", "fullart", cwd=work, env=folder)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert "no space left on the device" in line and str(work) in line, line
    uri = folder["MLFLOW_TRACKING_URI"]
    assert_none_running(runs(uri))
    run = child(uri)
    assert run.info.status == "FAILED" and "no space left" in run.data.tags[FAILURE_TAG]
    parent = MlflowClient(uri).get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"


def test_disk_full_with_the_store_on_it_says_the_record_could_not_be_written(tmp_path: Path, folder: dict[str, str],
                                                                          mount) -> None:
    everything = mount("all", "size=1200k")  # store, artifacts and checkpoints on one disk that fills up
    write_synthetic_experiment(tmp_path, "allfull")
    env = {"HARNESS_EXPERIMENTS_DIR": folder["HARNESS_EXPERIMENTS_DIR"]}
    result = harness_here("run", "allfull", cwd=everything,
                     env={**env, "MLFLOW_TRACKING_URI": "", "HARNESS_CHECKPOINT_DIR": ""})
    assert result.returncode != 0
    line = one_error_line(result.stderr)
    assert "no space left" in line and "could not record the failure" in line, line


@pytest.mark.parametrize("checkpoints_elsewhere", [False, True], ids=["checkpoints-here", "checkpoints-elsewhere"])
def test_read_only_working_folder_names_the_folder_and_the_option(tmp_path: Path, folder: dict[str, str], mount,
                                                                  checkpoints_elsewhere: bool) -> None:
    write_synthetic_experiment(tmp_path, "ro")
    readonly = mount("ro", "ro,size=1m")
    env = dict(folder)
    if not checkpoints_elsewhere:
        del env["HARNESS_CHECKPOINT_DIR"]  # ./checkpoints in the read-only folder
    result = harness_here("run", "ro", cwd=readonly, env=env)
    assert result.returncode != 0
    line = one_error_line(result.stderr)
    assert "read-only" in line, line
    if checkpoints_elsewhere:
        assert "mlruns" in line and "tracking_uri" in line, line
    else:
        assert "checkpoints" in line and "HARNESS_CHECKPOINT_DIR" in line, line
    assert_none_running(runs(folder["MLFLOW_TRACKING_URI"]))


# ----------------------------------------------------------------- unusable and vanishing stores


def test_unusable_sqlite_store_fails_within_seconds(tmp_path: Path, folder: dict[str, str], mount) -> None:
    write_synthetic_experiment(tmp_path, "store")
    (tmp_path / "a_folder").mkdir()
    readonly = mount("rostore", "ro,size=1m")
    for uri, expected in ((f"sqlite:///{tmp_path}/a_folder", "is a folder"),
                          (f"sqlite:///{readonly}/mlflow.db", "not writable")):
        began = time.monotonic()
        result = harness_here("run", "store", "--tracking-uri", uri, cwd=tmp_path, env=folder)
        assert time.monotonic() - began < 30, "an unusable store must fail in seconds, not minutes"
        assert result.returncode == 2
        line = one_error_line(result.stderr)
        assert "Cannot use MLflow tracking store" in line and expected in line, line


def test_tracking_server_dying_mid_run_keeps_training_and_resume_completes_the_record(tmp_path: Path,
                                                                                     folder: dict[str, str]) -> None:
    port = free_port()
    server = start_mlflow_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    env = {**folder, "MLFLOW_TRACKING_URI": uri}
    write_synthetic_experiment(tmp_path, "vanish", epochs=6, limit=3000)
    proc = harness_popen("run", "vanish", cwd=tmp_path, env=env)
    try:
        wait_for_checkpoint(proc, Path(folder["HARNESS_CHECKPOINT_DIR"]))
        os.killpg(server.pid, signal.SIGKILL)  # the server dies after epoch 1
        server.wait()
        began = time.monotonic()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - began < 120, "waits on a dead store must be bounded"
    assert proc.returncode != 0 and "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("warning: ") and "does not answer" in lines[0], err
    assert lines[1].startswith("error: ") and "harness run vanish --resume" in lines[1], err
    assert "epoch 6/6" in out  # training went on to the end while the store was down
    ckpt = next(Path(folder["HARNESS_CHECKPOINT_DIR"]).glob("*/last.pt"))

    server = start_mlflow_server(tmp_path, port)  # the store is back
    try:
        resumed = harness("run", "vanish", "--resume", cwd=tmp_path, env=env)
        assert resumed.returncode == 0, resumed.stderr
        run_id = ckpt.parent.name
        run = MlflowClient(uri).get_run(run_id)
        assert run.info.status == "FINISHED" and "test_acc" in run.data.metrics
        assert steps(uri, run_id) == [1, 2, 3, 4, 5, 6]  # each epoch exactly once
        assert_none_running(runs(uri))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


# ----------------------------------------------------------------- resuming


@pytest.fixture(scope="module")
def interrupted_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Made once: an experiment whose run was stopped (SIGTERM) after its first checkpoint
    (folder, child run id). The stop flushes the buffered epochs, so MLflow holds some."""
    root = tmp_path_factory.mktemp("interrupted")
    env = folder_env(root)
    write_synthetic_experiment(root, "stopped", epochs=200, limit=500)
    proc = harness_popen("run", "stopped", cwd=root, env=env)
    wait_for_checkpoint(proc, root / "ckpt")
    proc.terminate()
    proc.communicate(timeout=60)
    assert_none_running(runs(env["MLFLOW_TRACKING_URI"]))
    run = child(env["MLFLOW_TRACKING_URI"])
    assert steps(env["MLFLOW_TRACKING_URI"], run.info.run_id), "the stop should have flushed the logged epochs"
    return root, run.info.run_id


@pytest.fixture()
def interrupted(interrupted_template: tuple[Path, str], tmp_path: Path) -> tuple[Path, dict[str, str], str]:
    """A private copy of the stopped run's folder (store, checkpoints, experiment): (cwd, env, child run id)."""
    import shutil

    template, run_id = interrupted_template
    root = tmp_path / "copy"
    shutil.copytree(template, root)
    return root, folder_env(root), run_id


def test_resume_with_its_checkpoint_deleted_refuses_and_changes_nothing(interrupted) -> None:
    cwd, env, run_id = interrupted
    uri = env["MLFLOW_TRACKING_URI"]
    logged = steps(uri, run_id)
    (Path(env["HARNESS_CHECKPOINT_DIR"]) / run_id / "last.pt").unlink()
    result = harness_here("run", "stopped", "--resume", cwd=cwd, env=env)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "last.pt is missing" in line and "without resume" in line, line
    assert steps(uri, run_id) == logged  # nothing retrained, no epoch logged twice
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"  # left as it was
    assert_none_running(runs(uri))


@pytest.mark.parametrize("damage", [b"", os.urandom(4096)], ids=["empty", "random-bytes"])
def test_resume_with_a_damaged_checkpoint_names_the_file(interrupted, damage: bytes) -> None:
    cwd, env, run_id = interrupted
    last = Path(env["HARNESS_CHECKPOINT_DIR"]) / run_id / "last.pt"
    last.write_bytes(damage)
    result = harness_here("run", "stopped", "--resume", cwd=cwd, env=env)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert str(last) in line and "is damaged" in line, line
    assert_none_running(runs(env["MLFLOW_TRACKING_URI"]))


def test_a_second_resume_of_the_same_run_is_refused(interrupted) -> None:
    cwd, env, run_id = interrupted
    uri = env["MLFLOW_TRACKING_URI"]
    first = harness_popen("run", "stopped", "--resume", cwd=cwd, env=env)
    try:
        wait_until(lambda: MlflowClient(uri).get_run(run_id).info.status == "RUNNING", first, timeout=120,
                   what="the first resume holds the run", interval=0.1)
        second = harness_here("run", "stopped", "--resume", cwd=cwd, env=env)
        assert second.returncode == 2
        line = one_error_line(second.stderr)
        assert "being trained by another process" in line and f"pid {first.pid}" in line, line
    finally:
        first.terminate()
        first.communicate(timeout=60)
    history = steps(uri, run_id)
    assert history == sorted(set(history)), "an epoch was logged twice"
    assert_none_running(runs(uri))


def test_a_lock_of_a_dead_process_does_not_block(tmp_path: Path) -> None:
    """kill -9 leaves the lock file behind, but not the lock: the kernel released it."""
    from harness.runlock import run_lock

    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from harness.runlock import run_lock
        with run_lock("r1", Path({str(tmp_path)!r})):
            os._exit(9)
    """)
    assert python("-c", script).returncode == 9
    assert (tmp_path / "r1.lock").exists()
    with run_lock("r1", tmp_path):
        pass


def test_resume_auto_continues_the_interrupted_run_and_sigusr1_stops_it_like_sigterm(interrupted) -> None:
    """A scheduler's requeue script runs one fixed command, `--resume auto`; SIGUSR1 (what SLURM
    sends before preemption with --signal) checkpoints and marks the runs KILLED."""
    cwd, env, run_id = interrupted
    uri = env["MLFLOW_TRACKING_URI"]
    proc = harness_popen("run", "stopped", "--resume", "auto", cwd=cwd, env=env)
    wait_until(lambda: MlflowClient(uri).get_run(run_id).info.status == "RUNNING", proc, timeout=120,
               what="the resume holds the run", interval=0.1)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Resuming run" in out
    assert "Traceback" not in err
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"
    history = steps(uri, run_id)
    assert history == sorted(set(history)), "an epoch was logged twice"
    assert_none_running(runs(uri))


def test_resume_auto_without_an_interrupted_run_starts_a_new_one(tmp_path: Path, folder: dict[str, str]) -> None:
    write_synthetic_experiment(tmp_path, "fresh", epochs=1, limit=64)
    result = harness_here("run", "fresh", "--resume=auto", cwd=tmp_path, env=folder)
    assert result.returncode == 0, result.stderr
    assert "No interrupted run of fresh: starting a new one." in result.stdout
    assert child(folder["MLFLOW_TRACKING_URI"]).info.status == "FINISHED"
