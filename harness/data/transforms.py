"""Per-batch preprocessing on the training device: resize, augment, normalise.

`Preprocess` is also the first layer of the exported MLflow model, so the logged model takes
raw [0, 1] images at the dataset's native size, exactly like evaluation here does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.data.auto_augment import BatchAutoAugment
from harness.data.batch_augment import random_erasing


class Preprocess(nn.Module):
    """Float images in [0, 1] at native size -> resized to `image_size` and normalised."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], image_size: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Pad every image by `padding` (zeros) and crop back at a random offset per image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]  # (N,1,H,1)
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]  # (N,1,1,W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_hflip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror a random half of the images left-right."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class BatchTransform:
    """uint8 CPU batches -> normalised float batches on `device`, augmented when training."""

    def __init__(self, preprocess: Preprocess, device: torch.device, augment: bool, hflip: bool,
                 channels_last: bool = False, erase_p: float = 0.0, policy: BatchAutoAugment | None = None) -> None:
        self.preprocess = preprocess.to(device)
        # uint8 -> normalised float in two in-place ops: x * 1/(255 std) + (-mean/std).
        self.scale = (1 / (255 * preprocess.std)).to(device)
        self.shift = (-preprocess.mean / preprocess.std).to(device)
        self.device = device
        self.augment = augment
        self.hflip = hflip
        self.erase_p = erase_p  # random erasing: probability per image (after normalising: erased to the mean)
        self.policy = policy  # per-image auto-augment policy, on [0, 1] images before normalising
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: Tensor, train: bool, generator: torch.Generator | None = None) -> Tensor:
        if train and self.policy is not None:
            assert generator is not None
            x = self._auto_augmented(images, generator)
        else:
            x = self._normalised(images, train, generator)
        if train and self.erase_p:
            assert generator is not None
            x = random_erasing(x, self.erase_p, generator)
        return x.contiguous(memory_format=self.memory_format)

    def _auto_augmented(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """torchvision's order: resize, crop/flip (padding black), the policy on [0, 1] images,
        then normalise."""
        x = images.to(self.device, non_blocking=True).float().div_(255)
        size = self.preprocess.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
        if self.augment:
            x = random_crop(x, max(1, size // 8), generator)
            if self.hflip:
                x = random_hflip(x, generator)
        x = self.policy(x, generator)  # type: ignore[misc]
        return (x - self.preprocess.mean) / self.preprocess.std

    def _normalised(self, images: Tensor, train: bool, generator: torch.Generator | None) -> Tensor:
        """uint8 -> normalised float, resized, then crop/flip when training with `augment`."""
        x = images.to(self.device, non_blocking=True).float().mul_(self.scale).add_(self.shift)
        size = self.preprocess.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            # Normalising first is exact: bilinear weights sum to 1, so they commute with the affine map.
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if train and self.augment:
            assert generator is not None
            # Crop after resizing so the shift is in model pixels: 4 px at 32, 28 px at 224.
            x = random_crop(x, max(1, self.preprocess.image_size // 8), generator)
            if self.hflip:
                x = random_hflip(x, generator)
        return x
