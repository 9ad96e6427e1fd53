"""`--register`: a trained model becomes a new version in MLflow's model registry, and an alias
(`champion` by default) moves to it only if its validation metric beats the version the alias
points at now. Both numbers are kept as tags on the new version, so the registry itself says
why the alias moved or stayed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.tracking import Tracker

DEFAULT_ALIAS = "champion"
METRIC = "best_val_acc"  # the validation metric `harness compare` ranks by; higher is better
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,254}$")
_VERSION_ALIAS = re.compile(r"^v\d+$", re.IGNORECASE)  # MLflow keeps v1, v2, ... for versions


@dataclass(frozen=True)
class Promotion:
    """What `register` did: the new version, and whether the alias moved to it."""

    name: str
    version: str
    alias: str
    value: float
    previous: tuple[str, float | None] | None  # (version, its metric) the alias pointed at before
    moved: bool

    def describe(self) -> str:
        """One line for the terminal."""
        head = f"Registered {self.name} version {self.version} ({METRIC} {self.value:.4f})"
        if self.previous is None:
            return f"{head}; alias '{self.alias}' now points at it (the first). Use it: models:/{self.name}@{self.alias}"
        old_version, old_value = self.previous
        if old_value is None:
            return (f"{head}; alias '{self.alias}' stays on version {old_version}, which has no {METRIC} tag to "
                    "compare with (registered by hand?): move the alias yourself if this one is better.")
        old = f"version {old_version} ({METRIC} {old_value:.4f})"
        if self.moved:
            return f"{head}; it beats {old}: alias '{self.alias}' moved to it. Use it: models:/{self.name}@{self.alias}"
        return f"{head}; it does not beat {old}: alias '{self.alias}' stays there."


def check_names(name: str | None, alias: str) -> None:
    """Refuse a registered-model name or alias MLflow would refuse, before anything trains."""
    if name is not None and not _NAME.match(name):
        raise HarnessError(f"--register '{name}' is not a usable model name; use letters, digits, '_', '-' and '.' "
                           "(e.g. --register quickstart-lenet).")
    if not _ALIAS.match(alias) or _VERSION_ALIAS.match(alias) or alias.lower() == "latest":
        raise HarnessError(f"--alias '{alias}' is not a usable alias; use letters, digits, '_' and '-', starting with "
                           "a letter, and not 'latest' or v<number> (MLflow reserves those).")


def register(tracker: Tracker, model_uri: str, name: str, value: float, alias: str = DEFAULT_ALIAS,
             tags: dict[str, str] | None = None) -> Promotion:
    """Register `model_uri` as a new version of `name`, tagged with its validation metric
    `value`; point `alias` at it if the alias is unset or its version's metric is lower (a
    version without that tag, e.g. registered by hand, is never beaten silently: the alias
    stays and the message says why)."""
    if not math.isfinite(value):
        raise HarnessError(f"Cannot register a model whose {METRIC} is {value}; train it with a validation split.")
    current = tracker.alias_version(name, alias)
    previous: tuple[str, float | None] | None = None
    if current is not None:
        old_version, old_tags = current
        previous = (old_version, _number(old_tags.get(METRIC)))
    moved = previous is None or (previous[1] is not None and value > previous[1])
    # Full precision (repr): a rounded tag could let an equal model "beat" the champion.
    version_tags = {**(tags or {}), METRIC: repr(float(value)), "harness.alias": alias,
                    f"harness.{alias}_{METRIC}_before": "none" if previous is None or previous[1] is None
                    else repr(previous[1]),
                    "harness.promoted": str(moved).lower()}
    version = tracker.register_model(model_uri, name, version_tags)
    if moved:
        tracker.set_alias(name, alias, version)
    return Promotion(name, version, alias, value, previous, moved)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
