"""Data-parallel scaling: global training images/s of one variant in 1 process against N
processes (the same global batch), each through the product's own `init_from_env`,
`build_trainer` and `fit_epoch`.

Contenders on the CPU (N = 2 by default; each of the N ranks gets cores // N threads):
1. per-device baseline: 1 process with one rank's share of the cores (cores // N threads);
2. 1 process with all the cores: what data parallelism must beat to be worth it;
3. N processes (gloo) started by PyTorch's launcher (`torch.distributed.run`), cores // N threads each.
On CUDA: 1 process on 1 GPU against one process per GPU (N = all GPUs; skipped with a note
below 2 GPUs).

Every contender runs in processes of its own (`python -m harness.bench.scaling ...`, under the
launcher for N > 1), so its thread count is set before torch starts and nothing is shared with
the driver. Each times `fit_epoch` for `epochs` epochs; images/s is the median after the first
(warm-up) epoch, as `fit_epoch` reports it (global images over the slowest rank's time).

- ratio_vs_1proc_all_cores = images/s / images/s of 1 process with all cores (1 GPU on CUDA);
- efficiency = images/s / (units x images/s of the per-device baseline), where units is how
  many baseline-sized shares of the machine the contender uses (processes x threads / baseline
  threads on the CPU, GPUs on CUDA): 1.0 is perfect linear scaling.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.bench.throughput import Case
from harness.config import TrainConfig
from harness.errors import ConfigError, HarnessError

# Variables the launcher sets: a single-process contender must not inherit them (it would
# then wait for peers that never come).
_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


@dataclass(frozen=True)
class Contender:
    """One way to run the variant: how many processes, and threads in each."""

    processes: int
    threads: int


@dataclass(frozen=True)
class Plan:
    """The contenders for this machine (none: `notes` says why), and what to say about them."""

    device: str  # "cpu" or "cuda": what every contender trains on
    contenders: tuple[Contender, ...] = ()
    baseline: Contender | None = None  # per device: 1 process, one rank's share of the machine
    reference: Contender | None = None  # 1 process with all cores (1 GPU on CUDA)
    notes: tuple[str, ...] = ()


def plan_contenders(device: str, nproc: int | None = None, cores: int | None = None) -> Plan:
    """Who runs on this machine: CPU processes (N = `nproc`, default 2) unless `device` is (or
    `auto` finds) CUDA, then GPUs (N = `nproc`, default all of them). A machine that cannot
    host N ranks gets a plan without contenders and a note."""
    import torch

    from harness.device import resolve_device

    cores = cores or os.cpu_count() or 1
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        n = nproc or gpus
        if gpus < 2 or n < 2 or n > gpus:
            return Plan("cuda", notes=(f"scaling skipped: 1 GPU against {max(n, 2)} needs at least {max(n, 2)} GPUs "
                                      f"and this machine has {gpus}",))
        one = Contender(1, cores)
        return Plan("cuda", (one, Contender(n, max(1, cores // n))), baseline=one, reference=one)
    # Anything else (cpu, auto without CUDA, mps) runs on CPU processes: gloo ranks train on the CPU.
    n = nproc or 2
    if n < 2 or cores < n:
        return Plan("cpu", notes=(f"scaling skipped: {n} CPU processes need at least {max(n, 2)} cores and this "
                                  f"machine has {cores}",))
    share = cores // n
    baseline, reference = Contender(1, share), Contender(1, cores)
    notes = () if resolve_device(device).type == "cpu" else (
        f"scaling measured on CPU processes ({resolve_device(device)} has no multi-process backend here)",)
    # The pair compared by the ratio runs back to back (the machine's speed drifts).
    return Plan("cpu", (baseline, reference, Contender(n, share)), baseline=baseline, reference=reference,
                notes=notes)


def scaling_cases(data_dir: Path | None, device: str) -> list[tuple[Case, Path | None]]:
    """ReLU LeNet on MNIST-format data and ResNet-18 on CIFAR-shaped data with flip + crop, both
    at a global batch of 128 (it splits evenly over 2, 4 and 8 ranks)."""
    dataset = "mnist" if data_dir is not None else "synthetic"
    # No validation split: each epoch is training only, as in the throughput cases.
    lenet = TrainConfig(model="lenet_relu", dataset=dataset, optimizer="sgd", lr=0.05, momentum=0.9, seed=0,
                        batch_size=128, val_fraction=0.0, device=device, early_stopping_patience=None)
    # Fewer images than the throughput case: every contender trains it (in fresh processes).
    resnet = TrainConfig(model="resnet18", dataset="synthetic_rgb", optimizer="sgd", lr=0.05, momentum=0.9, seed=0,
                         batch_size=128, augment=True, train_limit=256, val_fraction=0.0, device=device)
    return [(Case(f"lenet_relu/{dataset}/bs128", lenet), data_dir),
            (Case("resnet18/synthetic_rgb/bs128+flip+crop", resnet), None)]


# ------------------------------------------------------------------ driver


def run_contender(config: TrainConfig, data_dir: Path | None, contender: Contender, epochs: int) -> dict[str, Any]:
    """Train `config` for `epochs` epochs as `contender` in fresh processes; rank 0's result
    (`rates`: images/s per epoch, `world_size`, `threads`, `images`)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        worker = ["-m", "harness.bench.scaling", "--config", json.dumps(config.to_dict()), "--epochs", str(epochs),
                  "--threads", str(contender.threads), "--out", str(out)]
        if data_dir is not None:
            worker += ["--data-dir", str(data_dir)]
        env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_ENV}
        # Set before torch starts in each process (OpenMP reads it once); the worker also sets it.
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(contender.threads)
        if contender.processes == 1:
            cmd = [sys.executable, *worker]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={contender.processes}", "--monitor-interval=0.5", *worker]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise HarnessError(f"scaling run with {contender.processes} process(es) x {contender.threads} thread(s) "
                               f"failed (exit code {proc.returncode}):\n{tail}")
        return json.loads(out.read_text())


