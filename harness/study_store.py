"""Reading `harness tune`'s Optuna studies: the storage opened as `harness tune` opens it, a study
loaded by name, its trials table and one-line summaries.

`harness study`, `harness dashboard` and `harness report` need only this, so it imports neither
PyTorch nor the training stack (`tests/test_study_store.py` checks it). `harness.tuning` opens
its storage here too, so every command resolves a storage URL the same way: any SQLAlchemy URL
(default: sqlite `optuna.db` with a busy timeout) or `journal:PATH`. Storage URIs are only ever
shown through `harness.uris`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd

from harness.errors import TrackingError, UnknownNameError, first_line, retry
from harness.registry import unknown_name_message
from harness.uris import redact, redact_text

if TYPE_CHECKING:
    from harness.experiment import Experiment

# Optuna marks RDB heartbeats experimental; they are what dead-worker retries rely on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_STORAGE = "sqlite:///optuna.db"
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
OBJECTIVE_NAME = "val_acc"  # how optuna-dashboard and Optuna's plots label the objective
TRIAL_RUN_ATTR = "mlflow_run_id"  # a trial's user attribute: its MLflow run
STD_ATTR = "val_acc_std"  # with seeds: the std of the seeds' best validation accuracies
STALE_TRIAL_RETRIES = 3  # a dead worker's trial is re-queued with the same params at most this often

StaleTrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def open_storage(url: str | None, heartbeat_seconds: int = 10,
                 on_stale_trial: StaleTrialCallback | None = None) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`: `journal:PATH` for a journal file, else a SQLAlchemy URL.

    RDB storages get a heartbeat: a trial whose worker stopped beating for 3 intervals is
    marked FAIL by the next worker that optimizes and handed to `on_stale_trial` (default:
    re-queued with the same params, up to `STALE_TRIAL_RETRIES` times). Every failure is a
    one-line HarnessError with any password hidden.
    """
    url = url or DEFAULT_STORAGE
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url.removeprefix("journal:")
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(path))
        except OSError as exc:  # a missing folder, no permission, a directory
            raise TrackingError(f"Cannot open the Optuna journal file '{path}' ({exc.strerror or first_line(exc)}); "
                                "create its folder or choose another storage 'journal:PATH'.") from None
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # wait for a lock instead of failing at once
    stale = on_stale_trial or optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=STALE_TRIAL_RETRIES)
    try:
        return retry(lambda: optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_seconds, grace_period=3 * heartbeat_seconds,
            heartbeat_stale_trial_callback=stale,
        ))
    except Exception as exc:  # noqa: BLE001 - unreachable server, bad URL, missing driver
        raise TrackingError(
            f"Cannot open Optuna storage '{redact(url)}' ({redact_text(first_line(exc), url)}); "
            "check the URL and that the database is reachable."
        ) from None


def load_study(storage_url: str | None, study_name: str) -> optuna.Study:
    """An existing study, or an UnknownNameError naming the studies the storage has."""
    storage = open_storage(storage_url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if study_name not in names:
        raise UnknownNameError(
            unknown_name_message(f"study in '{redact(storage_url or DEFAULT_STORAGE)}'", study_name, names))
    return optuna.load_study(study_name=study_name, storage=storage)


def default_study_name(exp: Experiment, variant: str) -> str:
    """The study `harness tune` runs for `variant` without --study-name: EXPERIMENT-VARIANT."""
    return f"{exp.name}-{variant}"


def pick_variant(exp: Experiment, variant: str | None) -> str:
    """`variant` (one of the experiment's, else a "did you mean" HarnessError), or the experiment's
    first variant when it is None: the variant `harness tune`, `study` and `lr-find` work on."""
    if variant is None:
        return next(iter(exp.variants))
    if variant not in exp.variants:
        raise UnknownNameError(unknown_name_message(f"variant of '{exp.name}'", variant, exp.variants))
    return variant


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """Number, state, value, params, duration and MLflow run of every trial; with seeds, the
    value as "mean ± std" over them."""
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))
    frame = frame.rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_"))
    if "duration" in frame:
        frame["duration"] = frame["duration"].dt.total_seconds()
    value = next((c for c in frame.columns if c == "value" or c.startswith("value_")), None)
    if STD_ATTR in frame and value is not None:
        frame.insert(frame.columns.get_loc(value) + 1, "mean ± std", [
            f"{v:.4f} ± {s:.4f}" if pd.notna(v) and pd.notna(s) else "" for v, s in zip(frame[value], frame[STD_ATTR])])
    return frame


def finished_trials(study: optuna.Study) -> int:
    """How many trials ended COMPLETE or PRUNED (what `--trials` counts)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def has_complete_trial(study: optuna.Study) -> bool:
    """Whether the study has a best trial (Optuna's `best_trial` raises until one is COMPLETE)."""
    return any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """One line per finished trial: number, state, the epoch it stopped at, params, value."""
    epoch = f" at epoch {trial.last_step}" if trial.last_step is not None else ""
    if "seeds" in trial.user_attrs:  # with seeds, the steps are seeds (Wilcoxon) or the first seed's epochs
        done = len(trial.user_attrs.get("seed_values", []))
        epoch = f" after {done} of {len(trial.user_attrs['seeds'])} seeds"
        if not done and trial.state == optuna.trial.TrialState.PRUNED:  # an epoch pruner stopped the first seed
            epoch = f" at epoch {trial.last_step} of its first seed"
    value = f": {OBJECTIVE_NAME} {trial.value:.4f}" if trial.value is not None else ""
    return f"trial {trial.number} {trial.state.name}{epoch}{value} with {_params_text(trial.params)}"


def best_summary(study: optuna.Study) -> str:
    """One paragraph: finished trials and the best one."""
    n = finished_trials(study)
    if not has_complete_trial(study):
        return f"Study '{study.study_name}': {n} finished trials, none complete."
    best = study.best_trial
    value = best.value if best.value is not None and not math.isnan(best.value) else float("nan")
    return (f"Study '{study.study_name}': {n} finished trials; best trial {best.number}: "
            f"val_acc {value:.4f} with {_params_text(best.params)}")
