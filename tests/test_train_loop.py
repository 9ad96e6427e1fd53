"""The train loop itself (`harness.train`), called as a library on tiny in-memory data.

What each docstring of the loop promises, checked against an independent computation:
gradient accumulation is one big batch (short last groups included), the EMA is the EMA of
every optimizer step and is what "best" keeps, a non-finite loss stops training without
touching the best checkpoint, schedules step per optimizer step (one-cycle) or per epoch (the
rest), the best epoch follows the monitored metric (the EMA's when on), early stopping counts
epochs since that best, and callbacks are called in their documented order.

No CLI, no MLflow: LeNet (ReLU) on 12 px single-channel images, a few dozen of them, on the CPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import checkpoint, train
from harness.callbacks import EarlyStopping
from harness.config import TrainConfig
from harness.data import Data
from harness.data.in_memory import InMemorySplit
from harness.errors import HarnessError
from harness.train import (
    Callback,
    EvalResult,
    FitState,
    NonFiniteLossError,
    Trainer,
    build_trainer,
    evaluate,
    fit,
)

SIZE = 12  # LeNet's smallest input (harness.models)
Weights = dict[str, Tensor]


# ----------------------------------------------------------------- tiny data and helpers


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tensors this small train fastest on one thread (intra-op threads only add contention on
    a shared machine: 30x slower measured on 2 busy cores); restored for the other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _split(n: int, classes: int, seed: int, shift_labels: int = 0) -> InMemorySplit:
    """`n` learnable images: class c is a bright 3-row band at row 3c (mod the image), plus noise.
    `shift_labels` relabels every image as class (c + shift) % classes: a validation split the
    training makes worse, so the best epoch comes before the last."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    images = torch.rand(n, 1, SIZE, SIZE, generator=g) * 0.4
    for i, c in enumerate(labels.tolist()):
        row = (3 * c) % (SIZE - 2)
        images[i, :, row:row + 3, :] += 0.6
    return InMemorySplit((images.clamp(0, 1) * 255).round().to(torch.uint8), (labels + shift_labels) % classes)


def _data(n_train: int = 48, n_val: int | None = 16, classes: int = 3, shift_val: int = 0) -> Data:
    val = _split(n_val, classes, 2, shift_val) if n_val else None
    return Data(_split(n_train, classes, 1), val, _split(16, classes, 3), [f"c{i}" for i in range(classes)],
                1, SIZE, (0.3,), (0.25,), False)


def _config(**changes: object) -> TrainConfig:
    base = {"model": "lenet_relu", "dataset": "synthetic", "device": "cpu", "epochs": 2, "batch_size": 8, "lr": 0.05,
            "momentum": 0.0, "seed": 0, "channels_last": False, "eval_batch_size": 64}
    return TrainConfig(**{**base, **changes})  # type: ignore[arg-type]


def _weights(model: nn.Module) -> Weights:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_close(a: Weights, b: Weights, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=rtol), (name, (a[name] - b[name]).abs().max().item())


def _max_diff(a: Weights, b: Weights) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


class Steps(Callback):
    """After every optimizer step: the model's weights and the step's mean training loss."""

    def __init__(self) -> None:
        self.weights: list[Weights] = []
        self.losses: list[float] = []

    def on_step_end(self, t: Trainer, loss: Tensor) -> None:
        self.weights.append(_weights(t.model))
        self.losses.append(loss.item())


class EpochWeights(Callback):
    """The model's weights at the end of every epoch."""

    def __init__(self) -> None:
        self.weights: list[Weights] = []

    def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None:
        self.weights.append(_weights(t.model))


def _record_lrs(t: Trainer) -> list[float]:
    """The lr that every optimizer step of `t` trains with, read just before the step."""
    lrs: list[float] = []
    t.optimizer.register_step_pre_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    return lrs


def _steps_per_epoch(n: int, batch_size: int, accumulate_steps: int) -> int:
    return math.ceil(math.ceil(n / batch_size) / accumulate_steps)