def measure_scaling(case: Case, data_dir: Path | None, plan: Plan, epochs: int,
                    log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per contender of `plan` for `case`: images/s (median after the warm-up epoch),
    its spread (max-min)/median, and the ratio and efficiency defined in the module docstring."""
    if epochs < 2:
        raise ConfigError(f"scaling needs at least 2 epochs (one warm-up, then measured ones); got {epochs}.")
    assert plan.baseline is not None and plan.reference is not None, plan.notes
    config = case.config.override(device=plan.device)
    measured: dict[Contender, list[float]] = {}
    for contender in plan.contenders:
        log(f"scaling {case.label}: {contender.processes} process(es) x {contender.threads} thread(s), {epochs} epochs")
        result = run_contender(config, data_dir, contender, epochs)
        measured[contender] = result["rates"][1:]
    median = {c: statistics.median(rates) for c, rates in measured.items()}
    base, ref = median[plan.baseline], median[plan.reference]
    rows = []
    for contender, rates in measured.items():
        # Units of the machine used, in per-device baselines: GPUs, or cores as multiples of one rank's share.
        units = (contender.processes if plan.device == "cuda"
                 else contender.processes * contender.threads / plan.baseline.threads)
        rows.append({"case": case.label, "device": plan.device, "processes": contender.processes,
                     "threads_per_process": contender.threads, "images_per_second": median[contender],
                     "spread": (max(rates) - min(rates)) / median[contender],
                     "ratio_vs_1proc_all_cores": median[contender] / ref,
                     "efficiency": median[contender] / (units * base)})
    return rows


def run_scaling(data_dir: Path | None, device: str, epochs: int, log: Callable[[str], None] = print,
                nproc: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Every scaling case on this machine's plan: (rows, notes). No rows, and a note saying why,
    where the machine cannot host the ranks (fewer than 2 GPUs, too few cores)."""
    plan = plan_contenders(device, nproc)
    for note in plan.notes:
        log(note)
    if not plan.contenders:
        return [], list(plan.notes)
    rows: list[dict[str, Any]] = []
    for case, case_dir in scaling_cases(data_dir, plan.device):
        rows += measure_scaling(case, case_dir, plan, epochs, log)
    return rows, list(plan.notes)


# ------------------------------------------------------------------ worker


def worker(config: TrainConfig, data_dir: Path | None, epochs: int, threads: int, out: Path) -> None:
    """One process of a contender: join the launcher's group (alone without one), train
    `epochs` epochs with `fit_epoch`, and (rank 0) write the images/s of each to `out`."""
    import torch

    from harness.data import load_data
    from harness.distributed import init_from_env, shutdown
    from harness.train import FitState, build_trainer, fit_epoch

    dist = init_from_env(config.device, "auto")
    torch.set_num_threads(threads)  # after joining: init_from_env gives each rank its own share
    try:
        data = load_data(config, data_dir)
        t = build_trainer(config, data, dist)
        state = FitState()
        rates = [fit_epoch(t, state)["images_per_second"] for _ in range(epochs)]
        if dist.is_main:
            out.write_text(json.dumps({"rates": rates, "world_size": dist.world_size,
                                       "threads": torch.get_num_threads(), "images": len(data.train)}))
    finally:
        shutdown()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m harness.bench.scaling`: the worker's command line (the driver builds it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="TrainConfig as JSON (TrainConfig.to_dict)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    worker(TrainConfig.from_dict(json.loads(args.config)), args.data_dir, args.epochs, args.threads, args.out)


if __name__ == "__main__":
    main()
    # Then end as `harness run` does (cli.console_main): exit handlers and flushes, but not the
    # interpreter's teardown, in which gloo's threads now and then abort a rank that finished
    # cleanly ("terminate called without an active exception"), failing the whole launch.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
