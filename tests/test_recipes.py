"""Training-recipe primitives in the one train loop: gradient accumulation, EMA of the weights,
one-cycle and cosine-to-min_lr schedules (each a config field, measured here on small data)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from harness import checkpoint
from harness.config import TrainConfig
from harness.data import load_data
from harness.train import FitState, build_trainer, fit, fit_epoch


def _config(**changes: object) -> TrainConfig:
    return TrainConfig(**{"model": "lenet_relu", "dataset": "digits", "epochs": 1, "seed": 0, "lr": 0.05, **changes})


def test_accumulating_two_batches_of_64_is_one_batch_of_128() -> None:
    """Same data order, same gradients: after an epoch (including the short last step) the
    weights agree with the big-batch run (LeNet has no BatchNorm, whose statistics would differ)."""
    small = build_trainer(_config(batch_size=64, accumulate_steps=2), load_data(_config()))
    big = build_trainer(_config(batch_size=128), load_data(_config()))
    fit(small)
    fit(big)
    for (name, a), b in zip(small.model.state_dict().items(), big.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    moved = build_trainer(_config(batch_size=128), load_data(_config()))
    assert not torch.allclose(next(moved.model.parameters()), next(big.model.parameters()))  # it did train


def test_one_cycle_steps_per_optimizer_step_and_warmup_is_its_rising_phase() -> None:
    config = _config(batch_size=64, accumulate_steps=2, scheduler="onecycle", epochs=4, warmup_epochs=1)
    t = build_trainer(config, load_data(config))
    steps = math.ceil(math.ceil(len(t.data.train) / 64) / 2)
    lrs = []
    state = FitState()
    for _ in range(4):
        lrs.append(t.optimizer.param_groups[0]["lr"])
        fit_epoch(t, state)
    assert t.scheduler.last_epoch == 4 * steps  # stepped once per optimizer step
    assert lrs[0] < lrs[1] and max(lrs) <= config.lr + 1e-12 and lrs[-1] < lrs[1]  # up over epoch 1, then down
    assert [r["lr"] for r in state.history] == pytest.approx(lrs)


def test_cosine_decays_to_min_lr() -> None:
    config = _config(scheduler="cosine", epochs=3, min_lr=0.005)
    t = build_trainer(config, load_data(config))
    fit(t)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)


def test_ema_is_validated_beside_the_weights_and_kept_as_best(tmp_path: Path) -> None:
    config = _config(epochs=2, ema_decay=0.9)
    t = build_trainer(config, load_data(config))
    state = fit(t, [checkpoint.Checkpointer(tmp_path)])
    record = state.history[-1]
    assert {"val_acc_ema", "val_loss_ema"} <= set(record) and record["val_acc_ema"] != record["val_acc"]
    best = checkpoint.load(tmp_path / checkpoint.BEST)
    # The best epoch is chosen, and kept, by the EMA's val_loss; its weights are the EMA's.
    assert state.best_metrics()["best_val_loss"] == state.history[state.best_epoch - 1]["val_loss_ema"]
    if state.best_epoch == state.epoch:
        for name, value in t.ema.module.state_dict().items():
            assert torch.equal(best["model"][name], value), name


def test_ema_and_accumulation_resume_with_the_identical_history(tmp_path: Path) -> None:
    """A run checkpointed after epoch 1 and continued in a new trainer ends exactly like one
    that never stopped (the EMA's state, the schedule's step count travel in the checkpoint)."""
    config = _config(epochs=3, ema_decay=0.8, accumulate_steps=2, batch_size=32, scheduler="onecycle", augment=True,
                     train_limit=400)
    data = load_data(config)
    whole = fit(build_trainer(config, data))
    first = build_trainer(config, data)
    state = FitState()
    fit_epoch(first, state, [checkpoint.Checkpointer(tmp_path)])
    resumed = build_trainer(config, data)
    state = checkpoint.restore(resumed, checkpoint.load(tmp_path / checkpoint.LAST))
    state = fit(resumed, state=state)
    timing = ("epoch_seconds", "images_per_second")
    assert [{k: v for k, v in r.items() if k not in timing} for r in state.history] == \
           [{k: v for k, v in r.items() if k not in timing} for r in whole.history]


@pytest.mark.parametrize("changes", [
    {"mixup_alpha": 0.2}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 0.5},
    {"random_erasing": 0.5, "augment": True}, {"label_smoothing": 0.1, "mixup_alpha": 0.4},
    {"auto_augment": "randaugment", "augment": True, "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "random_erasing": 0.3,
     "ema_decay": 0.9, "accumulate_steps": 2, "scheduler": "onecycle", "label_smoothing": 0.1},  # all at once
])
def test_every_mixing_and_erasing_setting_trains_and_repeats_exactly(changes: dict) -> None:
    """Same seed, same metrics, with the primitive on; and it does change training."""
    config = _config(epochs=2, train_limit=400, **changes)
    data = load_data(config)
    timing = ("epoch_seconds", "images_per_second")
    runs = [[{k: v for k, v in r.items() if k not in timing} for r in fit(build_trainer(config, data)).history]
            for _ in range(2)]
    plain = fit(build_trainer(_config(epochs=2, train_limit=400), data)).history
    assert runs[0] == runs[1]
    assert all(math.isfinite(v) for r in runs[0] for v in r.values())
    assert runs[0][0]["train_loss"] != plain[0]["train_loss"]


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
def test_auto_augment_policies_train_per_image_and_repeat_exactly(policy: str) -> None:
    from harness.config import AUTO_AUGMENT_POLICIES
    from harness.data.auto_augment import POLICIES

    assert set(AUTO_AUGMENT_POLICIES) == set(POLICIES)
    config = _config(epochs=1, train_limit=300, auto_augment=policy, augment=True)
    data = load_data(config)
    t = build_trainer(config, data)
    same = data.train.images[:1].repeat(16, 1, 1, 1)  # identical images: each draws its own ops
    out = t.transform(same, train=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (16, 1, t.image_size, t.image_size) and out.dtype == torch.float32
    assert len({tuple(img.flatten().tolist()) for img in out}) > 4
    assert torch.equal(t.transform(same, train=False), t.transform(same, train=False))  # evaluation is untouched
    timing = ("epoch_seconds", "images_per_second")
    runs = [[{k: v for k, v in r.items() if k not in timing} for r in fit(build_trainer(config, data)).history]
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_lr_find_on_the_quickstart_logs_one_run_with_the_plot_and_a_suggestion(workdir: Path) -> None:
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from harness.cli import app

    before = (workdir / "experiments" / "quickstart.py").read_text()
    result = CliRunner().invoke(app, ["lr-find", "quickstart", "--steps", "60", "--min-lr", "1e-4", "--max-lr", "10"])
    assert result.exit_code == 0, result.output
    assert "suggested lr" in result.output and "steepest descent of the smoothed loss" in result.output
    client = MlflowClient()
    exp = client.get_experiment_by_name("quickstart")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`harness.kind` = 'lr_find'")
    assert run.info.status == "FINISHED"
    suggestion = run.data.metrics["suggested_lr"]
    assert 1e-4 <= suggestion <= 10 and math.isfinite(suggestion)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"lr_find.png", "lr_find.csv"}
    assert (workdir / "experiments" / "quickstart.py").read_text() == before  # the experiment is never changed
    bad = CliRunner().invoke(app, ["lr-find", "quickstart", "--min-lr", "1", "--max-lr", "0.1"])
    assert "0 < min_lr < max_lr" in str(bad.exception)  # a HarnessError: `harness` prints it as one line, exit 2


def test_range_test_suggests_the_steepest_descent_before_the_minimum() -> None:
    from harness.lr_finder import suggest_lr

    lrs = [10 ** (-5 + i * 0.1) for i in range(50)]
    smoothed = [2.3 - 2.0 / (1 + math.exp(-(i - 20) / 2)) if i < 40 else 0.3 + (i - 40) for i in range(50)]
    assert suggest_lr(lrs, smoothed) == pytest.approx(lrs[20])  # the steepest fall, not the diverging tail
    assert suggest_lr(lrs[:2], smoothed[:2]) is None
