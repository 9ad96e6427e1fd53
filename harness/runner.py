"""`harness run`: train every variant of an experiment into one MLflow parent run.

Per variant: load data, build, `fit` with checkpoint / MLflow / progress / early-stopping
callbacks, test the best epoch's weights once, and log reports and the model. A failing
variant is marked FAILED (the others go on); Ctrl-C or SIGTERM marks it KILLED and stops.
"""

from __future__ import annotations

import copy
import os
import signal
import statistics
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness import checkpoint, tracking
from harness.callbacks import ConsoleProgress, EarlyStopping, MlflowEpochLogger
from harness.config import TrainConfig
from harness.data import Data, load_data
from harness.data.transforms import Preprocess
from harness.errors import HarnessError
from harness.experiment import Experiment
from harness.process_clock import seconds_since_process_start
from harness.seeds import Job, SeedPlan, plan_jobs
from harness.tracking import Client
from harness.tracking_process import TrackingProcess
from harness.train import (
    Callback,
    FitState,
    NonFiniteLossError,
    Trainer,
    build_trainer,
    evaluate,
    fit,
    param_count,
)

if TYPE_CHECKING:  # pandas, reports and stats are imported after training: not on the start-up path
    import pandas as pd

SUMMARY_COLUMNS = [
    "variant", "seed", "model", "dataset", "status", "best_epoch", "best_val_acc", "test_acc", "test_loss",
    "epochs_run", "train_seconds", "images_per_second", "param_count", "run_id",
]


_startup_logged = False


def checkpoint_root() -> Path:
    """`HARNESS_CHECKPOINT_DIR`, else ./checkpoints (one sub-folder per MLflow run id)."""
    return Path(os.environ.get("HARNESS_CHECKPOINT_DIR", "checkpoints"))


# Per-run numbers that `harness run --repeat` averages over seeds in its terminal table.
REPEAT_STAT_COLUMNS = ["best_epoch", "best_val_acc", "test_acc", "test_loss", "train_seconds", "images_per_second"]
@dataclass
class VariantResult:
    """How one variant ended, with its final metrics (empty when it failed early)."""

    variant: str
    config: TrainConfig
    run_id: str
    status: str  # FINISHED | FAILED | KILLED
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    label: str = ""  # the run's name: the variant, or "variant seed=N" when repeated


@dataclass
class RunOutcome:
    """The parent run and the results of all its variants."""

    parent_run_id: str
    results: list[VariantResult]
    table: pd.DataFrame  # one row per child run
    repeated: bool = False

    @property
    def failed(self) -> list[VariantResult]:
        return [r for r in self.results if r.status != "FINISHED"]

    @property
    def summary(self) -> pd.DataFrame:
        """What the terminal shows: the table, or with repeats one row per variant with `n` and
        "mean ± std" cells."""
        return seed_summary_table(self.table) if self.repeated else self.table


def export_model(t: Trainer) -> nn.Module:
    """CPU copy of the model behind its own preprocessing: takes raw [0, 1] images (N, C, H, W)
    at the dataset's native size and returns logits."""
    preprocess = Preprocess(t.data.mean, t.data.std, t.image_size)
    net = copy.deepcopy(t.model).float().cpu().to(memory_format=torch.contiguous_format)
    return nn.Sequential(preprocess, net).eval()


def summarize(state: FitState) -> dict[str, float]:
    """Best-epoch and throughput metrics from the epoch history."""
    history = state.history
    out: dict[str, float] = {"best_epoch": state.best_epoch, "epochs_run": len(history),
                             "train_seconds": sum(h["epoch_seconds"] for h in history)}
    if history:
        out["median_images_per_second"] = statistics.median(h["images_per_second"] for h in history)
    if history and "val_acc" in history[0]:
        out["best_val_acc"] = max(h["val_acc"] for h in history)
        out["best_val_loss"] = min(h["val_loss"] for h in history)
    return out


