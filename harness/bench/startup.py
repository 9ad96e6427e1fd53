"""Start-up: seconds from process start to the first training step of `harness run`, against
the floor any tracked PyTorch script pays.

The floor is a fresh interpreter that imports torch, builds a torch.optim optimizer (which
imports torch._dynamo) and imports mlflow, timed the way the harness times its own
`startup_seconds` metric (`harness.process_clock.seconds_since_process_start`). A script that
tracks anything also opens its store and starts a run before its first step: the "tracked
floor" does that too (MLflow's sqlite store, as `harness run` uses by default), and is
reported beside it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Where a fresh interpreter spends its import time; every line here is paid by `harness run`
# in its own process (MLflow is imported in-process by the `Tracker`).
_IMPORT_PROBE = """
import json, time
t = {}
s = time.perf_counter(); import torch; t["import torch"] = time.perf_counter() - s
s = time.perf_counter(); torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
t["first optimizer (imports torch._dynamo)"] = time.perf_counter() - s
s = time.perf_counter(); import mlflow; t["import mlflow"] = time.perf_counter() - s
print(json.dumps(t))
"""

# The least a tracked PyTorch script pays before its first step: the interpreter, `import torch`,
# a torch.optim optimizer and `import mlflow`, timed the way `startup_seconds` is.
_FLOOR_PROBE = """
import torch
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
import mlflow
from harness.process_clock import seconds_since_process_start
print(seconds_since_process_start())
"""


# The floor plus what tracking a run costs before the first step: MLflow's sqlite store opened
# (its own import, schema check) and one run created, as a hand-written tracked script does.
_TRACKED_FLOOR_PROBE = """
import torch
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
import mlflow
client = mlflow.MlflowClient("sqlite:///floor.db")
experiment = client.get_experiment_by_name("floor") or client.get_experiment(client.create_experiment("floor"))
client.create_run(experiment.experiment_id)
from harness.process_clock import seconds_since_process_start
print(seconds_since_process_start())
"""


def harness_startup_seconds(folder: Path) -> float:
    """The `startup_seconds` metric of the newest `harness run quickstart` in `folder`'s default
    store (`sqlite:///mlflow.db`), read back through a `Tracker`."""
    from harness.errors import HarnessError
    from harness.tracking import Tracker

    tracker = Tracker.open(f"sqlite:///{folder}/mlflow.db")
    experiment_id = tracker.find_experiment("quickstart")
    parent = tracker.latest_parent_run(experiment_id) if experiment_id is not None else None
    children = tracker.children(experiment_id, parent.run_id) if parent is not None else []
    # The first run a process trains logs it (`harness.lifecycle`); quickstart has one variant: its one child.
    for run in children:
        if "startup_seconds" in run.metrics:
            return run.metrics["startup_seconds"]
    raise HarnessError(f"`harness run quickstart` in {folder} recorded no startup_seconds metric.")


def _probe(script: str, cwd: str, env: dict[str, str]) -> str:
    """The last stdout line of `script` run by a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def measure_startup(repeats: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Seconds from process start to the first training step of `harness run quickstart --set
    epochs=1` (the run's `startup_seconds` metric), in a fresh folder: the first run also creates
    the MLflow store. Alternated with the floor (a script importing torch, building its optimizer
    and importing mlflow); plus where a fresh interpreter spends its import time."""
    from harness.experiment import experiments_dir

    env = {**os.environ, "HARNESS_EXPERIMENTS_DIR": str(experiments_dir().resolve())}
    env.pop("MLFLOW_TRACKING_URI", None)  # the run's default store, in the temporary folder
    seconds: list[float] = []
    floor: list[float] = []
    tracked: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            subprocess.run([sys.executable, "-m", "harness.cli", "run", "quickstart", "--set", "epochs=1"],
                           cwd=tmp, env=env, check=True, capture_output=True)
            seconds.append(harness_startup_seconds(Path(tmp)))
            floor.append(float(_probe(_FLOOR_PROBE, tmp, env)))
            tracked.append(float(_probe(_TRACKED_FLOOR_PROBE, tmp, env)))
            log(f"startup #{i + 1}: harness run quickstart {seconds[-1]:.2f} s to the first training step; "
                f"bare torch + optimizer + mlflow {floor[-1]:.2f} s; the same with a run started {tracked[-1]:.2f} s")
        imports = json.loads(_probe(_IMPORT_PROBE, tmp, env))
    # The first harness run also creates the store; later ones (and every floor run but the
    # first tracked one) find it: compare like with like.
    later = statistics.median(seconds[1:] or seconds)
    floor_median = statistics.median(floor)
    tracked_median = statistics.median(tracked[1:] or tracked)
    return {"first_run_seconds": seconds[0], "median_later_seconds": later, "all_seconds": seconds,
            "floor_seconds": floor_median, "all_floor_seconds": floor, "harness/floor": later / floor_median,
            "tracked_floor_seconds": tracked_median, "all_tracked_floor_seconds": tracked,
            "harness/tracked_floor": later / tracked_median,
            "floor_probe": "import torch; torch.optim.SGD(...); import mlflow",
            "tracked_floor_probe": "the floor, then MlflowClient('sqlite:///floor.db').create_run(...)",
            "imports": imports}
