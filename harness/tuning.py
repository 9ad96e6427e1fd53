"""`harness tune`: Optuna studies over one variant, every trial a nested MLflow run.

The objective is the trial's best validation accuracy, in the one meaning of "best" the
harness has: the validation accuracy of the epoch chosen by `early_stopping_metric` (the
lowest val_loss by default; see `FitState.best_metrics`). The test set is never used for
selection. Each epoch is reported to Optuna and the pruner may stop the trial. Each trial's
run goes through `harness.lifecycle`, like `harness run`'s variants. The storage is opened by
`harness.study_store` (any SQLAlchemy URL, default sqlite `optuna.db`, or `journal:PATH`); RDB
storages run a heartbeat so a trial whose worker died is failed and retried with the same params
(its MLflow run ended KILLED, `StaleTrialRetry`); the study's MLflow parent run carries a
heartbeat of its own so a dead worker's parent is ended too (`end_dead_study_parents`). Storage
URIs are only ever shown through `harness.uris`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from harness import reporter, reports, tracking
from harness.config import TrainConfig
from harness.distributed import SINGLE, Dist
from harness.errors import ConfigError
from harness.experiment import Experiment
from harness.lifecycle import SYSTEM_METRICS_INTERVAL, RunContext, VariantResult, parent_run
from harness.promotion import DEFAULT_ALIAS, Promotion, check_names
from harness.promotion import register as register_model
from harness.registry import Registry
from harness.seeds import SeedPlan
from harness.study_liveness import (
    DEAD_WORKER_REASON,
    HEARTBEAT_INTERVAL_TAG,
    HEARTBEAT_TAG,
    end_dead_study_parents,
    parent_heartbeat,
)
from harness.study_store import (
    DEFAULT_STORAGE,
    FINISHED_STATES,
    OBJECTIVE_NAME,
    STALE_TRIAL_RETRIES,
    TRIAL_RUN_ATTR,
    default_study_name,
    finished_trials,
    has_complete_trial,
    open_storage,
    pick_variant,
    trial_line,
    trials_table,
)
from harness.tracking import Tracker, now_ms
from harness.trial import Objective, follow_trials, train_on_every_rank
from harness.uris import redact

# Optuna's matplotlib plots are marked experimental; they are what the parent run shows.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SAMPLERS: Registry[Any] = Registry("sampler")
SAMPLERS.add("tpe", lambda seed: optuna.samplers.TPESampler(seed=seed))
SAMPLERS.add("random", lambda seed: optuna.samplers.RandomSampler(seed=seed))
SAMPLERS.add("cmaes", lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False))
SAMPLERS.add("gp", lambda seed: optuna.samplers.GPSampler(seed=seed))

PRUNERS: Registry[Any] = Registry("pruner")
# A trial is never judged on its first epoch alone (too noisy): the step is the epoch (from 1)
# and Optuna's MedianPruner may prune once `step >= n_warmup_steps`, so with 2 the earliest
# prune is at the end of epoch 2.
PRUNERS.add("median", lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2))
PRUNERS.add("hyperband", lambda: optuna.pruners.HyperbandPruner(min_resource=1))
PRUNERS.add("none", lambda: optuna.pruners.NopPruner())
# Compares a trial's seeds with the best trial's, seed by seed (a signed-rank test): needs
# --repeat / --seeds, and stops a trial whose seeds are significantly worse.
PRUNERS.add("wilcoxon", lambda: optuna.pruners.WilcoxonPruner(p_threshold=0.1))
BY_SEED_PRUNERS = ("wilcoxon",)
# The last epoch after which each epoch-judging pruner above still cannot stop a trial (median:
# n_warmup_steps; hyperband: min_resource). A trial of no more epochs than that is never pruned.
UNPRUNED_EPOCHS = {"median": 2, "hyperband": 1}
# A study whose best validation accuracy is this close to chance (1 / classes; at most half of
# chance) has learned nothing: too few epochs or images, or a search space of useless values.
CHANCE_MARGIN = 0.05


@dataclass(frozen=True)
class TuneOptions:
    """How to run a study (everything but the experiment and its variant)."""

    trials: int = 20
    timeout: float | None = None
    study_name: str | None = None
    storage: str | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    n_jobs: int = 1
    seed: int = 0
    retrain_best: bool = False
    heartbeat_seconds: int = 10
    seeds: SeedPlan = SeedPlan()  # --repeat / --seeds: each trial at several seeds
    register: str | None = None  # --register: the retrained best model into the registry, under this name
    alias: str = DEFAULT_ALIAS  # moved to the new version only on improvement (`harness.promotion`)
    system_metrics: float | None = SYSTEM_METRICS_INTERVAL  # seconds between samples on each trial's run; None: off

    def __post_init__(self) -> None:
        """Reject impossible values with one sentence each, before any store is opened."""
        if self.register is not None and not self.retrain_best:
            raise ConfigError("register needs retrain_best=True: the model registered is the best trial's params "
                              "retrained on train + validation (trials keep no model).")
        check_names(self.register, self.alias)
        if self.trials < 1:
            raise ConfigError(f"trials must be at least 1 (got {self.trials}).")
        if self.n_jobs < 1:
            raise ConfigError(f"n_jobs must be at least 1 (got {self.n_jobs}).")
        if self.timeout is not None and not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ConfigError(f"timeout must be a positive number of seconds (got {self.timeout:g}); "
                              "leave it out for no time limit.")
        if self.heartbeat_seconds < 1:
            raise ConfigError(f"heartbeat must be at least 1 second (got {self.heartbeat_seconds}).")
        SAMPLERS.get(self.sampler)  # unknown names: one "did you mean" line
        PRUNERS.get(self.pruner)
        if self.pruner in BY_SEED_PRUNERS and len(self.seeds.seeds or range(self.seeds.repeat or 1)) < 2:
            raise ConfigError(f"pruner '{self.pruner}' compares a trial's seeds: add repeat=K (K >= 2) or "
                              "seeds=[a, b, ...].")


class StaleTrialRetry:
    """Heartbeat callback for a dead worker's trial: mark its MLflow run KILLED, then re-queue
    its params (up to 3 retries)."""

    def __init__(self, tracker: Tracker | None) -> None:
        self.tracker = tracker
        self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=STALE_TRIAL_RETRIES)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get(TRIAL_RUN_ATTR)
        if run_id and self.tracker is not None:
            try:
                self.tracker.set_tags(run_id, {tracking.TRIAL_STATE_TAG: optuna.trial.TrialState.FAIL.name})
                self.tracker.end_run(run_id, "KILLED", "worker stopped (no heartbeat); trial retried")
            except Exception:  # noqa: BLE001 - the retry matters more than the bookkeeping
                pass
        self._retry(study, trial)


@dataclass
class TuneOutcome:
    study: optuna.Study
    parent_run_id: str
    retrained: VariantResult | None
    promotion: Promotion | None = None  # `--register`: the new registry version


def tune(tracker: Tracker, exp: Experiment, variant: str | None, base: TrainConfig, options: TuneOptions,
         data_dir: Path | None = None, dist: Dist = SINGLE) -> TuneOutcome | None:
    """Run (or continue) the study until it has `options.trials` finished trials.

    The study's MLflow parent run never stays RUNNING once this returns or raises: Ctrl-C ends
    it KILLED, any other error FAILED, and while it runs it beats (`parent_heartbeat`) so that a
    worker killed without a chance to end it is recognised by the next one.

    With several processes (`dist`) rank 0 alone holds the study: it samples each trial and
    hands it to the other ranks, which train it with it (`follow_trials`; they return None), so
    each trial is one Optuna trial and one MLflow run whatever the number of processes.
    """
    variant = pick_variant(exp, variant)
    # The first optimizer imports torch._dynamo (seconds on a small CPU). A Ctrl-C that lands in a
    # garbage-collection callback during that import is dropped by Python and training goes on, so
    # it is imported here, before any run opens (measured: 10 of 13 Ctrl-Cs one second in were lost).
    import torch._dynamo  # noqa: F401

    if base.val_fraction == 0:
        raise ConfigError("Tuning selects on validation accuracy; "
                          "set val_fraction above 0 (e.g. val_fraction=0.1).")
    if dist.enabled:
        opened: list[tuple[optuna.Study, RunContext]] = []
        ids = dist.from_main(lambda: _open_study(tracker.local, exp, variant, base, options, data_dir, opened))
        ctx = RunContext(tracker, *ids, exp.source_file, data_dir, dist=dist, system_metrics=options.system_metrics)
        if not dist.is_main:
            follow_trials(ctx)
            return None
        study = opened[0][0]
        try:
            return _tune_in(tracker.local, study, ctx, base, exp, variant, options)
        finally:
            try:
                dist.broadcast(("stop",))
            except Exception:  # noqa: BLE001 - the group is gone: the other ranks have ended already
                pass
    opened = []
    _open_study(tracker, exp, variant, base, options, data_dir, opened)
    study, ctx = opened[0]
    return _tune_in(tracker, study, ctx, base, exp, variant, options)


def _open_study(tracker: Tracker, exp: Experiment, variant: str, base: TrainConfig, options: TuneOptions,
                data_dir: Path | None,
                opened: list[tuple[optuna.Study, RunContext]]) -> tuple[str, str, dict[str, str]]:
    """Open (or create) the study and start its MLflow parent run; appends (study, context) to
    `opened` and returns (experiment id, parent run id, environment tags)."""
    pruner = PRUNERS.get(options.pruner)()
    study_name = options.study_name or default_study_name(exp, variant)
    storage = open_storage(options.storage, options.heartbeat_seconds, StaleTrialRetry(tracker))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=storage, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    study.set_metric_names([OBJECTIVE_NAME])
    # Offset the seed by the trials already there: a resumed study must not replay the same samples.
    study.sampler = SAMPLERS.get(options.sampler)(options.seed + len(study.trials))
    experiment_id = tracker.ensure_experiment(exp.name, exp.description)
    for dead in end_dead_study_parents(tracker, experiment_id, study_name):
        reporter.status(f"Study parent run {dead} of '{study_name}' had no heartbeat: marked KILLED "
                        f"({DEAD_WORKER_REASON}).")
    env_tags = tracking.environment_tags(base.device, exp.source_file)
    parent_id = tracker.start_run(experiment_id, f"study-{study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  {tracking.KIND_TAG: "study", tracking.STUDY_NAME_TAG: study_name,
                                   HEARTBEAT_TAG: str(now_ms()), HEARTBEAT_INTERVAL_TAG: str(options.heartbeat_seconds),
                                   **env_tags})
    opened.append((study, RunContext(tracker, experiment_id, parent_id, env_tags, exp.source_file, data_dir,
                                     system_metrics=options.system_metrics)))
    return experiment_id, parent_id, env_tags


def _tune_in(tracker: Tracker, study: optuna.Study, ctx: RunContext, base: TrainConfig, exp: Experiment,
             variant: str, options: TuneOptions) -> TuneOutcome:
    """The study under its parent run (started by `_open_study`), which ends however this does."""
    parent_id = ctx.parent_id
    with parent_run(tracker, ctx.experiment_id, run_id=parent_id, secret=options.storage or "") as parent, \
            parent_heartbeat(tracker, parent_id, options.heartbeat_seconds):
        retrained = _run_study(tracker, study, ctx, base, exp, variant, options)
        promotion = None
        if options.register is not None and retrained is not None and retrained.status == "FINISHED":
            # The retrained model has no validation split: it is judged by the study's best
            # validation accuracy, the number that chose its params.
            promotion = register_model(tracker, f"runs:/{retrained.run_id}/model", options.register,
                                       float(study.best_value), options.alias,
                                       {"harness.experiment": exp.name, "harness.variant": variant,
                                        "harness.run_id": retrained.run_id, "harness.parent_run_id": parent_id,
                                        "harness.study": study.study_name,
                                        "test_acc": f"{retrained.metrics.get('test_acc', float('nan')):.6g}"})
        if retrained is not None and retrained.status != "FINISHED":
            parent.end_as("FAILED")  # the retrain's own run carries the reason
    return TuneOutcome(study, parent_id, retrained, promotion)


def _run_study(tracker: Tracker, study: optuna.Study, ctx: RunContext, base: TrainConfig, exp: Experiment,
               variant: str, options: TuneOptions) -> VariantResult | None:
    """The trials, the study's summary on the parent run, and the optional retrain of the best."""
    # The storage is a param so the study can be found again; never with its password.
    tracker.log_params(ctx.parent_id, {"variant": variant, "sampler": options.sampler,
                                       "sampler_seed": str(options.seed),
                                       "pruner": options.pruner,
                                       "trials": str(options.trials), "n_jobs": str(options.n_jobs),
                                       "storage": redact(options.storage or DEFAULT_STORAGE),
                                       **options.seeds.to_params()})
    remaining = options.trials - finished_trials(study)
    if remaining > 0 and base.epochs <= UNPRUNED_EPOCHS.get(options.pruner, 0):
        reporter.warning(f"pruner '{options.pruner}' stops a trial only after epoch "
                         f"{UNPRUNED_EPOCHS[options.pruner]}, and trials train {base.epochs} epoch(s): no trial will "
                         f"be pruned; train epochs={UNPRUNED_EPOCHS[options.pruner] + 1} or more, or say "
                         "pruner none.")
    if not ctx.dist.enabled:  # (with several processes, each already has its share of the cores)
        # Split the cores between parallel trials instead of oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // options.n_jobs))
    if remaining > 0:
        with _quiet_interrupted_trials():
            study.optimize(
                Objective(ctx, base, exp, study.study_name, options.seeds, options.pruner in BY_SEED_PRUNERS),
                n_trials=remaining, timeout=options.timeout,
                n_jobs=options.n_jobs, catch=(Exception,),
                callbacks=[optuna.study.MaxTrialsCallback(options.trials, states=FINISHED_STATES),
                           lambda s, trial: reporter.status(trial_line(s, trial))],
            )
    else:
        reporter.status(f"Study '{study.study_name}' already has {finished_trials(study)} finished trials.")
    log_study(tracker, ctx.parent_id, study)
    chance = chance_warning(tracker, study)
    if chance:
        reporter.warning(chance)
    if not (options.retrain_best and has_complete_trial(study)):
        return None
    config = base.override(**study.best_params, val_fraction=0.0)  # train + validation
    tags = {tracking.KIND_TAG: "variant", tracking.VARIANT_TAG: "retrain-best", tracking.SEED_TAG: str(config.seed)}
    return train_on_every_rank(ctx, "retrain-best", config, "retrain-best", tags, test=True)


