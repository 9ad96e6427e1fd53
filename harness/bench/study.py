"""Study efficiency (`harness bench`): for one fixed budget of training epochs, which sampler +
pruner finds a good configuration sooner?

Each strategy runs an in-memory Optuna study over the same search space, data and per-trial
epochs, through the same `fit` loop and `OptunaPruning` callback as `harness tune` (MLflow is
left out: it costs the same for every strategy). A study stops starting trials once its epochs
spent reach the budget. Per strategy and sampler seed we record the best validation accuracy
and the epochs spent until the best-so-far came within `tolerance` of the best any strategy
reached with that seed; the report gives medians over seeds.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from harness.config import TrainConfig
from harness.data import Data
from harness.search_space import SearchSpace, suggest
from harness.train import FitState, NonFiniteLossError, build_trainer, fit
from harness.trial import OptunaPruning
from harness.tuning import PRUNERS, SAMPLERS

DEFAULT_STRATEGIES: tuple[tuple[str, str], ...] = (("tpe", "median"), ("random", "none"), ("tpe", "none"),
                                                   ("random", "median"))


def study_case(data_dir: Path | None, device: str) -> TrainConfig:
    """The study-efficiency setting: ReLU LeNet, 3 epochs per trial, on the MNIST sample
    (4,000 training and 1,000 validation images) or generated data of the same shape."""
    dataset = "mnist" if data_dir is not None else "synthetic"
    return TrainConfig(model="lenet_relu", dataset=dataset, epochs=3, optimizer="sgd", lr=0.05, momentum=0.9,
                       seed=0, val_fraction=0.1, train_limit=4000, device=device)


@dataclass
class StudyTrace:
    """One strategy's study: after each finished trial, the epochs spent so far and the best
    validation accuracy so far."""

    sampler: str
    pruner: str
    seed: int
    epochs: list[int] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    pruned: int = 0

    @property
    def best_val_acc(self) -> float:
        return self.best[-1] if self.best else float("nan")

    def epochs_to_reach(self, target: float) -> int | None:
        """Epochs spent when the best-so-far first reached `target` (None: never)."""
        return next((e for e, b in zip(self.epochs, self.best) if b >= target), None)


def run_study(base: TrainConfig, space: SearchSpace, data: Data, sampler: str, pruner: str, seed: int,
              budget_epochs: int) -> StudyTrace:
    """Trials of `base` (its `epochs` per trial) until `budget_epochs` training epochs are spent."""
    trace = StudyTrace(sampler, pruner, seed)
    spent = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal spent
        state = FitState()
        pruning = OptunaPruning(trial)
        try:
            fit(build_trainer(base.override(**suggest(trial, space)), data), [pruning], state)
        except NonFiniteLossError as exc:  # as in `harness tune`: a diverged trial is pruned
            raise optuna.TrialPruned(str(exc)) from None
        finally:
            spent += len(state.history)
            value = max((h["val_acc"] for h in state.history), default=0.0)
            trace.epochs.append(spent)
            trace.best.append(max(value, trace.best[-1] if trace.best else 0.0))
        if pruning.pruned:  # the callback only stops training; the objective reports the pruning
            raise optuna.TrialPruned(state.stop_reason)
        return value

    def stop_at_budget(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.PRUNED:
            trace.pruned += 1
        if spent >= budget_epochs:
            study.stop()

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line per study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(direction="maximize", sampler=SAMPLERS.get(sampler)(seed),
                                    pruner=PRUNERS.get(pruner)())
    study.optimize(objective, callbacks=[stop_at_budget], catch=())
    return trace


def compare_strategies(base: TrainConfig, space: SearchSpace, data: Data, budget_epochs: int,
                       seeds: Sequence[int] = (0, 1, 2),
                       strategies: Sequence[tuple[str, str]] = DEFAULT_STRATEGIES, tolerance: float = 0.005,
                       log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every strategy with every seed (seeds alternate so machine drift hits all alike) and
    summarise: median best val acc, median epochs to within `tolerance` of the seed's best."""
    traces: dict[tuple[str, str], list[StudyTrace]] = {s: [] for s in strategies}
    for seed in seeds:
        for sampler, pruner in strategies:
            trace = run_study(base, space, data, sampler, pruner, seed, budget_epochs)
            log(f"study {sampler}+{pruner} seed {seed}: best val_acc {trace.best_val_acc:.4f} in "
                f"{len(trace.epochs)} trials ({trace.pruned} pruned), {trace.epochs[-1]} epochs")
            traces[(sampler, pruner)].append(trace)
    rows = []
    for (sampler, pruner), runs in traces.items():
        reach = []
        for trace in runs:
            target = max(t.best_val_acc for ts in traces.values() for t in ts if t.seed == trace.seed) - tolerance
            reach.append(trace.epochs_to_reach(target))
        reached = [r for r in reach if r is not None]
        rows.append({
            "strategy": f"{sampler}+{pruner}", "seeds": len(runs), "budget_epochs": budget_epochs,
            "best_val_acc": statistics.median(t.best_val_acc for t in runs),
            "best_val_acc_min": min(t.best_val_acc for t in runs),
            "trials": statistics.median(len(t.epochs) for t in runs),
            "pruned": statistics.median(t.pruned for t in runs),
            # Seeds that never got within tolerance count as the whole budget (and are counted).
            "epochs_to_within_tol": statistics.median(r if r is not None else budget_epochs for r in reach),
            "reached_within_tol": f"{len(reached)}/{len(runs)}",
        })
    return sorted(rows, key=lambda r: (-r["best_val_acc"], r["epochs_to_within_tol"]))
