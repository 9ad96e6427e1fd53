"""Whether a `harness tune` worker that opened a study parent run is still alive.

Optuna's own heartbeat covers a dead worker's trial (it is failed and retried), not the MLflow
parent run that worker opened. While a worker runs its study, `parent_heartbeat` keeps a
`harness.heartbeat` tag on that parent fresh; a worker killed with -9 stops, and
`end_dead_study_parents` (run by the next `harness tune` of the study and by `harness runs`)
ends such a parent KILLED once the tag is older than 3 of that worker's intervals. Needs only the
tracker: `harness runs` checks it without loading PyTorch or Optuna. Workers' clocks are assumed
to agree to within a heartbeat interval.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from harness import tracking
from harness.tracking import RunRecord, Tracker, now_ms

HEARTBEAT_TAG = "harness.heartbeat"  # on a study parent: when its worker last beat (ms since the epoch)
HEARTBEAT_INTERVAL_TAG = "harness.heartbeat_seconds"  # that worker's --heartbeat
MISSED_BEATS = 3  # as Optuna's grace period: a worker silent for 3 intervals is dead
DEAD_WORKER_REASON = "worker stopped (no heartbeat)"


@contextmanager
def parent_heartbeat(tracker: Tracker, run_id: str, seconds: int) -> Iterator[None]:
    """Set the study parent's `harness.heartbeat` tag to the current time twice every `seconds`
    while the block runs (a daemon thread, stopped on exit; twice, so a beat delayed by a busy
    store or interpreter is not yet 3 intervals late).

    Optuna's heartbeat covers a dead worker's trial, not the MLflow parent run that worker
    opened; this one does. A worker killed with -9 stops beating, and `end_dead_study_parents`
    (run by the next `harness tune` of the study and by `harness runs`) ends its parent KILLED
    once the tag is older than 3 of that worker's intervals. A beat that fails (the store is
    briefly busy) is skipped: the next one follows `seconds` later.
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(seconds / 2):
            try:
                tracker.set_tags(run_id, {HEARTBEAT_TAG: str(now_ms())})
            except Exception:  # noqa: BLE001 - a missed beat is tolerated (3 must be missed)
                pass

    thread = threading.Thread(target=beat, name="harness-study-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def is_dead_study_parent(run: RunRecord, at_ms: int | None = None) -> bool:
    """True for a study parent still marked RUNNING whose worker's heartbeat tag is older than
    3 of its intervals (`at_ms`: now). A parent without the tag (written by a harness without
    it) is never called dead: nothing tells a dead worker from a live one there."""
    tags = run.tags
    if run.status != "RUNNING" or tags.get(tracking.KIND_TAG) != "study":
        return False
    try:
        last, interval = int(tags[HEARTBEAT_TAG]), float(tags[HEARTBEAT_INTERVAL_TAG])
    except (KeyError, ValueError):
        return False
    return (now_ms() if at_ms is None else at_ms) - last > MISSED_BEATS * interval * 1000


def end_dead_study_parents(tracker: Tracker, experiment_id: str, study_name: str | None = None,
                           limit: int = 1000) -> list[str]:
    """End every dead study parent run (`is_dead_study_parent`) of the experiment KILLED with
    the reason "worker stopped (no heartbeat)", and its trial runs still marked RUNNING with it
    (Optuna itself fails and retries the trial; this ends the MLflow side). `study_name`: only
    that study's parents. Returns the ended parents' run ids."""
    ended = []
    for run in tracker.parent_runs(experiment_id, limit):
        if study_name is not None and run.tags.get(tracking.STUDY_NAME_TAG) != study_name:
            continue
        if not is_dead_study_parent(run):
            continue
        for child in tracker.children(experiment_id, run.run_id):
            if child.status == "RUNNING":
                tracker.end_run(child.run_id, "KILLED", DEAD_WORKER_REASON)
        tracker.end_run(run.run_id, "KILLED", DEAD_WORKER_REASON)
        ended.append(run.run_id)
    return ended
