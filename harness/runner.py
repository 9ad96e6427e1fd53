"""`harness run`: train every variant of an experiment (once per seed) into one MLflow parent run.

Each (variant, seed) is a child run whose life is `harness.lifecycle`'s. A failing variant is
marked FAILED and the others go on; Ctrl-C, SIGTERM or SIGUSR1 marks it and the parent KILLED and stops.
The parent gets the comparison table `harness compare` shows for it.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import reporter, tracking
from harness.checkpoint import checkpoint_root
from harness.config import TrainConfig
from harness.distributed import SINGLE, Dist
from harness.errors import ConfigError, ResumeError
from harness.experiment import Experiment
from harness.lifecycle import (
    SYSTEM_METRICS_INTERVAL,
    RunContext,
    VariantResult,
    check_resumable,
    open_run,
    parent_run,
    train_variant,
)
from harness.promotion import DEFAULT_ALIAS, METRIC, Promotion, check_names
from harness.promotion import register as register_model
from harness.runlock import run_lock
from harness.seeds import Job, SeedPlan, plan_jobs
from harness.tracking import Tracker
from harness.train import check_world

if TYPE_CHECKING:  # compare (pandas, scipy) is imported once training is over, not on the start-up path
    from harness.comparison import Comparison
    from harness.train import Callback


@dataclass
class RunOutcome:
    """The parent run, the results of all its variants and their comparison table."""

    parent_run_id: str
    results: list[VariantResult]
    comparison: Comparison | None  # rank 0's to build and print (None on the other ranks)
    promotion: Promotion | None = None  # `--register`: the new registry version (rank 0's)

    @property
    def failed(self) -> list[VariantResult]:
        return [r for r in self.results if r.status != "FINISHED"]


@dataclass(frozen=True)
class PriorRun:
    """What a resumed run needs of a child it already has (plain data every rank can hold)."""

    run_id: str
    status: str
    metrics: dict[str, float]


def run_experiment(
    tracker: Tracker, exp: Experiment, configs: dict[str, TrainConfig], data_dir: Path | None = None,
    resume: bool | str = False, seeds: SeedPlan | None = None, dist: Dist = SINGLE,
    register: Registration | None = None, system_metrics: float | None = SYSTEM_METRICS_INTERVAL,
    callbacks: tuple[Callback, ...] = (),
) -> RunOutcome:
    """Train every variant (once per seed of `seeds`) under one parent run, log the comparison
    table on it and return the results with that table. A resumed run follows the seed plan its
    parent recorded. The parent run is locked for the command's lifetime (`harness.runlock`):
    a second `--resume` of it refuses. However the command ends, the parent is not left RUNNING
    (unless the store itself is down: then `--resume` finishes the record later).

    `resume="auto"` continues the latest interrupted run if there is one and starts a new run
    otherwise. With several processes (`dist`) every rank calls this alike: rank 0 creates and
    ends the runs, holds the lock and logs the comparison; all ranks train every variant together.

    `register` puts the best variant's model (best mean `best_val_acc`; its best seed) into the
    model registry and moves the alias only on improvement (`harness.promotion`);
    `system_metrics` is the seconds between MLflow system-metrics samples (None: off); `callbacks`
    join every variant's train loop."""
    plan = seeds or SeedPlan()
    plan.check(configs)  # seeds out of range fail before any run is created
    if register is not None:
        register.check(configs)
    for config in configs.values():
        check_world(config, dist.world_size)
    experiment_id = tracker.ensure_experiment(exp.name, exp.description)
    if resume == "auto":
        resume = dist.from_main(
            lambda: tracker.local.latest_parent_run(experiment_id, unfinished_only=True) is not None)
        if not resume:
            reporter.status(f"No interrupted run of {exp.name}: starting a new one.")
    device = next(iter(configs.values())).device
    env_tags = tracking.environment_tags(device, exp.source_file)
    with ExitStack() as held:
        existing: dict[tuple[str, int | None], PriorRun] = {}
        reopened: str | None = None  # a resumed parent, reopened once every check passed
        if resume:
            reopened, plan, existing = dist.from_main(  # rank 0 decides alone, on its own tracker
                lambda: _prepare_resume(tracker.local, exp, configs, experiment_id, plan, held))
        with parent_run(tracker, experiment_id, f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                        {tracking.KIND_TAG: "run", **env_tags}, run_id=reopened,
                        resume_hint=f"harness run {exp.name} --resume") as parent:
            parent_id = parent.run_id
            ctx = RunContext(tracker, experiment_id, parent_id, env_tags, exp.source_file, data_dir, dist=dist,
                             system_metrics=system_metrics, callbacks=callbacks)
            if not resume:
                if dist.is_main:
                    held.enter_context(run_lock(parent_id, checkpoint_root()))
                tracker.log_params(parent_id, {"experiment": exp.name, "variants": ",".join(configs),
                                               **plan.to_params()})
                if exp.source_file:
                    tracker.log_file(parent_id, Path(exp.source_file), "source")
            results = _train_jobs(ctx, plan_jobs(configs, plan), existing)
            comparison = _log_comparison(tracker.local, exp.name, parent_id) if dist.is_main else None
            promotion = register.promote(tracker.local, comparison) \
                if register is not None and comparison is not None else None
            if not all(r.status == "FINISHED" for r in results):
                parent.end_as("FAILED", "; ".join(f"{r.label or r.variant}: {r.reason}" for r in results if r.reason))
    if comparison is not None:  # read while the parent was still RUNNING; it has ended since
        comparison = replace(comparison, parent_status=parent.status)
    return RunOutcome(parent_id, results, comparison, promotion)


