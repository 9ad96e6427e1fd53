"""The training loop's speed options change speed, not results."""

from __future__ import annotations

import pytest
import torch

from harness.config import TrainConfig
from harness.data import load_data
from harness.train import build_trainer, evaluate, fit


def _train(**changes: object) -> tuple[list[dict[str, float]], float]:
    config = TrainConfig(model="lenet_relu", dataset="synthetic", epochs=2, train_limit=512, seed=0, **changes)
    t = build_trainer(config, load_data(config))
    state = fit(t)
    return state.history, evaluate(t, t.data.test).acc


def test_channels_last_trains_like_the_default_layout() -> None:
    nhwc_history, nhwc_acc = _train(channels_last=True)
    nchw_history, nchw_acc = _train(channels_last=False)
    for a, b in zip(nhwc_history, nchw_history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=0.02)
    assert nhwc_acc == pytest.approx(nchw_acc, abs=0.02)


def test_channels_last_model_and_batches_use_nhwc_on_cpu() -> None:
    config = TrainConfig(model="resnet18", dataset="synthetic_rgb", epochs=1, train_limit=64, device="cpu")
    t = build_trainer(config, load_data(config))
    conv = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images, _ = next(iter(t.data.train.batches(8, False, None)))
    assert t.transform(images, train=True, generator=t.data_rng).is_contiguous(memory_format=torch.channels_last)


def test_compiled_model_trains_and_checkpoints_the_plain_model() -> None:
    config = TrainConfig(model="lenet_relu", dataset="synthetic", epochs=1, train_limit=256, seed=0, compile=True)
    t = build_trainer(config, load_data(config))
    assert t.forward is not t.model
    state = fit(t)
    assert state.history[0]["train_loss"] > 0
    # Checkpoints save `model`: its keys carry no torch.compile prefix.
    assert not any(k.startswith("_orig_mod") for k in t.model.state_dict())


def test_data_stays_put_off_cuda_and_a_moved_split_shuffles_alike() -> None:
    from harness.train import on_device

    config = TrainConfig(model="lenet_relu", dataset="synthetic", train_limit=128)
    data = load_data(config)
    assert on_device(data, torch.device("cpu")) is data
    moved = data.train.to(torch.device("cpu"))
    a = [y for _, y in data.train.batches(32, True, torch.Generator().manual_seed(3))]
    b = [y for _, y in moved.batches(32, True, torch.Generator().manual_seed(3))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (AMP, channels_last, device-resident data)")
def test_cuda_path_amp_channels_last_and_device_resident_data() -> None:
    config = TrainConfig(model="lenet_relu", dataset="synthetic", epochs=2, train_limit=512, device="cuda")
    t = build_trainer(config, load_data(config))
    assert t.use_amp and t.data.train.images.device.type == "cuda"
    state = fit(t)
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"] * 1.5
    assert evaluate(t, t.data.test).acc > 0
