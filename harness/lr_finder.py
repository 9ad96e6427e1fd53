"""`harness lr-find`: the learning-rate range test (Smith, 2017; the fastai / Lightning "LR finder").

From the variant's initial weights, train with the lr growing exponentially every optimizer
step from `min_lr` to `max_lr`, and stop once the smoothed training loss diverges (above 4x its
minimum, or not finite). The suggestion is the lr of the steepest descent of the smoothed loss
against log(lr), before its minimum. It runs through the one train loop (`fit`, with a
per-step callback) and is recorded as one MLflow run of kind `lr_find` with the curve as CSV and
the plot; the experiment file is never changed. Progress shows as a live bar of steps on a
terminal, plain lines otherwise; a grid too coarse to trust is warned about before it runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from harness import reporter, tracking
from harness.config import TrainConfig
from harness.data import load_data
from harness.errors import ConfigError
from harness.experiment import Experiment
from harness.lifecycle import parent_run
from harness.tracking import Tracker
from harness.train import Callback, FitState, Trainer, build_trainer, fit

SMOOTHING = 0.9  # exponential smoothing of the loss (a ~10-step window), bias-corrected
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum
RULE = "steepest descent of the smoothed loss against log(lr), before its minimum"
# The smoothed loss averages over ~10 steps (SMOOTHING 0.9: a mean lag of 9 steps). With fewer
# steps than that per decade of lr, that window spans more than 10x in lr, so the steepest
# descent (the suggestion) can land a decade or more off. The default (1e-5 to 10 in 100 steps)
# has 16.7 per decade.
MIN_STEPS_PER_DECADE = 10
WARNING_TAG = "harness.lr_find.warning"
PROGRESS_LINES = 10  # plain progress: a line every tenth of --steps ...
PROGRESS_SECONDS = 10.0  # ... and at least this often when steps are slow, so it never looks hung


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
            self.stop_reason = f"reached max_lr after {self.steps} steps"
        if self.stop_reason:
            raise RangeTestDone
        self._set_lr(t, self.min_lr * (self.max_lr / self.min_lr) ** ((i + 1) / max(self.steps - 1, 1)))


class RangeTestProgress(Callback):
    """The range test's progress by step (lr, smoothed loss) through the current reporter: a live
    bar where it is live; lines otherwise, every tenth of the steps and at least every
    PROGRESS_SECONDS."""

    def __init__(self, label: str, test: RangeTest) -> None:
        self.label, self.test = label, test
        self.reporter = reporter.current()
        self.plain = not self.reporter.live
        self._every = max(1, test.steps // PROGRESS_LINES)
        self._bars: reporter.Bars | None = None
        self._bar: int | None = None
        self._last_line = time.monotonic()
        self._shown = 0  # the step of the last plain line

    def _stats(self) -> str:
        return f"lr {self.test.lrs[-1]:.1e}, smoothed loss {self.test.smoothed[-1]:.3g}"

    def _show(self) -> None:
        step = len(self.test.lrs)
        if self._bars is not None and self._bar is not None:
            self._bars.update(self._bar, completed=step, stats=self._stats())
        elif step and step != self._shown:
            self.reporter.status(f"{self.label}: step {step}/{self.test.steps}, {self._stats()}")
            self._shown, self._last_line = step, time.monotonic()

    def on_fit_start(self, t: Trainer, state: FitState) -> None:
        self._last_line = time.monotonic()
        if not self.plain:
            self._bars = self.reporter.bars()
            self._bar = self._bars.add(self.label, total=self.test.steps)

    def on_step_end(self, t: Trainer, loss: Tensor) -> None:
        # Reads the RangeTest's numbers (it runs first): no second device sync.
        step = len(self.test.lrs)
        if not self.plain or step % self._every == 0 or time.monotonic() - self._last_line >= PROGRESS_SECONDS:
            self._show()

    def on_fit_end(self, t: Trainer, state: FitState, error: BaseException | None) -> None:
        # The RangeTest ends the fit from its own on_step_end: the last step is shown here.
        if error is None or isinstance(error, RangeTestDone):
            self._show()
        if self._bars is not None:  # also after an error, so the terminal is left clean
            self._bars.close()
            self._bars = None


def coarse_grid_warning(min_lr: float, max_lr: float, steps: int) -> str | None:
    """Why a grid of `steps` lrs from `min_lr` to `max_lr` is too coarse to trust (fewer than
    MIN_STEPS_PER_DECADE steps per decade), or None. Known from the arguments alone, so a caller
    can show it before the test runs; None for arguments `lr_find` refuses."""
    if not (0 < min_lr < max_lr and math.isfinite(max_lr)) or steps < 1:
        return None
    decades = math.log10(max_lr / min_lr)
    per_decade = steps / decades
    if per_decade >= MIN_STEPS_PER_DECADE:
        return None
    return (f"steps={steps} over {decades:.3g} decades of lr ({min_lr:g} to {max_lr:g}) is {per_decade:.2g} steps "
            f"per decade, fewer than {MIN_STEPS_PER_DECADE}: the smoothed loss averages ~10 steps, so the suggestion "
            f"may be off by 10x or more; use steps={math.ceil(MIN_STEPS_PER_DECADE * decades)} or more "
            f"(or a narrower min_lr/max_lr).")


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
    """The curve, the suggestion, why the test stopped, and its MLflow run; `warning`: why the lr
    grid is too coarse to trust (`coarse_grid_warning`), also tagged on the run, or None."""

    run_id: str
    suggestion: float | None
    stop_reason: str
    test: RangeTest
    warning: str | None = None


def lr_find(tracker: Tracker, exp: Experiment, variant: str, config: TrainConfig, min_lr: float, max_lr: float,
            steps: int, data_dir: Path | None = None) -> LrFindOutcome:
    """Run the range test for `config` (the variant's, with --set applied) as one MLflow run,
    showing its progress on stdout (a live bar on a terminal, plain lines otherwise)."""
    if not (0 < min_lr < max_lr and math.isfinite(max_lr)):
        raise ConfigError(f"min_lr and max_lr must satisfy 0 < min_lr < max_lr (got {min_lr:g} and {max_lr:g}).")
    if steps < 5:
        raise ConfigError(f"steps must be at least 5 (got {steps}).")
    data = load_data(config, data_dir)
    steps_per_epoch = math.ceil(math.ceil(len(data.train) / config.batch_size) / config.accumulate_steps)
    # A constant schedule (the test sets the lr itself), no EMA or early stopping, and enough
    # epochs for `steps` steps.
    config = config.override(scheduler="none", warmup_epochs=0, ema_decay=None, early_stopping_patience=None,
                             lr=min_lr, epochs=math.ceil(steps / steps_per_epoch) + 1)
    experiment_id = tracker.ensure_experiment(exp.name, exp.description)
    tags = {tracking.KIND_TAG: "lr_find", tracking.VARIANT_TAG: variant,
            **tracking.environment_tags(config.device, exp.source_file)}
    warning = coarse_grid_warning(min_lr, max_lr, steps)
    if warning:
        tags[WARNING_TAG] = warning
    test = RangeTest(min_lr, max_lr, steps)
    with parent_run(tracker, experiment_id, f"lr-find-{variant}", tags) as run:
        run_id = run.run_id
        tracker.log_config(run_id, config, exp.source_file)
        tracker.log_params(run_id, {"lr_find.min_lr": str(min_lr), "lr_find.max_lr": str(max_lr),
                                    "lr_find.steps": str(steps), "lr_find.rule": RULE})
        try:
            fit(build_trainer(config, data), [test, RangeTestProgress(f"lr-find {variant}", test)])
            test.stop_reason = test.stop_reason or "the data ran out"
        except RangeTestDone:
            pass
        suggestion = suggest_lr(test.lrs, test.smoothed)
        _log(tracker, run_id, variant, test, suggestion)
    return LrFindOutcome(run_id, suggestion, test.stop_reason, test, warning)


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
