"""Checkpoints: everything needed to continue training exactly, in `weights_only=True`-safe form.

`last.pt` is written after every epoch (atomically, so a crash mid-write keeps the previous
one); `best.pt` holds the weights of the best epoch plus what is needed to use them.

With several processes, rank 0 writes them (the others wait for it at the end of the epoch);
the weights are the plain model's (no `module.` prefix), so a checkpoint written by any number
of processes loads into one process, a `DataParallel` or a DDP model (`load_weights`), on CPU
or GPU. Each rank's random state is saved too, so a resume at the same world size repeats the
uninterrupted run exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from harness.config import TrainConfig
from harness.errors import ResumeError, WriteError, first_line, os_error_reason
from harness.train import Callback, FitState, Trainer

LAST, BEST = "last.pt", "best.pt"
# Where to point checkpoints instead, named in every message about a folder that cannot take them.
FOLDER_HINT = "free some space, or put checkpoints on another disk with HARNESS_CHECKPOINT_DIR"


def checkpoint_root() -> Path:
    """`HARNESS_CHECKPOINT_DIR`, else ./checkpoints (one sub-folder per MLflow run id)."""
    return Path(os.environ.get("HARNESS_CHECKPOINT_DIR") or "checkpoints")


def run_folder(run_id: str) -> Path:
    """The folder of MLflow run `run_id`'s checkpoints (`LAST`, `BEST`), under `checkpoint_root`.
    Read afresh on every call: the environment variable may change between commands in one
    process (the Python API, the benchmarks)."""
    return checkpoint_root() / run_id


def _atomic_save(obj: Any, path: Path) -> None:
    """Write `obj` to `path` through a temporary file, so a crash mid-write keeps the previous
    checkpoint; a failed write (disk full, read-only) removes the partial file and is one line."""
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        reason = _write_failure(exc, tmp)  # before the partial file is removed: it is what filled the disk
        tmp.unlink(missing_ok=True)
        if reason is None:
            raise
        raise WriteError(f"Cannot write checkpoint {reason}; {FOLDER_HINT}, then continue with resume=True.") from None
    except BaseException:  # Ctrl-C mid-write: no partial file left behind
        tmp.unlink(missing_ok=True)
        raise


def _write_failure(exc: OSError | RuntimeError, tmp: Path) -> str | None:
    """"<file>: <why>" for a write that failed for lack of room or rights; None for anything else.
    torch.save reports a full disk as a RuntimeError about stream positions, not as an OSError,
    so the free space of the file system is what tells."""
    if isinstance(exc, OSError):
        return os_error_reason(exc) if exc.filename else f"{tmp}: {os_error_reason(exc)}"
    try:
        stats = os.statvfs(tmp.parent)
    except OSError:
        return None
    return f"{tmp}: no space left on the device" if stats.f_bavail * stats.f_frsize < 64 * 1024 else None


def rank_rng(t: Trainer) -> dict[str, Any]:
    """This rank's own random streams (dropout, augmentation)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(t.device) if t.device.type == "cuda" else None,
            "aug": t.aug_rng.get_state() if t.aug_rng is not None else None}


