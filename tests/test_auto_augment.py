"""Per-image AutoAugment / RandAugment / TrivialAugmentWide on batches (CPU, fast).

Every op is checked against torchvision.transforms.v2.functional on the same float image
(what torchvision's auto-augment classes call): exact for the geometric ops, Brightness,
Solarize, AutoContrast, Equalize, Invert and Identity; Posterize exactly against torchvision's
uint8 kernel (the documented deviation); Color, Contrast and Sharpness within 1e-6 (a last-bit
difference: torchvision's `add_(other, alpha=...)` is a fused multiply-add, the per-image
blend here multiplies and adds separately).
"""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms.v2 import AutoAugment, AutoAugmentPolicy, InterpolationMode, RandAugment, TrivialAugmentWide

from harness.data import auto_augment as aa
from harness.data.auto_augment import OPS, POLICIES, apply_ops, batch_auto_augment

OP = {name: i for i, name in enumerate(OPS)}
SCALED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness",
          "Posterize", "Solarize")
BLEND_TOL = 1e-6


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Random images plus a low-contrast one and a mostly black one with a white bar."""
    u8 = torch.randint(0, 256, (n, c, h, w), generator=gen(seed + 100), dtype=torch.uint8)
    if n >= 3:
        u8[1] = u8[1] // 4 + 60
        u8[2] = 0
        u8[2, :, 3:7, 4:15] = 255
    return u8


def float_images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return TF.to_dtype(uint8_images(n, c, h, w, seed), torch.float32, scale=True)


def torchvision_op(image: torch.Tensor, op: str, magnitude: float, fill: float | None = None) -> torch.Tensor:
    """torchvision's own dispatch from an op name and magnitude to v2.functional."""
    tv = RandAugment()
    return tv._apply_image_or_video_transform(image, op, magnitude, interpolation=InterpolationMode.NEAREST,
                                              fill={type(image): None if fill is None else [fill]})


def f32(value: float) -> float:
    """torchvision reads magnitudes out of float32 tables."""
    return float(torch.tensor(value, dtype=torch.float32))


# ------------------------------------------------------------------ the API


def test_unknown_policy_names_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        batch_auto_augment("augmix")
    assert all(name in str(err.value) for name in POLICIES)


@pytest.mark.parametrize("kwargs", [{"magnitude": 31}, {"magnitude": -1}, {"num_ops": -1}, {"fill": 2.0},
                                    {"num_magnitude_bins": 1}])
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        batch_auto_augment("randaugment", **kwargs)


def test_input_must_be_float_images_with_one_or_three_channels() -> None:
    aug = batch_auto_augment("trivialaugment")
    with pytest.raises(TypeError, match="float"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), gen())
    with pytest.raises(ValueError, match="C = 1 or 3"):
        aug(torch.zeros(2, 2, 8, 8), gen())
    with pytest.raises(ValueError):
        aug(torch.zeros(3, 8, 8), gen())


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("shape", [(32, 1, 28, 28), (32, 3, 32, 32)])
def test_shape_dtype_range_kept_and_input_untouched(policy: str, shape: tuple[int, ...]) -> None:
    x = float_images(*shape)
    copy = x.clone()
    out = batch_auto_augment(policy)(x, gen())
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(x, copy), "input modified in place"
    assert not torch.equal(out, x)
    out64 = batch_auto_augment(policy)(x.double(), gen())
    assert out64.dtype == torch.float64 and out64.min() >= 0.0 and out64.max() <= 1.0
    cl = x.contiguous(memory_format=torch.channels_last)
    assert batch_auto_augment(policy)(cl, gen()).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("policy, at_least", [("randaugment", 20), ("trivialaugment", 24), ("autoaugment", 6)])
@pytest.mark.parametrize("c, size", [(1, 28), (3, 32)])
def test_every_image_draws_its_own_augmentation(policy: str, at_least: int, c: int, size: int) -> None:
    x = float_images(1, c, size, size).expand(32, -1, -1, -1).contiguous()
    out = batch_auto_augment(policy)(x, gen())
    distinct = {image.numpy().tobytes() for image in out}
    assert len(distinct) >= at_least, f"only {len(distinct)} distinct images out of 32 identical ones"


