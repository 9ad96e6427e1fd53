"""`harness lr-find`: the learning-rate range test (Smith, 2017; the fastai / Lightning "LR finder").

From the variant's initial weights, train with the lr growing exponentially every optimizer
step from `min_lr` to `max_lr`, and stop once the smoothed training loss diverges (above 4x its
minimum, or not finite). The suggestion is the lr of the steepest descent of the smoothed loss
against log(lr), before its minimum. It runs through the one train loop (`fit`, with a
per-step callback) and is recorded as one MLflow run of kind `lr_find` with the curve as CSV and
the plot; the experiment file is never changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from harness import tracking
from harness.config import TrainConfig
from harness.data import load_data
from harness.errors import HarnessError
from harness.experiment import Experiment
from harness.lifecycle import ended_on_error
from harness.tracking import Tracker
from harness.train import Callback, FitState, Trainer, build_trainer, fit

SMOOTHING = 0.9  # exponential smoothing of the loss (a ~10-step window), bias-corrected
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum
RULE = "steepest descent of the smoothed loss against log(lr), before its minimum"


class RangeTestDone(Exception):
    """Raised by the range test's callback to end training mid-epoch (not an error)."""


@dataclass
class RangeTest(Callback):
    """Sets the lr of every step and records (lr, loss, smoothed loss) until the loss diverges
    or `steps` steps are done."""

    min_lr: float
    max_lr: float
    steps: int
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stop_reason: str = ""

    def _set_lr(self, t: Trainer, lr: float) -> None:
        for group in t.optimizer.param_groups:
            group["lr"] = lr

    def on_fit_start(self, t: Trainer, state: FitState) -> None:
        self._set_lr(t, self.min_lr)

    def on_step_end(self, t: Trainer, loss: Tensor) -> None:
        value = float(loss.item())
        i = len(self.lrs)
        self.lrs.append(t.optimizer.param_groups[0]["lr"])
        self.losses.append(value)
        previous = self.smoothed[-1] * (1 - SMOOTHING ** i) if i else 0.0  # undo the last bias correction
        self.smoothed.append((SMOOTHING * previous + (1 - SMOOTHING) * value) / (1 - SMOOTHING ** (i + 1)))
        if not math.isfinite(self.smoothed[-1]):
            self.stop_reason = f"the loss became {value} at lr {self.lrs[-1]:.3g}"
        elif self.smoothed[-1] > DIVERGED * min(self.smoothed):
            self.stop_reason = f"the smoothed loss diverged (over {DIVERGED:g}x its minimum) at lr {self.lrs[-1]:.3g}"
        elif i + 1 >= self.steps:
            self.stop_reason = f"reached --max-lr after {self.steps} steps"
        if self.stop_reason:
            raise RangeTestDone
        self._set_lr(t, self.min_lr * (self.max_lr / self.min_lr) ** ((i + 1) / max(self.steps - 1, 1)))


def suggest_lr(lrs: list[float], smoothed: list[float]) -> float | None:
    """The lr at the steepest descent of `smoothed` against log(lr), among the steps before the
    smoothed loss's minimum (None with fewer than 3 such steps)."""
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    if not finite:
        return None
    end = min(finite, key=lambda i: smoothed[i]) + 1
    if end < 3:
        return None
    slopes = np.gradient(np.asarray(smoothed[:end]), np.log(np.asarray(lrs[:end])))
    return float(lrs[int(np.argmin(slopes))])


@dataclass
class LrFindOutcome:
    """The curve, the suggestion, why the test stopped, and its MLflow run."""

    run_id: str
    suggestion: float | None
    stop_reason: str
    test: RangeTest


def lr_find(tracker: Tracker, exp: Experiment, variant: str, config: TrainConfig, min_lr: float, max_lr: float,
            steps: int, data_dir: Path | None = None) -> LrFindOutcome:
    """Run the range test for `config` (the variant's, with --set applied) as one MLflow run."""
    if not (0 < min_lr < max_lr and math.isfinite(max_lr)):
        raise HarnessError(f"--min-lr and --max-lr must satisfy 0 < min-lr < max-lr (got {min_lr:g} and {max_lr:g}).")
    if steps < 5:
        raise HarnessError(f"--steps must be at least 5 (got {steps}).")
    data = load_data(config, data_dir)
    steps_per_epoch = math.ceil(math.ceil(len(data.train) / config.batch_size) / config.accumulate_steps)
    # A constant schedule (the test sets the lr itself), no EMA or early stopping, and enough
    # epochs for `steps` steps.
    config = config.override(scheduler="none", warmup_epochs=0, ema_decay=None, early_stopping_patience=None,
                             lr=min_lr, epochs=math.ceil(steps / steps_per_epoch) + 1)
    experiment_id = tracker.ensure_experiment(exp.name, exp.description)
    tags = {tracking.KIND_TAG: "lr_find", tracking.VARIANT_TAG: variant,
            **tracking.environment_tags(config.device, exp.source_file)}
    run_id = tracker.start_run(experiment_id, f"lr-find-{variant}", tags)
    test = RangeTest(min_lr, max_lr, steps)
    with ended_on_error(tracker, run_id):
        tracker.log_config(run_id, config, exp.source_file)
        tracker.log_params(run_id, {"lr_find.min_lr": str(min_lr), "lr_find.max_lr": str(max_lr),
                                    "lr_find.steps": str(steps), "lr_find.rule": RULE})
        try:
            fit(build_trainer(config, data), [test])
            test.stop_reason = test.stop_reason or "the data ran out"
        except RangeTestDone:
            pass
        suggestion = suggest_lr(test.lrs, test.smoothed)
        _log(tracker, run_id, variant, test, suggestion)
    tracker.end_run(run_id, "FINISHED")
    return LrFindOutcome(run_id, suggestion, test.stop_reason, test)


def _log(tracker: Tracker, run_id: str, variant: str, test: RangeTest, suggestion: float | None) -> None:
    from harness import reports

    rows = ["step,lr,loss,smoothed_loss"] + [f"{i + 1},{lr!r},{loss!r},{s!r}" for i, (lr, loss, s)
                                             in enumerate(zip(test.lrs, test.losses, test.smoothed))]
    tracker.log_text(run_id, "\n".join(rows) + "\n", "lr_find.csv")
    tracker.log_figure(run_id, reports.lr_find_figure(test.lrs, test.losses, test.smoothed, suggestion,
                                                      f"{variant}: learning-rate range test"), "lr_find.png")
    metrics = {"lr_find_steps": float(len(test.lrs))}
    if suggestion is not None:
        metrics["suggested_lr"] = suggestion
    tracker.log_metrics(run_id, metrics)
    tracker.set_tags(run_id, {"harness.lr_find.stop_reason": test.stop_reason})