def training_state(t: Trainer, state: FitState, ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Model, optimizer, schedule, AMP scaler, RNG states (`ranks`: every rank's own, in rank
    order, with several processes), config, fit state and the world size."""
    return {
        "model": t.model.state_dict(),
        "ema": t.ema.state_dict() if t.ema is not None else None,
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "data": t.data_rng.get_state(),
        },
        "config": t.config.to_dict(),
        "fit": state.to_dict(),
        "world_size": t.dist.world_size,
        "rank_rng": ranks or [],
    }


def model_state(t: Trainer, epoch: int) -> dict[str, Any]:
    """The weights kept as best (the EMA's when on) plus what explains them: config, epoch,
    classes and preprocessing."""
    return {
        "model": t.best_weights.state_dict(),
        "config": t.config.to_dict(),
        "epoch": epoch,
        "classes": list(t.data.classes),
        "mean": list(t.data.mean),
        "std": list(t.data.std),
        "image_size": t.image_size,
        "native_size": t.data.native_size,
    }


def load(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True` (no arbitrary code runs on load) onto
    `map_location` (a GPU-written checkpoint loads on a CPU-only machine); a damaged file
    (empty, truncated, not a checkpoint) is one line naming it."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - EOFError, UnpicklingError, zip errors: all mean damaged
        raise ResumeError(f"Checkpoint {path} is damaged ({type(exc).__name__}: {first_line(exc, 120)}); "
                          "restore it, or delete its run's folder and start over without resume.") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ResumeError(f"Checkpoint {path} is not a harness checkpoint (no model weights in it).")
    return ckpt


def restore(t: Trainer, ckpt: dict[str, Any]) -> FitState:
    """Put a `last.pt` checkpoint back into `t`; returns the fit state to continue from.

    The data order continues on any world size. Each rank's own random streams are restored
    when the checkpoint was written by as many processes; otherwise they are derived afresh from
    seed, rank and epoch (`world_size_change` says so)."""
    t.model.load_state_dict(ckpt["model"])
    if t.ema is not None and ckpt.get("ema") is not None:
        t.ema.load_state_dict(ckpt["ema"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    t.scaler.load_state_dict(ckpt["scaler"])
    t.data_rng.set_state(ckpt["rng"]["data"])
    saved_world = ckpt.get("world_size", 1)
    fit = FitState.from_dict(ckpt["fit"])
    if saved_world == t.dist.world_size == 1:
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    elif saved_world == t.dist.world_size:
        own = ckpt["rank_rng"][t.dist.rank]
        torch.set_rng_state(own["torch"])
        if own["cuda"] is not None and t.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"], t.device)
        if own["aug"] is not None and t.aug_rng is not None:
            t.aug_rng.set_state(own["aug"])
    else:
        torch.manual_seed(t.dist.rank_seed(t.config.seed, 0, fit.epoch))
        if t.aug_rng is not None:
            t.aug_rng.manual_seed(t.dist.rank_seed(t.config.seed, 1, fit.epoch))
    return fit


def world_size_change(ckpt: dict[str, Any], world_size: int) -> str | None:
    """What changes when a checkpoint written by another number of processes is resumed."""
    saved = ckpt.get("world_size", 1)
    if saved == world_size:
        return None
    batch = ckpt["config"]["batch_size"]
    return (f"checkpoint written by {saved} process(es), resumed on {world_size}: the global batch ({batch}) and "
            f"data order are unchanged, each process now takes {batch // world_size} samples a step, and dropout/"
            "augmentation draws restart from seed, rank and epoch (the history will not match an uninterrupted run "
            "exactly)")


def load_weights(model: torch.nn.Module, source: Path | dict[str, Any], device: torch.device | str = "cpu") -> None:
    """Load a checkpoint's weights (`best.pt`, `last.pt`, or its dict) into `model`, which may be
    wrapped in `nn.DataParallel` or DistributedDataParallel, on any device. Weights saved with a
    `module.` prefix (by another tool, from a wrapped model) load too."""
    ckpt = load(Path(source), device) if not isinstance(source, dict) else source
    weights = ckpt["model"]
    if weights and all(k.startswith("module.") for k in weights):
        weights = {k.removeprefix("module."): v for k, v in weights.items()}
    target = (model.module if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel))
              else model)
    target.load_state_dict(weights)


def saved_config(ckpt: dict[str, Any]) -> TrainConfig:
    """The config a checkpoint was trained with."""
    return TrainConfig.from_dict(ckpt["config"])


def changed_settings(ckpt: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The settings `config` has other than the checkpoint was trained with, as
    {field: (saved, now)} in the config's field order; empty when it can continue the checkpoint.
    The device is left out: a run may resume on another machine (a GPU-trained checkpoint on a
    CPU), and the weights load on any device."""
    saved = saved_config(ckpt).to_dict()
    return {k: (saved.get(k), v) for k, v in config.to_dict().items() if k != "device" and saved.get(k) != v}


class Checkpointer(Callback):
    """Writes `last.pt` after every epoch and `best.pt` whenever the best epoch improves. Runs
    on every rank (each hands rank 0 its random state); only rank 0 (`writer`) writes."""

    def __init__(self, folder: Path, writer: bool = True) -> None:
        self.folder = Path(folder)
        self.writer = writer
        if not writer:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"Cannot create the checkpoint folder ({os_error_reason(exc)}); "
                             "choose a writable one with HARNESS_CHECKPOINT_DIR.") from None

    @property
    def last(self) -> Path:
        return self.folder / LAST

    @property
    def best(self) -> Path:
        return self.folder / BEST

    def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None:
        ranks = t.dist.gather(rank_rng(t)) if t.dist.enabled else None
        if not self.writer:
            return
        if state.best_epoch == state.epoch:
            _atomic_save(model_state(t, state.epoch), self.best)
        _atomic_save(training_state(t, state, ranks), self.last)
