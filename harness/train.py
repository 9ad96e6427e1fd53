"""The one training loop: `train_one_epoch`, `evaluate`, `fit`.

Tracking, checkpoints, early stopping, progress and Optuna pruning are callbacks on `fit`;
they never fork the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import interrupts
from harness.config import TrainConfig
from harness.data import Data
from harness.data.auto_augment import batch_auto_augment
from harness.data.batch_augment import mix_batch
from harness.data.in_memory import InMemorySplit, Split
from harness.data.transforms import BatchTransform, Preprocess
from harness.device import resolve_device, seed_everything
from harness.distributed import SINGLE, Dist
from harness.errors import ConfigError
from harness.models import build_model
from harness.optim import INITS, PER_STEP, build_optimizer, build_scheduler
from harness.validation import check_config

# How often (in batches) running loss/accuracy are read back for progress and NaN checks;
# reading them every step would force a device sync per step.
SYNC_EVERY = 25


class NonFiniteLossError(RuntimeError):
    """Training loss became NaN or infinite."""


@dataclass
class Trainer:
    """A model with everything needed to train and evaluate it on one dataset."""

    config: TrainConfig
    data: Data
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    transform: BatchTransform
    data_rng: torch.Generator  # shuffling (the same on every rank); saved in checkpoints
    forward: nn.Module  # what training calls: `model`, compiled and/or DDP-wrapped (same parameters)
    predict: nn.Module  # what evaluation calls: `model` or its compiled form, never DDP-wrapped
    dist: Dist = SINGLE  # this process's place among data-parallel ranks
    aug_rng: torch.Generator | None = None  # augmentation draws: this rank's own (None: `data_rng`)
    ddp: nn.parallel.DistributedDataParallel | None = None  # the DDP wrapper, with several ranks
    # Exponential moving average of the weights (`ema_decay`): validated beside them, and what is
    # checkpointed as best, tested and exported.
    ema: torch.optim.swa_utils.AveragedModel | None = None

    @property
    def image_size(self) -> int:
        return self.transform.preprocess.image_size

    @property
    def use_amp(self) -> bool:
        return self.config.amp and self.device.type == "cuda"

    @property
    def mixing(self) -> bool:
        """Whether batches are mixed (MixUp / CutMix)."""
        return self.config.mixup_alpha > 0 or self.config.cutmix_alpha > 0

    @property
    def per_step_schedule(self) -> bool:
        """Whether the lr schedule steps after every optimizer step (one-cycle), not every epoch."""
        return self.config.scheduler in PER_STEP

    @property
    def best_weights(self) -> nn.Module:
        """The weights that are checkpointed as best, tested and exported: the EMA's when on."""
        return self.ema.module if self.ema is not None else self.model


def check_world(config: TrainConfig, world_size: int) -> None:
    """`batch_size` is the global batch: it must split evenly over the processes."""
    if config.batch_size % world_size:
        raise ConfigError(
            f"batch_size {config.batch_size} does not split evenly over {world_size} processes; choose a batch_size "
            f"divisible by {world_size} (it is the global batch: each process takes batch_size / {world_size}).")


def accumulation_warning(config: TrainConfig, train_images: int) -> str | None:
    """Why `accumulate_steps` does not give the effective batch it promises, or None: when it is
    more than the batches of an epoch, each epoch's one group (`_groups`) is cut short by the
    epoch's end, so the step takes every training image, not batch_size * accumulate_steps."""
    batches = math.ceil(train_images / config.batch_size)  # as `train_one_epoch` counts them
    if config.accumulate_steps <= batches:
        return None
    plural = "es" if batches != 1 else ""
    return (f"accumulate_steps={config.accumulate_steps} is more than the {batches} batch{plural} of an epoch: each "
            f"epoch makes 1 optimizer step over {batches} batch{plural} (an effective batch of {train_images} images, "
            f"not batch_size*accumulate_steps={config.batch_size * config.accumulate_steps})")