@pytest.mark.parametrize("policy", POLICIES)
def test_same_seed_same_output_and_draws_do_not_depend_on_the_images(policy: str) -> None:
    x = float_images(16, 3, 32, 32)
    aug = batch_auto_augment(policy)
    assert torch.equal(aug(x, gen(7)), aug(x, gen(7)))
    assert not torch.equal(aug(x, gen(7)), aug(x, gen(8)))
    # The generator advances by the same amount whatever the images are.
    g1, g2 = gen(3), gen(3)
    aug(x, g1)
    aug(torch.zeros_like(x), g2)
    assert torch.equal(g1.get_state(), g2.get_state())


# ------------------------------------------------------------------ the op spaces are torchvision's


@pytest.mark.parametrize("policy, tv_class, bins", [("randaugment", RandAugment, 31),
                                                    ("trivialaugment", TrivialAugmentWide, 31),
                                                    ("autoaugment", AutoAugment, 10)])
@pytest.mark.parametrize("h, w", [(28, 28), (32, 40)])
def test_op_spaces_match_torchvision(policy: str, tv_class: type, bins: int, h: int, w: int) -> None:
    ours = aa._SPACES[policy]
    theirs = tv_class._AUGMENTATION_SPACE
    assert list(ours) == list(theirs)
    for name, (fn, signed) in ours.items():
        tv_fn, tv_signed = theirs[name]
        assert signed == tv_signed, name
        want = tv_fn(bins, h, w)
        if fn is None or want is None:
            assert fn is None and want is None, name
        else:
            got = fn(bins, h, w)
            assert got.dtype == want.dtype and torch.equal(got, want), name


def test_autoaugment_policy_is_torchvisions_imagenet_policy() -> None:
    want = AutoAugment(AutoAugmentPolicy.IMAGENET)._policies
    assert [tuple(pair) for pair in want] == list(aa.AUTOAUGMENT_IMAGENET_POLICY)


def test_randaugment_plan_uses_the_fixed_magnitude_with_random_signs() -> None:
    aug = batch_auto_augment("randaugment", magnitude=9, num_ops=2)
    rounds = aug.plan(2000, 32, 32, gen())
    assert len(rounds) == 2
    ids, values, signed = aa._space_table("randaugment", 31, 32, 32)
    for ops, mags in rounds:
        assert set(ops.tolist()) == set(ids.tolist()), "every op of the space is drawn"
        for row, op in enumerate(ids.tolist()):
            got = set(mags[ops == op].tolist())
            v = float(values[row, 9])
            assert got == ({v, -v} if bool(signed[row]) else {v}), OPS[op]


def test_trivialaugment_plan_draws_one_op_and_a_bin_per_image() -> None:
    (ops, mags), = batch_auto_augment("trivialaugment").plan(4000, 32, 32, gen())
    rotations = mags[ops == OP["Rotate"]]
    assert len(set(rotations.abs().tolist())) == 31 and (rotations < 0).any() and (rotations > 0).any()
    assert (ops >= 0).all()


def test_autoaugment_plan_follows_sub_policy_probabilities() -> None:
    rounds = batch_auto_augment("autoaugment").plan(20000, 32, 32, gen())
    applied = torch.stack([ops >= 0 for ops, _ in rounds]).double().mean(1)
    # Mean probability over the 25 sub-policies' first / second ops.
    want = [sum(pair[k][1] for pair in aa.AUTOAUGMENT_IMAGENET_POLICY) / 25 for k in range(2)]
    assert torch.allclose(applied, torch.tensor(want, dtype=torch.float64), atol=0.015)
    ops0 = rounds[0][0]
    assert not (ops0 == OP["Identity"]).any() and not (ops0 == OP["TranslateX"]).any()


def test_randaugment_magnitude_zero_leaves_images_of_scaled_ops_unchanged() -> None:
    # No pixel at 1.0, so Solarize's bin-0 threshold (1.0) inverts nothing either.
    x = float_images(256, 3, 16, 16).clamp(max=0.99)
    aug = batch_auto_augment("randaugment", magnitude=0, num_ops=2)
    rounds = aug.plan(len(x), 16, 16, gen(5))
    out = aug(x, gen(5))
    scaled = torch.tensor([OP[name] for name in ("Identity",) + SCALED])
    only_scaled = torch.isin(rounds[0][0], scaled) & torch.isin(rounds[1][0], scaled)
    assert only_scaled.sum() > 100
    assert torch.equal(out[only_scaled], x[only_scaled])
    assert not torch.equal(out[~only_scaled], x[~only_scaled])


# ------------------------------------------------------------------ every op against torchvision

