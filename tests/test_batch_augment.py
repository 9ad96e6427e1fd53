"""Batch augmentations: random erasing per image, MixUp / CutMix with soft targets (CPU, fast)."""

from __future__ import annotations

import pytest
import torch

from harness.data import batch_augment
from harness.data.batch_augment import mix_batch, random_erasing

K = 10


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 16, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    # Normal values: none is exactly 0.0, so erased pixels (value 0.0) are exactly those == 0.
    return torch.randn(n, c, h, w, generator=gen(seed + 1000))


def erased_boxes(x: torch.Tensor, out: torch.Tensor) -> list[tuple[int, int, int] | None]:
    """Per image: (erased pixel count, box height, box width), or None if untouched."""
    boxes: list[tuple[int, int, int] | None] = []
    for before, after in zip(x, out):
        changed = after != before
        assert (changed.any(0) == changed.all(0)).all(), "erasing must hit every channel alike"
        plane = changed[0]
        assert (after[:, plane] == 0.0).all()
        if not plane.any():
            boxes.append(None)
            continue
        rows, cols = plane.any(1).nonzero().squeeze(1), plane.any(0).nonzero().squeeze(1)
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert len(rows) == h and len(cols) == w and int(plane.sum()) == h * w, "not a solid rectangle"
        boxes.append((h * w, h, w))
    return boxes


# ------------------------------------------------------------------ random_erasing


def test_erasing_keeps_shape_dtype_and_input() -> None:
    x = batch()
    copy = x.clone()
    for dtype in (torch.float32, torch.float64, torch.float16):
        out = random_erasing(x.to(dtype), 1.0, gen())
        assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(x, copy), "input modified in place"
    cl = x.contiguous(memory_format=torch.channels_last)
    assert random_erasing(cl, 1.0, gen()).is_contiguous(memory_format=torch.channels_last)


def test_erasing_p0_is_identity_and_p1_erases_every_image() -> None:
    x = batch(n=64)
    assert torch.equal(random_erasing(x, 0.0, gen()), x)
    boxes = erased_boxes(x, random_erasing(x, 1.0, gen()))
    # Default scale (<= 0.33) and ratio always fit in 10 tries at 32x32 in practice.
    assert all(b is not None for b in boxes)


def test_erased_area_and_ratio_within_bounds() -> None:
    scale, ratio = (0.05, 0.25), (0.5, 2.0)
    h_img = w_img = 40
    x = batch(n=200, h=h_img, w=w_img)
    boxes = [b for b in erased_boxes(x, random_erasing(x, 1.0, gen(3), scale=scale, ratio=ratio)) if b]
    assert len(boxes) == 200
    total = h_img * w_img
    for _, h, w in boxes:
        # h = round(sqrt(a r)), w = round(sqrt(a / r)): allow exactly the rounding's half pixel.
        assert (h - 0.5) * (w - 0.5) <= scale[1] * total and (h + 0.5) * (w + 0.5) >= scale[0] * total
        assert (h - 0.5) / (w + 0.5) <= ratio[1] and (h + 0.5) / (w - 0.5) >= ratio[0]
    fractions = torch.tensor([a / total for a, _, _ in boxes])
    assert fractions.min() < 0.09 and fractions.max() > 0.2  # spread over the range, not one size


def test_erasing_is_per_image_and_uses_p_per_image() -> None:
    one = batch(n=1)
    x = one.expand(32, -1, -1, -1).clone()
    boxes = erased_boxes(x, random_erasing(x, 1.0, gen(5)))
    assert len({b for b in boxes}) > 10, "identical images must get different boxes"
    out = random_erasing(one.expand(400, -1, -1, -1), 0.5, gen(6))
    hit = (out != one).flatten(1).any(1).float().mean().item()
    assert 0.4 < hit < 0.6


def test_erasing_value_and_determinism() -> None:
    x = batch()
    a = random_erasing(x, 0.7, gen(11), value=-1.5)
    b = random_erasing(x, 0.7, gen(11), value=-1.5)
    assert torch.equal(a, b)
    assert not torch.equal(a, random_erasing(x, 0.7, gen(12), value=-1.5))
    assert ((a != x) <= (a == -1.5)).all()


def test_erasing_rejects_bad_arguments() -> None:
    x = batch()
    with pytest.raises(ValueError):
        random_erasing(x, 1.5, gen())
    with pytest.raises(ValueError):
        random_erasing(x, 0.5, gen(), scale=(0.4, 0.1))
    with pytest.raises(ValueError):
        random_erasing(x, 0.5, gen(), ratio=(0.0, 1.0))
    with pytest.raises(ValueError):
        random_erasing(x[0], 0.5, gen())