def finish_variant(client: Client, run_id: str, t: Trainer, state: FitState, ckpt_dir: Path, label: str) -> dict[str, float]:
    """Test the best epoch's weights and log final metrics, reports, checkpoint and model."""
    from harness import reports

    best = checkpoint.load(ckpt_dir / checkpoint.BEST)
    t.model.load_state_dict(best["model"])
    test = evaluate(t, t.data.test)
    metrics = {**summarize(state), "test_loss": test.loss, "test_acc": test.acc, "param_count": param_count(t.model)}
    if test.top5 is not None:
        metrics["test_top5"] = test.top5
    tracking.log_metrics(client, run_id, metrics, step=state.epoch)

    classes = t.data.classes
    confusion = test.confusion.numpy()
    tracking.log_figure(client, run_id, reports.confusion_figure(confusion, classes, f"{label}: test confusion matrix"),
                        "confusion_matrix.png")
    tracking.log_text(client, run_id, reports.confusion_frame(confusion, classes).to_csv(), "confusion_matrix.csv")
    tracking.log_text(client, run_id, reports.per_class_scores(confusion, classes).to_csv(index=False), "per_class_metrics.csv")
    tracking.log_figure(client, run_id, reports.learning_curve_figure(state.history, label), "learning_curves.png")
    if state.val_confusions:
        # (epochs, true, predicted) counts, so later commands can compare epochs and runs.
        tracking.log_array(client, run_id, torch.stack(state.val_confusions).numpy(), "val_confusion/per_epoch.npy")
        tracking.log_dict(client, run_id, {"classes": list(classes)}, "val_confusion/classes.json")
    tracking.log_file(client, run_id, ckpt_dir / checkpoint.BEST, "checkpoint")

    images, _ = next(iter(t.data.test.batches(2, False, None)))
    example = (images.float() / 255).cpu().numpy()
    tracking.log_model(client, run_id, export_model(t), example)
    return metrics


def _check_resumable(ckpt: dict[str, Any], config: TrainConfig, variant: str) -> None:
    saved = checkpoint.saved_config(ckpt).to_dict()
    current = config.to_dict()
    changed = [k for k in current if k != "device" and saved.get(k) != current[k]]
    if changed:
        k = changed[0]
        raise HarnessError(
            f"Cannot resume variant '{variant}': its checkpoint was trained with {k}={saved.get(k)!r} but now "
            f"{k}={current[k]!r}; resume with the same --set options as the interrupted run."
        )


