"""Callbacks for the train loop: early stopping, console progress and MLflow epoch metrics.

(Checkpoints live in `harness.checkpoint`; MLflow itself in `harness.tracking`, whose `Tracker`
the epoch logger writes through.)
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from harness.tracking import Tracker, TrackingError, now_ms
from harness.train import Callback, FitState, Trainer, accumulation_warning, monitored

if TYPE_CHECKING:
    from rich.progress import Progress  # imported when a bar is shown: rich costs start-up time


class EarlyStopping(Callback):
    """Stops when the monitored metric has not improved for `patience` epochs."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None:
        if state.epochs_since_best >= self.patience:
            name, _, _ = monitored(t.config, record)
            state.stop_reason = (
                f"early stopping: {name} has not improved for {self.patience} epochs (best epoch {state.best_epoch})"
            )


def format_record(record: dict[str, float]) -> str:
    """One line of epoch metrics."""
    parts = [f"train_loss {record['train_loss']:.4f}", f"train_acc {record['train_acc']:.4f}"]
    if "val_loss" in record:
        parts += [f"val_loss {record['val_loss']:.4f}", f"val_acc {record['val_acc']:.4f}"]
    if "val_loss_ema" in record:
        parts += [f"ema val_loss {record['val_loss_ema']:.4f}", f"ema val_acc {record['val_acc_ema']:.4f}"]
    parts += [f"lr {record['lr']:.3g}", f"{record['images_per_second']:.0f} img/s", f"{record['epoch_seconds']:.1f}s"]
    return "  ".join(parts)


def plain_output(force_plain: bool | None = None) -> bool:
    """Whether progress is plain lines (stdout is not a terminal, or `force_plain`) rather than a live bar."""
    return (not sys.stdout.isatty()) if force_plain is None else force_plain


def live_bar() -> Progress:
    """A started rich live display (description, bar, `stats` field, elapsed, ETA): the one
    `harness run` and `harness lr-find` share. Stop it when done, also after an error."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), transient=False,
    )
    progress.start()
    return progress


class ConsoleProgress(Callback):
    """A rich progress bar per epoch (loss, accuracy, ETA) on a terminal; plain lines otherwise."""

    def __init__(self, label: str, force_plain: bool | None = None) -> None:
        self.label = label
        self.plain = plain_output(force_plain)
        self._progress = None
        self._task = None
        self._epoch = 0
        self._epochs = 0

    def on_fit_start(self, t: Trainer, state: FitState) -> None:
        self._epochs = t.config.epochs
        warning = accumulation_warning(t.config, len(t.data.train))
        if warning and t.dist.is_main:  # one line per variant, not one per process
            print(f"warning: {self.label}: {warning}", file=sys.stderr, flush=True)
        if not self.plain:
            self._progress = live_bar()

    def on_epoch_start(self, t: Trainer, state: FitState, epoch: int) -> None:
        self._epoch = epoch
        self._start = time.perf_counter()
        if self._progress is not None:
            self._task = self._progress.add_task(f"{self.label} {epoch}/{self._epochs}", total=None, stats="")

    def on_batch_end(self, batch: int, num_batches: int, loss: float, acc: float) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=batch, total=num_batches,
                                  stats=f"loss {loss:.4f} acc {acc:.4f}")

    def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None:
        if self._progress is not None and self._task is not None:
            # Short, so the bar still fits an 80-column terminal.
            key = "val" if "val_loss" in record else "train"
            self._progress.update(self._task,
                                  stats=f"{key} loss {record[f'{key}_loss']:.4f} acc {record[f'{key}_acc']:.4f}")
        else:
            print(f"{self.label} epoch {self._epoch}/{self._epochs}  {format_record(record)}", flush=True)

    def on_fit_end(self, t: Trainer, state: FitState, error: BaseException | None) -> None:
        # Also after an error: the live display is stopped so the terminal is left clean.
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if state.stop_reason and error is None:
            print(f"{self.label}: {state.stop_reason}", flush=True)


class MlflowEpochLogger(Callback):
    """Logs each epoch's metrics (step = epoch number), batching epochs that end within
    `flush_seconds` of the last write into one request: on short epochs (LeNet: ~0.5 s) a write
    per epoch would cost several percent. The buffer is flushed when `fit` ends, however it
    ends, so a failed or interrupted run keeps its curves; after a hard kill, the resumed run
    back-fills what MLflow lacks (`harness.lifecycle`).

    A tracking store that stops answering does not stop training: the epochs stay buffered, one
    warning line says so, and writing is retried every `retry_seconds` (each try is bounded, see
    `tracking.HTTP_LIMITS`); once the store answers again the buffer is sent. If it is still down
    when training ends, `on_fit_end` raises the unreachable `TrackingError`."""

    def __init__(self, tracker: Tracker, run_id: str, flush_seconds: float = 5.0, retry_seconds: float = 60.0) -> None:
        self.tracker, self.run_id = tracker, run_id
        self.flush_seconds, self.retry_seconds = flush_seconds, retry_seconds
        self._pending: list[tuple[int, dict[str, float], int]] = []
        self._last_write = time.monotonic()
        self._down: TrackingError | None = None  # the store's last "does not answer", while it lasts

    def flush(self) -> None:
        """Write every buffered epoch now (kept for later if the store does not answer)."""
        self._last_write = time.monotonic()
        if not self._pending:
            return
        try:
            self.tracker.log_epochs(self.run_id, self._pending)
        except TrackingError as exc:
            if not exc.unreachable:
                raise
            if self._down is None:
                print(f"warning: {exc}; training goes on, {len(self._pending)} epoch(s) of metrics are kept and "
                      f"sent when it answers again.", file=sys.stderr, flush=True)
            self._down = exc
            return
        if self._down is not None:
            print(f"{len(self._pending)} buffered epoch(s) of metrics sent: the tracking store answers again.",
                  file=sys.stderr, flush=True)
            self._down = None
        self._pending = []

    def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None:
        self._pending.append((state.epoch, dict(record), now_ms()))
        wait = self.retry_seconds if self._down is not None else self.flush_seconds
        if time.monotonic() - self._last_write >= wait:
            self.flush()

    def on_fit_end(self, t: Trainer, state: FitState, error: BaseException | None) -> None:
        self.flush()
        if self._down is not None and error is None:
            raise self._down
