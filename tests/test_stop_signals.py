"""One signal path: SIGTERM and SIGHUP (what `kill`, `timeout`, systemd, a scheduler and a closed
terminal send) end every command that opens a run the way Ctrl-C does: exit 130, no traceback,
every run KILLED with the signal named in its reason, none left RUNNING. One test per command
family (run, tune, a multi-seed trial, lr-find), on the real command in its own process."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from helpers import assert_none_running, folder_env, harness_popen, runs, wait_until, write_synthetic_experiment
from mlflow import MlflowClient

from harness.tracking import FAILURE_TAG, KIND_TAG

FAMILIES = {
    "run": (["run", "stopped"], "run", signal.SIGHUP),
    "tune": (["tune", "stopped", "--trials", "50"], "study", signal.SIGTERM),
    "trial": (["tune", "stopped", "--trials", "50", "--repeat", "2"], "trial", signal.SIGTERM),
    "lr-find": (["lr-find", "stopped", "--steps", "100000"], "lr_find", signal.SIGTERM),
}


def _wait_for_training(uri: str, ckpt: Path, kind: str, proc, timeout: float = 180) -> None:  # noqa: ANN001
    """Until the command is mid-training: a run of `kind` is RUNNING and (but for lr-find, which
    checkpoints nothing) a first checkpoint is on disk."""

    def training() -> bool:
        running = [r for r in runs(uri) if r.data.tags.get(KIND_TAG) == kind and r.info.status == "RUNNING"]
        return bool(running) and (kind == "lr_find" or bool(list(ckpt.glob("*/last.pt"))))

    wait_until(training, proc, timeout=timeout, what="the command started training", interval=0.2)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_stop_signal_ends_every_run_killed_with_the_reason(tmp_path: Path, family: str) -> None:
    args, kind, sig = FAMILIES[family]
    write_synthetic_experiment(tmp_path, "stopped", epochs=200, limit=500)
    folder = folder_env(tmp_path)
    uri = folder["MLFLOW_TRACKING_URI"]
    proc = harness_popen(*args, cwd=tmp_path, env=folder)
    _wait_for_training(uri, tmp_path / "ckpt", kind, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err, err
    assert_none_running(runs(uri))
    (stopped,) = [r for r in runs(uri) if r.data.tags.get(KIND_TAG) == kind]
    assert stopped.info.status == "KILLED"
    assert signal.Signals(sig).name in stopped.data.tags.get(FAILURE_TAG, ""), stopped.data.tags
    client = MlflowClient(uri)
    assert all(client.get_run(r.info.run_id).info.status in ("KILLED", "FINISHED") for r in runs(uri))


def test_a_stop_signal_lost_in_a_finalizer_still_stops_the_next_step() -> None:
    """A signal that lands while a finalizer runs is printed as "Exception ignored" and lost; the
    train loop asks `raise_if_stopped` each step, so the command stops all the same (once the
    outermost block ends, the next command in the process starts clean)."""
    import os

    from harness import interrupts
    from harness.errors import Terminated

    with pytest.raises(Terminated, match="SIGTERM"), interrupts.stop_signals_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Terminated:
            pass  # what a finalizer does with it
        interrupts.raise_if_stopped()
    interrupts.raise_if_stopped()  # nothing pending any more


def test_a_stop_signal_inside_a_real_finalizer_prints_no_traceback_and_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python hands an exception raised in `__del__` to `sys.unraisablehook`, which prints
    "Exception ignored ... Traceback" (what CI saw from SQLAlchemy's weakref callback). Inside
    the block the signal is recorded instead, and the next `raise_if_stopped` raises it; other
    unraisable errors still reach the previous hook."""
    import gc
    import os

    from harness import interrupts
    from harness.errors import Terminated

    class SignalsInFinalizer:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)

    class FailsInFinalizer:
        def __del__(self) -> None:
            raise ValueError("an ordinary finalizer bug")

    printed: list[BaseException | None] = []  # stands in for Python's printing hook
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: printed.append(unraisable.exc_value))
    with pytest.raises(Terminated, match="SIGTERM"), interrupts.stop_signals_as_interrupt():
        SignalsInFinalizer()
        gc.collect()
        FailsInFinalizer()
        gc.collect()
        interrupts.raise_if_stopped()
    assert [type(e) for e in printed] == [ValueError], printed
    interrupts.raise_if_stopped()
