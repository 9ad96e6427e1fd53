"""One Optuna trial of `harness tune`: sample its params, train it (at one seed, or at several
as children of the trial's run) through `harness.lifecycle`, report to the pruner, and end it
COMPLETE, PRUNED or FAIL. With several processes, rank 0 runs the trial and hands each training
job to the other ranks (`train_on_every_rank` / `follow_trials`). A trial retrying one whose
worker died continues that trial's checkpoint and MLflow run where it can reach them."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import optuna

from harness import reporter, tracking
from harness.checkpoint import LAST, changed_settings, run_folder
from harness.checkpoint import load as load_checkpoint
from harness.config import TrainConfig
from harness.errors import HarnessError
from harness.experiment import Experiment
from harness.lifecycle import (
    STOP_TAG,
    RunContext,
    VariantResult,
    open_run,
    parent_run,
    train_variant,
)
from harness.search_space import suggest
from harness.seeds import SeedPlan
from harness.study_store import STD_ATTR, TRIAL_RUN_ATTR
from harness.train import Callback, FitState, Trainer

CONTINUES_ATTR = "continues_trial"  # a retried trial that continued the dead trial's checkpoint and run
CONTINUES_ATTR_TAG = "harness.continues_trial"


class OptunaPruning(Callback):
    """Reports validation accuracy each epoch; when the pruner says so, ends training (the
    objective then raises `optuna.TrialPruned`)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.pruned = False

    def on_fit_start(self, t: Trainer, state: FitState) -> None:
        # A retried trial continuing a dead one's checkpoint: its epochs so far are this trial's too.
        for epoch, record in enumerate(state.history, start=1):
            self.trial.report(record["val_acc"], epoch)

    def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None:
        self.trial.report(record["val_acc"], state.epoch)
        if self.trial.should_prune():
            self.pruned = True
            state.stop_reason = f"pruned after epoch {state.epoch} (val_acc {record['val_acc']:.4f})"


def train_on_every_rank(ctx: RunContext, variant: str, config: TrainConfig, label: str, tags: dict[str, str],
                        test: bool, callbacks: list[Callback] = (), on_run: Any = None,
                        resume_run: str | None = None) -> VariantResult:
    """Open and train one child run (or continue `resume_run` from its checkpoint) on every rank:
    rank 0 (which runs the study) hands the job to the other ranks (`follow_trials`) first.
    `on_run(run_id)` is called once the run exists."""
    if ctx.dist.enabled:
        ctx.dist.broadcast(("train", variant, config, label, tags, test, resume_run))
    run_id = resume_run or open_run(ctx, label, config, tags)
    if on_run is not None:
        on_run(run_id)
    return train_variant(ctx, run_id, variant, config, label=label, callbacks=callbacks, test=test,
                         live_progress=test, resume=resume_run is not None)


def follow_trials(ctx: RunContext) -> None:
    """What every rank but 0 does in `harness tune --nproc-per-node N`: train each trial rank 0
    sampled, in step with it (rank 0's pruning decision reaches every rank at the end of each
    epoch, see `train.fit_epoch`), until rank 0 says the study is over."""
    while True:
        message = ctx.dist.broadcast(None)
        if message[0] == "stop":
            return
        _, variant, config, label, tags, test, resume_run = message
        run_id = resume_run or open_run(ctx, label, config, tags)
        train_variant(ctx, run_id, variant, config, label=label, test=test, live_progress=test,
                      resume=resume_run is not None)


