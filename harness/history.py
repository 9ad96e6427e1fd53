"""`harness runs`: an experiment's recent parent runs and their children, how each ended
(with the failure reason) and the command that continues an unfinished one.

Only the newest unfinished `harness run` parent can be continued (`harness run NAME --resume`
picks that one); a study continues when the same `harness tune` command is run again. A
`harness run` parent still marked RUNNING is either training now or was killed without a chance
to say so (kill -9, a lost machine): MLflow cannot tell these apart, so the hint says so. A study
parent carries its worker's heartbeat: one whose worker stopped beating is ended KILLED here
("worker stopped (no heartbeat)", see `harness.study_liveness`) before it is listed.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from harness import tracking
from harness.errors import ConfigError, UnknownNameError
from harness.study_liveness import end_dead_study_parents
from harness.tracking import RunRecord, Tracker, no_runs_message

UNFINISHED = ("FAILED", "KILLED", "RUNNING")
TRIAL_KIND = "trial"
_REASON_CHARS = 120  # a failure reason longer than this is cut in the table (the full text is on the run)


def format_duration(seconds: float | None) -> str:
    """'42 s', '3 min 5 s', '2 h 7 min'."""
    if seconds is None:
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _duration(run: RunRecord, now_ms: int) -> str:
    start, end = run.start_time, run.end_time
    if not start:
        return ""
    if run.status == "RUNNING" or not end:
        return format_duration((now_ms - start) / 1000) + " so far"
    return format_duration((end - start) / 1000)


def _reason(run: RunRecord) -> str:
    text = " ".join(run.tags.get(tracking.FAILURE_TAG, "").split())
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


def tune_command(experiment: str, run: RunRecord) -> str:
    """The `harness tune` command that continues a study parent run (from its logged params)."""
    params = run.params
    variant = params.get("variant", "")
    parts = ["harness tune", experiment, f"--variant {variant}", f"--trials {params.get('trials', '')}"]
    study = run.tags.get(tracking.STUDY_NAME_TAG)
    if study and study != f"{experiment}-{variant}":
        parts.append(f"--study-name {study}")
    for option, default in (("sampler", "tpe"), ("pruner", "median")):
        if params.get(option, default) != default:
            parts.append(f"--{option} {params[option]}")
    return " ".join(parts)


def continue_command(experiment: str, run: RunRecord, resumable_id: str | None) -> str:
    """How to continue an unfinished parent run ("" for finished ones and runs --resume cannot reach)."""
    if run.status not in UNFINISHED:
        return ""
    kind = run.tags.get(tracking.KIND_TAG)
    if kind == "study":
        return tune_command(experiment, run) + " (same --storage)"
    if kind != "run" or run.run_id != resumable_id:
        return ""  # --resume continues only the newest unfinished run
    command = f"harness run {experiment} --resume"
    return command + " (if its process has stopped)" if run.status == "RUNNING" else command


def _row(run: RunRecord, name: str, now_ms: int, command: str = "") -> dict[str, Any]:
    start = run.start_time
    return {
        "run id": run.run_id, "name": name, "kind": run.tags.get(tracking.KIND_TAG, ""),
        "status": run.status,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start / 1000)) if start else "",
        "duration": _duration(run, now_ms), "failure reason": _reason(run), "to continue": command,
    }


def _trials_row(trials: list[RunRecord]) -> dict[str, Any]:
    """One line for a study's trials: how many ended how (a study can have hundreds)."""
    counts = pd.Series([t.status for t in trials]).value_counts()
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    return {"run id": "", "name": f"  └ {len(trials)} trials", "kind": TRIAL_KIND, "status": summary,
            "started": "", "duration": "", "failure reason": "", "to continue": ""}


def recent_runs(tracker: Tracker, experiment: str, limit: int = 10) -> pd.DataFrame:
    """The newest `limit` parent runs of `experiment`, newest first, each followed by its
    children (a study's trials summarised in one line), as display-ready rows."""
    if limit < 1:
        raise ConfigError(f"limit must be at least 1 (got {limit}).")
    experiment_id = tracker.find_experiment(experiment)
    parents = tracker.parent_runs(experiment_id, limit) if experiment_id is not None else []
    if not parents:
        raise UnknownNameError(no_runs_message(tracker, experiment))
    if any(
        p.status == "RUNNING" and p.tags.get(tracking.KIND_TAG) == "study" for p in parents
    ) and end_dead_study_parents(tracker, experiment_id, limit=limit):
        parents = tracker.parent_runs(experiment_id, limit)
    resumable = tracker.latest_parent_run(experiment_id, unfinished_only=True)
    resumable_id = resumable.run_id if resumable is not None else None
    now_ms = int(time.time() * 1000)
    rows = []
    for parent in parents:
        rows.append(_row(parent, parent.name, now_ms, continue_command(experiment, parent, resumable_id)))
        children = tracker.children(experiment_id, parent.run_id)
        trials = [r for r in children if r.tags.get(tracking.KIND_TAG) == TRIAL_KIND]
        if trials:
            rows.append(_trials_row(trials))
        rows += [_row(r, f"  └ {r.name}", now_ms) for r in children
                 if r.tags.get(tracking.KIND_TAG) != TRIAL_KIND]
    return pd.DataFrame(rows)


def runs_note(experiment: str) -> str:
    """The caption under the table."""
    return (f"--resume continues the newest unfinished `harness run`; give it the same --set/--device options as "
            f"the original command. `harness compare {experiment} --run RUN_ID` compares any parent run.")
