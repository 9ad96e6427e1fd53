"""Training throughput of the harness against a tutorial-style loop and the compute floor,
measured side by side in one run.

Contenders, same model, optimizer (SGD + momentum), seed and data:
1. tutorial: a Dataset of PIL images, per-sample ToTensor + Normalize, a shuffling DataLoader
   with 2 workers, a plain loop;
2. harness: `build_trainer` + `fit_epoch` with the callbacks `harness run` uses (checkpoints,
   and MLflow epoch metrics through an in-process `Tracker` on a temporary sqlite store);
3. floor: batches prepared (normalised, on the device) before timing; only forward, backward
   and optimizer step are timed;
4. harness_untracked: as 2 without MLflow (what tracking costs).
Contenders alternate epoch by epoch (this machine's speed drifts); images/second is the
median over the epochs after the first (warm-up), with the relative spread (max-min)/median.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.config import TrainConfig, flatten
from harness.data import Data
from harness.device import resolve_device
from harness.models import build_model
from harness.train import Callback, FitState, build_trainer, evaluate, fit_epoch


@dataclass(frozen=True)
class Case:
    """One benchmark setting."""

    label: str
    config: TrainConfig


# ------------------------------------------------------------------ contenders


def tutorial_epochs(config: TrainConfig, data: Data) -> Iterator[float]:
    """Images/s of each successive epoch of the classic PIL + DataLoader loop."""
    from PIL import Image
    from torchvision import transforms

    images, labels = data.train.images, data.train.labels
    channels = images.shape[1]
    pil = [Image.fromarray(img.squeeze(0).numpy() if channels == 1 else img.permute(1, 2, 0).numpy()) for img in images]
    steps = [transforms.ToTensor(), transforms.Normalize(data.mean, data.std)]
    if config.augment:
        steps = [transforms.RandomCrop(data.native_size, padding=4), transforms.RandomHorizontalFlip()] + steps
    tf = transforms.Compose(steps)

    class PilDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(pil)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return tf(pil[i]), int(labels[i])

    # What a hand-written script has: the plain model and optimizer, default memory format.
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = build_model(config.model, in_channels=data.in_channels, num_classes=len(data.classes),
                        image_size=data.native_size).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    loader = torch.utils.data.DataLoader(PilDataset(), batch_size=config.batch_size, shuffle=True, num_workers=2)
    yield from loader_epochs(model, optimizer, loader, device)


def loader_epochs(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any,
                  device: torch.device) -> Iterator[float]:
    """Images/s of each successive epoch of a plain loop over `loader` (the tutorial's way)."""
    while True:
        model.train()
        start, seen = time.perf_counter(), 0
        loss = None
        for x, y in loader:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        if loss is not None:
            loss.item()  # the device has finished the epoch
        yield seen / (time.perf_counter() - start)


def interleave(contenders: dict[str, Iterator[float]], epochs: int, log: Callable[[str], None],
               label: str) -> dict[str, list[float]]:
    """Images/s of `epochs` epochs of every contender, alternating them epoch by epoch so that
    machine noise hits all of them alike; closes every generator at the end (or on an error)."""
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    try:
        for epoch in range(epochs):
            log(f"{label}: epoch {epoch + 1}/{epochs}")
            for name, gen in contenders.items():
                rates[name].append(next(gen))
    finally:
        for gen in contenders.values():  # MLflow flushes, DataLoader workers and temporary folders released now
            gen.close()
    return rates


def floor_epochs(config: TrainConfig, data: Data) -> Iterator[float]:
    """Images/s of each epoch when batches are ready before timing: forward, backward, step only
    (same model, memory format and optimizer as the harness builds)."""
    t = build_trainer(config, data)
    batches = [(t.transform(x, train=True, generator=t.data_rng), y.to(t.device))
               for x, y in data.train.batches(config.batch_size, True, t.data_rng)]
    while True:
        t.model.train()
        start = time.perf_counter()
        for x, y in batches:
            with torch.autocast(t.device.type, dtype=torch.float16, enabled=t.use_amp):
                loss = F.cross_entropy(t.forward(x), y)
            t.optimizer.zero_grad(set_to_none=True)
            t.scaler.scale(loss).backward()
            t.scaler.step(t.optimizer)
            t.scaler.update()
        if t.device.type == "cuda":
            torch.cuda.synchronize()
        yield len(data.train) / (time.perf_counter() - start)


def harness_epochs(config: TrainConfig, data: Data, track: bool, eval_rates: list[float]) -> Iterator[float]:
    """Images/s of each successive epoch of one training run, epoch by epoch through `fit_epoch`
    with the callbacks `harness run` uses (checkpoints, and MLflow epoch metrics through a
    `Tracker` on a temporary sqlite store if `track`); appends evaluation images/s to
    `eval_rates`. Close the generator to end the run: the callbacks' `on_fit_end` then flushes."""
    from harness.callbacks import MlflowEpochLogger
    from harness.checkpoint import Checkpointer
    from harness.tracking import Tracker

    t = build_trainer(config, data)
    state = FitState()
    with tempfile.TemporaryDirectory() as tmp:
        callbacks: list[Callback] = [Checkpointer(Path(tmp) / "ckpt")]
        tracker, run_id = None, ""
        if track:  # as `harness run` logs: an in-process tracker, config as params, epoch metrics batched
            tracker = Tracker.open(f"sqlite:///{tmp}/mlflow.db")
            run_id = tracker.start_run(tracker.ensure_experiment("bench"), "bench", {})
            # Params only, not `log_config`'s config.json: a sqlite store puts artifacts under the
            # working folder's ./mlruns, and a benchmark leaves nothing behind (nor is it timed).
            tracker.log_params(run_id, flatten(config))
            callbacks.append(MlflowEpochLogger(tracker, run_id))
        for cb in callbacks:
            cb.on_fit_start(t, state)
        error: BaseException | None = None
        try:
            # Epochs of one run, one at a time (the driver interleaves contenders between them);
            # `config.epochs` is never consulted, so the trainer's config stays as built.
            while True:
                record = fit_epoch(t, state, callbacks)
                result = evaluate(t, data.train)
                eval_rates.append(result.samples / result.seconds)
                yield record["images_per_second"]
        except GeneratorExit:  # closed by the driver after its last epoch: a normal end of training
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            for cb in callbacks:
                cb.on_fit_end(t, state, error)
            if tracker is not None:
                tracker.end_run(run_id, "FAILED" if error else "FINISHED", None if error is None else str(error))


# ------------------------------------------------------------------ driver


def run_case(case: Case, data: Data, epochs: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Measure every contender for one case, alternating them epoch by epoch so that machine
    noise hits all of them alike; report medians after the warm-up epoch and the spread."""
    eval_rates: list[float] = []
    contenders: dict[str, Iterator[float]] = {
        "tutorial": tutorial_epochs(case.config, data),
        "floor": floor_epochs(case.config, data),
        "harness": harness_epochs(case.config, data, True, eval_rates),
        "harness_untracked": harness_epochs(case.config, data, False, []),
    }
    rates = interleave(contenders, epochs, log, case.label)
    results: dict[str, Any] = {"case": case.label, "batch_size": case.config.batch_size, "images": len(data.train)}
    for name, values in rates.items():
        measured = values[1:] if len(values) > 1 else values
        results[name] = statistics.median(measured)
        results[f"{name}_spread"] = (max(measured) - min(measured)) / results[name]
    results["harness_eval"] = statistics.median(eval_rates[1:] if len(eval_rates) > 1 else eval_rates)
    results["harness/floor"] = results["harness"] / results["floor"]
    results["harness/tutorial"] = results["harness"] / results["tutorial"]
    results["eval/train"] = results["harness_eval"] / results["harness"]
    results["tracking_overhead"] = results["harness_untracked"] / results["harness"] - 1
    return results


def default_cases(data_dir: Path | None, device: str, cifar: bool) -> list[tuple[Case, Path | None]]:
    """ReLU LeNet on MNIST-format data at batch 64 and 256; ResNet-18 on CIFAR-shaped data."""
    dataset = "mnist" if data_dir is not None else "synthetic"
    # No validation split: all 8,000 training images are timed, as in the hand-written loops.
    base = TrainConfig(model="lenet_relu", dataset=dataset, optimizer="sgd", lr=0.05, momentum=0.9, seed=0,
                       val_fraction=0.0, device=device, early_stopping_patience=None)
    cases = [(Case(f"lenet_relu/{dataset}/bs{bs}", base.override(batch_size=bs)), data_dir) for bs in (64, 256)]
    if cifar:
        cfg = TrainConfig(model="resnet18", dataset="synthetic_rgb", optimizer="sgd", lr=0.05, momentum=0.9, seed=0,
                          batch_size=128, augment=True, train_limit=512, val_fraction=0.0, device=device)
        cases.append((Case("resnet18/synthetic_rgb/bs128+flip+crop", cfg), None))
    return cases