# ----------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize("n, b, k, changes", [
    (48, 8, 2, {}),  # plain SGD, every group full
    (48, 8, 2, {"momentum": 0.9}),  # momentum: the same steps, not just the same sum of gradients
    (48, 8, 2, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    (40, 8, 3, {"momentum": 0.9}),  # 5 batches: groups of 3 and 2 (the last group is short)
    (44, 8, 2, {"momentum": 0.9}),  # 6 batches, the last of 4 images: groups of 16, 16 and 12 images
    (40, 8, 10, {}),  # more than the epoch's batches: one step per epoch over all 40 images
], ids=["sgd", "momentum", "nesterov-wd", "short-last-group", "short-last-batch", "beyond-the-epoch"])
def test_accumulating_k_batches_of_b_trains_like_batches_of_k_times_b(n: int, b: int, k: int, changes: dict) -> None:
    """Each batch's loss is weighted by its share of the step's images, so a step's gradient is
    the mean over all its images: after two epochs the weights, the per-step losses and the
    epoch losses agree with one big batch per step; the last group of an epoch may be shorter
    (`_groups`) and is still the mean over its own images."""
    data = _data(n)
    small = build_trainer(_config(batch_size=b, accumulate_steps=k, **changes), data)
    big = build_trainer(_config(batch_size=b * k, **changes), data)
    start = _weights(small.model)
    _assert_close(start, _weights(big.model), atol=0, rtol=0)  # the same seeded init
    small_steps, big_steps = Steps(), Steps()
    small_state = fit(small, [small_steps])
    big_state = fit(big, [big_steps])
    assert len(small_steps.losses) == len(big_steps.losses) == 2 * _steps_per_epoch(n, b, k)
    assert small_steps.losses == pytest.approx(big_steps.losses, rel=1e-5)
    for a, c in zip(small_steps.weights, big_steps.weights):
        _assert_close(a, c)
    assert [r["train_loss"] for r in small_state.history] == pytest.approx([r["train_loss"] for r in big_state.history],
                                                                          rel=1e-5)
    assert _max_diff(_weights(small.model), start) > 1e-3  # it did train: the comparison is not vacuous


# ----------------------------------------------------------------- EMA and the best weights


def test_best_weights_are_the_ema_of_every_optimizer_step_at_the_best_epoch(tmp_path: Path) -> None:
    """With `ema_decay`, the EMA is updated after every optimizer step (not every micro-batch):
    the first update copies the weights, then ema = d * ema + (1 - d) * weights (torch's
    AveragedModel). The best epoch is chosen by the EMA's val_loss, and best.pt holds the EMA's
    weights of that epoch, which score exactly the record's val_loss_ema."""
    d, k = 0.7, 2
    data = _data(48, shift_val=1)  # validation labels the training unlearns: val_loss rises after epoch 1
    t = build_trainer(_config(epochs=4, ema_decay=d, accumulate_steps=k, lr=0.1), data)
    steps, ends = Steps(), EpochWeights()
    state = fit(t, [steps, checkpoint.Checkpointer(tmp_path), ends])

    per_epoch = _steps_per_epoch(48, 8, k)
    assert len(steps.weights) == 4 * per_epoch
    emas: list[Weights] = []
    for w in steps.weights:
        emas.append(w if not emas else {n: d * emas[-1][n] + (1 - d) * w[n] for n in w})
    ema_at_epoch_end = emas[per_epoch - 1::per_epoch]

    history = state.history
    ema_losses = [r["val_loss_ema"] for r in history]
    assert state.best_epoch == ema_losses.index(min(ema_losses)) + 1  # chosen by the EMA's val_loss
    assert 1 <= state.best_epoch < state.epoch == 4, ema_losses  # the data makes the best epoch an early one
    best = checkpoint.load(tmp_path / checkpoint.BEST)
    assert best["epoch"] == state.best_epoch
    expected = ema_at_epoch_end[state.best_epoch - 1]
    _assert_close(best["model"], expected)
    # ... which are neither the raw weights of that epoch nor the EMA at the end.
    assert _max_diff(best["model"], ends.weights[state.best_epoch - 1]) > 1e-4
    assert _max_diff(best["model"], ema_at_epoch_end[-1]) > 1e-4
    assert t.best_weights is t.ema.module
    _assert_close(_weights(t.best_weights), ema_at_epoch_end[-1])
    # The EMA validated each epoch is that EMA: best.pt scores what the best record says.
    t.model.load_state_dict(best["model"])
    assert evaluate(t, data.val).loss == pytest.approx(history[state.best_epoch - 1]["val_loss_ema"], rel=1e-6)
    assert state.best_metrics()["best_val_loss"] == history[state.best_epoch - 1]["val_loss_ema"]


