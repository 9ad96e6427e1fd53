"""`harness bench`: training throughput of the harness against a tutorial-style loop and the
compute floor, measured side by side in one run.

Contenders, same model, optimizer (SGD + momentum), seed and data:
1. tutorial: a Dataset of PIL images, per-sample ToTensor + Normalize, a shuffling DataLoader
   with 2 workers, a plain loop;
2. harness: `build_trainer` + `fit` exactly as `harness run` drives them, with the
   checkpoint and MLflow callbacks (a temporary sqlite store);
3. floor: batches prepared (normalised, on the device) before timing; only forward, backward
   and optimizer step are timed.
Contenders alternate epoch by epoch (this machine's speed drifts); images/second is the
median over the epochs after the first (warm-up), with the relative spread (max-min)/median.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.config import TrainConfig
from harness.data import Data, load_data
from harness.data.mnist_sample import SAMPLE_DIR, write_mnist_raw
from harness.device import resolve_device
from harness.errors import HarnessError
from harness.models import build_model
from harness.train import Callback, FitState, build_trainer, evaluate, fit


@dataclass(frozen=True)
class Case:
    """One benchmark setting."""

    label: str
    config: TrainConfig


def mnist_sample_dir(target: Path) -> Path | None:
    """The real MNIST sample (8,000 training / 2,000 test images) under `target`, if available."""
    return write_mnist_raw(target) if SAMPLE_DIR.is_dir() else None


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
    while True:
        model.train()
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        yield seen / (time.perf_counter() - start)


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
    """Images/s of each epoch of `fit` with the callbacks `harness run` uses (checkpoints, and
    MLflow logging to a temporary sqlite store if `track`); appends evaluation images/s."""
    from harness import tracking
    from harness.callbacks import MlflowEpochLogger
    from harness.checkpoint import Checkpointer
    from harness.tracking_process import TrackingProcess

    t = build_trainer(config.override(epochs=1), data)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        callbacks: list[Callback] = [Checkpointer(Path(tmp) / "ckpt")]
        if track:  # as `harness run` logs: through its MLflow process
            client = stack.enter_context(TrackingProcess(f"sqlite:///{tmp}/mlflow.db"))
            run_id = tracking.start_run(client, tracking.ensure_experiment(client, "bench"), "bench", {})
            tracking.log_config(client, run_id, config, None)
            callbacks.append(MlflowEpochLogger(client, run_id))
        state = FitState()
        while True:
            # One more epoch of the same run: fit continues from `state`, as after a resume.
            t.config = t.config.override(epochs=state.epoch + 1)
            state = fit(t, callbacks, state)
            result = evaluate(t, data.train)
            eval_rates.append(result.samples / result.seconds)
            yield state.history[-1]["images_per_second"]


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
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for epoch in range(epochs):
        log(f"{case.label}: epoch {epoch + 1}/{epochs}")
        for name, gen in contenders.items():
            rates[name].append(next(gen))
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


# ------------------------------------------------------------------ start-up

_IMPORT_PROBE = """
import json, time
t = {}
s = time.perf_counter(); import torch; t["import torch"] = time.perf_counter() - s
s = time.perf_counter(); torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
t["first optimizer (imports torch._dynamo)"] = time.perf_counter() - s
s = time.perf_counter(); import mlflow; t["import mlflow (in harness run's tracking process)"] = time.perf_counter() - s
print(json.dumps(t))
"""

# The least any PyTorch script pays before its first step: the interpreter, `import torch` and
# a torch.optim optimizer (which imports torch._dynamo), timed the way `startup_seconds` is.
_FLOOR_PROBE = """
import torch
from harness.process_clock import seconds_since_process_start
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
print(seconds_since_process_start())
"""


def measure_startup(repeats: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Seconds from process start to the first training step of `harness run quickstart`
    (the run's `startup_seconds` metric), in a fresh folder: the first run also creates the
    MLflow store. Alternated with the floor: a bare script importing torch and building its
    optimizer. Plus where a fresh interpreter spends its import time."""
    import subprocess
    import sys

    from harness import tracking
    from harness.experiment import experiments_dir

    env = {**os.environ, "HARNESS_EXPERIMENTS_DIR": str(experiments_dir().resolve())}
    env.pop("MLFLOW_TRACKING_URI", None)
    seconds: list[float] = []
    floor: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            subprocess.run([sys.executable, "-m", "harness.cli", "run", "quickstart", "--set", "epochs=1"],
                           cwd=tmp, env=env, check=True, capture_output=True)
            client = tracking.connect(f"sqlite:///{tmp}/mlflow.db")
            run = client.search_runs([tracking.ensure_experiment(client, "quickstart")],
                                     f"tags.`{tracking.KIND_TAG}` = 'variant'", order_by=["start_time DESC"],
                                     max_results=1)[0]
            seconds.append(run.data.metrics["startup_seconds"])
            probe = subprocess.run([sys.executable, "-c", _FLOOR_PROBE], cwd=tmp, env=env, check=True,
                                   capture_output=True, text=True)
            floor.append(float(probe.stdout.strip().splitlines()[-1]))
            log(f"startup #{i + 1}: harness run quickstart {seconds[-1]:.2f} s to the first training step; "
                f"bare torch + optimizer {floor[-1]:.2f} s")
        probe = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], cwd=tmp, env=env, check=True,
                               capture_output=True, text=True)
    later = statistics.median(seconds[1:] or seconds)
    floor_median = statistics.median(floor)
    return {"first_run_seconds": seconds[0], "median_later_seconds": later, "all_seconds": seconds,
            "floor_seconds": floor_median, "all_floor_seconds": floor, "harness/floor": later / floor_median,
            "imports": json.loads(probe.stdout.strip().splitlines()[-1])}


