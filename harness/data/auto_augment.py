"""AutoAugment, RandAugment and TrivialAugmentWide for a whole batch, every image on its own.

torchvision's transforms draw one operation for everything they are given, so applied to a
batch tensor they augment the whole batch alike. The papers augment each image independently;
`batch_auto_augment` does that on a batch on the training device: every image draws its own
operation(s), magnitude and sign, and each operation is then applied once, vectorised, to the
images that drew it (geometric ops all together in one `grid_sample`), with per-image magnitudes.

Input domain: float images (N, C, H, W) in [0, 1] with C = 1 or 3, on any device, i.e. the
uint8 batch as `x.float() / 255`, BEFORE normalising (the photometric ops are defined on [0, 1]).
The usual place (torchvision's reference recipe) is after crop / flip, before normalising,
and before random erasing. Output: a new tensor with the input's shape, dtype, device and
memory format; the input is not modified. Values stay in [0, 1] when the input is in [0, 1].

Randomness: as in `harness.data.batch_augment`, every number is drawn on the CPU from the
`generator` passed in and only then moved to the device, so a seed gives the same draws on CPU
and GPU; a call draws a fixed amount that depends only on the batch size and the policy.

Op spaces and magnitude bins are torchvision's (v2 `AutoAugment` with the ImageNet policy,
`RandAugment`, `TrivialAugmentWide`), with its defaults: nearest interpolation, fill 0 (black)
outside geometric ops, signed ops negated with probability 1/2 (`rand <= 0.5`). Per op, on an
image in [0, 1] (torchvision.transforms.v2.functional on the float image unless said otherwise):

- ShearX/Y (about the top-left corner), TranslateX/Y (int pixels, truncated), Rotate (about the
  centre): torchvision's inverse affine matrix and its own grid construction, one batched
  `grid_sample` (nearest, zero padding, align_corners=False). Rotations by exactly 90/270
  degrees, which torchvision special-cases as `rot90` on square images, go through the same
  affine grid (identical results: sample points land on pixel centres).
- Brightness, Color (saturation; identity for C=1, as torchvision/PIL), Contrast (mean of the
  grayscale image; for C=1 of the image itself), Sharpness (3x3 smoothing kernel, borders kept),
  Solarize (threshold in [0, 1]), AutoContrast (per image per channel), Invert: as torchvision.
- Equalize: torchvision's float equalize (image to uint8 as `floor(x * 255.999)`, PIL's LUT per
  image and channel, back as `/ 255`), vectorised with one histogram scatter for the subset.
- Posterize: DEVIATES from torchvision's float kernel (`floor(x * 2**bits) / 2**bits`, which is
  not the identity at bits=8 and differs from PIL) and follows its uint8 kernel and PIL: the
  image goes to uint8 as for Equalize, keeps its top `bits` bits, and comes back as `/ 255`;
  bits=8 returns the image unchanged. On images from uint8 data this is exactly torchvision's
  uint8 posterize.

Chained ops (RandAugment's num_ops, AutoAugment's pairs) stay in float between ops, where
torchvision on uint8 would round to uint8 after each op.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

POLICIES = ("autoaugment", "randaugment", "trivialaugment")

# Every operation any policy uses; a plan refers to them by index into this tuple.
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
_OP_ID = {name: i for i, name in enumerate(OPS)}
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_GEOMETRIC_IDS = torch.tensor([_OP_ID[name] for name in _GEOMETRIC])

# name -> (magnitude bins as a function of (num_bins, height, width), or None; signed). torchvision's tables.
MagnitudeFn = Callable[[int, int, int], Tensor]
_SpaceEntry = tuple[MagnitudeFn | None, bool]


def _posterize_bins(span: int) -> MagnitudeFn:
    return lambda bins, h, w: (8 - (torch.arange(bins) / ((bins - 1) / span))).round().int()


def _linspace(lo: float, hi: float) -> MagnitudeFn:
    return lambda bins, h, w: torch.linspace(lo, hi, bins)


_AUTOAUGMENT_SPACE: dict[str, _SpaceEntry] = {
    "ShearX": (_linspace(0.0, 0.3), True),
    "ShearY": (_linspace(0.0, 0.3), True),
    "TranslateX": (lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * w, bins), True),
    "TranslateY": (lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * h, bins), True),
    "Rotate": (_linspace(0.0, 30.0), True),
    "Brightness": (_linspace(0.0, 0.9), True),
    "Color": (_linspace(0.0, 0.9), True),
    "Contrast": (_linspace(0.0, 0.9), True),
    "Sharpness": (_linspace(0.0, 0.9), True),
    "Posterize": (_posterize_bins(4), False),
    "Solarize": (_linspace(1.0, 0.0), False),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
    "Invert": (None, False),
}
_RANDAUGMENT_SPACE: dict[str, _SpaceEntry] = {
    "Identity": (None, False),
    **{k: v for k, v in _AUTOAUGMENT_SPACE.items() if k != "Invert"},
}
_TRIVIALAUGMENT_SPACE: dict[str, _SpaceEntry] = {
    "Identity": (None, False),
    "ShearX": (_linspace(0.0, 0.99), True),
    "ShearY": (_linspace(0.0, 0.99), True),
    "TranslateX": (_linspace(0.0, 32.0), True),
    "TranslateY": (_linspace(0.0, 32.0), True),
    "Rotate": (_linspace(0.0, 135.0), True),
    "Brightness": (_linspace(0.0, 0.99), True),
    "Color": (_linspace(0.0, 0.99), True),
    "Contrast": (_linspace(0.0, 0.99), True),
    "Sharpness": (_linspace(0.0, 0.99), True),
    "Posterize": (_posterize_bins(6), False),
    "Solarize": (_linspace(1.0, 0.0), False),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
}

# torchvision's AutoAugmentPolicy.IMAGENET: 25 sub-policies of two (op, probability, magnitude bin of 10).
AUTOAUGMENT_IMAGENET_POLICY: tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...] = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
_AUTOAUGMENT_BINS = 10  # torchvision evaluates the AutoAugment space at 10 bins

Plan = list[tuple[Tensor, Tensor]]  # per round: op index into OPS (N,) long, -1 = none; magnitude (N,) float64


_SPACES = {"randaugment": _RANDAUGMENT_SPACE, "trivialaugment": _TRIVIALAUGMENT_SPACE,
           "autoaugment": _AUTOAUGMENT_SPACE}


@functools.lru_cache(maxsize=64)
def _space_table(policy: str, bins: int, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """(op ids into OPS (K,), magnitudes (K, bins) float64 with 0 for unscaled ops, signed (K,) bool)
    for `policy`'s op space. Cached: callers only read the tensors."""
    space = _SPACES[policy]
    ids = torch.tensor([_OP_ID[name] for name in space])
    values = torch.zeros(len(space), bins, dtype=torch.float64)
    for row, (fn, _) in enumerate(space.values()):
        if fn is not None:
            # torchvision reads the value out of a float32 (or int32) table: keep that rounding.
            values[row] = fn(bins, height, width).to(torch.float64)
    signed = torch.tensor([s for _, s in space.values()])
    return ids, values, signed


