"""Issue 24: a resumed run's wall time leaves out the time it lay idle between its sessions, and
an `accumulate_steps` larger than an epoch's batches is warned of with the step it really makes.

Through the real commands: `harness run` in a subprocess (stopped by SIGTERM after its first
checkpoint, as a scheduler stops it), `harness run --resume` after a pause, `harness compare`.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
from conftest import harness
from helpers import child, harness_here, harness_popen, sqlite_uri, wait_for_checkpoint, write_synthetic_experiment
from mlflow import MlflowClient

from harness.config import TrainConfig

PAUSE = 5.0  # seconds the interrupted run lies idle before it is resumed


def _stop_after_first_checkpoint(name: str, cwd: Path) -> None:
    """Start `harness run NAME` and stop it with SIGTERM once its first checkpoint is written."""
    proc = harness_popen("run", name, cwd=cwd)
    wait_for_checkpoint(proc, cwd / "checkpoints")
    proc.terminate()
    proc.communicate(timeout=60)


def _compare_rows(capsys: pytest.CaptureFixture[str], name: str) -> list[dict]:
    code, out, err = harness(capsys, "compare", name, "--format", "json")
    assert code == 0, err
    return json.loads(out)["rows"]


def test_resumed_run_wall_time_leaves_out_the_pause(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_synthetic_experiment(workdir, "paused", epochs=2, limit=300)
    _stop_after_first_checkpoint("paused", workdir)
    stopped = time.time()
    run_id = child(sqlite_uri(workdir)).info.run_id
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    time.sleep(PAUSE)
    resumed = harness_here("run", "paused", "--resume", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    upper = time.time() - stopped  # the pause cannot be longer than all the time since the stop

    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    elapsed = (run.info.end_time - run.info.start_time) / 1000
    (row,) = _compare_rows(capsys, "paused")
    assert row["elapsed_seconds"] == pytest.approx(elapsed)
    idle = row["elapsed_seconds"] - row["wall_seconds"]
    assert PAUSE <= idle <= upper, (idle, upper)
    assert idle == pytest.approx(run.data.metrics["paused_seconds"])
    assert row["wall_seconds"] >= row["train_seconds"]  # it still counts both sessions' training
    code, out, _ = harness(capsys, "compare", "paused", "--format", "markdown")
    assert code == 0 and "| wall s |" in out and "| elapsed s |" in out


def test_large_accumulate_steps_warns_once_with_the_real_step(workdir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = harness(capsys, "run", "quickstart", "--set", "epochs=2", "--set", "accumulate_steps=64")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err  # once for the variant, not once per epoch
    found = re.search(r"accumulate_steps=64 is more than the (\d+) batches of an epoch: each epoch makes 1 optimizer "
                      r"step over \1 batches \(an effective batch of (\d+) images, not batch_size\*accumulate_steps"
                      r"=2048\)", warnings[0])
    assert found and "lenet_relu" in warnings[0], warnings[0]
    batches, images = map(int, found.groups())
    assert batches == math.ceil(images / 32) < 64

    # A run that was never resumed: wall time is end - start as before, and no elapsed column.
    (row,) = _compare_rows(capsys, "quickstart")
    run = MlflowClient().get_run(row["run_id"])
    assert row["wall_seconds"] == pytest.approx((run.info.end_time - run.info.start_time) / 1000)
    assert "elapsed_seconds" not in row


def test_accumulate_steps_within_an_epoch_is_not_warned_of() -> None:
    from harness.train import accumulation_warning

    config = TrainConfig(model="lenet_relu", dataset="digits", batch_size=32, accumulate_steps=4)
    assert accumulation_warning(config, 32 * 4) is None
    assert "more than the 1 batch of an epoch" in accumulation_warning(config, 32)
