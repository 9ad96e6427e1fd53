"""A small name -> object registry whose misses suggest the closest names."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")


def closest_name(name: str, choices: Iterable[str], cutoff: float = 0.5) -> str | None:
    """The choice most similar to `name`, if any is similar enough (for "did you mean" hints)."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def unknown_name_message(kind: str, name: str, choices: Iterable[str]) -> str:
    """One sentence naming an unknown `name`, the closest match and all valid choices."""
    choices = sorted(choices)
    close = closest_name(name, choices)
    hint = f" Did you mean '{close}'?" if close else ""
    return f"Unknown {kind} '{name}'.{hint} Choose one of: {', '.join(choices)}."


class Registry(Generic[T]):
    """Maps names to objects; refuses duplicates and explains misses."""

    def __init__(self, kind: str, load_more: Callable[[], None] | None = None) -> None:
        """`load_more` registers further entries that are costly to import (torchvision's models);
        it runs once, the first time a name is missing or all names are asked for."""
        self.kind = kind
        self._items: dict[str, T] = {}
        self._load_more = load_more

    def _complete(self) -> None:
        if self._load_more is not None:
            load, self._load_more = self._load_more, None
            load()

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("name")` adds the decorated object under `name`."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        """Add `obj` under `name`; a second object under the same name is a programming error."""
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """The object registered under `name`, or a HarnessError suggesting the closest names."""
        if name not in self._items:
            self._complete()
        try:
            return self._items[name]
        except KeyError:
            raise HarnessError(unknown_name_message(self.kind, name, self._items)) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._complete()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self._complete()
        return name in self._items

    def __len__(self) -> int:
        self._complete()
        return len(self._items)