@functools.lru_cache(maxsize=64)
def _autoaugment_table(height: int, width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ImageNet sub-policies as (25, 2) tables: op id into OPS, probability (float32, as
    torchvision compares it with a float32 draw), unsigned magnitude (float64), signed. Cached."""
    ids, values, signed = _space_table("autoaugment", _AUTOAUGMENT_BINS, height, width)
    row = {int(op): r for r, op in enumerate(ids)}
    pairs = AUTOAUGMENT_IMAGENET_POLICY
    op = torch.tensor([[_OP_ID[name] for name, _, _ in pair] for pair in pairs])
    prob = torch.tensor([[p for _, p, _ in pair] for pair in pairs], dtype=torch.float32)
    level = torch.tensor([[level or 0 for _, _, level in pair] for pair in pairs])
    rows = op.clone().apply_(lambda i: row[i])
    return op, prob, values[rows, level], signed[rows]


class BatchAutoAugment:
    """A per-image augmentation policy for batches; build it with `batch_auto_augment`.

    `policy(x, generator)` augments the float batch `x` (N, C, H, W) in [0, 1], C = 1 or 3, and
    returns a new tensor like `x`. `policy.plan(n, height, width, generator)` returns just the
    draws (what `__call__` applies), for inspection.
    """

    def __init__(self, policy: str, magnitude: int = 9, num_ops: int = 2, num_magnitude_bins: int = 31,
                 fill: float = 0.0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown auto-augment policy {policy!r}; valid policies: {', '.join(POLICIES)}")
        if not isinstance(num_magnitude_bins, int) or num_magnitude_bins < 2:
            raise ValueError(f"num_magnitude_bins must be an integer >= 2, got {num_magnitude_bins!r}")
        if not isinstance(magnitude, int) or not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"magnitude must be an integer in [0, {num_magnitude_bins - 1}], got {magnitude!r}")
        if not isinstance(num_ops, int) or num_ops < 0:
            raise ValueError(f"num_ops must be a non-negative integer, got {num_ops!r}")
        if not 0.0 <= fill <= 1.0:
            raise ValueError(f"fill must be in [0, 1], got {fill}")
        self.policy = policy
        self.magnitude = magnitude
        self.num_ops = num_ops
        self.num_magnitude_bins = num_magnitude_bins
        self.fill = float(fill)

    def __repr__(self) -> str:
        return (f"BatchAutoAugment(policy={self.policy!r}, magnitude={self.magnitude}, num_ops={self.num_ops}, "
                f"num_magnitude_bins={self.num_magnitude_bins}, fill={self.fill})")

    def plan(self, n: int, height: int, width: int, generator: torch.Generator) -> Plan:
        """Draw every image's operations: a list of rounds, applied in order; in each round an
        image gets at most one op. Each round is (ops, magnitudes): ops (n,) long, indices into
        `OPS` (-1: nothing this round), magnitudes (n,) float64, signed, as torchvision passes
        them to the op (0 for ops without a magnitude). All on the CPU.

        Draws per call: randaugment 2 * num_ops * n numbers, trivialaugment 3n, autoaugment 5n."""
        if self.policy == "randaugment":
            ids, values, signed = _space_table(self.policy, self.num_magnitude_bins, height, width)
            choice = torch.randint(0, len(ids), (self.num_ops, n), generator=generator)
            negate = torch.rand(self.num_ops, n, generator=generator) <= 0.5
            mags = values[choice, self.magnitude]
            mags = torch.where(negate & signed[choice], -mags, mags)
            return [(ids[choice[k]], mags[k]) for k in range(self.num_ops)]
        if self.policy == "trivialaugment":
            ids, values, signed = _space_table(self.policy, self.num_magnitude_bins, height, width)
            choice = torch.randint(0, len(ids), (n,), generator=generator)
            level = torch.randint(0, self.num_magnitude_bins, (n,), generator=generator)
            negate = torch.rand(n, generator=generator) <= 0.5
            mags = values[choice, level]
            return [(ids[choice], torch.where(negate & signed[choice], -mags, mags))]
        # autoaugment: one sub-policy per image, then each of its two ops with its probability.
        sub_op, sub_prob, sub_mag, sub_signed = _autoaugment_table(height, width)
        choice = torch.randint(0, len(sub_op), (n,), generator=generator)
        coin = torch.rand(2, n, generator=generator)
        negate = torch.rand(2, n, generator=generator) <= 0.5
        rounds: Plan = []
        for k in range(2):
            # torchvision: `if not torch.rand(()) <= probability: continue`.
            apply = coin[k] <= sub_prob[choice, k]
            ops = torch.where(apply, sub_op[choice, k], -1)
            mags = sub_mag[choice, k]
            rounds.append((ops, torch.where(negate[k] & sub_signed[choice, k], -mags, mags)))
        return rounds

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        _check_images(x)
        n, _, h, w = x.shape
        out = x
        for ops, mags in self.plan(n, h, w, generator):
            out = apply_ops(out, ops, mags, fill=self.fill)
        return out if out is not x else x.clone()


def batch_auto_augment(policy: str, magnitude: int = 9, num_ops: int = 2, *, num_magnitude_bins: int = 31,
                       fill: float = 0.0) -> BatchAutoAugment:
    """A per-image automatic augmentation policy, called as `aug(x, generator) -> Tensor`.

    policy: "randaugment" (`num_ops` ops per image, each uniform over RandAugment's 14 ops, at
    bin `magnitude` of `num_magnitude_bins`), "trivialaugment" (one op per image, uniform over
    TrivialAugmentWide's 14, at a bin uniform over `num_magnitude_bins`) or "autoaugment"
    (AutoAugment's ImageNet policy: one of its 25 sub-policies per image, each of the pair's ops
    applied with its probability at its magnitude, 10 bins). `magnitude` and `num_ops` only
    matter for randaugment, `num_magnitude_bins` for randaugment and trivialaugment (both are
    still validated). Signed ops are negated with probability 1/2 per image and op.
    `fill` is the value geometric ops put outside the image (torchvision's default: 0).

    x: float (N, C, H, W) in [0, 1] (un-normalised), C = 1 or 3, any device and float dtype.
    Returns a new tensor of the same shape, dtype, device and memory format.
    Unknown policy -> ValueError naming the valid ones.
    """
    return BatchAutoAugment(policy, magnitude, num_ops, num_magnitude_bins, fill)


def _check_images(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"auto augment expects images (N, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"auto augment expects float images in [0, 1], got {x.dtype} (convert with x.float() / 255)")


def apply_ops(x: Tensor, ops: Tensor | Sequence[int], magnitudes: Tensor | Sequence[float],
              fill: float = 0.0) -> Tensor:
    """Apply to image i of `x` the operation `OPS[ops[i]]` (-1: none) with magnitude `magnitudes[i]`.

    Magnitudes are torchvision's (what its `_apply_image_or_video_transform` receives): the signed
    shear factor, translation in pixels (truncated to int), rotation in degrees, the factor - 1
    for Brightness / Color / Contrast / Sharpness, bits for Posterize, the threshold in [0, 1] for
    Solarize; ignored by the others. `ops` and `magnitudes` live on the CPU (they are moved).
    Each op runs once on the images that have it; the geometric ops share one `grid_sample`.
    Returns a new tensor like `x` (`x` itself when no image has an op)."""
    _check_images(x)
    ops = torch.as_tensor(ops, dtype=torch.long).cpu()
    mags = torch.as_tensor(magnitudes, dtype=torch.float64).cpu()
    if ops.shape != (len(x),) or mags.shape != (len(x),):
        raise ValueError(f"ops and magnitudes must be ({len(x)},), got {tuple(ops.shape)} and {tuple(mags.shape)}")
    if bool(((ops < -1) | (ops >= len(OPS))).any()):
        raise ValueError(f"ops must be indices into OPS (0..{len(OPS) - 1}) or -1")
    active = (ops >= 0) & (ops != _OP_ID["Identity"])
    if not bool(active.any()):
        return x
    compute = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    out = x.clone()  # keeps the memory format; results are copied into it
    _, _, h, w = x.shape

    groups: list[tuple[Tensor, Callable[[Tensor], Tensor]]] = []
    geometric = torch.isin(ops, _GEOMETRIC_IDS)
    if bool(geometric.any()):
        theta = _inverse_affine(ops[geometric], mags[geometric], h, w)
        groups.append((geometric, lambda sub, t=theta: _affine(sub, t, fill)))
    for name in OPS:
        if name in _GEOMETRIC or name == "Identity":
            continue
        mask = ops == _OP_ID[name]
        if bool(mask.any()):
            groups.append((mask, lambda sub, f=_PHOTOMETRIC[name], m=mags[mask]: f(sub, m)))
    for mask, fn in groups:
        index = mask.nonzero().squeeze(1).to(x.device)
        sub = out.index_select(0, index).to(compute)  # groups are disjoint: each image has one op here
        out.index_copy_(0, index, fn(sub).to(x.dtype))
    return out


# ------------------------------------------------------------------ geometric ops

_RAD_TO_DEG = 180.0 / math.pi  # CPython's math.degrees / math.radians constants
_DEG_TO_RAD = math.pi / 180.0


def _inverse_affine(ops: Tensor, mags: Tensor, h: int, w: int) -> Tensor:
    """torchvision's `_get_inverse_affine_matrix` per image (float64, CPU) -> (n, 2, 3) float64.

    ShearX/Y: F.affine(shear=degrees(atan(m)), center=[0, 0]), i.e. about the top-left corner;
    TranslateX/Y: F.affine(translate=int(m)) about the centre; Rotate: F.rotate(m) about the centre."""
    zero = torch.zeros_like(mags)
    is_op = {name: ops == _OP_ID[name] for name in _GEOMETRIC}
    shear_deg = torch.atan(mags) * _RAD_TO_DEG
    sx = torch.where(is_op["ShearX"], shear_deg, zero) * _DEG_TO_RAD
    sy = torch.where(is_op["ShearY"], shear_deg, zero) * _DEG_TO_RAD
    tx = torch.where(is_op["TranslateX"], mags.trunc(), zero)
    ty = torch.where(is_op["TranslateY"], mags.trunc(), zero)
    # F.rotate: angle % 360, then the matrix for -angle.
    rot = torch.where(is_op["Rotate"], -torch.remainder(mags, 360.0), zero) * _DEG_TO_RAD
    shear = is_op["ShearX"] | is_op["ShearY"]
    cx = torch.where(shear, zero - w * 0.5, zero)  # center=[0, 0] -> relative to the image centre
    cy = torch.where(shear, zero - h * 0.5, zero)

    cos_sy = torch.cos(sy)
    tan_sx = torch.tan(sx)
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a  # scale 1
    cx_tx, cy_ty = cx + tx, cy + ty
    m2 = cx - m0 * cx_tx - m1 * cy_ty
    m5 = cy - m3 * cx_tx - m4 * cy_ty
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


def _affine(x: Tensor, theta: Tensor, fill: float) -> Tensor:
    """Resample each image through its inverse matrix (pixel units, origin at the image centre),
    nearest, `fill` outside: torchvision's `_affine_grid` + `_apply_grid_transform`, batched."""
    n, c, h, w = x.shape
    dtype, device = x.dtype, x.device
    theta = theta.to(dtype).to(device)
    base = torch.empty(1, h, w, 3, dtype=dtype, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2).div_(torch.tensor([0.5 * w, 0.5 * h], dtype=dtype, device=device))
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(rescaled).view(n, h, w, 2)
    if fill == 0.0:
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    sampled = F.grid_sample(torch.cat([x, torch.ones_like(x[:, :1])], 1), grid, mode="nearest",
                            padding_mode="zeros", align_corners=False)
    image, inside = sampled[:, :c], sampled[:, c:]
    return torch.where(inside < 0.5, torch.full_like(image, fill), image)


# ------------------------------------------------------------------ photometric ops


def _per_image(m: Tensor, like: Tensor) -> Tensor:
    """(n,) CPU float64 -> (n, 1, 1, 1) in `like`'s dtype and device."""
    return m.to(like.dtype).to(like.device).view(-1, 1, 1, 1)


def _blend(image: Tensor, other: Tensor, factors: tuple[Tensor, Tensor]) -> Tensor:
    """torchvision's `_blend`: image * ratio + other * (1 - ratio), clamped to [0, 1]."""
    ratio, rest = factors
    return image.mul(ratio).add_(other.mul(rest)).clamp_(0, 1)


def _grayscale(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _factors(m: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(1 + m, 1 - (1 + m)) per image: computed in float64 and rounded once, as torchvision's Python floats."""
    ratio = 1.0 + m
    return _per_image(ratio, x), _per_image(1.0 - ratio, x)


def _brightness(x: Tensor, m: Tensor) -> Tensor:
    return x.mul(_factors(m, x)[0]).clamp_(0, 1)


def _color(x: Tensor, m: Tensor) -> Tensor:
    if x.shape[1] == 1:  # saturation of a grayscale image: unchanged (torchvision, PIL)
        return x
    return _blend(x, _grayscale(x), _factors(m, x))


def _contrast(x: Tensor, m: Tensor) -> Tensor:
    gray = _grayscale(x) if x.shape[1] == 3 else x
    return _blend(x, gray.mean(dim=(1, 2, 3), keepdim=True), _factors(m, x))


def _sharpness(x: Tensor, m: Tensor) -> Tensor:
    n, c, h, w = x.shape
    if h <= 2 or w <= 2:
        return x
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=x.dtype, device=x.device).expand(c, 1, 3, 3)
    out = x.clone()
    blurred = F.conv2d(x, kernel, groups=c)
    inner = out[..., 1:-1, 1:-1]  # borders keep their pixels
    inner.add_(blurred.sub_(inner).mul_(_factors(m, x)[1]))
    return out.clamp_(0, 1)


def _to_levels(x: Tensor) -> Tensor:
    """[0, 1] -> integer levels 0..255 (as float), torchvision's float -> uint8 conversion."""
    return x.mul(255.0 + 1.0 - 1e-3).floor_().clamp_(0, 255)


def _posterize(x: Tensor, m: Tensor) -> Tensor:
    step = _per_image(torch.exp2(8.0 - m.clamp(0, 8)), x)  # 2 ** (8 - bits), exact in float
    kept = _to_levels(x).div_(step).floor_().mul_(step).mul_(1.0 / 255)
    return torch.where(step == 1.0, x, kept)  # 8 bits: unchanged, like torchvision on uint8


def _solarize(x: Tensor, m: Tensor) -> Tensor:
    return torch.where(x >= _per_image(m, x), 1.0 - x, x)


def _autocontrast(x: Tensor, m: Tensor) -> Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    flat = high == low
    scale = torch.where(flat, 1.0, high - low)
    low = torch.where(flat, 0.0, low)
    return x.sub(low).div_(scale).clamp_(0, 1)


def _equalize(x: Tensor, m: Tensor) -> Tensor:
    """torchvision's equalize (PIL's LUT) for every image and channel at once."""
    n, c, h, w = x.shape
    levels = _to_levels(x).to(torch.long).view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.int32, device=x.device)
    hist.scatter_add_(1, levels, torch.ones(1, dtype=torch.int32, device=x.device).expand_as(levels))
    cum = hist.cumsum(1)
    last = cum.argmax(1, keepdim=True)  # the image's largest level
    step = (h * w - hist.gather(1, last)).div_(255, rounding_mode="floor")
    lut = cum[:, :-1].add(step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut], 1)
    equalized = lut.gather(1, levels).to(x.dtype).mul_(1.0 / 255)
    # step == 0 (nearly constant image): torchvision leaves the image as its uint8 conversion.
    unchanged = levels.to(x.dtype).mul_(1.0 / 255)
    return torch.where(step != 0, equalized, unchanged).view(n, c, h, w)


def _invert(x: Tensor, m: Tensor) -> Tensor:
    return 1.0 - x


_PHOTOMETRIC: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Brightness": _brightness, "Color": _color, "Contrast": _contrast, "Sharpness": _sharpness,
    "Posterize": _posterize, "Solarize": _solarize, "AutoContrast": _autocontrast, "Equalize": _equalize,
    "Invert": _invert,
}
