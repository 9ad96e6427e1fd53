"""Callbacks for the train loop: early stopping, console progress and MLflow epoch metrics.

(Checkpoints live in `harness.checkpoint`; MLflow itself in `harness.tracking`, whose `Tracker`
the epoch logger writes through.)
"""

from __future__ import annotations

import time

from harness import reporter
from harness.reporter import Bars
from harness.tracking import Tracker, TrackingError, now_ms
from harness.train import Callback, FitState, Trainer, accumulation_warning, monitored


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


class ConsoleProgress(Callback):
    """An epoch's progress through the current reporter (`harness.reporter`): a live bar of
    batches (loss, accuracy, ETA) where it is live, one line of metrics per epoch otherwise.
    `live=False` asks for the lines even on a live reporter (trials in parallel threads cannot
    share one display)."""

    def __init__(self, label: str, live: bool = True) -> None:
        self.label = label
        self.reporter = reporter.current()
        self.live = live and self.reporter.live
        self._bars: Bars | None = None
        self._bar: int | None = None
        self._epoch = 0
        self._epochs = 0

    def on_fit_start(self, t: Trainer, state: FitState) -> None:
        self._epochs = t.config.epochs
        warning = accumulation_warning(t.config, len(t.data.train))
        if warning and t.dist.is_main:  # one line per variant, not one per process
            self.reporter.warning(f"{self.label}: {warning}")
        if self.live:
            self._bars = self.reporter.bars()

    def on_epoch_start(self, t: Trainer, state: FitState, epoch: int) -> None:
        self._epoch = epoch
        if self._bars is not None:
            self._bar = self._bars.add(f"{self.label} {epoch}/{self._epochs}")

    def on_batch_end(self, batch: int, num_batches: int, loss: float, acc: float) -> None:
        if self._bars is not None and self._bar is not None:
            self._bars.update(self._bar, completed=batch, total=num_batches, stats=f"loss {loss:.4f} acc {acc:.4f}")

    def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None:
        if self._bars is not None and self._bar is not None:
            # Short, so the bar still fits an 80-column terminal.
            key = "val" if "val_loss" in record else "train"
            self._bars.update(self._bar, stats=f"{key} loss {record[f'{key}_loss']:.4f} acc {record[f'{key}_acc']:.4f}")
        else:
            self.reporter.status(f"{self.label} epoch {self._epoch}/{self._epochs}  {format_record(record)}")

    def on_fit_end(self, t: Trainer, state: FitState, error: BaseException | None) -> None:
        # Also after an error: the live display is stopped so the terminal is left clean.
        if self._bars is not None:
            self._bars.close()
            self._bars = None
        if state.stop_reason and error is None:
            self.reporter.status(f"{self.label}: {state.stop_reason}")


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
                reporter.warning(f"{exc}; training goes on, {len(self._pending)} epoch(s) of metrics are kept and "
                                 f"sent when it answers again.")
            self._down = exc
            return
        if self._down is not None:
            reporter.status(f"{len(self._pending)} buffered epoch(s) of metrics sent: the tracking store answers "
                            "again.")
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
