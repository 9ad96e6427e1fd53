"""Datasets held in memory as uint8 tensors and batched by slicing: no per-sample Python work."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from harness.data import Data
from harness.errors import DataError

if TYPE_CHECKING:
    from harness.config import TrainConfig

# Test splits carved from data without an official test set use this fixed seed, so every
# run (whatever its own seed) is scored on the same images.
TEST_SPLIT_SEED = 0


class Split(Protocol):
    """A split that yields (uint8 images (N, C, H, W), int64 labels (N,)) batches on the CPU."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, shuffle: bool,
                generator: torch.Generator | None) -> Iterator[tuple[Tensor, Tensor]]: ...

    def train_batches(self, batch_size: int, generator: torch.Generator, rank: int, world: int, epoch: int,
                      seed: int) -> Iterator[tuple[Tensor, Tensor, int]]:
        """This rank's share of each shuffled global batch of `batch_size`, with the global batch's
        size. Every rank yields the same number of batches (data-parallel steps stay in step)."""
        ...

    def shard(self, rank: int, world: int) -> Split:
        """This rank's contiguous share of the split, for evaluation: every sample in exactly one
        share, no padding."""
        ...


class InMemorySplit:
    """Images (uint8, N x C x H x W) and labels (int64, N) held as tensors."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        assert images.dtype == torch.uint8 and images.ndim == 4, images.shape
        self.images = images.contiguous()
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, shuffle: bool,
                generator: torch.Generator | None) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of `batch_size` (the last may be smaller); shuffled with `generator` if asked."""
        n = len(self.labels)
        if shuffle:
            # The permutation is drawn on the CPU generator wherever the tensors live, so a
            # device-resident split shuffles exactly like a CPU one.
            order = torch.randperm(n, generator=generator).to(self.images.device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                yield self.images[idx], self.labels[idx]
        else:
            for start in range(0, n, batch_size):
                yield self.images[start : start + batch_size], self.labels[start : start + batch_size]

    def train_batches(self, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1, epoch: int = 0,
                      seed: int = 0) -> Iterator[tuple[Tensor, Tensor, int]]:
        """Global batches from one permutation that every rank draws identically from `generator`
        (the ranks' generators are in the same state), each split into `world` contiguous parts:
        no sample is seen twice in an epoch. A last global batch smaller than `world` is dropped
        (at most world - 1 samples an epoch), so no rank ever gets an empty part."""
        if world == 1:
            for images, labels in self.batches(batch_size, True, generator):
                yield images, labels, len(labels)
            return
        n = len(self.labels)
        order = torch.randperm(n, generator=generator).to(self.images.device)
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            if size < world:
                break
            idx = order[start + size * rank // world : start + size * (rank + 1) // world]
            yield self.images[idx], self.labels[idx], size

    def shard(self, rank: int, world: int) -> InMemorySplit:
        """Rank `rank`'s contiguous share (a view, no copy)."""
        n = len(self.labels)
        start, stop = n * rank // world, n * (rank + 1) // world
        return InMemorySplit(self.images[start:stop], self.labels[start:stop])

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.labels.nbytes

    def to(self, device: torch.device) -> InMemorySplit:
        """The same split with its tensors on `device` (batches are then sliced there)."""
        return InMemorySplit(self.images.to(device), self.labels.to(device))

    def subset(self, idx: Tensor) -> InMemorySplit:
        return InMemorySplit(self.images[idx], self.labels[idx])


def seeded_split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (rest, held_out) with round(n * fraction) held out, chosen by `seed`."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * fraction))
    return order[k:].sort().values, order[:k].sort().values


def train_val(full: InMemorySplit, config: TrainConfig) -> tuple[InMemorySplit, InMemorySplit | None]:
    """Carve the validation split from `full` (seeded) and cap training samples at train_limit."""
    train_idx, val_idx = seeded_split(len(full), config.val_fraction, config.seed)
    if config.train_limit is not None:
        train_idx = train_idx[: config.train_limit]
    return full.subset(train_idx), (full.subset(val_idx) if len(val_idx) else None)


def channel_stats(images: Tensor, max_images: int = 10_000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale, from up to `max_images` images."""
    x = images[:max_images].float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


def tensor_data(images: object, labels: object, classes: Sequence[str], config: TrainConfig, *,
                test: tuple[object, object] | None = None, hflip: bool = False,
                source: str = "tensors in memory", source_files: tuple[Path, ...] = ()) -> Data:
    """A dataset (`Data`) from images already in memory, for a loader of your own (`register_dataset`).

    `images`: a tensor or NumPy array, (N, C, H, W), (N, H, W, C) with C of 1 or 3, or (N, H, W);
    uint8 (0-255) or floating point in [0, 1]; square (H == W). `labels`: N whole numbers, each an
    index into `classes` (the class names, in label order). `test`: the (images, labels) of a test
    split of your own; without it a fixed `config.test_fraction` is carved out (the same images
    whatever the run's seed). Validation is carved from the rest with `config.val_fraction`, and
    `train_limit` applies, as for the built-in datasets. `hflip`: horizontal flips keep the label.
    `source` and `source_files`: where the data came from, for lineage.
    Raises DataError saying what to change when the arrays cannot be used.
    """
    classes = [str(c) for c in classes]
    full = _as_split(images, labels, len(classes), "images")
    if test is None:
        rest, test_idx = seeded_split(len(full), config.test_fraction, TEST_SPLIT_SEED)
        full, test_split = full.subset(rest), full.subset(test_idx)
    else:
        test_split = _as_split(test[0], test[1], len(classes), "test images")
        if test_split.images.shape[1:] != full.images.shape[1:]:
            raise DataError(f"The test images are {tuple(test_split.images.shape[1:])} and the training images "
                            f"{tuple(full.images.shape[1:])} (C, H, W); give both the same shape.")
    if not len(test_split):
        raise DataError("The test split is empty; pass test=(images, labels) or a larger test_fraction.")
    train, val = train_val(full, config)
    mean, std = channel_stats(train.images)
    return Data(train, val, test_split, classes, int(full.images.shape[1]), int(full.images.shape[-1]), mean, std,
                hflip=hflip, source=source, source_files=source_files)


def _as_split(images: object, labels: object, num_classes: int, what: str) -> InMemorySplit:
    """Check and convert user arrays into an InMemorySplit of uint8 (N, C, H, W) images."""
    try:
        x, y = torch.as_tensor(images), torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"The {what} or their labels are not an array: {exc}; pass tensors or NumPy arrays.") from None
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # channels last (as PIL and NumPy images come) to channels first
    if x.ndim != 4:
        raise DataError(f"The {what} have shape {tuple(x.shape)}; give (N, C, H, W), (N, H, W, C) or (N, H, W).")
    if x.shape[-1] != x.shape[-2]:
        raise DataError(f"The {what} are {x.shape[-2]}x{x.shape[-1]} pixels; harness trains on square images: "
                        "resize or crop them to one side first.")
    if x.dtype.is_floating_point:
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise DataError(f"The {what} are floating point outside [0, 1]; scale them to [0, 1] or pass uint8 0-255.")
        x = (x * 255).round().to(torch.uint8)
    elif x.dtype != torch.uint8:
        raise DataError(f"The {what} are {x.dtype}; pass uint8 (0-255) or floating point in [0, 1].")
    if y.ndim != 1 or len(y) != len(x) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"The labels of the {what} must be {len(x)} whole numbers, one per image; got "
                        f"{y.dtype} of shape {tuple(y.shape)}.")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"A label of the {what} is {int(y.min()) if y.min() < 0 else int(y.max())}, outside 0.."
                        f"{num_classes - 1} for the {num_classes} classes given; name every class.")
    return InMemorySplit(x.contiguous(), y.long())
