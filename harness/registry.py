"""A small name -> object registry whose misses suggest the closest names."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from harness.errors import ConfigError, UnknownNameError

T = TypeVar("T")


def closest_name(name: str, choices: Iterable[str], cutoff: float = 0.5) -> str | None:
    """The choice most similar to `name`, if any is similar enough (for "did you mean" hints)."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def unknown_name_message(kind: str, name: str, choices: Iterable[str], more: str | None = None) -> str:
    """One sentence naming an unknown `name`, the closest match and all valid choices.

    `more` describes further choices that are not listed (e.g. "tv_<name> for ..."); it ends the list.
    """
    choices = sorted(choices)
    close = closest_name(name, choices)
    hint = f" Did you mean '{close}'?" if close else ""
    listed = ", ".join(choices) + (f", or {more}" if more else "")
    return f"Unknown {kind} '{name}'.{hint} Choose one of: {listed}."


class Deferred:
    """A callable registry entry whose implementation lives in `module`, imported on the first call.

    A registry can then name its entries (and answer `in`) without importing what they need
    (PyTorch). The module binds the implementation with `bind`, typically through a decorator.
    """

    def __init__(self, kind: str, name: str, module: str) -> None:
        self.kind, self.name, self.module = kind, name, module
        self._impl: Callable[..., Any] | None = None

    def __repr__(self) -> str:
        return f"Deferred({self.kind} '{self.name}' from {self.module})"

    def bind(self, impl: Callable[..., Any]) -> None:
        """Attach the implementation; only once, and only from the declared module (a programming error otherwise)."""
        if self._impl is not None:
            raise ValueError(f"{self.kind} '{self.name}' is already registered")
        if getattr(impl, "__module__", None) != self.module:
            raise ValueError(
                f"{self.kind} '{self.name}' is declared to live in {self.module}, "
                f"not {getattr(impl, '__module__', '?')}; declare a new name instead"
            )
        self._impl = impl

    @property
    def impl(self) -> Callable[..., Any]:
        """The bound implementation, importing its module first if needed."""
        if self._impl is None:
            importlib.import_module(self.module)
            if self._impl is None:
                raise RuntimeError(f"{self.module} did not register {self.kind} '{self.name}'")
        return self._impl

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.impl(*args, **kwargs)


class Registry(Generic[T]):
    """Maps names to objects; refuses duplicates and explains misses."""

    def __init__(
        self,
        kind: str,
        load_more: Callable[[], None] | None = None,
        *,
        more_prefix: str | None = None,
        more_description: str | None = None,
    ) -> None:
        """`load_more` registers further entries that are costly to import (torchvision's models);
        it runs once, the first time a name it could register is missing or all names are asked for.
        With `more_prefix`, it only registers names with that prefix, so a miss on any other name
        is answered without it; the miss message then ends with `more_description`."""
        self.kind = kind
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}  # names registered by users' own code -> who registered them
        self._load_more = load_more
        self._more_prefix = more_prefix
        self._more_description = more_description

    def _complete(self) -> None:
        if self._load_more is not None:
            load, self._load_more = self._load_more, None
            load()

    def _complete_for(self, name: object) -> None:
        """Run `load_more` if it could register `name`."""
        if self._more_prefix is None or (isinstance(name, str) and name.startswith(self._more_prefix)):
            self._complete()

    def is_deferred(self, name: object) -> bool:
        """Whether `name` could only be found by the costly `load_more`, not yet run (a `tv_*`
        model before torchvision's list is loaded)."""
        return (self._load_more is not None and name not in self._items and self._more_prefix is not None
                and isinstance(name, str) and name.startswith(self._more_prefix))

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

    def add_own(self, name: str, obj: T, registered_by: object) -> None:
        """Add `obj` under `name` for a user's own function `registered_by` (its owner is the
        function's module and qualified name). The same owner registering again (an experiment
        file imported twice, a notebook cell run again) replaces its entry; a built-in name, or a
        name another owner registered, is refused with a ConfigError saying what to do."""
        owner = f"{getattr(registered_by, '__module__', '?')}.{getattr(registered_by, '__qualname__', '?')}"
        if name in self._items and name not in self._owners:
            raise ConfigError(f"{self.kind} '{name}' is built into harness; register yours under another name.")
        if self._more_prefix and name.startswith(self._more_prefix):
            raise ConfigError(f"{self.kind} names starting with '{self._more_prefix}' are reserved for "
                              f"{self._more_description}; register yours under another name.")
        previous = self._owners.get(name)
        if previous is not None and previous != owner:
            raise ConfigError(f"{self.kind} '{name}' is already registered by {previous}; give {owner} another name, "
                              "or define it once in a helper file both import (experiments/_<name>.py).")
        self._items[name] = obj
        self._owners[name] = owner

    def owner(self, name: str) -> str | None:
        """Who registered `name` from outside the package (`add_own`), or None for a built-in name."""
        return self._owners.get(name)

    def get(self, name: str) -> T:
        """The object registered under `name`, or an UnknownNameError suggesting the closest names."""
        if name not in self._items:
            self._complete_for(name)
        try:
            return self._items[name]
        except KeyError:
            # Entries `load_more` would add are described, not listed, while it has not run.
            more = self._more_description if self._load_more is not None else None
            raise UnknownNameError(unknown_name_message(self.kind, name, self._items, more)) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._complete()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self._complete_for(name)
        return name in self._items

    def __len__(self) -> int:
        self._complete()
        return len(self._items)
