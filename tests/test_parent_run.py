"""`lifecycle.parent_run`, the one life of a command's own run (`harness run`'s parent, a study's,
a trial's run over its seeds, lr-find's), against a real sqlite MLflow store; and
`checkpoint.changed_settings`, the one comparison of a checkpoint's saved config with today's."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness import checkpoint, lifecycle
from harness.config import TrainConfig
from harness.errors import HarnessError
from harness.lifecycle import parent_run
from harness.tracking import FAILURE_TAG, PARENT_RUN, Tracker, TrackingError


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tracker, str]:
    """A tracker on a sqlite store, and one experiment in it: one for the module, as creating a
    store costs seconds (every test reads only the runs it made)."""
    tracker = Tracker.open(f"sqlite:///{tmp_path_factory.mktemp('parent_run')}/mlflow.db")
    return tracker, tracker.ensure_experiment("parent-run", "parent_run tests")


def _run(tracker: Tracker, run_id: str) -> tuple[str, dict[str, str]]:
    """(status, tags) of run `run_id` as the store has it."""
    run = MlflowClient(tracker.uri).get_run(run_id)
    return run.info.status, run.data.tags


def test_a_block_that_completes_ends_the_run_finished_with_its_tags(store: tuple[Tracker, str]) -> None:
    tracker, experiment_id = store
    with parent_run(tracker, experiment_id, "study-x", {"harness.kind": "study"}) as run:
        assert _run(tracker, run.run_id)[0] == "RUNNING"
    status, tags = _run(tracker, run.run_id)
    assert status == "FINISHED"
    assert tags["harness.kind"] == "study" and tags["mlflow.runName"] == "study-x"
    assert FAILURE_TAG not in tags


def test_end_as_ends_a_completed_block_with_that_status_and_reason(store: tuple[Tracker, str]) -> None:
    tracker, experiment_id = store
    with parent_run(tracker, experiment_id, "run") as run:
        run.end_as("FAILED", "b: diverged")
    status, tags = _run(tracker, run.run_id)
    assert (status, tags[FAILURE_TAG]) == ("FAILED", "b: diverged")


@pytest.mark.parametrize(("error", "reason"), [
    (HarnessError("Cannot write checkpoint x: no space left"), "Cannot write checkpoint x: no space left"),
    (RuntimeError("boom\nsecond line"), "RuntimeError: boom"),
])
def test_an_exception_ends_the_run_failed_with_a_one_line_reason_and_propagates(
        store: tuple[Tracker, str], error: Exception, reason: str) -> None:
    tracker, experiment_id = store
    with pytest.raises(type(error)), parent_run(tracker, experiment_id, "run") as run:
        run.end_as("FINISHED")  # what the block meant to say is moot once it raised
        raise error
    status, tags = _run(tracker, run.run_id)
    assert (status, tags[FAILURE_TAG]) == ("FAILED", reason)


def test_ctrl_c_ends_the_run_killed(store: tuple[Tracker, str]) -> None:
    tracker, experiment_id = store
    with pytest.raises(KeyboardInterrupt), parent_run(tracker, experiment_id, "run") as run:
        raise KeyboardInterrupt
    status, tags = _run(tracker, run.run_id)
    assert (status, tags[FAILURE_TAG]) == ("KILLED", "interrupted (Ctrl-C)")


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_inside_the_block_ends_the_run_killed_naming_the_signal(store: tuple[Tracker, str]) -> None:
    tracker, experiment_id = store
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), parent_run(tracker, experiment_id, "run") as run:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here at the latest
    status, tags = _run(tracker, run.run_id)
    assert (status, tags[FAILURE_TAG]) == ("KILLED", "interrupted (SIGTERM)")
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_nested_runs_end_each_their_own_way(store: tuple[Tracker, str]) -> None:
    """A trial's run over seeds inside a study's: the inner one nests under the outer, and the
    outer's fate follows what reaches it."""
    tracker, experiment_id = store
    with parent_run(tracker, experiment_id, "study") as outer:
        with parent_run(tracker, experiment_id, "trial-0", nested_in=outer.run_id) as inner:
            inner.end_as("FAILED", "seed 1: diverged")
        assert _run(tracker, inner.run_id)[0] == "FAILED"
        assert _run(tracker, outer.run_id)[0] == "RUNNING"
    assert _run(tracker, inner.run_id)[1][PARENT_RUN] == outer.run_id
    assert _run(tracker, outer.run_id)[0] == "FINISHED"

    with pytest.raises(KeyboardInterrupt), parent_run(tracker, experiment_id, "study") as outer, \
            parent_run(tracker, experiment_id, "trial-1", nested_in=outer.run_id) as inner:
        raise KeyboardInterrupt
    assert _run(tracker, inner.run_id)[0] == _run(tracker, outer.run_id)[0] == "KILLED"