# ----------------------------------------------------------------- non-finite losses


class Poisoned(nn.Module):
    """`model`, except that its `at`-th call (1-based) returns logits whose loss is `kind`:
    NaN (NaN logits: NaN gradients too) or +inf (-inf for every class but 0: finite gradients)."""

    def __init__(self, model: nn.Module, at: int, kind: str) -> None:
        super().__init__()
        self.model, self.at, self.kind, self.calls = model, at, kind, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        logits = self.model(x)
        if self.calls != self.at:
            return logits
        if self.kind == "nan":
            return logits * float("nan")
        mask = torch.full_like(logits, float("-inf"))
        mask[:, 0] = 0
        return logits + mask


class Events(Callback):
    """Every hook call, as a tuple, appended to a shared list (`log`) under this callback's name."""

    def __init__(self, name: str, log: list[tuple]) -> None:
        self.name, self.log = name, log
        self.errors: list[BaseException | None] = []

    def on_fit_start(self, t: Trainer, state: FitState) -> None:
        self.log.append((self.name, "fit_start", state.epoch))

    def on_epoch_start(self, t: Trainer, state: FitState, epoch: int) -> None:
        self.log.append((self.name, "epoch_start", epoch))

    def on_batch_end(self, batch: int, num_batches: int, loss: float, acc: float) -> None:
        self.log.append((self.name, "batch_end", batch, num_batches))

    def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None:
        self.log.append((self.name, "epoch_end", state.epoch))

    def on_fit_end(self, t: Trainer, state: FitState, error: BaseException | None) -> None:
        self.errors.append(error)
        self.log.append((self.name, "fit_end", type(error).__name__ if error else None))


class StepEvents(Events):
    """`Events` that also overrides on_step_end (only callbacks that do are called per step)."""

    def on_step_end(self, t: Trainer, loss: Tensor) -> None:
        self.log.append((self.name, "step_end"))


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_a_non_finite_loss_stops_training_and_leaves_the_best_checkpoint_alone(tmp_path: Path, kind: str) -> None:
    """A loss that becomes NaN or inf in batch 2 of epoch 2 raises NonFiniteLossError at the next
    read-back of the running loss (here the epoch's last batch, 6 < SYNC_EVERY): the epoch is not
    recorded, no callback sees it end, `on_fit_end` gets the error, and best.pt / last.pt are
    still epoch 1's finite weights."""
    t = build_trainer(_config(epochs=3), _data(48))
    t.forward = Poisoned(t.model, at=6 + 2, kind=kind)
    log: list[tuple] = []
    events, ends = Events("cb", log), EpochWeights()
    state = FitState()
    with pytest.raises(NonFiniteLossError, match=rf"^training loss became {kind} in batch 6$"):
        fit(t, [checkpoint.Checkpointer(tmp_path), ends, events], state)
    assert (state.epoch, len(state.history), state.best_epoch, state.stop_reason) == (1, 1, 1, None)
    assert ("cb", "epoch_end", 2) not in log and ("cb", "batch_end", 6, 6) in log  # epoch 1's only
    assert isinstance(events.errors[-1], NonFiniteLossError) and log[-1] == ("cb", "fit_end", "NonFiniteLossError")
    best = checkpoint.load(tmp_path / checkpoint.BEST)
    assert best["epoch"] == 1 and all(torch.isfinite(v).all() for v in best["model"].values())
    _assert_close(best["model"], ends.weights[0], atol=0, rtol=0)
    assert checkpoint.load(tmp_path / checkpoint.LAST)["fit"]["epoch"] == 1


