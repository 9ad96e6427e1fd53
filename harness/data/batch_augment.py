"""Batch-level augmentations on normalised float batches (N, C, H, W) on the training device.

Like `random_crop` / `random_hflip` in `harness.data.transforms`, every random number is drawn
on the CPU from the explicit `generator` passed in and only then moved to the batch's device:
a run is reproducible from its seed and draws the same boxes and mixing weights on CPU and GPU.
Each call consumes a fixed number of draws from `generator` that depends only on the batch
size, never on the outcome (whether an image was erased, whether the batch was mixed), so one
augmentation's choices never shift the stream seen by the next.

- `random_erasing`: torchvision's `RandomErasing`, each image of the batch independently.
- `mix_batch`: torchvision v2's `MixUp` / `CutMix` (one of them per batch), with soft targets.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# torchvision's RandomErasing tries this many (area, ratio) draws before giving up on an image.
ERASE_ATTEMPTS = 10


def _check_range(name: str, bounds: tuple[float, float], low_open: bool) -> None:
    lo, hi = bounds
    if not (lo <= hi and (lo > 0 if low_open else lo >= 0)):
        raise ValueError(f"{name} must be (low, high) with {'0 <' if low_open else '0 <='} low <= high, got {bounds}")


def random_erasing(x: Tensor, p: float, generator: torch.Generator, scale: tuple[float, float] = (0.02, 0.33),
                   ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> Tensor:
    """Erase one random rectangle in each image of `x` (N, C, H, W) with probability `p`.

    Per image this is torchvision's `RandomErasing(p, scale, ratio, value)`: the erased area is
    a fraction of H*W drawn uniformly from `scale`, the aspect ratio h/w is drawn log-uniformly
    from `ratio`, h and w are rounded to whole pixels, and a draw is kept only if h < H and
    w < W; up to 10 draws are made and an image whose 10 draws all fail is left unchanged
    (torchvision's rule, reproduced exactly: all 10 candidates are drawn at once and the first
    that fits is used). The box's top-left corner is then uniform over the positions where it
    fits. All channels inside the box are set to `value`; the batch is already normalised, so
    the default 0.0 is the dataset mean (torchvision's value=0 applied after Normalize).

    Returns a new tensor with `x`'s shape, dtype, device and memory format; `x` is not modified.
    """
    if x.ndim != 4:
        raise ValueError(f"random_erasing expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    _check_range("scale", scale, low_open=False)
    _check_range("ratio", ratio, low_open=True)
    n, _, h_img, w_img = x.shape

    # Boxes are computed in small CPU tensors (no device sync); the draws are the same whatever p is.
    apply = torch.rand(n, generator=generator) < p
    area = h_img * w_img * (scale[0] + (scale[1] - scale[0])
                            * torch.rand(n, ERASE_ATTEMPTS, generator=generator, dtype=torch.float64))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo)
                       * torch.rand(n, ERASE_ATTEMPTS, generator=generator, dtype=torch.float64))
    # torch.round rounds half to even, like Python's round() in torchvision.
    hs = torch.sqrt(area * aspect).round().long()
    ws = torch.sqrt(area / aspect).round().long()
    fits = (hs < h_img) & (ws < w_img)
    first = fits.long().argmax(1, keepdim=True)  # first fitting attempt (0 if none; masked out below)
    h = hs.gather(1, first).squeeze(1)
    w = ws.gather(1, first).squeeze(1)
    keep = apply & fits.any(1)
    h = torch.where(keep, h, 0)  # an empty box leaves the image as it is
    w = torch.where(keep, w, 0)
    # Uniform integer in [0, H - h] as torch.randint would give, but per image in one draw.
    top = (torch.rand(n, generator=generator, dtype=torch.float64) * (h_img - h + 1)).floor().long()
    left = (torch.rand(n, generator=generator, dtype=torch.float64) * (w_img - w + 1)).floor().long()

    out = x.clone()  # clone keeps the memory format (channels_last stays channels_last)
    if not bool(keep.any()):  # a CPU tensor: checking it costs no device sync
        return out
    top, h, left, w = torch.stack([top, h, left, w]).to(x.device)  # one small copy
    rows = torch.arange(h_img, device=x.device)
    cols = torch.arange(w_img, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # (N, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (N, 1, H, W): every channel
    return out.masked_fill_(mask, value)


def _soft_one_hot(y: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """(N, K) float32 targets: 1 - smoothing + smoothing/K on the label, smoothing/K elsewhere
    (what F.cross_entropy's label_smoothing does, and timm's mixup targets)."""
    off = smoothing / num_classes
    targets = torch.full((len(y), num_classes), off, dtype=torch.float32, device=y.device)
    # scatter rather than F.one_hot: one_hot checks the label range, a device sync on CUDA.
    return targets.scatter_(1, y[:, None], 1.0 - smoothing + off)


def _beta(alpha: float, seed: int) -> float:
    """One draw from Beta(alpha, alpha) from a NumPy generator seeded with `seed`.

    torch's Beta / Gamma samplers take no generator (they use the global RNG), so the seed is
    an int drawn from the caller's torch generator and NumPy draws the value from it."""
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mix_batch(x: Tensor, y: Tensor, num_classes: int, mixup_alpha: float, cutmix_alpha: float, mix_prob: float,
              generator: torch.Generator, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """MixUp or CutMix a batch `x` (N, C, H, W) with integer labels `y` (N,), as torchvision v2.

    With probability `mix_prob` the batch is mixed; when both alphas are > 0, MixUp or CutMix is
    chosen with probability 1/2 (timm, torchvision's reference scripts); with one alpha > 0 that
    one is used; with both 0 the batch is never mixed. Every image is mixed with its partner in
    the batch rolled by one (`x.roll(1, 0)`, image i with image i-1), with one lam for the batch:

    - MixUp: lam ~ Beta(mixup_alpha, mixup_alpha); images lam * x + (1 - lam) * x.roll(1, 0).
    - CutMix: lam ~ Beta(cutmix_alpha, cutmix_alpha); a box with half-sides int(sqrt(1-lam)/2 * W)
      and int(sqrt(1-lam)/2 * H) around a uniformly random pixel, clipped to the image, is pasted
      from x.roll(1, 0) into every image, and lam becomes 1 - box area / (H * W).

    Targets are lam * t(y) + (1 - lam) * t(y.roll(1, 0)), where t is the one-hot target smoothed
    by `label_smoothing` (1 - s + s/K on the label, s/K elsewhere) before mixing, as timm does;
    so the loss is cross-entropy against soft targets, with no further smoothing.

    Returns (images, targets, dominant):
      images:   same shape, dtype, device as `x`; `x` itself when the batch is not mixed, else new.
      targets:  (N, num_classes) float32 on `y`'s device, every row summing to 1.
      dominant: (N,) long, the label with the larger target weight: y where lam >= 0.5 (ties go
                to the image's own label), else y.roll(1, 0); `y` when not mixed. Training
                accuracy under mixing is counted against it.

    Labels are not range-checked (that would sync the device); out-of-range labels fail in
    the scatter. Every call draws the same from `generator` (4 uniforms, one int64 seed), mixed or not.
    """
    if x.ndim != 4:
        raise ValueError(f"mix_batch expects images (N, C, H, W), got shape {tuple(x.shape)}")
    if y.ndim != 1 or len(y) != len(x) or y.dtype != torch.long:
        raise ValueError(f"mix_batch expects labels (N,) of dtype long for {len(x)} images, "
                         f"got shape {tuple(y.shape)} {y.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
    if not 0.0 <= mix_prob <= 1.0:
        raise ValueError(f"mix_prob must be in [0, 1], got {mix_prob}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    _, _, h_img, w_img = x.shape

    # Draw everything up front, used or not, so the generator advances the same on every call.
    mix, use_cutmix, r_y, r_x = torch.rand(4, generator=generator).tolist()
    beta_seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())

    targets = _soft_one_hot(y, num_classes, label_smoothing)
    if mix >= mix_prob or (mixup_alpha <= 0 and cutmix_alpha <= 0):
        return x, targets, y
    cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or use_cutmix < 0.5)
    alpha = cutmix_alpha if cutmix else mixup_alpha
    lam = _beta(alpha, beta_seed)

    if cutmix:
        # torchvision v2 CutMix: integer centre uniform over the pixels, box clipped to the image.
        cx, cy = int(r_x * w_img), int(r_y * h_img)
        half = 0.5 * math.sqrt(1.0 - lam)
        half_w, half_h = int(half * w_img), int(half * h_img)
        x1, x2 = max(cx - half_w, 0), min(cx + half_w, w_img)
        y1, y2 = max(cy - half_h, 0), min(cy + half_h, h_img)
        images = x.clone()
        # Only the box is rolled: image i gets image i-1's pixels there.
        images[:, :, y1:y2, x1:x2] = x[:, :, y1:y2, x1:x2].roll(1, 0)
        lam = 1.0 - (x2 - x1) * (y2 - y1) / (w_img * h_img)  # the area actually pasted
    else:
        images = x.roll(1, 0).mul_(1.0 - lam).add_(x, alpha=lam)

    targets = targets.roll(1, 0).mul_(1.0 - lam).add_(targets, alpha=lam)
    dominant = y if lam >= 0.5 else y.roll(1, 0)
    return images, targets, dominant
