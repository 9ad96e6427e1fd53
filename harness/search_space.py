"""Hyperparameter search spaces: config field name -> distribution, declared as data.

Each experiment carries one (`Experiment.search_space`); `harness tune` samples it with Optuna.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FloatRange:
    """A float in [low, high], sampled on a log scale if `log`."""

    low: float
    high: float
    log: bool = False

    def describe(self) -> str:
        return f"float [{self.low:g}, {self.high:g}]{' log' if self.log else ''}"


@dataclass(frozen=True)
class IntRange:
    """An int in [low, high], sampled on a log scale if `log`."""

    low: int
    high: int
    log: bool = False

    def describe(self) -> str:
        return f"int [{self.low}, {self.high}]{' log' if self.log else ''}"


@dataclass(frozen=True)
class Choice:
    """One of `choices`."""

    choices: tuple[Any, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


Distribution = FloatRange | IntRange | Choice
SearchSpace = Mapping[str, Distribution]

# lr, momentum, batch size and weight decay: what users tune first for SGD-trained CNNs.
DEFAULT_SEARCH_SPACE: SearchSpace = {
    "lr": FloatRange(1e-4, 0.3, log=True),
    "momentum": FloatRange(0.5, 0.98),
    "batch_size": Choice((32, 64, 128, 256)),
    "weight_decay": FloatRange(1e-6, 1e-2, log=True),
}


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Sample every parameter of `space` from an Optuna trial."""
    values: dict[str, Any] = {}
    for name, dist in space.items():
        if isinstance(dist, FloatRange):
            values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, IntRange):
            values[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        else:
            values[name] = trial.suggest_categorical(name, list(dist.choices))
    return values


def describe(space: SearchSpace) -> dict[str, str]:
    """Human-readable form, for `harness show`."""
    return {name: dist.describe() for name, dist in space.items()}
