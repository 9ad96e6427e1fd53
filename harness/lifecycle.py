"""A variant's life as one MLflow child run: open it, train it (resuming its checkpoint), finish
it (test the best epoch once, log reports and the model), and end it FINISHED, FAILED or KILLED
with the reason. `harness run`, `harness tune` (each trial, and `--retrain-best`) all go
through here; what they share travels in one `RunContext`.

With several processes every rank lives through the same calls: rank 0 alone talks to MLflow
(the tracker is a `tracking.RankZeroTracker` there) and writes checkpoints, and the ranks agree on
every outcome. An error the ranks cannot agree on (one rank's own failure, or a peer that died)
ends the command after the run is marked FAILED: the other ranks cannot go on without it.
"""

from __future__ import annotations

import copy
import statistics
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import checkpoint, reporter
from harness.callbacks import ConsoleProgress, EarlyStopping, MlflowEpochLogger
from harness.checkpoint import checkpoint_root  # noqa: F401 - re-exported: its earlier home, still imported from here
from harness.config import TrainConfig
from harness.data import Data, data_key, load_data
from harness.data.transforms import Preprocess
from harness.distributed import SINGLE, Dist, GroupFailure, is_shared
from harness.errors import HarnessError, ResumeError, Terminated, first_line
from harness.interrupts import stop_signals_as_interrupt
from harness.process_clock import seconds_since_process_start
from harness.tracking import DATA_DIGEST_TAG, PAUSED_METRIC, Tracker, TrackingError, now_ms
from harness.train import Callback, FitState, NonFiniteLossError, Trainer, build_trainer, evaluate, fit, param_count
from harness.uris import redact_text

STOP_TAG = "harness.stop_reason"  # why training ended before `epochs` (early stopping, pruning)
SYSTEM_METRICS_INTERVAL = 10.0  # seconds; MLflow's own default
# Taken (never released) by the first run a process trains, which logs `startup_seconds` just
# before its first step: the process's start-up time. Later runs follow other training; a lock,
# so that trials racing in parallel threads cannot both take it.
_FIRST_TRAINING = threading.Lock()


class DataCache:
    """The last dataset loaded, reused while configs agree on what loaders read (`data_key`):
    variants, seeds or trials that differ only in training settings decode their data once
    (measured on the MNIST sample: 2.4 s for the first load with torchvision's import, under
    0.1 s for later ones). Only one dataset is kept, so memory stays that of one run."""

    def __init__(self) -> None:
        self._entry: tuple[tuple[object, ...], Data] | None = None
        self._lock = threading.Lock()  # `harness tune --n-jobs` runs trials in threads

    def load(self, config: TrainConfig, data_dir: Path | None) -> Data:
        """The splits for `config`, loaded now or reused."""
        key = (*data_key(config), str(data_dir))
        with self._lock:
            if self._entry is None or self._entry[0] != key:
                self._entry = None  # free the previous dataset before loading the next
                self._entry = (key, load_data(config, data_dir))
            return self._entry[1]


@dataclass(frozen=True)
class RunContext:
    """What every variant of one command shares: the tracker, where its runs go, the tags
    that describe the environment, the experiment's source file, the data folder and the
    data already loaded."""

    tracker: Tracker
    experiment_id: str
    parent_id: str
    env_tags: dict[str, str] = field(default_factory=dict)
    source_file: str | None = None
    data_dir: Path | None = None
    data: DataCache = field(default_factory=DataCache)
    dist: Dist = SINGLE
    # Seconds between MLflow system-metrics samples on each child run (None: off).
    system_metrics: float | None = SYSTEM_METRICS_INTERVAL
    # The caller's own callbacks (`harness.run(..., callbacks=...)`), in every variant's train loop.
    callbacks: tuple[Callback, ...] = ()


@dataclass
class VariantResult:
    """How one variant's run ended, with its final metrics (empty when it failed early)."""

    variant: str
    config: TrainConfig
    run_id: str
    status: str  # FINISHED | FAILED | KILLED
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str | None = None  # why it failed
    label: str = ""  # the run's name: the variant, "variant seed=N" or "trial-N"
    stop_reason: str | None = None  # why training stopped early (early stopping, pruning)
    diverged: bool = False  # the loss became NaN or infinite


def open_run(ctx: RunContext, label: str, config: TrainConfig, tags: dict[str, str]) -> str:
    """Create the child run `label` under the context's parent, with `tags`, the environment
    tags and the config logged; returns its id."""
    run_id = ctx.tracker.start_run(ctx.experiment_id, label, {**tags, **ctx.env_tags}, ctx.parent_id)
    try:
        ctx.tracker.log_config(run_id, config, ctx.source_file)
        ctx.tracker.log_params(run_id, world_params(ctx.dist, config))
    except TrackingError as exc:  # e.g. ./mlruns read-only: the run is not left RUNNING
        close_run(ctx.tracker, run_id, "FAILED", str(exc))
        raise
    return run_id


