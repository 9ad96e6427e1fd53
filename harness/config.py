"""Training configuration: one frozen dataclass per variant, validated when built.

Overrides go through `dataclasses.replace`, so an overridden config is validated again.
`flatten()` turns a config into MLflow params.

Building a config checks values only (ranges, patterns, fields that need each other). Names
(model, dataset, optimizer, scheduler, init) and what depends on the model are checked by
`harness.validation.check_config`, which reads the registries: this module imports none of
them, so it stays a leaf that every other module can import without PyTorch or cycles.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from harness.errors import ConfigError, UnknownNameError
from harness.registry import unknown_name_message

EARLY_STOPPING_METRICS = ("val_loss", "val_acc")
AUTO_AUGMENT_POLICIES = ("autoaugment", "randaugment", "trivialaugment")  # harness.data.auto_augment.POLICIES
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

# Upper bounds on integers: each is far beyond any real run, and a larger value is a typo that
# would otherwise fail later (deep in NumPy, PyTorch or MLflow) or never finish.
SEED_LIMIT = 2**32  # seeds are in [0, SEED_LIMIT): NumPy's seeding range (torch's is wider)
# 4096 px per side is 7-18x the 224-600 px ImageNet classifiers use; one 3-channel float image is
# already 200 MB. Larger sizes fail only in the first batch (1e8 px asks for a 1.28e18-byte tensor).
MAX_IMAGE_SIZE = 4096
MAX_EPOCHS = 1_000_000  # also bounds warmup_epochs, step_size, milestones and patience (epoch counts)
MAX_BATCH_SIZE = 1_000_000  # batch_size and eval_batch_size: large-batch training uses up to ~64k
MAX_NUM_WORKERS = 1024  # DataLoader processes: more than the cores of any single machine


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (a "variant" of an experiment).

    Building one checks its values; `harness.validation.check_config` checks its names.
    """

    model: str = "lenet_relu"
    dataset: str = "digits"
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # SGD / RMSprop only
    nesterov: bool = False  # SGD only
    weight_decay: float = 0.0
    scheduler: str = "none"
    warmup_epochs: int = 0  # linear warmup before the schedule, in epochs
    step_size: int = 10  # step: decay every `step_size` epochs
    gamma: float = 0.1  # step / multistep / exponential decay factor
    milestones: tuple[int, ...] = ()  # multistep: epochs at which lr *= gamma
    seed: int = 0
    image_size: int | None = None  # pixels per side fed to the model; None = dataset's native size
    train_limit: int | None = None  # cap on training samples (after the validation split)
    val_fraction: float = 0.1  # carved from the training set, seeded
    test_fraction: float = 0.2  # only for datasets without an official test split (digits, folders)
    early_stopping_patience: int | None = None  # epochs without improvement; None = off
    early_stopping_metric: str = "val_loss"  # also picks the best epoch
    device: str = "auto"  # auto = cuda > mps > cpu
    augment: bool = False  # random crop with padding (+ horizontal flip where the dataset allows)
    init: str = "default"  # default | xavier | kaiming
    dropout: float | None = None  # None = the model's own default
    grad_clip: float | None = None  # max gradient L2 norm; None = off
    label_smoothing: float = 0.0
    auto_augment: str | None = None  # randaugment | trivialaugment | autoaugment (per image); None = off
    randaugment_magnitude: int = 9  # RandAugment's magnitude bin, 0-30
    random_erasing: float = 0.0  # probability per image of erasing one random rectangle (torchvision RandomErasing)
    mixup_alpha: float = 0.0  # MixUp's Beta(alpha, alpha); 0 = off
    cutmix_alpha: float = 0.0  # CutMix's Beta(alpha, alpha); 0 = off (both on: one of the two per batch)
    mix_prob: float = 1.0  # probability that a batch is mixed when mixup or cutmix is on
    ema_decay: float | None = None  # exponential moving average of the weights, updated every step; None = off
    accumulate_steps: int = 1  # batches per optimizer step: the effective batch is batch_size * accumulate_steps
    min_lr: float = 0.0  # cosine: the lr it decays to (at most lr)
    pretrained: bool = False  # torchvision models only: start from ImageNet weights
    freeze_backbone: bool = False  # train only the new classification head
    data_path: str | None = None  # image_folder only
    eval_batch_size: int = 1024
    amp: bool = True  # mixed precision, CUDA only
    channels_last: bool = True  # NHWC memory format on CPU/CUDA: measured +17-60% for LeNet on CPU (harness bench)
    compile: bool = False  # torch.compile the model: opt-in, its compile time only pays off on long runs
    num_workers: int = 2  # DataLoader workers for streamed (image folder) datasets
    # With several processes (harness run --nproc-per-node): BatchNorm statistics over the global
    # batch instead of each process's share (nn.SyncBatchNorm; CUDA only).
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        _check_values(self)

    def override(self, **changes: Any) -> TrainConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data dict (JSON-serialisable) of every field."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config saved by `to_dict` (e.g. from a checkpoint)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("milestones"), list):
            values["milestones"] = tuple(values["milestones"])
        return cls(**values)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _number(name: str, value: float | None, ok: bool, rule: str) -> None:
    """Check a float field: finite (inf and nan pass no comparison usefully, and fail only later,
    e.g. as a NaN loss) and within `rule` (`ok` says whether it is)."""
    if value is None:
        return
    _require(math.isfinite(value), f"{name} must be a finite number {rule} (got {value}).")
    _require(ok, f"{name} must be {rule} (got {value}).")