# ------------------------------------------------------------------ mix_batch


def distinct_labels(n: int = 16) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ...: every label differs from its neighbour in the roll (n % K != 1),
    so the image's own weight in the targets is lam."""
    return torch.arange(n) % K


def implied_lam(targets: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> float:
    """lam from the targets: t[i, y_i] = lam (1 - s) + s / K when y_i != y_{i-1}."""
    t = targets[0, y[0]].item()
    return (t - smoothing / K) / (1 - smoothing)


def test_mix_shapes_dtypes_and_rows_sum_to_one() -> None:
    x, y = batch(), distinct_labels(16)
    for m, c in ((1.0, 0.0), (0.0, 1.0), (0.4, 1.0)):
        images, targets, dom = mix_batch(x, y, K, m, c, 1.0, gen(), label_smoothing=0.1)
        assert images.shape == x.shape and images.dtype == x.dtype
        assert targets.shape == (16, K) and targets.dtype == torch.float32
        assert dom.shape == (16,) and dom.dtype == torch.long
        torch.testing.assert_close(targets.sum(1), torch.ones(16))


def test_mix_prob_0_is_identity_with_one_hot_targets() -> None:
    x, y = batch(), distinct_labels(16)
    images, targets, dom = mix_batch(x, y, K, 1.0, 1.0, 0.0, gen())
    assert torch.equal(images, x) and torch.equal(dom, y)
    assert torch.equal(targets, torch.nn.functional.one_hot(y, K).float())
    _, smooth, _ = mix_batch(x, y, K, 1.0, 1.0, 0.0, gen(), label_smoothing=0.2)
    torch.testing.assert_close(smooth, torch.nn.functional.one_hot(y, K).float() * 0.8 + 0.02)


def test_mixup_is_the_convex_combination_of_the_rolled_batch() -> None:
    x, y = batch(), distinct_labels(16)
    for seed in range(5):
        images, targets, dom = mix_batch(x, y, K, 0.4, 0.0, 1.0, gen(seed))
        lam = implied_lam(targets, y)
        assert 0.0 <= lam <= 1.0
        torch.testing.assert_close(images, lam * x + (1 - lam) * x.roll(1, 0))
        expected = torch.zeros(16, K)
        expected[torch.arange(16), y] += lam
        expected[torch.arange(16), y.roll(1, 0)] += 1 - lam
        torch.testing.assert_close(targets, expected)


def test_cutmix_pastes_a_rectangle_of_area_1_minus_lam() -> None:
    x, y = batch(h=24, w=32), distinct_labels(16)
    rolled = x.roll(1, 0)
    areas = set()
    for seed in range(20):
        images, targets, _ = mix_batch(x, y, K, 0.0, 1.0, 1.0, gen(seed))
        from_x, from_rolled = (images == x).all(1), (images == rolled).all(1)  # (N, H, W)
        assert (from_x | from_rolled).all(), "every pixel comes from x or x.roll(1, 0)"
        pasted = from_rolled[0] & ~from_x[0]
        assert torch.equal(from_rolled & ~from_x, pasted.expand_as(from_x)), "one box for the batch"
        lam = implied_lam(targets, y)
        assert pasted.float().mean().item() == pytest.approx(1 - lam, abs=1e-6)
        if pasted.any():
            rows, cols = pasted.any(1).nonzero().squeeze(1), pasted.any(0).nonzero().squeeze(1)
            assert int(pasted.sum()) == len(rows) * len(cols), "not a solid rectangle"
            assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
        areas.add(int(pasted.sum()))
    assert len(areas) > 5


def test_dominant_label_is_the_argmax_ties_to_own_label() -> None:
    x = batch()
    y = torch.tensor([0, 0, 1, 2, 2, 3, 4, 5, 5, 5, 6, 7, 8, 9, 1, 1])  # some neighbours share labels
    for seed in range(30):
        for m, c in ((1.0, 0.0), (0.0, 1.0)):
            _, targets, dom = mix_batch(x, y, K, m, c, 1.0, gen(seed), label_smoothing=0.1)
            own = targets[torch.arange(16), y]
            expected = torch.where(own >= targets.max(1).values, y, targets.argmax(1))
            assert torch.equal(dom, expected)


def test_dominant_label_follows_lam_and_ties_go_to_own_label(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = batch(), distinct_labels(16)
    seen = set()
    for seed in range(20):
        _, targets, dom = mix_batch(x, y, K, 1.0, 0.0, 1.0, gen(seed))
        lam = implied_lam(targets, y)
        assert torch.equal(dom, y if lam >= 0.5 else y.roll(1, 0))
        seen.add(lam >= 0.5)
    assert seen == {True, False}
    # An exact tie (lam = 0.5) is measure-zero under Beta; force one.
    monkeypatch.setattr(batch_augment, "_beta", lambda alpha, seed: 0.5)
    _, targets, dom = mix_batch(x, y, K, 1.0, 0.0, 1.0, gen())
    assert targets[0, y[0]].item() == targets[0, y[-1]].item() == 0.5
    assert torch.equal(dom, y)


def test_label_smoothing_gives_positive_targets() -> None:
    x, y = batch(), distinct_labels(16)
    for m, c in ((1.0, 0.0), (0.0, 1.0)):
        _, targets, _ = mix_batch(x, y, K, m, c, 1.0, gen(1), label_smoothing=0.1)
        assert targets.min() > 0
        assert targets.min().item() == pytest.approx(0.01)
    _, plain, _ = mix_batch(x, y, K, 1.0, 0.0, 1.0, gen(1))
    assert plain.min() == 0


def test_mix_is_deterministic_per_seed() -> None:
    x, y = batch(), distinct_labels(16)
    a = mix_batch(x, y, K, 0.8, 1.0, 0.7, gen(9), label_smoothing=0.1)
    b = mix_batch(x, y, K, 0.8, 1.0, 0.7, gen(9), label_smoothing=0.1)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    outputs = {mix_batch(x, y, K, 0.8, 1.0, 1.0, gen(s))[1][0, y[0]].item() for s in range(10)}
    assert len(outputs) > 5


def test_generator_advances_the_same_whatever_happens() -> None:
    x, y = batch(), distinct_labels(16)
    states = set()
    for mix_prob in (0.0, 1.0):
        for m, c in ((1.0, 0.0), (0.0, 1.0), (0.0, 0.0)):
            g = gen(4)
            mix_batch(x, y, K, m, c, mix_prob, g)
            states.add(torch.rand(1, generator=g).item())
    assert len(states) == 1
    states = set()
    for p in (0.0, 0.5, 1.0):
        g = gen(4)
        random_erasing(x, p, g)
        states.add(torch.rand(1, generator=g).item())
    assert len(states) == 1


def test_both_alphas_give_both_kinds_of_batch() -> None:
    x, y = batch(), distinct_labels(16)
    rolled = x.roll(1, 0)
    kinds = {"cutmix": 0, "mixup": 0, "none": 0}
    for seed in range(40):
        images, targets, _ = mix_batch(x, y, K, 1.0, 1.0, 1.0, gen(seed))
        if torch.equal(images, x) or torch.equal(images, rolled):
            kinds["none"] += 1  # lam drew 0 or 1 (possible for CutMix boxes)
        elif ((images == x) | (images == rolled)).all():
            kinds["cutmix"] += 1
        else:
            kinds["mixup"] += 1
    assert kinds["cutmix"] >= 8 and kinds["mixup"] >= 8, kinds


def test_mix_rejects_bad_arguments() -> None:
    x, y = batch(), distinct_labels(16)
    with pytest.raises(ValueError):
        mix_batch(x, y[:-1], K, 1.0, 0.0, 1.0, gen())
    with pytest.raises(ValueError):
        mix_batch(x, y.float(), K, 1.0, 0.0, 1.0, gen())
    with pytest.raises(ValueError):
        mix_batch(x, y, K, -1.0, 0.0, 1.0, gen())
    with pytest.raises(ValueError):
        mix_batch(x, y, K, 1.0, 0.0, 1.5, gen())
    with pytest.raises(ValueError):
        mix_batch(x, y, K, 1.0, 0.0, 1.0, gen(), label_smoothing=-0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_draws_on_cpu_and_cuda() -> None:
    x, y = batch(), distinct_labels(16)
    cuda = torch.device("cuda")
    torch.testing.assert_close(random_erasing(x.to(cuda), 0.5, gen(2)).cpu(), random_erasing(x, 0.5, gen(2)))
    for m, c in ((1.0, 0.0), (0.0, 1.0)):
        on_gpu = mix_batch(x.to(cuda), y.to(cuda), K, m, c, 1.0, gen(2), label_smoothing=0.1)
        on_cpu = mix_batch(x, y, K, m, c, 1.0, gen(2), label_smoothing=0.1)
        for u, v in zip(on_gpu, on_cpu):
            torch.testing.assert_close(u.cpu(), v)