def test_a_non_finite_loss_is_caught_at_the_next_periodic_read_back(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    """The running loss is read back every SYNC_EVERY batches (and at the epoch's last): a NaN in
    batch 5 of 10 with SYNC_EVERY=4 is raised in batch 8, before any epoch ends: nothing is
    checkpointed, the state has no epoch."""
    monkeypatch.setattr(train, "SYNC_EVERY", 4)
    t = build_trainer(_config(epochs=2), _data(80))
    t.forward = Poisoned(t.model, at=5, kind="nan")
    log: list[tuple] = []
    state = FitState()
    with pytest.raises(NonFiniteLossError, match=r"became nan in batch 8$"):
        fit(t, [checkpoint.Checkpointer(tmp_path), Events("cb", log)], state)
    assert [e for e in log if e[1] == "batch_end"] == [("cb", "batch_end", 4, 10)]
    assert (state.epoch, state.history, state.best_epoch) == (0, [], 0)
    assert not (tmp_path / checkpoint.BEST).exists() and not (tmp_path / checkpoint.LAST).exists()


def test_non_finite_validation_metrics_stop_before_the_epoch_is_recorded(tmp_path: Path) -> None:
    """A finite training loss but an infinite val_loss (epoch 2) raises "non-finite metrics in
    epoch 2: val_loss=inf" before the state or any checkpoint takes the epoch."""
    t = build_trainer(_config(epochs=3), _data(48))

    class InfInEpoch2(Callback):
        def on_epoch_start(self, t: Trainer, state: FitState, epoch: int) -> None:
            # evaluation calls `t.predict`: its first call in epoch 2 is the validation pass
            t.predict = Poisoned(t.model, at=1, kind="inf") if epoch == 2 else t.model

    state = FitState()
    with pytest.raises(NonFiniteLossError, match=r"^non-finite metrics in epoch 2: val_loss=inf$"):
        fit(t, [InfInEpoch2(), checkpoint.Checkpointer(tmp_path)], state)
    assert (state.epoch, len(state.history), state.best_epoch) == (1, 1, 1)
    assert checkpoint.load(tmp_path / checkpoint.BEST)["epoch"] == 1
    assert checkpoint.load(tmp_path / checkpoint.LAST)["fit"]["epoch"] == 1


# ----------------------------------------------------------------- schedules


def _one_cycle_lr(step: int, total: int, pct_start: float, peak: float) -> float:
    """OneCycleLR's closed form (cosine, two phases, div_factor 25, final_div_factor 1e4)."""
    start, final = peak / 25, peak / 25 / 1e4
    rise_end = pct_start * total - 1

    def cos(a: float, b: float, pct: float) -> float:
        return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)

    if step <= rise_end:
        return cos(start, peak, step / rise_end)
    return cos(peak, final, (step - rise_end) / (total - 1 - rise_end))


@pytest.mark.parametrize("warmup_epochs, pct_start", [(1, 0.25), (0, 0.3)])
def test_one_cycle_lr_follows_its_closed_form_per_optimizer_step(warmup_epochs: int, pct_start: float) -> None:
    """One-cycle steps after every optimizer step, not every micro-batch: 5 batches per epoch,
    accumulate_steps=2 -> 3 steps per epoch (the last one short), 12 over 4 epochs, each at the
    closed-form lr; the rising phase is the warmup (its last step trains at the peak) or 30%."""
    epochs, peak = 4, 0.1
    t = build_trainer(_config(epochs=epochs, accumulate_steps=2, scheduler="onecycle", warmup_epochs=warmup_epochs,
                              lr=peak), _data(40))
    lrs = _record_lrs(t)
    state = fit(t)
    per_epoch = _steps_per_epoch(40, 8, 2)
    total = epochs * per_epoch
    assert per_epoch == 3 and len(lrs) == total
    assert lrs == pytest.approx([_one_cycle_lr(s, total, pct_start, peak) for s in range(total)], rel=1e-9)
    if warmup_epochs:
        assert lrs[warmup_epochs * per_epoch - 1] == pytest.approx(peak)
    assert [r["lr"] for r in state.history] == pytest.approx(lrs[::per_epoch])  # each epoch's first step
    assert t.scheduler.last_epoch == total


