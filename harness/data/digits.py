"""scikit-learn's bundled 8x8 digits (1,797 images): real data that needs no download."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from harness.data import Data, register_dataset
from harness.data.in_memory import tensor_data

if TYPE_CHECKING:
    from harness.config import TrainConfig

# Upscaled once at load so MNIST-sized models (LeNet's 5x5 convs) apply unchanged.
DIGITS_SIZE = 28


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 64) pixels and (1797,) labels from scikit-learn's bundled CSV, read directly:
    importing sklearn.datasets costs about a second of start-up, reading the file milliseconds."""
    csv = _csv_path()
    if csv is None:  # a different sklearn layout: take the slow, public way
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        return bunch.data, bunch.target
    table = np.loadtxt(csv, delimiter=",", dtype=np.float32)
    return table[:, :-1], table[:, -1].astype(np.int64)


def _csv_path() -> Path | None:
    """scikit-learn's bundled digits file, located without importing sklearn; None if elsewhere."""
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    return csv if csv is not None and csv.is_file() else None


@register_dataset("digits")
def load_digits(config: TrainConfig, data_dir: Path) -> Data:
    """Digits 0-9 as 1x28x28 uint8 images; the test split is a fixed `test_fraction` carve-out."""
    pixels, targets = _read_digits()
    x = torch.as_tensor(pixels, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0  # values 0..16
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return tensor_data(images, torch.as_tensor(targets, dtype=torch.long), [str(d) for d in range(10)], config,
                       source=f"scikit-learn's bundled digits ({_csv_path() or 'sklearn.datasets.load_digits'})",
                       source_files=tuple(p for p in [_csv_path()] if p))
