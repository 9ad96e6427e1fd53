"""Experiments: a name, a description and named variants (TrainConfigs), one per file.

Each file `experiments/<name>.py` defines a module-level `experiment = Experiment(...)`.
The folder is `HARNESS_EXPERIMENTS_DIR`, else `./experiments`, else the one shipped beside
the harness package.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import Overrides, TrainConfig, field_names
from harness.errors import HarnessError
from harness.registry import unknown_name_message
from harness.search_space import DEFAULT_SEARCH_SPACE, SearchSpace
from harness.validation import check_config


@dataclass(frozen=True)
class Experiment:
    """A named set of variants to train and compare."""

    name: str
    description: str
    variants: Mapping[str, TrainConfig]
    search_space: SearchSpace = field(default_factory=lambda: dict(DEFAULT_SEARCH_SPACE))  # for `harness tune`
    source_file: str | None = field(default=None, compare=False)  # set by the loader

    def __post_init__(self) -> None:
        if not self.variants:
            raise HarnessError(f"Experiment '{self.name}' defines no variants; add at least one TrainConfig.")
        for name, cfg in self.variants.items():
            if not isinstance(cfg, TrainConfig):
                raise HarnessError(f"Variant '{name}' of experiment '{self.name}' is not a TrainConfig.")
        for key in self.search_space:
            if key not in field_names():
                raise HarnessError(
                    f"Search-space name '{key}' of experiment '{self.name}' is not a config field; "
                    + unknown_name_message("config key", key, field_names())
                )

    def resolve(self, overrides: Overrides | None = None) -> dict[str, TrainConfig]:
        """Variants with `--set` overrides applied (common first, then per variant), values and
        names checked (`check_config`)."""
        overrides = overrides or Overrides()
        unknown = set(overrides.per_variant) - set(self.variants)
        if unknown:
            raise HarnessError(unknown_name_message(f"variant of '{self.name}'", sorted(unknown)[0], self.variants))
        return {
            name: check_config(dataclasses.replace(cfg, **{**overrides.common, **overrides.per_variant.get(name, {})}))
            for name, cfg in self.variants.items()
        }


def experiments_dir() -> Path:
    """Where experiment files are looked up."""
    env = os.environ.get("HARNESS_EXPERIMENTS_DIR")
    if env:
        return Path(env)
    local = Path("experiments")
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent.parent / "experiments"


def experiment_names(folder: Path | None = None) -> list[str]:
    """Names of all experiment files (without `.py`), sorted."""
    folder = folder or experiments_dir()
    return sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))


def load_experiment(name: str, folder: Path | None = None) -> Experiment:
    """Import `experiments/<name>.py` and return its `experiment` object."""
    folder = folder or experiments_dir()
    path = folder / f"{name}.py"
    if not path.is_file():
        raise HarnessError(unknown_name_message("experiment", name, experiment_names(folder)))
    spec = importlib.util.spec_from_file_location(f"harness_experiments.{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    exp = getattr(module, "experiment", None)
    if not isinstance(exp, Experiment):
        raise HarnessError(f"{path} must define `experiment = Experiment(...)` at module level.")
    if exp.name != name:
        raise HarnessError(f"{path} defines experiment '{exp.name}'; rename it to '{name}' to match its file.")
    return dataclasses.replace(exp, source_file=str(path.resolve()))