@pytest.mark.parametrize("changes, expected", [
    # warmup 2 epochs (lr/3, 2lr/3), then cosine over the 3 left, to min_lr
    ({"scheduler": "cosine", "warmup_epochs": 2, "min_lr": 0.01},
     [0.1 / 3, 0.2 / 3] + [0.01 + 0.09 * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3)]),
    # warmup 1 epoch (lr/2), then halve every 2 epochs
    ({"scheduler": "step", "warmup_epochs": 1, "step_size": 2, "gamma": 0.5}, [0.05, 0.1, 0.1, 0.05, 0.05]),
], ids=["warmup-cosine", "warmup-step"])
def test_per_epoch_schedules_hold_the_lr_through_every_step_of_an_epoch(changes: dict, expected: list[float]) -> None:
    """Warmup and the per-epoch schedules step once per epoch: every optimizer step of epoch e
    (3 of them, with accumulation) trains at the schedule's closed-form lr for e."""
    t = build_trainer(_config(epochs=5, accumulate_steps=2, lr=0.1, **changes), _data(40))
    lrs = _record_lrs(t)
    state = fit(t)
    assert lrs == pytest.approx([lr for lr in expected for _ in range(3)], rel=1e-9)
    assert [r["lr"] for r in state.history] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("optimizer", ["adagrad", "adadelta"])
def test_one_cycle_trains_with_every_optimizer_or_is_refused_in_one_line(optimizer: str) -> None:
    """Every registered optimizer with scheduler=onecycle either trains, or is refused as a
    HarnessError (one line for the user), never a torch ValueError from build_trainer."""
    config = _config(optimizer=optimizer, scheduler="onecycle", epochs=2, batch_size=16)
    try:
        t = build_trainer(config, _data(16))
    except HarnessError:
        return
    assert len(fit(t).history) == 2


# ----------------------------------------------------------------- best epoch and early stopping


def _script(monkeypatch: pytest.MonkeyPatch, val: list[tuple[float, float]],
            ema: list[tuple[float, float]] | None = None) -> None:
    """Make `fit_epoch`'s validation return the scripted (loss, acc) of each epoch: `val` for the
    weights, `ema` for the EMA's (the training itself is real)."""
    calls = {"val": 0, "ema": 0}

    def scripted(t: Trainer, split: object, model: nn.Module | None = None) -> EvalResult:
        which = "val" if model is None else "ema"
        loss, acc = (val if model is None else ema)[calls[which]]  # type: ignore[index]
        calls[which] += 1
        k = len(t.data.classes)
        return EvalResult(loss, acc, None, torch.zeros(k, k, dtype=torch.long), 0.0, 16)

    monkeypatch.setattr(train, "evaluate", scripted)


VAL = [(1.0, 0.5), (0.6, 0.6), (0.6, 0.9), (0.8, 0.9)]
EMA = [(0.9, 0.4), (0.8, 0.95), (0.4, 0.7), (0.5, 0.7)]


@pytest.mark.parametrize("metric, ema, best_epoch, best", [
    ("val_loss", False, 2, {"best_val_loss": 0.6, "best_val_acc": 0.6}),  # a tie (epoch 3) keeps the first
    ("val_acc", False, 3, {"best_val_loss": 0.6, "best_val_acc": 0.9}),  # higher is better; tie with 4
    ("val_loss", True, 3, {"best_val_loss": 0.4, "best_val_acc": 0.7}),  # the EMA's, not the weights' (2)
    ("val_acc", True, 2, {"best_val_loss": 0.8, "best_val_acc": 0.95}),
], ids=["val_loss-tie", "val_acc-tie", "val_loss-ema", "val_acc-ema"])
def test_best_epoch_follows_the_monitored_metric(monkeypatch: pytest.MonkeyPatch, metric: str, ema: bool,
                                                 best_epoch: int, best: dict[str, float]) -> None:
    """The best epoch is the first one with the best `early_stopping_metric` (lower val_loss,
    higher val_acc), the EMA's when on; `best_score` and `best_metrics` are that epoch's own."""
    _script(monkeypatch, VAL, EMA if ema else None)
    t = build_trainer(_config(epochs=4, batch_size=16, early_stopping_metric=metric,
                              ema_decay=0.9 if ema else None), _data(16))
    state = fit(t)
    name = metric + ("_ema" if ema else "")
    assert state.best_epoch == best_epoch
    assert state.best_score == state.history[best_epoch - 1][name]
    assert state.best_metrics() == {"best_epoch": best_epoch, **best}