def world_params(dist: Dist, config: TrainConfig) -> dict[str, str]:
    """How many processes trained the run and what each took of the global batch."""
    return {"world_size": str(dist.world_size), "nnodes": str(dist.nnodes),
            "per_device_batch_size": str(config.batch_size // dist.world_size),
            "backend": dist.backend if dist.enabled else "none"}


def train_variant(
    ctx: RunContext, run_id: str, variant: str, config: TrainConfig, *, label: str | None = None,
    resume: bool = False, callbacks: Sequence[Callback] = (), test: bool = True,
    live_progress: bool = True,
) -> VariantResult:
    """Train `config` into run `run_id` and end the run, however training ends.

    `resume` continues the run's checkpoint (the run is marked RUNNING again); `callbacks` join the
    checkpoint, MLflow, progress and early-stopping ones; `test` scores the best epoch's weights on
    the test split and logs reports and the model (trials skip it); `live_progress=False` reports epoch
    lines instead of a live bar (trials running in parallel threads cannot share one terminal
    display). The first run a process trains logs the process's `startup_seconds` before its first
    step.

    A user error, a diverged loss, a full disk or a crash marks the run FAILED with a one-line
    reason and is returned (if the store cannot take that record either, the reason says so);
    Ctrl-C (or SIGTERM) marks it KILLED and propagates. A tracking store that stops answering
    does not stop training (epoch metrics wait in memory, checkpoints go on); if it is still down
    when the variant ends, a `TrackingError` (unreachable) propagates, naming the checkpoints,
    and `--resume` completes the record later."""
    label = label or variant
    tracker = ctx.tracker
    if resume:
        log_pause(tracker, run_id, checkpoint.run_folder(run_id))
        tracker.reopen_run(run_id)
    state = FitState()
    main = ctx.dist.is_main
    try:
        if ctx.dist.enabled:  # rank 0 first (a download is not raced); its error is every rank's
            ctx.dist.from_main(lambda: ctx.data.load(config, ctx.data_dir) and None)
        data = ctx.data.load(config, ctx.data_dir)
        t = build_trainer(config, data, ctx.dist)
        if main:
            _log_lineage(ctx, run_id, config, data, test)
        ckpt_dir = checkpoint.run_folder(run_id)
        if resume:
            state = _restore(ctx, run_id, t, ckpt_dir, variant, label) or state
        all_callbacks: list[Callback] = [checkpoint.Checkpointer(ckpt_dir, writer=main),
                                         ConsoleProgress(label, live=live_progress)]
        if main:
            all_callbacks.insert(1, MlflowEpochLogger(tracker, run_id))
        if config.early_stopping_patience:
            all_callbacks.append(EarlyStopping(config.early_stopping_patience))
        all_callbacks += [*ctx.callbacks, *callbacks]
        if _FIRST_TRAINING.acquire(blocking=False):
            tracker.log_metrics(run_id, {"startup_seconds": seconds_since_process_start()})
        with _system_metrics(ctx, run_id):
            state = fit(t, all_callbacks, state)
        metrics = summarize(state)
        confusion = None
        if test:
            tested, confusion = test_best(t, ckpt_dir)
            metrics.update(tested)
        # Before the model is logged: MLflow links the metrics at the model's step to its record.
        tracker.log_metrics(run_id, metrics, step=state.epoch)
        if confusion is not None and main:
            log_results(tracker, run_id, t, state, ckpt_dir, label, confusion)
        if state.stop_reason:
            tracker.set_tags(run_id, {STOP_TAG: state.stop_reason})
    except KeyboardInterrupt as exc:
        close_run(tracker, run_id, "KILLED", f"interrupted ({_how(exc)}); resume it with resume=True")
        raise
    except TrackingError as exc:
        if not exc.unreachable:
            return _agreed(ctx, exc, _failed(ctx, run_id, variant, config, label, state, str(exc), False))
        raise TrackingError(f"{exc}; '{label}' trained {state.epoch} epochs, checkpointed in "
                            f"{checkpoint.run_folder(run_id)}: once the store answers, resume=True records the rest",
                            unreachable=True) from None
    except (HarnessError, NonFiniteLossError) as exc:
        return _agreed(ctx, exc, _failed(ctx, run_id, variant, config, label, state, str(exc),
                                         isinstance(exc, NonFiniteLossError)))
    except Exception as exc:  # noqa: BLE001 - a crash in one variant must not lose the others
        try:
            tracker.log_text(run_id, traceback.format_exc(), "error.txt")
        except TrackingError:
            pass  # the reason tag below still says what happened
        return _agreed(ctx, exc, _failed(ctx, run_id, variant, config, label, state,
                                         f"{type(exc).__name__}: {first_line(exc, 300)}", False))
    tracker.end_run(run_id, "FINISHED")
    return VariantResult(variant, config, run_id, "FINISHED", metrics, label=label, stop_reason=state.stop_reason)


def _log_lineage(ctx: RunContext, run_id: str, config: TrainConfig, data: Data, test: bool) -> None:
    """Record the splits the run reads (train, validation, and test if it is tested) as MLflow
    dataset inputs, and their combined digest as a tag."""
    from harness.data import default_data_dir
    from harness.data.lineage import combined_digest, split_records

    contexts = ("train", "validation", "test") if test else ("train", "validation")
    records = split_records(config, data, ctx.data_dir or default_data_dir(), contexts)
    ctx.tracker.log_datasets(run_id, [r.as_input() for r in records])
    ctx.tracker.set_tags(run_id, {DATA_DIGEST_TAG: combined_digest(records)})


def _system_metrics(ctx: RunContext, run_id: str) -> AbstractContextManager[None]:
    """MLflow's system-metrics monitor on the run while it trains (rank 0's machine), if on."""
    if ctx.system_metrics is None or not ctx.dist.is_main:
        return nullcontext()
    return ctx.tracker.local.system_metrics(run_id, ctx.system_metrics)


def _agreed(ctx: RunContext, exc: BaseException, result: VariantResult) -> VariantResult:
    """`result` if every rank met `exc` alike (one process; a diverged loss, which all ranks
    see in their all-reduced metrics; an error rank 0 handed to all); else the command ends."""
    if not ctx.dist.enabled or isinstance(exc, NonFiniteLossError) or is_shared(exc):
        return result
    raise GroupFailure(f"rank {ctx.dist.rank}: '{result.label}' failed ({result.reason}); the other processes cannot "
                       "go on without it") from exc


def close_run(tracker: Tracker, run_id: str, status: str, reason: str | None) -> str | None:
    """End a run as best one can after a failure: None if MLflow took it, else why not (the
    store may be on the same full disk, or down), for the user's message."""
    try:
        tracker.end_run(run_id, status, reason)
        return None
    except TrackingError as exc:
        return str(exc)


@dataclass
class ParentRun:
    """A run `parent_run` holds open: its id, and the status it ends with if the block completes
    (FINISHED unless the block says otherwise with `end_as`)."""

    run_id: str
    status: str = "FINISHED"
    reason: str | None = None

    def end_as(self, status: str, reason: str | None = None) -> None:
        """End the run `status` (with `reason` as its failure tag) when the block completes instead
        of FINISHED: the work ran to its end but what it found is a failure (a variant FAILED, a
        trial's seed failed). An exception in the block still ends it as `ended_on_error` says."""
        self.status, self.reason = status, reason


@contextmanager
def parent_run(
    tracker: Tracker, experiment_id: str, name: str = "", tags: Mapping[str, str] | None = None, *,
    nested_in: str | None = None, run_id: str | None = None, resume_hint: str | None = None, secret: str = "",
) -> Iterator[ParentRun]:
    """The one life of a command's own run, the one that holds its work (`harness run`'s parent,
    a study's, a trial's run over its seeds, `harness lr-find`'s run): start run `name` with
    `tags` in `experiment_id` (under run `nested_in` if given), or take `run_id`, one the caller
    already started or reopened; then the block runs under `ended_on_error` (Ctrl-C / SIGTERM:
    KILLED; anything else: FAILED with its reason, `secret` hidden; an unreachable store: the
    error names `resume_hint`). A block that completes ends the run FINISHED, or as it said
    with `ParentRun.end_as`.

    That last end is outside `ended_on_error` on purpose: if the store refuses it, the error is
    the store's, and no second attempt marks a run FAILED whose work succeeded."""
    if run_id is None:
        run_id = tracker.start_run(experiment_id, name, dict(tags or {}), nested_in)
    run = ParentRun(run_id)
    with ended_on_error(tracker, run_id, resume_hint, secret):
        yield run
    tracker.end_run(run_id, run.status, run.reason)


@contextmanager
def ended_on_error(tracker: Tracker, run_id: str, resume_hint: str | None = None, secret: str = "") -> Iterator[None]:
    """Whatever stops the block ends run `run_id` (a parent: `harness run`'s, a study's): KILLED
    for Ctrl-C / SIGTERM, FAILED with a one-line reason (`secret`'s password hidden) otherwise.
    A store that does not answer cannot be told: the error then ends with `resume_hint`, the
    command that completes the record later. If the failure cannot be recorded (the store is on
    a full disk too), the error says so. SIGTERM and SIGHUP count as Ctrl-C inside the block
    (`harness.interrupts`), and the reason names the signal. Commands enter it through
    `parent_run`, which also starts and ends the run."""
    try:
        with stop_signals_as_interrupt():
            yield
    except KeyboardInterrupt as exc:
        close_run(tracker, run_id, "KILLED", f"interrupted ({_how(exc)})")
        raise
    except TrackingError as exc:
        if exc.unreachable:
            if resume_hint:
                raise TrackingError(f"{exc}; then run `{resume_hint}`.", unreachable=True) from None
            raise
        if close_run(tracker, run_id, "FAILED", str(exc)):
            raise TrackingError(f"{exc} MLflow could not record the failure either: runs stay RUNNING there.") from None
        raise
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {first_line(exc)}"
        close_run(tracker, run_id, "FAILED", redact_text(reason, secret) if secret else reason)
        raise


def _how(exc: KeyboardInterrupt) -> str:
    """What interrupted: the signal's name, or Ctrl-C."""
    return exc.signal if isinstance(exc, Terminated) else "Ctrl-C"


def _failed(ctx: RunContext, run_id: str, variant: str, config: TrainConfig, label: str, state: FitState,
            reason: str, diverged: bool) -> VariantResult:
    """End the run FAILED with `reason`; the epochs it completed keep their summary metrics."""
    metrics = summarize(state)
    try:
        if metrics:
            ctx.tracker.log_metrics(run_id, metrics, step=state.epoch)
    except TrackingError:
        pass  # the status and reason matter more, and are tried next
    unrecorded = close_run(ctx.tracker, run_id, "FAILED", reason)
    if unrecorded:
        reason += " MLflow could not record the failure either: the run stays RUNNING there."
    return VariantResult(variant, config, run_id, "FAILED", metrics, reason=reason, label=label, diverged=diverged)


def check_resumable(tracker: Tracker, run: Any, variant: str) -> None:
    """Refuse to resume the interrupted child `run` if its checkpoint is gone or damaged while
    MLflow already has some of its epochs: training again from scratch would log those epochs
    twice. (A run killed before its first checkpoint has none logged and simply starts over.)"""
    last = checkpoint.run_folder(run.run_id) / checkpoint.LAST
    if last.is_file():
        checkpoint.load(last)  # a damaged file is one line naming it
        return
    if tracker.metric_history(run.run_id, "train_loss"):
        raise ResumeError(f"Cannot resume variant '{variant}' (run {run.run_id}): its checkpoint {last} is "
                          "missing but MLflow has epochs of it; put the file back (or point HARNESS_CHECKPOINT_DIR "
                          "at its folder), or start a new run without resume.")


def log_pause(tracker: Tracker, run_id: str, ckpt_dir: Path) -> None:
    """Add the time interrupted run `run_id` has been idle to its `PAUSED_METRIC`: from its last
    sign of life (its end, or its latest checkpoint when the process died without ending it or
    its end is a previous session's) to now. Rank 0 alone (elsewhere the run reads as None)."""
    run = tracker.find_run(run_id)
    if run is None:
        return
    last = ckpt_dir / checkpoint.LAST
    alive = max(run.end_time or 0, int(last.stat().st_mtime * 1000) if last.is_file() else 0)
    if not alive:  # never ended, nothing checkpointed: no idle time is known
        return
    paused = run.metrics.get(PAUSED_METRIC, 0.0) + max(0.0, (now_ms() - alive) / 1000)
    tracker.log_metrics(run_id, {PAUSED_METRIC: paused})


def _restore(ctx: RunContext, run_id: str, t: Trainer, ckpt_dir: Path, variant: str, label: str) -> FitState | None:
    """The checkpointed state of an interrupted run, put back into `t` (rank 0 reads the file and
    hands it to every rank); epochs the checkpoint has but MLflow lacks (killed between the two
    writes) are logged now. None without one."""
    tracker = ctx.tracker
    last = ckpt_dir / checkpoint.LAST
    ckpt = ctx.dist.from_main(lambda: checkpoint.load(last) if last.is_file() else None)
    if ckpt is None:
        return None
    _check_resumable(ckpt, t.config, variant)
    state = checkpoint.restore(t, ckpt)
    reporter.status(f"{label}: resuming after epoch {state.epoch} from {last}")
    change = checkpoint.world_size_change(ckpt, t.dist.world_size)
    if change:
        reporter.status(f"{label}: {change}")
        tracker.set_tags(run_id, {"harness.resumed_world_size": str(t.dist.world_size)})
    logged = {step for step, _ in tracker.metric_history(run_id, "train_loss")}
    missing = [(epoch, record, now_ms()) for epoch, record in enumerate(state.history, start=1) if epoch not in logged]
    if missing:
        tracker.log_epochs(run_id, missing)
    return state


def _check_resumable(ckpt: dict[str, Any], config: TrainConfig, variant: str) -> None:
    """Refuse to continue a checkpoint trained with other settings, naming the first one changed."""
    changed = checkpoint.changed_settings(ckpt, config)
    if changed:
        k, (saved, now) = next(iter(changed.items()))
        raise ResumeError(
            f"Cannot resume variant '{variant}': its checkpoint was trained with {k}={saved!r} but now "
            f"{k}={now!r}; resume with the same set overrides as the interrupted run."
        )


def summarize(state: FitState) -> dict[str, float]:
    """The best epoch's own metrics (`FitState.best_metrics`), epochs run, training time and
    median throughput."""
    history = state.history
    if not history:
        return {}
    return {**state.best_metrics(), "epochs_run": len(history),
            "train_seconds": sum(h["epoch_seconds"] for h in history),
            "median_images_per_second": statistics.median(h["images_per_second"] for h in history)}


def export_model(t: Trainer) -> nn.Module:
    """CPU copy of the model behind its own preprocessing: takes raw [0, 1] images (N, C, H, W)
    at the dataset's native size and returns logits."""
    preprocess = Preprocess(t.data.mean, t.data.std, t.image_size)
    net = copy.deepcopy(t.model).float().cpu().to(memory_format=torch.contiguous_format)
    return nn.Sequential(preprocess, net).eval()


def test_best(t: Trainer, ckpt_dir: Path) -> tuple[dict[str, float], torch.Tensor]:
    """Load the best epoch's weights (rank 0 reads the checkpoint and hands it to all) and score
    them once on the test split; every rank takes part. Returns the test metrics and the test
    confusion counts."""
    best = t.dist.from_main(lambda: checkpoint.load(ckpt_dir / checkpoint.BEST))
    t.model.load_state_dict(best["model"])
    test = evaluate(t, t.data.test)
    metrics = {"test_loss": test.loss, "test_acc": test.acc, "param_count": param_count(t.model)}
    if test.top5 is not None:
        metrics["test_top5"] = test.top5
    return metrics, test.confusion


def model_metadata(t: Trainer) -> dict[str, Any]:
    """What the logged model says of its input and output, for `harness predict`: class names in
    output order, and the raw images it takes (channels, side, [0, 1] floats)."""
    return {"classes": list(t.data.classes), "in_channels": t.data.in_channels, "image_size": t.data.native_size,
            "dataset": t.config.dataset, "input": "float32 (N, C, H, W) images scaled to [0, 1], at image_size"}


def log_results(tracker: Tracker, run_id: str, t: Trainer, state: FitState, ckpt_dir: Path, label: str,
                test_confusion: torch.Tensor) -> None:
    """Rank 0, after `test_best`: log the reports, the best checkpoint and the model (at step
    `state.epoch`, where the final metrics were just logged, so its record links them)."""
    from harness import reports

    classes = t.data.classes
    confusion = test_confusion.numpy()
    tracker.log_figure(run_id, reports.confusion_figure(confusion, classes, f"{label}: test confusion matrix"),
                       "confusion_matrix.png")
    tracker.log_text(run_id, reports.confusion_frame(confusion, classes).to_csv(), "confusion_matrix.csv")
    tracker.log_text(run_id, reports.per_class_scores(confusion, classes).to_csv(index=False), "per_class_metrics.csv")
    tracker.log_figure(run_id, reports.learning_curve_figure(state.history, label, best_epoch=state.best_epoch),
                       "learning_curves.png")
    if state.val_confusions:
        # (epochs, true, predicted) counts, so later commands can compare epochs and runs.
        tracker.log_array(run_id, torch.stack(state.val_confusions).numpy(), "val_confusion/per_epoch.npy")
        tracker.log_dict(run_id, {"classes": list(classes)}, "val_confusion/classes.json")
    tracker.log_file(run_id, ckpt_dir / checkpoint.BEST, "checkpoint")

    images, _ = next(iter(t.data.test.batches(2, False, None)))
    example = (images.float() / 255).cpu().numpy()
    tracker.log_model(run_id, export_model(t), example, metadata=model_metadata(t), step=state.epoch)