def _integer(name: str, value: int | None, low: int, high: int, rule: str | None = None) -> None:
    """Check an int field lies in [low, high] (`rule` words the range; default "from low to high")."""
    if value is None:
        return
    _require(low <= value <= high, f"{name} must be {rule or f'from {low} to {high}'} (got {value}).")


def _check_values(c: TrainConfig) -> None:
    """Every check that needs no registry (names are checked by `harness.validation.check_config`)."""
    if c.early_stopping_metric not in EARLY_STOPPING_METRICS:
        raise UnknownNameError(
            unknown_name_message("early_stopping_metric", c.early_stopping_metric, EARLY_STOPPING_METRICS))
    # Lower-bound wording kept as before ("at least 1"); the upper bound is named too.
    _integer("epochs", c.epochs, 1, MAX_EPOCHS, f"at least 1 and at most {MAX_EPOCHS:,}")
    _integer("batch_size", c.batch_size, 1, MAX_BATCH_SIZE, f"at least 1 and at most {MAX_BATCH_SIZE:,}")
    _integer("eval_batch_size", c.eval_batch_size, 1, MAX_BATCH_SIZE, f"at least 1 and at most {MAX_BATCH_SIZE:,}")
    _number("lr", c.lr, c.lr > 0, "greater than 0")
    _number("momentum", c.momentum, 0 <= c.momentum < 1, "in [0, 1)")
    _require(not (c.nesterov and c.momentum == 0), "nesterov=true needs momentum > 0.")
    _number("weight_decay", c.weight_decay, c.weight_decay >= 0, "0 or more")
    _integer("warmup_epochs", c.warmup_epochs, 0, MAX_EPOCHS, f"0 or more and at most {MAX_EPOCHS:,}")
    _integer("step_size", c.step_size, 1, MAX_EPOCHS, f"at least 1 and at most {MAX_EPOCHS:,}")
    _number("gamma", c.gamma, 0 < c.gamma <= 1, "in (0, 1]")
    _require(all(1 <= m <= MAX_EPOCHS for m in c.milestones),
             f"milestones must be epochs from 1 to {MAX_EPOCHS:,} (got {c.milestones}).")
    _check_schedule(c)
    _integer("seed", c.seed, 0, SEED_LIMIT - 1)
    _integer("image_size", c.image_size, 1, MAX_IMAGE_SIZE, f"from 1 to {MAX_IMAGE_SIZE} pixels or none")
    _number("val_fraction", c.val_fraction, 0 <= c.val_fraction < 1, "in [0, 1)")
    _number("test_fraction", c.test_fraction, 0 < c.test_fraction < 1, "in (0, 1)")
    # A cap larger than the dataset is harmless (the split is sliced), so no upper bound.
    _require(c.train_limit is None or c.train_limit >= 1,
             f"train_limit must be at least 1 or none (got {c.train_limit}).")
    _integer("early_stopping_patience", c.early_stopping_patience, 1, MAX_EPOCHS,
             f"at least 1 and at most {MAX_EPOCHS:,}, or none")
    _number("dropout", c.dropout, c.dropout is None or 0 <= c.dropout < 1, "in [0, 1) or none")
    _number("grad_clip", c.grad_clip, c.grad_clip is None or c.grad_clip > 0, "greater than 0 or none")
    _number("label_smoothing", c.label_smoothing, 0 <= c.label_smoothing < 1, "in [0, 1)")
    if c.auto_augment is not None and c.auto_augment not in AUTO_AUGMENT_POLICIES:
        raise UnknownNameError(unknown_name_message("auto_augment policy", c.auto_augment, AUTO_AUGMENT_POLICIES)
                               + " (or none)")
    _integer("randaugment_magnitude", c.randaugment_magnitude, 0, 30)
    _number("random_erasing", c.random_erasing, 0 <= c.random_erasing <= 1, "a probability in [0, 1]")
    _number("mixup_alpha", c.mixup_alpha, c.mixup_alpha >= 0, "0 (off) or more")
    _number("cutmix_alpha", c.cutmix_alpha, c.cutmix_alpha >= 0, "0 (off) or more")
    _number("mix_prob", c.mix_prob, 0 <= c.mix_prob <= 1, "a probability in [0, 1]")
    _number("ema_decay", c.ema_decay, c.ema_decay is None or 0 < c.ema_decay < 1, "in (0, 1), e.g. 0.999, or none")
    _integer("accumulate_steps", c.accumulate_steps, 1, MAX_BATCH_SIZE, f"at least 1 and at most {MAX_BATCH_SIZE:,}")
    # Not tied to lr: `harness tune` samples lr, and a floor above it is simply lr (see optim).
    _number("min_lr", c.min_lr, c.min_lr >= 0, "0 or more")
    _integer("num_workers", c.num_workers, 0, MAX_NUM_WORKERS, f"0 or more and at most {MAX_NUM_WORKERS}")
    _require(
        bool(_DEVICE_PATTERN.match(c.device)),
        f"device must be auto, cpu, mps, cuda or cuda:N (got '{c.device}').",
    )
    if c.dataset == "image_folder":
        _require(bool(c.data_path), "dataset image_folder needs data_path (e.g. data_path=data/catdog).")
    _require(not c.freeze_backbone or c.pretrained, "freeze_backbone=true needs pretrained=true.")