def build_trainer(config: TrainConfig, data: Data, dist: Dist = SINGLE) -> Trainer:
    """Check `config`'s names against the registries, then seed and build the model (with its
    init), optimizer, schedule and batch transform. With several ranks (`dist`), the model is
    wrapped in DistributedDataParallel (BatchNorm synced if `sync_batchnorm`), every rank starts
    from the same weights and data order, and dropout and augmentation draw from streams of
    each rank's own."""
    check_config(config)
    check_world(config, dist.world_size)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    if config.sync_batchnorm and dist.enabled and device.type != "cuda":
        raise ConfigError("sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm has no CPU version); "
                          "leave it false for processes on the CPU.")
    data = on_device(data, device)
    image_size = config.image_size or data.native_size
    model = build_model(
        config.model, in_channels=data.in_channels, num_classes=len(data.classes), image_size=image_size,
        dropout=config.dropout, pretrained=config.pretrained, freeze_backbone=config.freeze_backbone,
    )
    INITS.get(config.init)(model)
    if config.sync_batchnorm and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    channels_last = config.channels_last and device.type in ("cpu", "cuda")  # MPS support is partial
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    steps_per_epoch = math.ceil(math.ceil(len(data.train) / config.batch_size) / config.accumulate_steps)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    policy = batch_auto_augment(config.auto_augment, config.randaugment_magnitude) if config.auto_augment else None
    transform = BatchTransform(Preprocess(data.mean, data.std, image_size), device, config.augment, data.hflip,
                               channels_last, config.random_erasing, policy)
    data_rng = torch.Generator().manual_seed(config.seed)
    ema = None
    if config.ema_decay is not None:  # BatchNorm statistics are averaged too (use_buffers)
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    predict = torch.compile(model) if config.compile else model
    forward, aug_rng, ddp = predict, None, None
    if dist.enabled:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                  gradient_as_bucket_view=True)
        forward = torch.compile(ddp) if config.compile else ddp
        torch.manual_seed(dist.rank_seed(config.seed, 0))  # dropout: each rank its own masks
        aug_rng = torch.Generator().manual_seed(dist.rank_seed(config.seed, 1))
    return Trainer(config, data, device, model, optimizer, scheduler, scaler, transform, data_rng, forward, predict,
                   dist, aug_rng, ddp, ema)


# In-memory datasets up to this size are copied to the GPU once, so batches never cross the bus
# (MNIST is 47 MB, CIFAR-10 150 MB as uint8).
DEVICE_RESIDENT_BYTES = 2 * 1024**3


def on_device(data: Data, device: torch.device) -> Data:
    """`data` with its in-memory splits moved to a CUDA `device` when they fit; else unchanged."""
    splits = [s for s in (data.train, data.val, data.test) if s is not None]
    if device.type != "cuda" or not all(isinstance(s, InMemorySplit) for s in splits):
        return data
    if sum(s.nbytes for s in splits) > DEVICE_RESIDENT_BYTES:
        return data
    moved = {name: getattr(data, name).to(device) for name in ("train", "val", "test")
             if getattr(data, name) is not None}
    return dataclasses.replace(data, **moved)