@dataclass(frozen=True)
class Registration:
    """`--register NAME [--alias ALIAS]`: where the best variant's model goes once trained."""

    name: str
    alias: str = DEFAULT_ALIAS

    def check(self, configs: dict[str, TrainConfig]) -> None:
        """Refuse before training: a name MLflow would refuse, or no validation split to compare on."""
        check_names(self.name, self.alias)
        if all(c.val_fraction == 0 for c in configs.values()):
            raise ConfigError("register compares models on their validation accuracy, but every variant has "
                              "val_fraction=0; leave val_fraction above 0 to register.")

    def promote(self, tracker: Tracker, comparison: Comparison) -> Promotion | None:
        """Register the model of the comparison's best run (`compare.best_run`: the best variant by
        mean `best_val_acc`, its best seed); None, with a note, if no variant finished with one."""
        import pandas as pd

        from harness.comparison import best_run

        best = best_run(comparison)
        if best is None or pd.isna(best.get(METRIC)):
            reporter.status(f"Nothing registered: no variant finished with a {METRIC}.")
            return None
        test_acc = best.get("test_acc")
        return register_model(tracker, f"runs:/{best['run_id']}/model", self.name, float(best[METRIC]), self.alias,
                              {"harness.experiment": comparison.experiment, "harness.variant": best["variant"],
                               "harness.run_id": best["run_id"], "harness.parent_run_id": comparison.parent_run_id,
                               "test_acc": f"{float('nan') if pd.isna(test_acc) else float(test_acc):.6g}"})


def _prepare_resume(tracker: Tracker, exp: Experiment, configs: dict[str, TrainConfig], experiment_id: str,
                    plan: SeedPlan, held: ExitStack) -> tuple[str, SeedPlan, dict[tuple[str, int | None], PriorRun]]:
    """The interrupted parent run to continue, its seed plan and its children by (variant, seed),
    after every check that could refuse: nothing is reopened or changed before they pass."""
    parent = tracker.latest_parent_run(experiment_id, unfinished_only=True)
    if parent is None:
        raise ResumeError(f"No interrupted run of '{exp.name}' to resume; start one with `harness run {exp.name}`.")
    parent_id = parent.run_id
    recorded = SeedPlan.from_params(parent.params)
    if plan.repeated and plan != recorded:
        raise ResumeError(f"Cannot resume run {parent_id}: it was started with {recorded.describe()}, not "
                          f"{plan.describe()}; resume with the same option or leave it out.")
    # Keyed by (variant, seed): with repeats a variant has one child per seed.
    existing = {(r.tags.get(tracking.VARIANT_TAG, r.name), tracking.run_seed(r)): r
                for r in tracker.children(experiment_id, parent_id)}
    jobs = plan_jobs(configs, recorded)
    _check_same_seeds(parent_id, existing, jobs)
    held.enter_context(run_lock(parent_id, checkpoint_root()))  # before anything is reopened
    for job in jobs:
        previous = existing.get((job.variant, job.config.seed))
        if previous is not None and previous.status != "FINISHED":
            check_resumable(tracker, previous, job.label)
    tracker.reopen_run(parent_id)
    reporter.status(f"Resuming run {parent_id} of {exp.name}")
    prior = {key: PriorRun(r.run_id, r.status, dict(r.metrics)) for key, r in existing.items()}
    return parent_id, recorded, prior


def _train_jobs(ctx: RunContext, jobs: list[Job],
                existing: dict[tuple[str, int | None], PriorRun]) -> list[VariantResult]:
    """Every job in order; a job whose child already FINISHED (in a resumed run) is reported, not trained."""
    results: list[VariantResult] = []
    for job in jobs:
        previous = existing.get((job.variant, job.config.seed))
        if previous is not None and previous.status == "FINISHED":
            reporter.status(f"{job.label}: already finished in run {previous.run_id}")
            results.append(VariantResult(job.variant, job.config, previous.run_id, "FINISHED",
                                         dict(previous.metrics), label=job.label))
            continue
        results.append(_run_job(ctx, job, previous))
    return results


def _run_job(ctx: RunContext, job: Job, previous: PriorRun | None) -> VariantResult:
    """Train one (variant, seed) as a new child run, or continue `previous`, its interrupted run."""
    if previous is not None:
        run_id = previous.run_id
    else:
        tags = {tracking.KIND_TAG: "variant", tracking.VARIANT_TAG: job.variant,
                tracking.SEED_TAG: str(job.config.seed)}
        run_id = open_run(ctx, job.label, job.config, tags)
    return train_variant(ctx, run_id, job.variant, job.config, label=job.label, resume=previous is not None)


def _log_comparison(tracker: Tracker, experiment: str, parent_id: str) -> Comparison:
    """The parent's comparison table, exactly as `harness compare` builds it, logged as CSV and
    markdown; returned for the terminal."""
    from harness import reports
    from harness.comparison import display_frame, load_comparison

    comparison = load_comparison(tracker, experiment, run_id=parent_id)
    tracker.log_text(parent_id, comparison.table.to_csv(index=False), "comparison.csv")
    tracker.log_text(parent_id, reports.markdown_table(display_frame(comparison)), "comparison.md")
    return comparison


def _check_same_seeds(parent_id: str, existing: dict[tuple[str, int | None], Any], jobs: list[Job]) -> None:
    """A resumed run must train the (variant, seed) pairs it started with: a changed `--set seed=`
    would otherwise start new children beside the interrupted ones."""
    planned = {(job.variant, job.config.seed) for job in jobs}
    variants = {job.variant for job in jobs}
    for variant, seed in existing:
        if variant in variants and seed is not None and (variant, seed) not in planned:
            raise ResumeError(
                f"Cannot resume run {parent_id}: it trained variant '{variant}' at seed {seed}, which the current "
                "options do not; resume with the same set overrides as the interrupted run."
            )
