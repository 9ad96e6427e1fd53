"""`--register`: a trained model becomes a new version in MLflow's model registry, and an alias
(`champion` by default) moves to it only if its validation metric beats the version the alias
points at now. Both numbers are kept as tags on the new version, so the registry itself says
why the alias moved or stayed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from harness.errors import ConfigError
from harness.tracking import Tracker

DEFAULT_ALIAS = "champion"
METRIC = "best_val_acc"  # the validation metric `harness compare` ranks by; higher is better
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,254}$")
_VERSION_ALIAS = re.compile(r"^v\d+$", re.IGNORECASE)  # MLflow keeps v1, v2, ... for versions
ALIAS_TAG = "harness.alias"  # the alias a version was registered for (it competes for that one)
PROMOTED_TAG = "harness.promoted"  # "true": the alias pointed at this version once registrations settled
CONVERGE_ROUNDS = 20  # each round that moves the alias follows another registration's move: a few suffice


@dataclass(frozen=True)
class Promotion:
    """What `register` did: the new version, and where the alias points once registrations settled."""

    name: str
    version: str
    alias: str
    value: float
    previous: tuple[str, float | None] | None  # (version, its metric) the alias pointed at before
    moved: bool  # the alias points at the new version
    final: tuple[str, float | None] | None = None  # (version, its metric) the alias points at now

    def describe(self) -> str:
        """One line for the terminal: what was registered and where the alias really points now."""
        head = f"Registered {self.name} version {self.version} ({METRIC} {self.value:.4f})"
        use = f"Use it: models:/{self.name}@{self.alias}"
        if self.moved:
            if self.previous is None:
                return f"{head}; alias '{self.alias}' now points at it (the first). {use}"
            return f"{head}; it beats {_shown(self.previous)}: alias '{self.alias}' moved to it. {use}"
        final = self.final or self.previous
        if final is not None and final[1] is None:
            return (f"{head}; alias '{self.alias}' stays on version {final[0]}, which has no {METRIC} tag to "
                    "compare with (registered by hand?): move the alias yourself if this one is better.")
        if self.previous is not None and final is not None and final[0] != self.previous[0]:
            # Another registration won meanwhile (two runs or tune workers finishing together).
            return (f"{head}; it does not beat {_shown(final)}, registered at the same time: alias "
                    f"'{self.alias}' points there.")
        return f"{head}; it does not beat {_shown(final)}: alias '{self.alias}' stays there."


def _shown(version: tuple[str, float | None] | None) -> str:
    if version is None:
        return "the current version"
    number, value = version
    return f"version {number} ({METRIC} {value:.4f})" if value is not None else f"version {number}"


def check_names(name: str | None, alias: str) -> None:
    """Refuse a registered-model name or alias MLflow would refuse, before anything trains."""
    if name is not None and not _NAME.match(name):
        raise ConfigError(f"register '{name}' is not a usable model name; use letters, digits, '_', '-' and '.' "
                          "(e.g. register 'quickstart-lenet').")
    if not _ALIAS.match(alias) or _VERSION_ALIAS.match(alias) or alias.lower() == "latest":
        raise ConfigError(f"alias '{alias}' is not a usable alias; use letters, digits, '_' and '-', starting with "
                          "a letter, and not 'latest' or v<number> (MLflow reserves those).")


def register(tracker: Tracker, model_uri: str, name: str, value: float, alias: str = DEFAULT_ALIAS,
             tags: dict[str, str] | None = None) -> Promotion:
    """Register `model_uri` as a new version of `name`, tagged with its validation metric
    `value`; the alias then points at the best version registered for it (`converge`): the new
    one only if it beats the one the alias points at. A version without that tag (e.g.
    registered by hand) is never beaten silently: the alias stays and the message says why.
    Registrations racing each other (runs or tune workers finishing at once) all end with the
    alias on the best of them, whatever the timing."""
    if not math.isfinite(value):
        raise ConfigError(f"Cannot register a model whose {METRIC} is {value}; train it with a validation split.")
    current = tracker.alias_version(name, alias)
    previous = None if current is None else (current[0], _number(current[1].get(METRIC)))
    # Full precision (repr): a rounded tag could let an equal model "beat" the champion.
    version_tags = {**(tags or {}), METRIC: repr(float(value)), ALIAS_TAG: alias,
                    f"harness.{alias}_{METRIC}_before": "none" if previous is None or previous[1] is None
                    else repr(previous[1])}
    version = tracker.register_model(model_uri, name, version_tags)
    final = converge(tracker, name, alias)
    moved = final is not None and final[0] == version
    tracker.tag_version(name, version, {PROMOTED_TAG: str(moved).lower()})
    return Promotion(name, version, alias, value, previous, moved, final)


def converge(tracker: Tracker, name: str, alias: str) -> tuple[str, float | None] | None:
    """Point `alias` at the best version of `name` registered for it (highest METRIC tag; on a
    tie the earliest version, so an equal model never displaces the one there), re-reading
    after each move until a read finds the alias already there; returns (version, metric).

    Why this is timing-proof: every registration converges after its version exists, and the
    last write to the alias is followed by its writer's re-read; a registration that could
    still see a wrong alias reads after that write and corrects it. An alias on a version
    without the tag (set by hand) is left alone."""
    target: tuple[str, float | None] | None = None
    for _ in range(CONVERGE_ROUNDS):
        current = tracker.alias_version(name, alias)
        if current is not None and _number(current[1].get(METRIC)) is None:
            return current[0], None
        candidates = [(v, value) for v, version_tags in tracker.model_versions(name)
                      if version_tags.get(ALIAS_TAG, alias) == alias and (value := _number(version_tags.get(METRIC)))
                      is not None]
        if current is not None and all(v != current[0] for v, _ in candidates):
            candidates.append((current[0], _number(current[1].get(METRIC))))  # tagged, for another alias
        if not candidates:
            return None
        best = max(candidates, key=lambda c: (c[1], -int(c[0])))
        target = best
        if current is not None and current[0] == best[0]:
            return best
        tracker.set_alias(name, alias, best[0])
    return target


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
