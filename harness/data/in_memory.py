"""Datasets held in memory as uint8 tensors and batched by slicing: no per-sample Python work."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

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