def test_without_a_validation_split_the_best_epoch_is_the_lowest_training_loss() -> None:
    t = build_trainer(_config(epochs=3, lr=0.2), _data(48, n_val=None))
    state = fit(t)
    losses = [r["train_loss"] for r in state.history]
    assert "val_loss" not in state.history[0]
    assert state.best_epoch == losses.index(min(losses)) + 1 and state.best_score == min(losses)
    assert state.best_metrics() == {"best_epoch": state.best_epoch, "best_train_loss": min(losses),
                                    "best_train_acc": state.history[state.best_epoch - 1]["train_acc"]}


@pytest.mark.parametrize("metric, ema, losses, stop_at, best_epoch, name", [
    ("val_loss", False, [1.0, 0.8, 0.9, 0.85, 0.5, 0.4, 0.3, 0.2], 4, 2, "val_loss"),
    ("val_loss", False, [1.0, 0.9, 0.95, 0.85, 0.9, 0.9, 0.1, 0.1], 6, 4, "val_loss"),  # an improvement resets
    ("val_acc", False, [0.5, 0.7, 0.6, 0.7, 0.9, 0.9, 0.9, 0.9], 4, 2, "val_acc"),  # a tie is no improvement
    # the weights improve every epoch, the EMA does not: the EMA's metric decides
    ("val_loss", True, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], 3, 1, "val_loss_ema"),
], ids=["val_loss", "val_loss-reset", "val_acc-tie", "val_loss-ema"])
def test_early_stopping_stops_patience_epochs_after_the_best(monkeypatch: pytest.MonkeyPatch, metric: str, ema: bool,
                                                             losses: list[float], stop_at: int, best_epoch: int,
                                                             name: str) -> None:
    """EarlyStopping (patience 2) sets `stop_reason` at the end of the epoch 2 epochs after the
    best; `fit` trains no further epoch and ends normally (`on_fit_end` without an error)."""
    values = [(v, v) for v in losses]  # loss and acc alike: each metric reads its own
    ema_values = [(0.5 + 0.1 * i, 0.5) for i in range(8)] if ema else None
    _script(monkeypatch, values, ema_values)
    t = build_trainer(_config(epochs=8, batch_size=16, early_stopping_metric=metric, ema_decay=0.9 if ema else None),
                      _data(16))
    log: list[tuple] = []
    state = fit(t, [EarlyStopping(2), Events("cb", log)])
    assert (state.epoch, len(state.history), state.best_epoch) == (stop_at, stop_at, best_epoch)
    assert state.stop_reason == f"early stopping: {name} has not improved for 2 epochs (best epoch {best_epoch})"
    assert [e[2] for e in log if e[1] == "epoch_start"] == list(range(1, stop_at + 1))
    assert log[-1] == ("cb", "fit_end", None)


# ----------------------------------------------------------------- callbacks


