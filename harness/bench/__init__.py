"""`harness bench`: benchmarks kept beside the product, not inside it.

- `throughput`: training images/s of the harness against a tutorial-style loop and the compute floor;
- `startup`: `harness run`'s time to its first training step against a tracked PyTorch script's floor;
- `scaling`: data-parallel images/s of 1 process against N (CPU processes, or GPUs) at the same global batch;
- `study`: how fast each sampler + pruner finds a good configuration for a fixed epoch budget;
- `recipes`: what each training-recipe primitive (auto-augment, MixUp/CutMix, random erasing,
  EMA) costs per training image against the plain path;
- `folders`: the streamed image-folder path (JPEGs on disk) against torchvision's tutorial
  pipeline, and whether decoding, resizing or compute limits it;
- `system_metrics`: training images/s with MLflow's system-metrics monitor off, at 10 s and at 1 s;
- `predict`: `harness predict`'s read + decode + classify path against MLflow's pyfunc loader on
  the same batches (MNIST PNGs, the quickstart's LeNet);
- `mnist_sample`: the real MNIST sample the benchmarks (and tests) train on, offline.

The product never imports this package (only the CLI's `bench` command, lazily); this package
drives the product's own modules.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

__all__ = ["run_benchmark"]


def run_benchmark(epochs: int = 4, device: str = "auto", cifar: bool = True, out: Path | None = None,
                  log: Callable[[str], None] = print, startup: bool = True, study_budget: int = 0,
                  study_seeds: tuple[int, ...] = (0, 1, 2), scaling: bool = True, recipes: bool = True,
                  folders: bool = True, predict: bool = True, system_metrics: bool = True) -> dict[str, Any]:
    """Run every throughput case (and the start-up, data-parallel scaling, recipe-cost,
    image-folder and study-efficiency measurements when asked), and write everything as JSON to
    `out`. The report has `startup` (when measured), `throughput` (one row per case), `scaling`
    (when asked: one row per case and process count; `scaling_notes` says why rows are missing or
    what they ran on), `recipes` (when asked: one row per case and recipe; `recipes_notes`),
    `folders` (when asked: one row per image size), `system_metrics` (when asked: one row per
    monitor setting), `predict` (when asked: one row; `predict_notes`) and `study` (when
    `study_budget` > 0)."""
    if epochs < 2:
        raise ConfigError(f"--epochs must be at least 2 (one warm-up epoch, then measured ones); got {epochs}.")
    if study_budget < 0:
        raise ConfigError(f"--study-budget must be 0 (skip the study comparison) or more; got {study_budget}.")
    if study_budget and not study_seeds:
        raise ConfigError("--study-seeds must be at least 1 when --study-budget is above 0.")
    # Imported after the option checks: a mistyped option is answered without loading torch.
    import torch

    from harness.bench.mnist_sample import mnist_sample_dir
    from harness.bench.startup import measure_startup
    from harness.bench.throughput import default_cases, run_case
    from harness.data import load_data

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
        if scaling:
            from harness.bench.scaling import run_scaling

            report["scaling"], report["scaling_notes"] = run_scaling(data_dir, device, epochs, log)
        if recipes:
            from harness.bench.recipes import run_recipes

            report["recipes"], report["recipes_notes"] = run_recipes(data_dir, device, epochs, cifar, log)
        if folders:
            from harness.bench.folders import run_folders

            report["folders"] = run_folders(device, epochs, log)
        if system_metrics:
            from harness.bench.system_metrics import run_system_metrics

            report["system_metrics"] = run_system_metrics(data_dir, device, epochs, log)
        if predict:
            from harness.bench.predict import run_predict

            report["predict"], report["predict_notes"] = run_predict(log)
        if study_budget:
            from harness.bench.study import compare_strategies, study_case
            from harness.search_space import DEFAULT_SEARCH_SPACE

            base = study_case(data_dir, device)
            report["study"] = compare_strategies(base, DEFAULT_SEARCH_SPACE, load_data(base, data_dir), study_budget,
                                                 seeds=study_seeds, log=log)
    if out is not None:
        out.write_text(json.dumps(report, indent=2))
    return report
