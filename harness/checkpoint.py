"""Checkpoints: everything needed to continue training exactly, in `weights_only=True`-safe form.

`last.pt` is written after every epoch (atomically, so a crash mid-write keeps the previous
one); `best.pt` holds the weights of the best epoch plus what is needed to use them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from harness.config import TrainConfig
from harness.errors import HarnessError, first_line, os_error_reason
from harness.train import Callback, FitState, Trainer

LAST, BEST = "last.pt", "best.pt"
# Where to point checkpoints instead, named in every message about a folder that cannot take them.
FOLDER_HINT = "free some space, or put checkpoints on another disk with HARNESS_CHECKPOINT_DIR"


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
        raise HarnessError(f"Cannot write checkpoint {reason}; {FOLDER_HINT}, then continue with --resume.") from None
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


def training_state(t: Trainer, state: FitState) -> dict[str, Any]:
    """Model, optimizer, schedule, AMP scaler, RNG states, config and fit state."""
    return {
        "model": t.model.state_dict(),
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
    }


def model_state(t: Trainer, epoch: int) -> dict[str, Any]:
    """Weights plus what explains them: config, epoch, classes and preprocessing."""
    return {
        "model": t.model.state_dict(),
        "config": t.config.to_dict(),
        "epoch": epoch,
        "classes": list(t.data.classes),
        "mean": list(t.data.mean),
        "std": list(t.data.std),
        "image_size": t.image_size,
        "native_size": t.data.native_size,
    }


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True` (no arbitrary code runs on load); a damaged
    file (empty, truncated, not a checkpoint) is one line naming it."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - EOFError, UnpicklingError, zip errors: all mean damaged
        raise HarnessError(f"Checkpoint {path} is damaged ({type(exc).__name__}: {first_line(exc, 120)}); "
                           "restore it, or delete its run's folder and start over without --resume.") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise HarnessError(f"Checkpoint {path} is not a harness checkpoint (no model weights in it).")
    return ckpt


def restore(t: Trainer, ckpt: dict[str, Any]) -> FitState:
    """Put a `last.pt` checkpoint back into `t`; returns the fit state to continue from."""
    t.model.load_state_dict(ckpt["model"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    t.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if ckpt["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    t.data_rng.set_state(ckpt["rng"]["data"])
    return FitState.from_dict(ckpt["fit"])


def saved_config(ckpt: dict[str, Any]) -> TrainConfig:
    """The config a checkpoint was trained with."""
    return TrainConfig.from_dict(ckpt["config"])


class Checkpointer(Callback):
    """Writes `last.pt` after every epoch and `best.pt` whenever the best epoch improves."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HarnessError(f"Cannot create the checkpoint folder ({os_error_reason(exc)}); "
                               "choose a writable one with HARNESS_CHECKPOINT_DIR.") from None

    @property
    def last(self) -> Path:
        return self.folder / LAST

    @property
    def best(self) -> Path:
        return self.folder / BEST

    def on_epoch_end(self, t: Trainer, state: FitState, record: dict[str, float]) -> None:
        if state.best_epoch == state.epoch:
            _atomic_save(model_state(t, state.epoch), self.best)
        _atomic_save(training_state(t, state), self.last)