def _check_schedule(c: TrainConfig) -> None:
    """How warmup, epochs and milestones fit together (see `harness.optim.build_scheduler`), checked
    only for the fields `c.scheduler` reads: step_size's default 10 never refuses a 3-epoch run.

    A step_size or milestone past the last epoch is allowed: it never fires, as when a run is
    shortened with --set epochs=N, and it fails nothing.
    """
    w, e = c.warmup_epochs, c.epochs
    if c.scheduler == "none":
        # The warmup is the whole schedule: it may fill the run, but a longer one is cut off partway.
        _require(w <= e, f"warmup_epochs must be at most epochs, or the run ends partway through the warmup (got "
                         f"warmup_epochs={w}, epochs={e}); lower warmup_epochs or raise epochs.")
    else:
        # The schedule starts after the warmup, so it needs an epoch of its own (without one, onecycle
        # fails in torch: pct_start 1 divides by zero, above 1 is refused; the others never run).
        _require(w < e, f"warmup_epochs must be less than epochs with scheduler={c.scheduler}, which needs an epoch "
                        f"after the warmup (got warmup_epochs={w}, epochs={e}); lower warmup_epochs or raise epochs.")
    if c.scheduler == "multistep" and c.milestones:
        ms = c.milestones
        # torch counts a repeated milestone twice (lr *= gamma**2) and ignores the order: both are typos.
        _require(all(a < b for a, b in itertools.pairwise(ms)), f"milestones must be strictly increasing epochs (got "
                 f"{','.join(map(str, ms))}), e.g. milestones={','.join(map(str, sorted(set(ms))))}.")
        # optim moves a milestone inside the warmup to the epoch after it (the warmup ends at lr).
        _require(ms[0] > w, f"milestones must be epochs after warmup_epochs={w} with scheduler=multistep (got "
                            f"{','.join(map(str, ms))}); drop the earlier ones or lower warmup_epochs.")


def flatten(config: TrainConfig) -> dict[str, str]:
    """Every field as a string, ready for `mlflow.log_params`."""
    return {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in config.to_dict().items()}


# ---------------------------------------------------------------- overrides


def field_names() -> list[str]:
    """Names of all TrainConfig fields."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def parse_value(key: str, text: str) -> Any:
    """Parse the string `text` into the type of TrainConfig field `key`."""
    hints = typing.get_type_hints(TrainConfig)
    if key not in hints:
        raise UnknownNameError(unknown_name_message("config key", key, field_names()))
    return _parse_as(hints[key], text, key)


def _parse_as(tp: Any, text: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null", ""):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse_as(inner, text, key)
    if origin is tuple:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        return tuple(_parse_as(args[0], p, key) for p in parts)
    try:
        if tp is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        return text
    except ValueError:
        kind = {bool: "true/false", int: "an integer", float: "a number"}.get(tp, tp.__name__)
        raise ConfigError(f"Cannot parse '{text}' for {key}: expected {kind}.") from None


@dataclass(frozen=True)
class Overrides:
    """Parsed `--set` options: some for every variant, some for one variant."""

    common: dict[str, Any] = field(default_factory=dict)
    per_variant: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse_overrides(items: list[str] | None) -> Overrides:
    """Parse `key=value` and `VARIANT.key=value` strings (types from TrainConfig's fields)."""
    common: dict[str, Any] = {}
    per_variant: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' is not of the form key=value or VARIANT.key=value.")
        lhs, text = item.split("=", 1)
        lhs = lhs.strip()
        variant, _, key = lhs.rpartition(".")
        value = parse_value(key, text.strip())
        (per_variant.setdefault(variant, {}) if variant else common)[key] = value
    return Overrides(common, per_variant)