def train_variant(
    client: Client, run_id: str, variant: str, config: TrainConfig, data: Data,
    extra_callbacks: list[Callback] | None = None, resume: bool = False,
) -> dict[str, float]:
    """Train one variant into MLflow run `run_id` (continuing its checkpoint if `resume`)."""
    ckpt_dir = checkpoint_root() / run_id
    t = build_trainer(config, data)
    state = None
    last = ckpt_dir / checkpoint.LAST
    if resume and last.is_file():
        ckpt = checkpoint.load(last)
        _check_resumable(ckpt, config, variant)
        state = checkpoint.restore(t, ckpt)
        print(f"{variant}: resuming after epoch {state.epoch} from {last}", flush=True)
    progress = ConsoleProgress(variant)
    logger = MlflowEpochLogger(client, run_id)
    callbacks: list[Callback] = [checkpoint.Checkpointer(ckpt_dir), logger, progress]
    if config.early_stopping_patience:
        callbacks.append(EarlyStopping(config.early_stopping_patience))
    callbacks += extra_callbacks or []
    global _startup_logged
    if not _startup_logged:  # only the process's first variant: later ones follow other training
        _startup_logged = True
        tracking.log_metrics(client, run_id, {"startup_seconds": seconds_since_process_start()})
    try:
        state = fit(t, callbacks, state)
    finally:
        progress.close()
        logger.flush()  # epochs buffered before a failure or Ctrl-C still reach MLflow
    return finish_variant(client, run_id, t, state, ckpt_dir, variant)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill PID` ends the run like Ctrl-C (runs marked KILLED, checkpoints kept)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_experiment(
    exp: Experiment, configs: dict[str, TrainConfig], tracking_uri: str | None = None,
    data_dir: Path | None = None, resume: bool = False, seeds: SeedPlan | None = None,
    tracker: TrackingProcess | None = None,
) -> RunOutcome:
    """Train every variant (once per seed of `seeds`) under one parent run and return (and log)
    the comparison table. A resumed run follows the seed plan its parent recorded.

    MLflow runs in a child process: `tracker` if given (the CLI starts it before importing
    PyTorch, so the two imports overlap; it is closed here), else one on `tracking_uri`."""
    with tracker or TrackingProcess(tracking_uri) as client:
        return _run_experiment(client, exp, configs, data_dir, resume, seeds or SeedPlan())


def _run_experiment(
    client: TrackingProcess, exp: Experiment, configs: dict[str, TrainConfig], data_dir: Path | None,
    resume: bool, plan: SeedPlan,
) -> RunOutcome:
    experiment_id = tracking.ensure_experiment(client, exp.name, exp.description)
    device = next(iter(configs.values())).device
    env_tags = tracking.environment_tags(device, exp.source_file)
    existing: dict[tuple[str, int | None], Any] = {}
    if resume:
        parent = tracking.latest_parent_run(client, experiment_id, unfinished_only=True)
        if parent is None:
            raise HarnessError(f"No interrupted run of '{exp.name}' to resume; start one with `harness run {exp.name}`.")
        parent_id = parent.info.run_id
        recorded = SeedPlan.from_params(parent.data.params)
        if plan.repeated and plan != recorded:
            raise HarnessError(f"Cannot resume run {parent_id}: it was started with {recorded.describe()}, not "
                               f"{plan.describe()}; resume with the same option or leave it out.")
        plan = recorded
        # Keyed by (variant, seed): with repeats a variant has one child per seed.
        existing = {(r.data.tags.get(tracking.VARIANT_TAG, r.info.run_name), tracking.run_seed(r)): r
                    for r in tracking.children(client, experiment_id, parent_id)}
        _check_same_seeds(parent_id, existing, plan_jobs(configs, plan))
        tracking.reopen_run(client, parent_id)
        print(f"Resuming run {parent_id} of {exp.name}", flush=True)
    else:
        parent_id = tracking.start_run(client, experiment_id, f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                       {tracking.KIND_TAG: "run", **env_tags})
        tracking.log_params(client, parent_id, {"experiment": exp.name, "variants": ",".join(configs),
                                                **plan.to_params()})
        if exp.source_file:
            tracking.log_file(client, parent_id, Path(exp.source_file), "source")

    results: list[VariantResult] = []
    with _sigterm_as_interrupt():
        try:
            for job in plan_jobs(configs, plan):
                previous = existing.get((job.variant, job.config.seed))
                results.append(run_variant(client, experiment_id, parent_id, job.variant, job.config, env_tags,
                                           exp.source_file, data_dir, previous, label=job.label))
        except KeyboardInterrupt:
            tracking.end_run(client, parent_id, "KILLED", "interrupted")
            raise
    outcome = RunOutcome(parent_id, results, comparison_table(results), plan.repeated)
    tracking.log_text(client, parent_id, outcome.table.to_csv(index=False), "comparison.csv")
    from harness import reports

    tracking.log_text(client, parent_id, reports.markdown_table(outcome.summary), "comparison.md")
    ok = all(r.status == "FINISHED" for r in results)
    tracking.end_run(client, parent_id, "FINISHED" if ok else "FAILED",
                     None if ok else "; ".join(f"{r.label or r.variant}: {r.reason}" for r in results if r.reason))
    return outcome


def _check_same_seeds(parent_id: str, existing: dict[tuple[str, int | None], Any], jobs: list[Job]) -> None:
    """A resumed run must train the (variant, seed) pairs it started with: a changed `--set seed=`
    would otherwise start new children beside the interrupted ones."""
    planned = {(job.variant, job.config.seed) for job in jobs}
    variants = {job.variant for job in jobs}
    for variant, seed in existing:
        if variant in variants and seed is not None and (variant, seed) not in planned:
            raise HarnessError(
                f"Cannot resume run {parent_id}: it trained variant '{variant}' at seed {seed}, which the current "
                "options do not; resume with the same --set options as the interrupted run."
            )


def run_variant(
    client: Client, experiment_id: str, parent_id: str, variant: str, config: TrainConfig,
    env_tags: dict[str, str], source_file: str | None, data_dir: Path | None, previous: Any = None,
    label: str | None = None,
) -> VariantResult:
    """Train one variant as a child run of `parent_id` (or continue `previous`, an interrupted
    child run); failures are recorded on the run and returned, Ctrl-C marks it KILLED.
    `label` names the run and its progress lines (default: the variant)."""
    label = label or variant
    if previous is not None and previous.info.status == "FINISHED":
        print(f"{label}: already finished in run {previous.info.run_id}", flush=True)
        return VariantResult(variant, config, previous.info.run_id, "FINISHED", dict(previous.data.metrics), label=label)
    if previous is not None:
        run_id = previous.info.run_id
        tracking.reopen_run(client, run_id)
    else:
        tags = {tracking.KIND_TAG: "variant", tracking.VARIANT_TAG: variant, tracking.SEED_TAG: str(config.seed)}
        run_id = tracking.start_run(client, experiment_id, label, {**tags, **env_tags}, parent_id)
        tracking.log_config(client, run_id, config, source_file)
    try:
        data = load_data(config, data_dir)
        metrics = train_variant(client, run_id, label, config, data, resume=previous is not None)
    except KeyboardInterrupt:
        tracking.end_run(client, run_id, "KILLED", "interrupted (Ctrl-C or SIGTERM); resume with --resume")
        raise
    except (HarnessError, NonFiniteLossError) as exc:
        tracking.end_run(client, run_id, "FAILED", str(exc))
        return VariantResult(variant, config, run_id, "FAILED", reason=str(exc), label=label)
    except Exception as exc:  # noqa: BLE001 - a crash in one variant must not lose the others
        reason = f"{type(exc).__name__}: {exc}"
        tracking.log_text(client, run_id, traceback.format_exc(), "error.txt")
        tracking.end_run(client, run_id, "FAILED", reason)
        return VariantResult(variant, config, run_id, "FAILED", reason=reason, label=label)
    tracking.end_run(client, run_id, "FINISHED")
    return VariantResult(variant, config, run_id, "FINISHED", metrics, label=label)


def comparison_table(results: list[VariantResult]) -> pd.DataFrame:
    """One row per variant with its key settings and results, best test accuracy first."""
    rows = []
    for r in results:
        row: dict[str, Any] = {"variant": r.variant, "seed": r.config.seed, "model": r.config.model,
                               "dataset": r.config.dataset, "status": r.status, "run_id": r.run_id}
        for key in ("best_epoch", "best_val_acc", "test_acc", "test_loss", "epochs_run", "train_seconds",
                    "images_per_second", "param_count"):
            value = r.metrics.get("median_images_per_second" if key == "images_per_second" else key)
            row[key] = int(value) if key in ("best_epoch", "epochs_run", "param_count") and value is not None else value
        rows.append(row)
    import pandas as pd

    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return frame.sort_values("test_acc", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def seed_summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """A `comparison_table` of repeated runs as one row per variant: `n` finished seeds and
    "mean ± std" cells, best mean test accuracy first (see `harness compare` for tests)."""
    from harness import stats

    summary = stats.sort_by(stats.seed_summary(table, REPEAT_STAT_COLUMNS), "test_acc_mean", "test_acc")
    out = summary[["variant", "n", "seeds", "model", "dataset", "status", "param_count", "run_ids"]].copy()
    for col in REPEAT_STAT_COLUMNS:
        digits = 1 if col == "best_epoch" else 4
        out[col] = [stats.format_mean_std(m, sd, digits) for m, sd in zip(summary[f"{col}_mean"], summary[f"{col}_std"])]
    return out