def param_count(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------- one epoch


@dataclass
class EpochTotals:
    """Running sums for one pass; tensors stay on the device until read."""

    loss_sum: Tensor
    correct: Tensor
    seen: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum.item() / max(self.seen, 1)

    @property
    def acc(self) -> float:
        return self.correct.item() / max(self.seen, 1)


def global_totals(t: Trainer, totals: EpochTotals) -> EpochTotals:
    """`totals` summed over all ranks (itself with one rank)."""
    if not t.dist.enabled:
        return totals
    sums = torch.stack([totals.loss_sum.double(), totals.correct.double(),
                        torch.tensor(float(totals.seen), device=t.device, dtype=torch.float64)])
    t.dist.sum_(sums)
    loss_sum, correct, seen = sums.tolist()
    return EpochTotals(torch.tensor(loss_sum), torch.tensor(round(correct)), round(seen))


def _groups(batches: Iterator[tuple[Tensor, Tensor, int]], size: int) -> Iterator[list[tuple[Tensor, Tensor, int]]]:
    """`batches` in lists of `size` (the last may be shorter): the batches of one optimizer step."""
    group: list[tuple[Tensor, Tensor, int]] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def train_one_epoch(t: Trainer, callbacks: Sequence[Callback] = (), epoch: int = 1) -> EpochTotals:
    """One pass over the training split; returns summed loss and correct counts (over all ranks).

    One optimizer step per `accumulate_steps` batches. Each batch's loss is weighted by its share
    of the step's images (and, with several ranks, of each global batch), so the gradient is that
    of the mean loss over all the step's images, as one process with one big batch would compute
    it; DDP syncs gradients once per step. The EMA (if on) and a one-cycle schedule follow every
    optimizer step."""
    t.model.train()
    totals = EpochTotals(torch.zeros((), device=t.device), torch.zeros((), device=t.device, dtype=torch.long))
    num_batches = math.ceil(len(t.data.train) / t.config.batch_size)
    params = [p for p in t.model.parameters() if p.requires_grad]
    world = t.dist.world_size
    rng = t.aug_rng or t.data_rng
    stepwise = [cb for cb in callbacks if type(cb).on_step_end is not Callback.on_step_end]
    batches = t.data.train.train_batches(t.config.batch_size, t.data_rng, t.dist.rank, world, epoch, t.config.seed)
    i = 0  # batches so far
    for group in _groups(batches, t.config.accumulate_steps):
        interrupts.raise_if_stopped()
        step_images = sum(size for _, _, size in group)
        step_loss = torch.zeros((), device=t.device)
        t.optimizer.zero_grad(set_to_none=True)
        for j, (images, labels, _) in enumerate(group):
            x = t.transform(images, train=True, generator=rng)
            y = labels.to(t.device, non_blocking=True)
            target = None
            if t.mixing:  # soft targets; accuracy counts the dominant label of each mixed image
                c = t.config
                x, target, y = mix_batch(x, y, len(t.data.classes), c.mixup_alpha, c.cutmix_alpha, c.mix_prob, rng,
                                         c.label_smoothing)
            # Gradients are all-reduced once, after the step's last batch.
            sync = t.ddp is None or j == len(group) - 1
            with contextlib.nullcontext() if sync else t.ddp.no_sync():  # type: ignore[union-attr]
                with torch.autocast(t.device.type, dtype=torch.float16, enabled=t.use_amp):
                    logits = t.forward(x)
                    if target is None:
                        loss = F.cross_entropy(logits, y, label_smoothing=t.config.label_smoothing)
                    else:  # smoothing is in the targets already
                        loss = F.cross_entropy(logits, target)
                weight = len(y) * world / step_images
                t.scaler.scale(loss * weight if weight != 1.0 else loss).backward()
            totals.loss_sum.add_(loss.detach(), alpha=len(y))  # in place: one op, no temporary
            if stepwise:
                step_loss.add_(loss.detach(), alpha=len(y) * world / step_images)
            totals.correct.add_((logits.argmax(1) == y).sum())
            totals.seen += len(y)
            i += 1
            if i % SYNC_EVERY == 0 or i == num_batches:
                running = global_totals(t, totals)  # all ranks check the same number: they stop together
                if not math.isfinite(running.loss):
                    raise NonFiniteLossError(f"training loss became {running.loss} in batch {i}")
                for cb in callbacks:
                    cb.on_batch_end(i, num_batches, running.loss, running.acc)
        if t.config.grad_clip is not None:
            t.scaler.unscale_(t.optimizer)
            nn.utils.clip_grad_norm_(params, t.config.grad_clip)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        if t.ema is not None:
            t.ema.update_parameters(t.model)
        if t.per_step_schedule:
            t.scheduler.step()
        for cb in stepwise:
            cb.on_step_end(t, step_loss)
    return global_totals(t, totals)


@dataclass
class EvalResult:
    """Loss, accuracies and the confusion matrix (rows = true class, columns = predicted)."""

    loss: float
    acc: float
    top5: float | None
    confusion: Tensor  # int64 (K, K)
    seconds: float
    samples: int


@torch.inference_mode()
def evaluate(t: Trainer, split: Split, model: nn.Module | None = None) -> EvalResult:
    """Loss, top-1 (and top-5 for more than 10 classes) and the confusion matrix on `split`.

    With several ranks each scores its own contiguous share (every sample once, no padding) with
    rank 0's weights and buffers, and the sums are added up over ranks: the result is what one
    process would get for the same weights."""
    model = model or t.predict
    model.eval()
    if t.dist.enabled:
        t.dist.sync_buffers(model)
        split = split.shard(t.dist.rank, t.dist.world_size)
    k = len(t.data.classes)
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=t.device, dtype=torch.float64)
    top5_hits = torch.zeros((), device=t.device, dtype=torch.long)
    confusion = torch.zeros(k * k, device=t.device, dtype=torch.long)
    for images, labels in split.batches(t.config.eval_batch_size, False, None):
        x = t.transform(images, train=False)
        y = labels.to(t.device, non_blocking=True)
        with torch.autocast(t.device.type, dtype=torch.float16, enabled=t.use_amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        confusion += torch.bincount(y * k + logits.argmax(1), minlength=k * k)
        if k > 10:
            top5_hits += (logits.topk(5, dim=1).indices == y[:, None]).any(1).sum()
    t.dist.sum_(loss_sum, top5_hits, confusion)
    n = int(confusion.sum().item())
    confusion = confusion.view(k, k).cpu()
    return EvalResult(
        loss=loss_sum.item() / max(n, 1),
        acc=confusion.diagonal().sum().item() / max(n, 1),
        top5=top5_hits.item() / max(n, 1) if k > 10 else None,
        confusion=confusion,
        seconds=time.perf_counter() - start,
        samples=n,
    )


# ----------------------------------------------------------------- the loop


@dataclass
class FitState:
    """What training has produced so far; all of it goes into every checkpoint.

    "Best" has one meaning everywhere: the epoch chosen by the monitored metric
    (`early_stopping_metric`, see `monitored`), whose weights are checkpointed and tested.
    Every `best_*` number is read from that epoch's own record (`best_metrics`)."""

    epoch: int = 0  # completed epochs
    history: list[dict[str, float]] = field(default_factory=list)  # one record per epoch
    val_confusions: list[Tensor] = field(default_factory=list)  # (K, K) per epoch with validation
    best_epoch: int = 0
    best_score: float | None = None  # of the monitored metric
    stop_reason: str | None = None  # set by a callback (e.g. early stopping) to end training

    @property
    def epochs_since_best(self) -> int:
        return self.epoch - self.best_epoch

    @property
    def best_record(self) -> dict[str, float] | None:
        """The best epoch's metrics (None before the first epoch)."""
        return self.history[self.best_epoch - 1] if self.best_epoch else None

    def best_metrics(self) -> dict[str, float]:
        """`best_epoch` and the best epoch's own validation (else training) loss and accuracy as
        `best_val_loss` / `best_val_acc` (or `best_train_*` without a validation split); with
        EMA, the EMA's validation numbers."""
        record = self.best_record
        if record is None:
            return {}
        split = "val" if "val_loss" in record else "train"
        ema = "_ema" if "val_loss_ema" in record else ""  # the EMA's weights are the ones kept
        return {"best_epoch": self.best_epoch, f"best_{split}_loss": record[f"{split}_loss{ema}"],
                f"best_{split}_acc": record[f"{split}_acc{ema}"]}

    def to_dict(self) -> dict[str, object]:
        return {"epoch": self.epoch, "history": self.history, "val_confusions": self.val_confusions,
                "best_epoch": self.best_epoch, "best_score": self.best_score, "stop_reason": self.stop_reason}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> FitState:
        return cls(**d)  # type: ignore[arg-type]


def monitored(config: TrainConfig, record: dict[str, float]) -> tuple[str, float, bool]:
    """(metric name, value, higher is better) used for best epoch and early stopping: the EMA's
    (`val_loss_ema`, `val_acc_ema`) when it is on, as its weights are the ones kept."""
    if "val_loss" not in record:  # no validation split: the training loss is all there is
        return "train_loss", record["train_loss"], False
    name = config.early_stopping_metric
    if "val_loss_ema" in record:
        name += "_ema"
    return name, record[name], name.startswith("val_acc")


class Callback:
    """Hooks into `fit`; override what you need. `on_fit_end` is always called, also when
    training stops with an exception (`error` is then that exception), so no caller cleans up by hand."""

    def on_fit_start(self, t: Trainer, state: FitState) -> None: ...

    def on_epoch_start(self, t: Trainer, state: FitState, epoch: int) -> None: ...

    def on_batch_end(self, batch: int, num_batches: int, loss: float, acc: float) -> None: ...

    def on_step_end(self, t: Trainer, loss: Tensor) -> None:
        """After every optimizer step, with the step's mean training loss (a device tensor on this
        rank). Only callbacks that override it are called: reading the loss syncs the device."""

    def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None: ...

    def on_fit_end(self, t: Trainer, state: FitState, error: BaseException | None) -> None: ...


def fit_epoch(t: Trainer, state: FitState, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train and validate epoch `state.epoch + 1`, step the schedule, update `state` (history,
    best epoch) and call the epoch callbacks; returns the epoch's record."""
    epoch = state.epoch + 1
    for cb in callbacks:
        cb.on_epoch_start(t, state, epoch)
    lr = t.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    totals = train_one_epoch(t, callbacks, epoch)
    train_seconds = t.dist.max(time.perf_counter() - start)  # the slowest rank sets the pace
    record = {"train_loss": totals.loss, "train_acc": totals.acc, "lr": lr}
    if t.data.val is not None:
        val = evaluate(t, t.data.val)
        record.update(val_loss=val.loss, val_acc=val.acc)
        if t.ema is not None:  # the EMA's confusion is kept: its weights are the ones tested
            val = evaluate(t, t.data.val, t.ema.module)
            record.update(val_loss_ema=val.loss, val_acc_ema=val.acc)
        state.val_confusions.append(val.confusion)
    if not t.per_step_schedule:
        t.scheduler.step()
    record.update(epoch_seconds=t.dist.max(time.perf_counter() - start), images_per_second=totals.seen / train_seconds)
    if not all(math.isfinite(v) for v in record.values()):
        bad = ", ".join(f"{k}={v}" for k, v in record.items() if not math.isfinite(v))
        raise NonFiniteLossError(f"non-finite metrics in epoch {epoch}: {bad}")
    state.epoch = epoch
    state.history.append(record)
    _, score, higher = monitored(t.config, record)
    if state.best_score is None or (score > state.best_score if higher else score < state.best_score):
        state.best_epoch, state.best_score = epoch, score
    error: BaseException | None = None
    try:
        for cb in callbacks:
            cb.on_epoch_end(t, state, record)
    except BaseException as exc:  # noqa: BLE001 - raised below, after the ranks agree on it
        error = exc
    if t.dist.enabled:
        # Rank 0's callbacks decide (it checkpoints, tracks, prunes): every rank stops, or fails
        # with rank 0's error, at the same epoch. This broadcast is also the checkpoint barrier.
        state.stop_reason = t.dist.from_main(lambda: _raise_or(error, state.stop_reason))
    elif error is not None:
        raise error
    return record


def _raise_or(error: BaseException | None, value: str | None) -> str | None:
    if error is not None:
        raise error
    return value


def fit(t: Trainer, callbacks: Sequence[Callback] = (), state: FitState | None = None) -> FitState:
    """Train from `state` (a fresh one, or one restored from a checkpoint) to `config.epochs`,
    or until a callback sets `state.stop_reason`. Every callback's `on_fit_end` runs however
    training ends; after an exception, a failing `on_fit_end` does not hide the original error."""
    state = state or FitState()
    try:
        for cb in callbacks:
            cb.on_fit_start(t, state)
        while state.epoch < t.config.epochs and not state.stop_reason:
            fit_epoch(t, state, callbacks)
    except BaseException as exc:
        for cb in callbacks:
            try:
                cb.on_fit_end(t, state, exc)
            except Exception:  # noqa: BLE001 - the training error is the one to report
                logging.getLogger(__name__).warning("on_fit_end of %s failed after %s", type(cb).__name__,
                                                    type(exc).__name__, exc_info=True)
        raise
    failure: Exception | None = None
    for cb in callbacks:  # every callback ends (a progress bar stops) even if one before it fails
        try:
            cb.on_fit_end(t, state, None)
        except Exception as exc:  # noqa: BLE001 - the first failure is raised once all have ended
            if failure is None:
                failure = exc
            else:
                logging.getLogger(__name__).warning("on_fit_end of %s failed too", type(cb).__name__, exc_info=True)
    if failure is not None:
        raise failure
    return state
