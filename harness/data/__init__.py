"""The dataset registry and the bundle of splits a training run consumes.

A loader takes `(config, data_dir)` and returns a `Data`: train / validation / test splits
that yield uint8 image batches (N, C, H, W) at `native_size`, plus what the on-device
preprocessing needs (channel mean/std, whether horizontal flips make sense).

Importing this package does not import PyTorch: dataset names are declared here, so config
checks need no torch, and each loader's module is imported on its first `load_data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import DataError
from harness.registry import Deferred, Registry

if TYPE_CHECKING:
    from harness.config import TrainConfig
    from harness.data.in_memory import Split

Loader = Callable[["TrainConfig", Path], "Data"]

# Every entry is a `Deferred` loader: calling it imports harness/data/<module>.py on first use.
DATASETS: Registry[Loader] = Registry("dataset")
_LOADERS: dict[str, Deferred] = {}  # the same entries, for `register_dataset` to bind


def _declare(name: str, module: str) -> None:
    """Declare dataset `name`, loaded by a function in harness/data/<module>.py."""
    _LOADERS[name] = Deferred("dataset", name, f"harness.data.{module}")
    DATASETS.add(name, _LOADERS[name])


_declare("digits", "digits")
_declare("image_folder", "image_folder")
_declare("synthetic", "synthetic")
_declare("synthetic_rgb", "synthetic")
for _name in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
    _declare(_name, "torchvision_sets")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator adding a dataset loader under `name`, from any file (an experiment file, a notebook)::

        @harness.register_dataset("my_scans")
        def my_scans(config: harness.TrainConfig, data_dir: Path) -> harness.Data:
            images, labels = ...  # read from data_dir / "my_scans"
            return harness.tensor_data(images, labels, ["healthy", "ill"], config)

    The loader returns a `Data`; `tensor_data` builds one from images in memory, with the
    validation and test splits carved as the built-in datasets carve theirs. Registering the
    same function again replaces it (a file imported twice); a built-in name, or a name another
    function registered, is a ConfigError.

    Inside the package, the decorator binds the loader of a name declared above instead.
    """

    def bind(load: Loader) -> Loader:
        module = getattr(load, "__module__", "") or ""
        if name in _LOADERS and module == _LOADERS[name].module:
            _LOADERS[name].bind(load)
        elif module.startswith("harness.data."):  # the package's own: declared above, known torch-free
            raise ValueError(f"dataset '{name}' is not declared; add it to harness/data/__init__.py with its module")
        else:
            DATASETS.add_own(name, load, load)
        return load

    return bind


@dataclass
class Data:
    """Everything about a dataset that training, evaluation and the exported model need."""

    train: Split
    val: Split | None  # None when val_fraction == 0
    test: Split
    classes: list[str]
    in_channels: int
    native_size: int  # side in pixels of the uint8 images the splits yield
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    hflip: bool  # horizontal flip is a label-preserving augmentation for this data
    # Where the data came from, for lineage (`harness.data.lineage`): a path, or how it was made;
    # and the files read, whose sizes and times tell whether a cached digest still holds.
    source: str = ""
    source_files: tuple[Path, ...] = ()


def default_data_dir() -> Path:
    """`HARNESS_DATA_DIR`, else ./data."""
    return Path(os.environ.get("HARNESS_DATA_DIR", "data"))


# The config fields dataset loaders read: configs equal on these load equal data (a test checks
# that every loader it can run offline reads nothing else), so `harness tune` loads once per study.
DATA_FIELDS = ("dataset", "data_path", "seed", "val_fraction", "test_fraction", "train_limit", "image_size",
               "device", "num_workers")


def data_key(config: TrainConfig) -> tuple[object, ...]:
    """What `load_data` depends on in `config` (see DATA_FIELDS)."""
    return tuple(getattr(config, name) for name in DATA_FIELDS)


def load_data(config: TrainConfig, data_dir: Path | None = None) -> Data:
    """Load the splits of `config.dataset` (validation carved from train, seeded)."""
    data = DATASETS.get(config.dataset)(config, Path(data_dir) if data_dir else default_data_dir())
    if not isinstance(data, Data):
        raise DataError(f"The loader of dataset '{config.dataset}' ({DATASETS.owner(config.dataset)}) returned "
                        f"{type(data).__name__}, not a harness.Data; build one with harness.tensor_data(...).")
    return data
