"""What MLflow's system-metrics monitor costs training: images/s with it off, at MLflow's default
10 s sampling (what `harness run` uses) and at 1 s (ten times as often), interleaved in one process.

The monitor is a thread that samples psutil (and NVIDIA's library with a GPU) and writes one
batch of metrics per sample; its cost should be lost in the noise. Each measured unit is several
training epochs, so that even the 10 s monitor samples during the measurement.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from harness.bench.recipes import median_and_spread
from harness.bench.throughput import interleave
from harness.config import TrainConfig
from harness.data import Data, load_data
from harness.train import FitState, build_trainer, fit_epoch

INTERVALS = {"off": None, "every_10s": 10.0, "every_1s": 1.0}


def monitored_epochs(config: TrainConfig, data: Data, store: str, interval: float | None,
                     passes: int) -> Iterator[float]:
    """Images/s of each group of `passes` training epochs of one run, with the system-metrics
    monitor sampling the run every `interval` seconds (None: no monitor). Close to end the run."""
    from harness.tracking import Tracker

    tracker = Tracker.open(store)
    run_id = tracker.start_run(tracker.ensure_experiment("bench-system-metrics"), f"monitor-{interval}", {})
    t = build_trainer(config, data)
    state = FitState()
    monitor = tracker.system_metrics(run_id, interval) if interval else nullcontext()
    try:
        with monitor:
            while True:
                rates = [fit_epoch(t, state)["images_per_second"] for _ in range(passes)]
                yield passes / sum(1 / r for r in rates)  # images/s over the whole group
    finally:
        tracker.end_run(run_id, "FINISHED")


def run_system_metrics(data_dir: Path | None, device: str, epochs: int, log: Callable[[str], None] = print,
                       passes: int = 4) -> list[dict[str, Any]]:
    """One row per monitor setting: images/s (median after the warm-up group), its spread, and the
    ratio to training without the monitor. ReLU LeNet at batch 64 on the MNIST sample (synthetic
    data without it)."""
    dataset = "mnist" if data_dir is not None else "synthetic"
    config = TrainConfig(model="lenet_relu", dataset=dataset, batch_size=64, lr=0.05, momentum=0.9, device=device)
    data = load_data(config, data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        contenders = {name: monitored_epochs(config, data, store, interval, passes)
                      for name, interval in INTERVALS.items()}
        rates = interleave(contenders, epochs, log, "system metrics")
    medians = {name: median_and_spread(values) for name, values in rates.items()}
    base = medians["off"][0]
    # Units run back to back, so each one's ratio to the "off" unit beside it cancels the drift
    # of a noisy machine better than the ratio of medians.
    paired = {name: statistics.median(on / off for on, off in zip(values[1:], rates["off"][1:]))
              if len(values) > 1 else values[0] / rates["off"][0] for name, values in rates.items()}
    return [{"case": f"lenet_relu {dataset}", "monitor": name, "interval_s": INTERVALS[name],
             "epochs_per_unit": passes, "images_per_second": rate, "spread": spread, "ratio_vs_off": rate / base,
             "paired_ratio_vs_off": paired[name]}
            for name, (rate, spread) in medians.items()]