# ------------------------------------------------------------------ study efficiency


def study_case(data_dir: Path | None, device: str) -> TrainConfig:
    """The study-efficiency setting: ReLU LeNet, 3 epochs per trial, on the MNIST sample
    (4,000 training and 1,000 validation images) or generated data of the same shape."""
    dataset = "mnist" if data_dir is not None else "synthetic"
    return TrainConfig(model="lenet_relu", dataset=dataset, epochs=3, optimizer="sgd", lr=0.05, momentum=0.9,
                       seed=0, val_fraction=0.1, train_limit=4000, device=device)


def run_benchmark(epochs: int = 4, device: str = "auto", cifar: bool = True, out: Path | None = None,
                  log: Callable[[str], None] = print, startup: bool = True, study_budget: int = 0,
                  study_seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, Any]:
    """Run every throughput case (and the start-up and study-efficiency measurements when asked),
    and write everything as JSON to `out`."""
    if epochs < 2:
        raise HarnessError(f"--epochs must be at least 2 (one warm-up epoch, then measured ones); got {epochs}.")
    if study_budget < 0:
        raise HarnessError(f"--study-budget must be 0 (skip the study comparison) or more; got {study_budget}.")
    if study_budget and not study_seeds:
        raise HarnessError("--study-seeds must be at least 1 when --study-budget is above 0.")
    torch.set_num_threads(os.cpu_count() or 1)
    report: dict[str, Any] = {"epochs": epochs, "device": device, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = mnist_sample_dir(Path(tmp) / "data")
        if startup:
            report["startup"] = measure_startup(log=log)
        report["throughput"] = []
        for case, case_dir in default_cases(data_dir, device, cifar):
            data = load_data(case.config, case_dir)
            report["throughput"].append(run_case(case, data, epochs, log))
        if study_budget:
            from harness.search_space import DEFAULT_SEARCH_SPACE
            from harness.study_bench import compare_strategies

            base = study_case(data_dir, device)
            report["study"] = compare_strategies(base, DEFAULT_SEARCH_SPACE, load_data(base, data_dir), study_budget,
                                                 seeds=study_seeds, log=log)
    if out is not None:
        out.write_text(json.dumps(report, indent=2))
    return report