def test_callbacks_are_called_in_order_with_the_state_already_updated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hooks run in list order; per epoch: epoch_start, then per optimizer step (only for
    callbacks overriding on_step_end) step_end, batch_end at each read-back (here the epoch's
    last batch), epoch_end once the state holds the epoch and its best; fit_end last, without
    an error. The step's loss is the mean over its images: weighted by images, the epoch's."""
    log: list[tuple] = []
    # The base on_step_end, made visible: `b` inherits it, so the loop must never call it.
    monkeypatch.setattr(Callback, "on_step_end", lambda self, t, loss: log.append((self.name, "base_step_end")))
    a, b = StepEvents("a", log), Events("b", log)

    class Check(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_step_end(self, t: Trainer, loss: Tensor) -> None:
            self.losses.append(loss.item())

        def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None:
            assert state.history[-1] is record and state.epoch == len(state.history)
            _, score, _ = train.monitored(t.config, state.best_record)  # type: ignore[arg-type]
            assert state.best_score == score and state.best_epoch <= state.epoch
            assert all(r["val_loss"] >= score for r in state.history)

    check = Check()
    t = build_trainer(_config(epochs=2, accumulate_steps=2), _data(40))  # 5 batches: steps of 16, 16, 8 images
    state = fit(t, [a, b, check])

    def epoch(e: int) -> list[tuple]:
        return [("a", "epoch_start", e), ("b", "epoch_start", e), ("a", "step_end"), ("a", "step_end"),
                ("a", "batch_end", 5, 5), ("b", "batch_end", 5, 5), ("a", "step_end"),
                ("a", "epoch_end", e), ("b", "epoch_end", e)]

    assert log == [("a", "fit_start", 0), ("b", "fit_start", 0), *epoch(1), *epoch(2),
                   ("a", "fit_end", None), ("b", "fit_end", None)]
    images = [16, 16, 8] * 2
    for e in range(2):
        mean = sum(loss * n for loss, n in zip(check.losses[3 * e:3 * e + 3], images)) / 40
        assert mean == pytest.approx(state.history[e]["train_loss"], rel=1e-5)


def test_every_on_fit_end_sees_the_training_error_and_a_failing_one_does_not_hide_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """An exception in training reaches every callback's on_fit_end (also after one of them
    fails, which is logged), and the original exception is the one `fit` raises."""
    log: list[tuple] = []

    class Boom(Callback):
        def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None:
            raise ValueError("boom")

    class FailingEnd(Events):
        def on_fit_end(self, t: Trainer, state: FitState, error: BaseException | None) -> None:
            super().on_fit_end(t, state, error)
            raise RuntimeError("cleanup failed")

    first, last = FailingEnd("first", log), Events("last", log)
    t = build_trainer(_config(epochs=3, batch_size=16), _data(16))
    with caplog.at_level(logging.WARNING, logger="harness.train"), pytest.raises(ValueError, match="^boom$"):
        fit(t, [first, Boom(), last])
    assert [e for e in log if e[1] == "fit_end"] == [("first", "fit_end", "ValueError"),
                                                      ("last", "fit_end", "ValueError")]
    assert first.errors[0] is last.errors[0] and str(last.errors[0]) == "boom"
    assert ("last", "epoch_end", 1) not in log  # the epoch's later callbacks do not run after the error
    assert "on_fit_end of FailingEnd failed after ValueError" in caplog.text


def test_every_on_fit_end_runs_when_one_fails_after_a_successful_fit() -> None:
    """E.g. MlflowEpochLogger.on_fit_end raises when the store is still down (documented); the
    callbacks after it (ConsoleProgress, which stops the live bar; the caller's own) must still
    get their on_fit_end, and its error is then raised."""
    log: list[tuple] = []

    class FailingEnd(Events):
        def on_fit_end(self, t: Trainer, state: FitState, error: BaseException | None) -> None:
            super().on_fit_end(t, state, error)
            raise RuntimeError("store down")

    t = build_trainer(_config(epochs=1, batch_size=16), _data(16))
    with pytest.raises(RuntimeError, match="store down"):
        fit(t, [FailingEnd("first", log), Events("last", log)])
    assert ("last", "fit_end", None) in log


# ----------------------------------------------------------------- evaluate


class Fixed(nn.Module):
    """A 'model' returning fixed logits, row by row in evaluation order (batches are in order)."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits, self.pos = logits, 0

    def forward(self, x: Tensor) -> Tensor:
        out = self.logits[self.pos:self.pos + len(x)]
        self.pos += len(x)
        return out


@pytest.mark.parametrize("classes", [3, 12])
def test_evaluate_sums_loss_accuracy_top5_and_confusion_over_batches(classes: int) -> None:
    """Mean cross-entropy, top-1, the confusion matrix (rows true, columns predicted) and, for
    more than 10 classes only, top-5, over eval batches of 5 (the last of 1)."""
    data = _data(16, classes=classes)
    t = build_trainer(_config(eval_batch_size=5), data)
    logits = torch.randn(16, classes, generator=torch.Generator().manual_seed(7))
    y = data.val.labels
    result = evaluate(t, data.val, Fixed(logits))
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    for true, pred in zip(y.tolist(), logits.argmax(1).tolist()):
        confusion[true, pred] += 1
    assert result.samples == 16
    assert result.loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert result.acc == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert torch.equal(result.confusion, confusion)
    if classes > 10:
        assert result.top5 == pytest.approx((logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item())
    else:
        assert result.top5 is None