def chance_warning(tracker: Tracker, study: optuna.Study) -> str | None:
    """A sentence when no complete trial of the study beats chance accuracy (1 / classes, read off
    a trial run's logged dataset) by more than CHANCE_MARGIN (at most half of chance), else None."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    run_id = complete[0].user_attrs.get(TRIAL_RUN_ATTR)
    record = tracker.find_run(run_id) if run_id else None
    classes = [json.loads(d.profile).get("num_classes") for d in (record.datasets if record else ())
               if d.profile.startswith("{")]
    if not classes or not classes[0]:
        return None
    chance = 1 / classes[0]
    best = max(t.value for t in complete)
    if best > chance + min(CHANCE_MARGIN, chance / 2):
        return None
    return (f"no trial of study '{study.study_name}' learned anything: the best {OBJECTIVE_NAME} is {best:.4f}, "
            f"chance for {classes[0]} classes is {chance:.4f}; train more epochs or images, or widen the search space.")


class _InterruptedTrialFilter(logging.Filter):
    """Drops Optuna's "Trial N failed ... KeyboardInterrupt" warning (with its 20-line
    traceback) and the "Trial N failed with value None" line after it: Ctrl-C is not a fault,
    the trial is still recorded FAIL and its run KILLED, and the CLI says how to continue."""

    _TRIAL = re.compile(r"Trial (\d+) failed")

    def __init__(self) -> None:
        super().__init__()
        self.interrupted: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        match = self._TRIAL.match(record.getMessage())
        if match is None:
            return True
        if record.exc_info and record.exc_info[0] is not None and issubclass(record.exc_info[0], KeyboardInterrupt):
            self.interrupted.add(match[1])
            return False
        return match[1] not in self.interrupted


@contextmanager
def _quiet_interrupted_trials() -> Iterator[None]:
    """`_InterruptedTrialFilter` on the logger Optuna reports failed trials with, for the block."""
    logger = logging.getLogger("optuna.study._optimize")
    quiet = _InterruptedTrialFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def log_study(tracker: Tracker, run_id: str, study: optuna.Study) -> None:
    """Best params/value, the trials table and Optuna's plots on the study's parent run."""
    table = trials_table(study)
    tracker.log_text(run_id, table.to_csv(index=False), "trials.csv")
    tracker.log_text(run_id, reports.markdown_table(table), "trials.md")
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    tracker.log_metrics(run_id, {f"trials_{k.lower()}": float(v) for k, v in counts.items()})
    if not has_complete_trial(study):
        return
    tracker.log_dict(run_id, study.best_params, "best_params.json")
    tracker.log_metrics(run_id, {"best_value": study.best_value, "best_trial": float(study.best_trial.number)})
    tracker.log_params(run_id, {f"best.{k}": str(v) for k, v in study.best_params.items()})
    from optuna.visualization import matplotlib as ov

    for name, plot in (("optimization_history", ov.plot_optimization_history),
                       ("param_importances", ov.plot_param_importances),
                       ("parallel_coordinate", ov.plot_parallel_coordinate), ("slice", ov.plot_slice)):
        try:
            # Few trials make degenerate axes and importances: matplotlib and Optuna warn about
            # it on stderr, after the study itself went fine; the figure still tells.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
        except Exception as exc:  # noqa: BLE001 - e.g. importances need several complete trials
            tracker.log_text(run_id, f"{name} not drawn: {exc}\n", f"plots/{name}.txt")
            continue
        tracker.log_figure(run_id, reports.optuna_figure(ax), f"plots/{name}.png")
