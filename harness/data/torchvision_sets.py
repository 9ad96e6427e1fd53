"""MNIST, Fashion-MNIST, CIFAR-10/100 through torchvision's own classes and download path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from harness.data import Data, register_dataset
from harness.data.in_memory import InMemorySplit, channel_stats, train_val
from harness.errors import HarnessError, first_line

if TYPE_CHECKING:
    from harness.config import TrainConfig


def _files_expected(cls: type, root: Path) -> tuple[Path, list[str]]:
    """Where torchvision looks for a dataset's files, and their names."""
    if hasattr(cls, "resources"):  # MNIST family: raw IDX files (gzipped downloads)
        return root / cls.__name__ / "raw", [name for name, _ in cls.resources]
    return root, [cls.filename]  # CIFAR: one archive, extracted next to it


def _open(cls: type, root: Path, train: bool, name: str):  # noqa: ANN202 (a torchvision dataset)
    """Open a torchvision dataset from `root`, downloading it if it is not there yet."""
    try:
        return cls(root=str(root), train=train, download=False)
    except RuntimeError:
        pass  # not on disk yet: try torchvision's real download
    try:
        return cls(root=str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same explanation
        folder, files = _files_expected(cls, root)
        raise HarnessError(
            f"Dataset '{name}' is not in {folder} and could not be downloaded ({first_line(exc, 160)}); "
            f"put {', '.join(files)} into {folder} (or pass --data-dir / set HARNESS_DATA_DIR to where they are)."
        ) from None


def _as_uint8_nchw(data: object) -> Tensor:
    t = torch.as_tensor(np.asarray(data))
    if t.ndim == 3:  # MNIST family: (N, H, W)
        return t.unsqueeze(1).contiguous()
    return t.permute(0, 3, 1, 2).contiguous()  # CIFAR: (N, H, W, C)


def _register(name: str, class_name: str, hflip: bool) -> None:
    def load(config: TrainConfig, data_dir: Path) -> Data:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        train_ds, test_ds = _open(cls, data_dir, True, name), _open(cls, data_dir, False, name)
        full = InMemorySplit(_as_uint8_nchw(train_ds.data), torch.as_tensor(train_ds.targets))
        test = InMemorySplit(_as_uint8_nchw(test_ds.data), torch.as_tensor(test_ds.targets))
        train, val = train_val(full, config)
        mean, std = channel_stats(train.images)
        return Data(train, val, test, list(train_ds.classes), full.images.shape[1], full.images.shape[-1], mean, std, hflip)

    register_dataset(name)(load)


_register("mnist", "MNIST", hflip=False)  # mirrored digits are different symbols
_register("fashion_mnist", "FashionMNIST", hflip=True)
_register("cifar10", "CIFAR10", hflip=True)
_register("cifar100", "CIFAR100", hflip=True)