def test_an_existing_run_is_taken_not_started(store: tuple[Tracker, str]) -> None:
    """`harness run --resume`'s reopened parent, a study's parent started with its heartbeat."""
    tracker, experiment_id = store
    run_id = tracker.start_run(experiment_id, "run-1", {"harness.kind": "run"})
    before = len(MlflowClient(tracker.uri).search_runs([experiment_id]))
    with parent_run(tracker, experiment_id, "ignored", {"ignored": "x"}, run_id=run_id) as run:
        assert run.run_id == run_id
    assert len(MlflowClient(tracker.uri).search_runs([experiment_id])) == before
    status, tags = _run(tracker, run_id)
    assert status == "FINISHED" and "ignored" not in tags and tags["mlflow.runName"] == "run-1"


def test_the_storage_password_never_reaches_the_reason(store: tuple[Tracker, str]) -> None:
    tracker, experiment_id = store
    url = "postgresql://optuna:hunter2@db.example/studies"
    with pytest.raises(RuntimeError), parent_run(tracker, experiment_id, "study", secret=url) as run:
        raise RuntimeError(f"could not connect to {url}")
    reason = _run(tracker, run.run_id)[1][FAILURE_TAG]
    assert "hunter2" not in reason and "db.example" in reason


def test_an_unreachable_store_leaves_the_run_and_names_the_command_that_completes_it(
        store: tuple[Tracker, str]) -> None:
    tracker, experiment_id = store
    with pytest.raises(TrackingError) as caught, \
            parent_run(tracker, experiment_id, "run", resume_hint="harness run quickstart --resume") as run:
        raise TrackingError("MLflow tracking server http://x does not answer", unreachable=True)
    assert caught.value.unreachable
    assert str(caught.value).endswith("then run `harness run quickstart --resume`.")
    assert _run(tracker, run.run_id)[0] == "RUNNING"  # it could not be told; --resume ends it later


def test_a_refused_final_end_is_the_stores_error_not_a_failed_run(store: tuple[Tracker, str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The block's work succeeded: if ending it FINISHED is refused, nothing marks it FAILED."""
    tracker, experiment_id = store
    ends: list[str] = []

    def refused(run_id: str, status: str, reason: str | None = None) -> None:
        ends.append(status)
        raise TrackingError("Cannot end a run: disk full")

    with pytest.raises(TrackingError, match="disk full"), parent_run(tracker, experiment_id, "run"):
        monkeypatch.setattr(tracker, "end_run", refused)
    assert ends == ["FINISHED"]


def test_changed_settings_names_each_changed_field_with_both_values_but_not_the_device() -> None:
    trained = TrainConfig(model="lenet_relu", dataset="digits", epochs=3, lr=0.05, device="cuda")
    ckpt = {"model": {}, "config": trained.to_dict()}
    assert checkpoint.changed_settings(ckpt, trained.override(device="cpu")) == {}
    changed = checkpoint.changed_settings(ckpt, trained.override(lr=0.1, epochs=5))
    assert changed == {"epochs": (3, 5), "lr": (0.05, 0.1)}
    assert list(changed) == [k for k in trained.to_dict() if k in changed]  # in the config's field order


def test_resume_refuses_with_the_first_changed_setting() -> None:
    trained = TrainConfig(model="lenet_relu", dataset="digits", epochs=3, lr=0.05)
    ckpt = {"model": {}, "config": trained.to_dict()}
    lifecycle._check_resumable(ckpt, trained.override(device="cpu"), "net")  # the device may change
    with pytest.raises(HarnessError,
                       match=r"trained with epochs=3 but now epochs=5; resume with the same set overrides"):
        lifecycle._check_resumable(ckpt, trained.override(lr=0.1, epochs=5), "net")


def test_a_runs_checkpoint_folder_follows_harness_checkpoint_dir(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    assert checkpoint.run_folder("abc") == tmp_path / "ckpt" / "abc"
    monkeypatch.delenv("HARNESS_CHECKPOINT_DIR")
    assert checkpoint.run_folder("abc") == Path("checkpoints") / "abc"
    assert lifecycle.checkpoint_root is checkpoint.checkpoint_root  # its earlier home still answers