class Objective:
    """One trial: sample params, train with pruning into the trial's own MLflow run.

    With seeds (`harness tune --repeat K` / `--seeds`), the trial's run is the parent of one
    run per seed, trained one after another; the trial's value is the mean of the seeds' best
    validation accuracies (their std a user attribute). The median and hyperband pruners watch
    the first seed's epochs; the Wilcoxon pruner compares seeds (each seed's result one step)."""

    def __init__(self, ctx: RunContext, base: TrainConfig, exp: Experiment, study_name: str,
                 seeds: SeedPlan | None = None, by_seed: bool = False) -> None:
        self.ctx, self.base, self.exp, self.study_name = ctx, base, exp, study_name
        self.seeds = seeds or SeedPlan()
        self.by_seed = by_seed  # the pruner compares seeds (Wilcoxon), not epochs

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            config = self.base.override(**suggest(trial, self.exp.search_space))
        except HarnessError as exc:
            # Sampled values that cannot train together (a warmup as long as the sampled epochs):
            # a region to avoid, so pruned (the sampler learns from it), said in one line, no run.
            raise optuna.TrialPruned(f"sampled values refused: {exc}") from None
        label = f"trial-{trial.number}"
        tags = {tracking.KIND_TAG: "trial", tracking.STUDY_NAME_TAG: self.study_name,
                tracking.TRIAL_NUMBER_TAG: str(trial.number)}
        if self.seeds.repeated:
            return self._seeds(trial, config, label, tags)
        pruning = OptunaPruning(trial)
        run_ids: list[str] = []

        def record(run_id: str) -> None:
            run_ids.append(run_id)
            trial.set_user_attr(TRIAL_RUN_ATTR, run_id)

        resume_run = self._continued_run(trial, label, config)
        try:
            result = train_on_every_rank(self.ctx, label, config, label, tags, test=False, callbacks=[pruning],
                                         on_run=record, resume_run=resume_run)
            run_id = run_ids[0]
        except KeyboardInterrupt:
            if run_ids:
                self._state(run_ids[0], optuna.trial.TrialState.FAIL)  # as Optuna records it; the run is KILLED
            raise
        if result.status == "FINISHED" and not pruning.pruned:
            self._state(run_id, optuna.trial.TrialState.COMPLETE)
            return result.metrics["best_val_acc"]
        if pruning.pruned or result.diverged:
            # A diverged trial says "this region is bad": pruned, so the sampler learns from it.
            self._state(run_id, optuna.trial.TrialState.PRUNED)
            raise optuna.TrialPruned(result.stop_reason or result.reason)
        self._state(run_id, optuna.trial.TrialState.FAIL)
        raise TrialFailed(result.reason or "failed")

    def _seeds(self, trial: optuna.Trial, config: TrainConfig, label: str, tags: dict[str, str]) -> float:
        """The trial at every seed of the plan, each a child of the trial's run."""
        tracker = self.ctx.tracker
        seeds = self.seeds.seeds_for(config)
        values: list[float] = []
        stop: optuna.TrialPruned | TrialFailed | None = None
        # Ctrl-C, a crash, a store error: the trial's run does not stay RUNNING.
        with parent_run(tracker, self.ctx.experiment_id, label, {**tags, **self.ctx.env_tags},
                        nested_in=self.ctx.parent_id) as run:
            trial_run = run.run_id
            trial.set_user_attr(TRIAL_RUN_ATTR, trial_run)
            seed_ctx = dataclasses.replace(self.ctx, parent_id=trial_run)
            trial.set_user_attr("seeds", seeds)
            tracker.log_config(trial_run, config, self.ctx.source_file)
            for i, seed in enumerate(seeds):
                pruning = OptunaPruning(trial) if i == 0 and not self.by_seed else None  # epoch pruners: seed 1
                seed_tags = {**tags, tracking.KIND_TAG: "seed", tracking.SEED_TAG: str(seed)}
                result = train_on_every_rank(seed_ctx, label, config.override(seed=seed), f"{label} seed={seed}",
                                             seed_tags, test=False, callbacks=[pruning] if pruning else [])
                if (pruning is not None and pruning.pruned) or result.diverged:
                    stop = optuna.TrialPruned(f"seed {seed}: {result.stop_reason or result.reason}")
                elif result.status != "FINISHED":
                    stop = TrialFailed(f"seed {seed}: {result.reason or 'failed'}")
                else:
                    values.append(result.metrics["best_val_acc"])
                    if self.by_seed:
                        trial.report(values[-1], i)  # one step per seed: Wilcoxon compares them pairwise
                        if trial.should_prune():
                            stop = optuna.TrialPruned(f"pruned after {i + 1} seeds (Wilcoxon)")
                if stop is not None:
                    break
            if stop is not None:
                # A pruned trial's run FINISHED (its seeds so far are sound), a failed one's FAILED.
                pruned = isinstance(stop, optuna.TrialPruned)
                self._state(trial_run, optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.FAIL)
                if pruned:
                    tracker.set_tags(trial_run, {STOP_TAG: str(stop)})
                else:
                    run.end_as("FAILED", str(stop))
            else:
                mean, std = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
                trial.set_user_attr(STD_ATTR, std)
                trial.set_user_attr("seed_values", values)
                # `best_val_acc` of a trial run is the mean over its seeds (what the study optimises).
                tracker.log_metrics(trial_run, {"best_val_acc": mean, "best_val_acc_std": std})
                self._state(trial_run, optuna.trial.TrialState.COMPLETE)
        if stop is not None:
            raise stop  # after the run ended: Optuna's verdict, not a failure of the block
        return mean

    def _state(self, run_id: str, state: optuna.trial.TrialState) -> None:
        self.ctx.tracker.set_tags(run_id, {tracking.TRIAL_STATE_TAG: state.name})

    def _continued_run(self, trial: optuna.Trial, label: str, config: TrainConfig) -> str | None:
        """The MLflow run to continue when `trial` retries a trial whose worker died (Optuna's
        heartbeat re-queued its params, with its user attributes): that run, if its checkpoint is
        reachable from here (`HARNESS_CHECKPOINT_DIR` on storage every worker sees) and was trained
        with this `config`. The trial records which trial it continues (`continues_trial`); the
        run keeps one uninterrupted history. Otherwise the trial starts over, saying why."""
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        if self.seeds.repeated:  # a trial of several seed runs starts over
            return None
        history = optuna.storages.RetryFailedTrialCallback.retry_history(frozen)
        dead_run = frozen.user_attrs.get(TRIAL_RUN_ATTR)
        if not history or not dead_run:
            return None
        dead = history[-1]
        last = run_folder(dead_run) / LAST
        why_not = None
        if not last.is_file():
            why_not = (f"its checkpoint {last} is not reachable from here (put HARNESS_CHECKPOINT_DIR on storage "
                       "every worker shares to continue instead)")
        else:
            try:
                changed = changed_settings(load_checkpoint(last), config)
            except HarnessError as exc:
                changed, why_not = {}, str(exc)
            if changed:
                why_not = f"its checkpoint was trained with other settings ({', '.join(changed)})"
        if why_not:
            reporter.status(f"{label}: retries trial {dead}, but {why_not}: it starts over.")
            return None
        reporter.status(f"{label}: retries trial {dead}: continues its checkpoint and MLflow run {dead_run}.")
        trial.set_user_attr(CONTINUES_ATTR, dead)
        self.ctx.tracker.set_tags(dead_run, {tracking.TRIAL_NUMBER_TAG: str(trial.number),
                                             CONTINUES_ATTR_TAG: str(dead)})
        return dead_run


class TrialFailed(RuntimeError):
    """A trial's training failed (the reason is on its MLflow run); Optuna records it as FAIL."""
