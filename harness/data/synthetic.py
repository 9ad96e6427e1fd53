"""Generated datasets with MNIST and CIFAR shapes, for offline tests and benchmarks.

Each class is a fixed random low-frequency pattern; samples are that pattern plus heavy
pixel noise, so a CNN learns them in an epoch or two.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from harness.data import Data, register_dataset
from harness.data.in_memory import InMemorySplit, channel_stats, train_val

if TYPE_CHECKING:
    from harness.config import TrainConfig

_SEED = 1234  # the data never depends on the run's seed
_TRAIN, _TEST, _CLASSES = 10_000, 2_000, 10


def generate(n: int, channels: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` uint8 images (n, channels, size, size) and their labels (n,)."""
    templates = F.interpolate(torch.rand(_CLASSES, channels, 7, 7, generator=generator), size=(size, size), mode="bicubic")
    labels = torch.randint(0, _CLASSES, (n,), generator=generator)
    x = templates[labels] + 0.35 * torch.randn(n, channels, size, size, generator=generator)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels


def _register(name: str, channels: int, size: int, hflip: bool) -> None:
    def load(config: TrainConfig, data_dir: Path) -> Data:
        g = torch.Generator().manual_seed(_SEED)
        # Generate train and test together: the class templates must be shared.
        images, labels = generate(_TRAIN + _TEST, channels, size, g)
        full = InMemorySplit(images[:_TRAIN], labels[:_TRAIN])
        test = InMemorySplit(images[_TRAIN:], labels[_TRAIN:])
        train, val = train_val(full, config)
        mean, std = channel_stats(train.images)
        return Data(train, val, test, [f"class_{i}" for i in range(_CLASSES)], channels, size, mean, std, hflip)

    register_dataset(name)(load)


_register("synthetic", channels=1, size=28, hflip=False)
_register("synthetic_rgb", channels=3, size=32, hflip=True)