EXACT_CASES = {
    "Identity": [0.0],
    "ShearX": [0.3, -0.3, 0.99, -0.1],
    "ShearY": [0.3, -0.3, 0.99],
    "TranslateX": [13.59, -13.59, 32.0, -1.07, 0.5],
    "TranslateY": [12.6, -4.08, 31.9],
    "Rotate": [30.0, -30.0, 90.0, -90.0, 135.0, -4.5, 0.0],
    "Brightness": [0.9, -0.9, 0.03, -0.33],
    "Solarize": [1.0, 0.5, 0.0, 0.3],
    "AutoContrast": [0.0],
    "Equalize": [0.0],
    "Invert": [0.0],
}
BLEND_CASES = {"Color": [0.9, -0.9, 0.27, 0.0], "Contrast": [0.9, -0.9, 0.27, -0.99], "Sharpness": [0.9, -0.9, -0.99]}


def _cases(table: dict[str, list[float]]) -> list[tuple[str, float]]:
    return [(op, m) for op, ms in table.items() for m in ms]


@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (4, 3, 17, 23)])
@pytest.mark.parametrize("op, magnitude", _cases(EXACT_CASES) + _cases(BLEND_CASES))
def test_op_matches_torchvision_on_single_images(op: str, magnitude: float, shape: tuple[int, ...]) -> None:
    x = float_images(*shape)
    m = f32(magnitude)
    for image in x:
        want = torchvision_op(image, op, m)
        got = apply_ops(image[None], [OP[op]], [m])[0]
        if op in BLEND_CASES:
            torch.testing.assert_close(got, want, rtol=0, atol=BLEND_TOL)
        else:
            assert torch.equal(got, want), f"{op}({m}) differs from torchvision"


@pytest.mark.parametrize("c", [1, 3])
def test_posterize_is_torchvisions_uint8_posterize(c: int) -> None:
    u8 = uint8_images(4, c, 12, 12)
    x = TF.to_dtype(u8, torch.float32, scale=True)
    for bits in range(9):
        want = TF.to_dtype(TF.posterize(u8, bits), torch.float32, scale=True)
        got = apply_ops(x, [OP["Posterize"]] * len(x), [float(bits)] * len(x))
        assert torch.equal(got, want), bits
    assert torch.equal(apply_ops(x, [OP["Posterize"]] * len(x), [8.0] * len(x)), x)


def test_equalize_matches_torchvision_on_uint8() -> None:
    u8 = uint8_images(6, 3, 20, 20)
    u8[3] = 77  # constant image: PIL leaves it unchanged
    x = TF.to_dtype(u8, torch.float32, scale=True)
    got = apply_ops(x, [OP["Equalize"]] * len(x), [0.0] * len(x))
    assert torch.equal(got, TF.to_dtype(TF.equalize(u8), torch.float32, scale=True))


def test_geometric_fill_matches_torchvision() -> None:
    x = float_images(3, 3, 16, 16)
    for op, m in [("Rotate", 30.0), ("ShearY", -0.3), ("TranslateX", 5.0)]:
        for image in x:
            want = torchvision_op(image, op, m, fill=0.5)
            got = apply_ops(image[None], [OP[op]], [m], fill=0.5)[0]
            assert torch.equal(got, want), op


def test_color_is_identity_on_grayscale() -> None:
    x = float_images(4, 1, 10, 10)
    assert torch.equal(apply_ops(x, [OP["Color"]] * 4, [0.9, -0.9, 0.5, -0.99]), x)


@pytest.mark.parametrize("c", [1, 3])
def test_a_mixed_batch_equals_each_image_on_its_own(c: int) -> None:
    """Grouping by op and batching geometric ops with per-image matrices changes nothing (up to the
    last bit for the blends: conv2d / mean may sum in another order for another batch size)."""
    cases = _cases(EXACT_CASES) + _cases(BLEND_CASES) + [("Posterize", 3.0), ("Posterize", 6.0)]
    x = float_images(len(cases), c, 20, 24, seed=3)
    ops = [OP[op] for op, _ in cases]
    mags = [f32(m) for _, m in cases]
    batch = apply_ops(x, ops, mags)
    for i, (op, m) in enumerate(zip(ops, mags)):
        alone = apply_ops(x[i:i + 1], [op], [m])[0]
        if OPS[op] in BLEND_CASES:
            torch.testing.assert_close(batch[i], alone, rtol=0, atol=BLEND_TOL)
        else:
            assert torch.equal(batch[i], alone), OPS[op]
    none = apply_ops(x, [-1] * len(x), [0.0] * len(x))
    assert torch.equal(none, x)
