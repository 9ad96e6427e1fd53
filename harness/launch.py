"""`harness run --nproc-per-node N`: start N processes on this machine with PyTorch's own launcher
(the `torch.distributed.run` machinery behind `torchrun`), each running `python -m harness run
...`, and report how they ended.

The launcher trains nothing itself. Its runs' bookkeeping is rank 0's, except when a process
died before rank 0 could record why (killed, out of memory): then the launcher ends every run of
this launch that is not FINISHED as FAILED with that reason (runs carry the launch's id in a
tag), so none stays RUNNING and `--resume` continues them.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.config import TrainConfig
from harness.distributed import PEER_LOST_EXIT
from harness.errors import HarnessError, first_line
from harness.tracking import LAUNCH_ENV, Tracker
from harness.train import check_world

# Rank exit codes that mean "rank 0 already said what went wrong": 1 (a variant failed), 2 (a
# user error, one line), 130 (Ctrl-C).
HANDLED_EXIT_CODES = (1, 2, 130)
# How a process ends when it was stopped because of another one: it lost its peer, or the
# launcher sent it SIGTERM (-15). Not the cause of a failure.
COLLATERAL_EXIT_CODES = (PEER_LOST_EXIT, 130, -signal.SIGTERM)


@dataclass(frozen=True)
class LaunchPlan:
    """How many processes, on how many machines, meeting where."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    rdzv_timeout: int = 120

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @classmethod
    def parse(cls, nproc: str, nnodes: int, node_rank: int, rdzv_endpoint: str | None, rdzv_timeout: int,
              device: str) -> LaunchPlan:
        """The options as given, each checked (one line per mistake)."""
        if nnodes < 1:
            raise HarnessError(f"--nnodes must be at least 1 (got {nnodes}).")
        if not 0 <= node_rank < nnodes:
            raise HarnessError(f"--node-rank must be from 0 to {nnodes - 1} for --nnodes {nnodes} (got {node_rank}).")
        if rdzv_timeout < 1:
            raise HarnessError(f"--rdzv-timeout must be at least 1 second (got {rdzv_timeout}).")
        if nnodes > 1:
            host, _, port = (rdzv_endpoint or "").rpartition(":")
            if not host or not port.isdigit():
                raise HarnessError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT, machine 0's address and a "
                                   f"free port, the same on every machine (got {rdzv_endpoint!r}).")
        return cls(parse_nproc(nproc, device), nnodes, node_rank, rdzv_endpoint, rdzv_timeout)

    def launcher_args(self) -> list[str]:
        """`torchrun`'s options for this plan."""
        args = [f"--nproc-per-node={self.nproc_per_node}", "--monitor-interval=0.5"]
        if self.nnodes == 1:
            return ["--standalone", *args]
        return [*args, f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}",
                f"--rdzv-endpoint={self.rdzv_endpoint}", f"--rdzv-conf=timeout={self.rdzv_timeout}"]


def parse_nproc(value: str, device: str) -> int:
    """`--nproc-per-node`: a positive count, or `auto` (one per visible GPU, 1 without); more
    processes than GPUs on a CUDA device is one line."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if value == "auto":
        return gpus if cuda and gpus else 1
    try:
        n = int(value)
    except ValueError:
        raise HarnessError(f"--nproc-per-node must be a number of processes or auto (got '{value}').") from None
    if n < 1:
        raise HarnessError(f"--nproc-per-node must be at least 1 (got {n}); use auto for one process per GPU.")
    if cuda and n > gpus:
        raise HarnessError(f"--nproc-per-node {n} asks for more GPUs than this machine has ({gpus}); use at most "
                           f"{gpus}, auto, or --device cpu for CPU processes.")
    return n


LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-timeout")


def worker_args(argv: Sequence[str]) -> list[str]:
    """The command line each process runs: this one without the launcher's own options (each
    process is one of the N)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in LAUNCH_OPTIONS)):
            out.append(arg)
    return out


def check_launch(configs: dict[str, TrainConfig], nproc: int, backend: str, device: str) -> None:
    """What would fail in every process fails here once, before any is started."""
    from harness.distributed import choose_backend

    choose_backend(backend, device)
    for config in configs.values():
        check_world(config, nproc)


def launch(plan: LaunchPlan, worker_args: Sequence[str], experiment: str, tracking_uri: str | None,
           continue_with: str) -> int:
    """Run `python -m harness <worker_args>` in `plan.nproc_per_node` local processes (machine
    `plan.node_rank` of `plan.nnodes`); returns the exit code. Machines that do not meet within
    `plan.rdzv_timeout` seconds are one line.

    Ctrl-C reaches every process (they mark their runs KILLED). A process that dies without a
    word (a signal, a crash) ends the others through the launcher, and this process then marks
    the launch's unfinished runs FAILED with the reason and says how to continue."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if os.environ.pop("HARNESS_LAUNCHER_QUIET", None):  # see cli._quiet_launcher: for this process only
        os.environ.pop("TORCH_CPP_LOG_LEVEL", None)
    launch_id = uuid.uuid4().hex
    os.environ[LAUNCH_ENV] = launch_id
    # torchrun prints a banner unless the thread count is set; each process takes its share.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // plan.nproc_per_node)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # we report failures ourselves
    args = parse_args([*plan.launcher_args(), "--module", "harness", *worker_args])
    try:
        run(args)
        return 0
    except (torch.distributed.DistError, RendezvousError) as exc:  # the machines did not meet
        raise HarnessError(
            f"The machines did not meet at --rdzv-endpoint {plan.rdzv_endpoint} within {plan.rdzv_timeout} s "
            f"({type(exc).__name__}: {first_line(exc, 120)}); start the same command on every machine, with machine "
            "0's reachable address and a free port.") from None
    except ChildFailedError as exc:
        rank, failure = _root_cause(exc.failures)
        if rank == 0 and failure.exitcode in HANDLED_EXIT_CODES:
            return failure.exitcode
        reason = _describe(rank, failure)
    except (KeyboardInterrupt, SignalException) as exc:  # Ctrl-C / kill: the processes mark their runs KILLED
        signum = getattr(exc, "sigval", signal.SIGINT)
        if signum in (signal.SIGINT, signal.SIGTERM):
            return 130
        reason = f"the launcher received {signal.Signals(signum).name}"
    unrecorded = _end_launched_runs(tracking_uri, experiment, launch_id, reason)
    raise HarnessError(f"{reason}; {unrecorded or 'its runs are marked FAILED'}. Continue with `{continue_with}`.")


def _root_cause(failures: dict[int, Any]) -> tuple[int, Any]:
    """The failure that started it (rank, ProcessFailure): the earliest that is not a process
    stopped because of another one."""
    ordered = sorted(failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    causes = [item for item in ordered if item[1].exitcode not in COLLATERAL_EXIT_CODES]
    return (causes or ordered)[0]


def _describe(rank: int, failure: object) -> str:
    """One line for a process that ended badly: which rank, and the signal or exit code."""
    code = getattr(failure, "exitcode", None)
    if isinstance(code, int) and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return f"process of rank {rank} {how}"


def _end_launched_runs(tracking_uri: str | None, experiment: str, launch_id: str, reason: str) -> str | None:
    """End the launch's unfinished runs FAILED with `reason`: None if done, else why not."""
    try:
        tracker = Tracker.open(tracking_uri)
        experiment_id = tracker.find_experiment(experiment)
        if experiment_id is None:
            return None
        for run in tracker.launched_runs(experiment_id, launch_id):
            tracker.end_run(run.info.run_id, "FAILED", reason)
        return None
    except HarnessError as exc:
        return f"MLflow could not record it ({exc})"
