"""Data-parallel launches: `harness.run` / `harness.tune` with `nproc_per_node` (the CLI's
`--nproc-per-node N`) start N processes on this machine with PyTorch's own launcher (the
`torch.distributed.run` machinery behind `torchrun`), each running `python -m harness run ...`
(or `tune`) with the same options, and report how they ended.

The launcher trains nothing itself. Its runs' bookkeeping is rank 0's, except when a process
died before rank 0 could record why (killed, out of memory): then the launcher ends every run of
this launch that is not FINISHED as FAILED with that reason (runs carry the launch's id in a
tag), so none stays RUNNING and `--resume` continues them. The first process on this machine
(local rank 0) hands back to the launcher, in a file, which parent run it made or the error it
ended on, so that the API returns what happened.

This module loads no PyTorch when imported: `LaunchOptions` is built before torch loads (see
`quiet_launcher`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError, HarnessError, Terminated, first_line

if TYPE_CHECKING:
    from harness.config import TrainConfig

# Rank exit codes that mean "rank 0 already said what went wrong": 1 (a variant failed), 2 (a
# user error, one line), 130 (Ctrl-C).
HANDLED_EXIT_CODES = (1, 2, 130)
# Where local rank 0 hands back its outcome (a JSON file the launcher made).
OUTCOME_ENV = "HARNESS_LAUNCH_OUTCOME"
# The API's keyword arguments that are spelt otherwise on the command line.
FLAG_NAMES = {"backend": "dist-backend"}


@dataclass(frozen=True)
class LaunchOptions:
    """How many processes to train on, on how many machines, meeting where (the CLI's
    `--nproc-per-node`, `--nnodes`, `--node-rank`, `--rdzv-endpoint`, `--rdzv-timeout`,
    `--dist-backend`). `nproc_per_node` None (and one machine): no launch, this process trains,
    alone or as one of the processes torchrun started."""

    nproc_per_node: int | str | None = None  # a count, or "auto": one per GPU (1 without)
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # HOST:PORT of machine 0
    rdzv_timeout: int = 120  # seconds to wait for the other machines
    backend: str = "auto"  # nccl on CUDA, gloo on CPU

    @property
    def asked(self) -> bool:
        """Whether a launch was asked for (it may still be one process: `nproc_per_node=1`)."""
        return self.nproc_per_node is not None or self.nnodes > 1

    @property
    def several(self) -> bool:
        """Whether more than one process is asked for (counting `auto` as possibly more)."""
        return self.nproc_per_node not in (None, 1, "1") or self.nnodes > 1

    def resume_hint(self, command: str, experiment: str, plan: LaunchPlan) -> str:
        """The command that continues an interrupted `harness run` of this launch."""
        nproc = self.nproc_per_node if self.nproc_per_node is not None else plan.nproc_per_node
        hint = f"harness {command} {experiment} --resume --nproc-per-node {nproc}"
        return f"{hint} --nnodes {self.nnodes}" if self.nnodes > 1 else hint


@dataclass(frozen=True)
class LaunchPlan:
    """The processes to start: how many per machine, on how many machines, meeting where."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    rdzv_timeout: int = 120

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @classmethod
    def parse(cls, options: LaunchOptions, device: str) -> LaunchPlan:
        """The options as given, each checked (one line per mistake)."""
        nnodes, node_rank, rdzv_endpoint, rdzv_timeout = (options.nnodes, options.node_rank, options.rdzv_endpoint,
                                                          options.rdzv_timeout)
        if nnodes < 1:
            raise ConfigError(f"nnodes must be at least 1 (got {nnodes}).")
        if not 0 <= node_rank < nnodes:
            raise ConfigError(f"node_rank must be from 0 to {nnodes - 1} for nnodes={nnodes} (got {node_rank}).")
        if rdzv_timeout < 1:
            raise ConfigError(f"rdzv_timeout must be at least 1 second (got {rdzv_timeout}).")
        if nnodes > 1:
            host, _, port = (rdzv_endpoint or "").rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"nnodes={nnodes} needs rdzv_endpoint 'HOST:PORT', machine 0's address and a "
                                  f"free port, the same on every machine (got {rdzv_endpoint!r}).")
        nproc = options.nproc_per_node
        return cls(parse_nproc("1" if nproc is None else str(nproc), device), nnodes, node_rank, rdzv_endpoint,
                   rdzv_timeout)

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
    import torch

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if value == "auto":
        return gpus if cuda and gpus else 1
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"nproc_per_node must be a number of processes or 'auto' (got '{value}').") from None
    if n < 1:
        raise ConfigError(f"nproc_per_node must be at least 1 (got {n}); use 'auto' for one process per GPU.")
    if cuda and n > gpus:
        raise ConfigError(f"nproc_per_node={n} asks for more GPUs than this machine has ({gpus}); use at most "
                          f"{gpus}, 'auto', or device 'cpu' for CPU processes.")
    return n


# ----------------------------------------------------------------- before anything starts


@contextlib.contextmanager
def quiet_launcher(options: LaunchOptions) -> Iterator[None]:
    """Around the checks of a call that may launch processes. PyTorch's C++ side logs every
    failed rendezvous connection with a stack trace, and the launcher reports that in one line.
    Its log level is read once, when torch loads (so this comes before); the variable is taken
    back out afterwards, so the processes launched log as usual."""
    quiet = options.asked and "WORLD_SIZE" not in os.environ and "TORCH_CPP_LOG_LEVEL" not in os.environ \
        and "torch" not in sys.modules
    if quiet:
        os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"
    try:
        yield
    finally:
        if quiet:
            os.environ.pop("TORCH_CPP_LOG_LEVEL", None)


def plan_launch(options: LaunchOptions, configs: dict[str, TrainConfig]) -> LaunchPlan | None:
    """The processes this call is to start, checked; None when this process trains itself
    (alone, or as one of the processes a launcher started). What would fail in every process
    fails here once, before any is started."""
    from harness import distributed
    from harness.train import check_world

    if not options.asked:
        return None
    if distributed.env_world() is not None:
        raise ConfigError("This process was started by torchrun already; leave out nproc_per_node and "
                          "nnodes (torchrun's own options set the processes).")
    device = next(iter(configs.values())).device
    plan = LaunchPlan.parse(options, device)
    if plan.world_size == 1:
        return None
    distributed.choose_backend(options.backend, device)
    for config in configs.values():
        check_world(config, plan.world_size)
    return plan


def worker_command(command: str, experiment: str, options: Mapping[str, Any]) -> list[str]:
    """`COMMAND EXPERIMENT --option value ...`: what each process runs (`python -m harness ...`),
    from the API's keyword arguments, named as the CLI's options: None is left out, True and
    False are `--flag` and `--no-flag`, a list is the option once per item."""
    args = [command, experiment]
    for key, value in options.items():
        flag = FLAG_NAMES.get(key, key).replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, (list, tuple)):
            for item in value:
                args += [f"--{flag}", str(item)]
        else:
            args += [f"--{flag}", str(value)]
    return args


# ----------------------------------------------------------------- the launch


class ProcessesFailed(HarnessError):
    """The launched processes ended on an error: `reported` when their rank 0 has printed it on
    stderr already (the CLI does not print it again); `exit_code` is the one the command ends with."""

    def __init__(self, message: str, exit_code: int, reported: bool = True) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.reported = reported


class ProcessesInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the launched processes, which marked their runs KILLED and
    said how to continue."""

    reported = True


def start(plan: LaunchPlan, worker_args: Sequence[str], experiment: str, tracking_uri: str | None,
          continue_with: str) -> dict[str, Any]:
    """Run `python -m harness <worker_args>` in `plan.nproc_per_node` local processes and wait
    for them: what the first of them handed back (its parent run) once they end. Raises
    `ProcessesInterrupted` after a Ctrl-C, `ProcessesFailed` when rank 0 ended on an error it
    reported, a `HarnessError` when a process died without a word (see `launch`)."""
    with tempfile.TemporaryDirectory(prefix="harness-launch-") as folder:
        outcome = Path(folder) / "outcome.json"
        code = launch(plan, worker_args, experiment, tracking_uri, continue_with, outcome)
        handed: dict[str, Any] = json.loads(outcome.read_text()) if outcome.is_file() else {}
    if code == 130:
        raise ProcessesInterrupted()
    if "error" in handed:
        raise ProcessesFailed(handed["error"], code)
    command = f"harness {' '.join(worker_args[:2])}"
    if code not in (0, 1):
        raise ProcessesFailed(f"The processes of `{command}` ended with exit code {code}; rank 0's error is printed "
                              "above.", code)
    if "parent_run_id" not in handed:  # rank 0 ended before its run was made, or could not say which
        raise ProcessesFailed(f"The processes of `{command}` ended (exit code {code}) without handing back their "
                              f"run; `harness runs {worker_args[1]}` lists what they recorded.", code or 2,
                              reported=code != 0)
    return handed


def launch(plan: LaunchPlan, worker_args: Sequence[str], experiment: str, tracking_uri: str | None,
           continue_with: str, outcome_file: Path | None = None) -> int:
    """Run `python -m harness <worker_args>` in `plan.nproc_per_node` local processes (machine
    `plan.node_rank` of `plan.nnodes`); returns the exit code. Machines that do not meet within
    `plan.rdzv_timeout` seconds are one line. `outcome_file` is where the first process hands
    back its outcome (`hand_back`).

    Ctrl-C reaches every process (they mark their runs KILLED). A process that dies without a
    word (a signal, a crash) ends the others through the launcher, and this process then marks
    the launch's unfinished runs FAILED with the reason and says how to continue. The launcher's
    environment, signal handlers and log levels are as they were once this returns (the caller
    may be a notebook that goes on)."""
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args, run

    from harness import reporter
    from harness.tracking import LAUNCH_ENV

    launch_id = uuid.uuid4().hex
    variables = {LAUNCH_ENV: launch_id, OUTCOME_ENV: str(outcome_file) if outcome_file else None,
                 reporter.ENV: reporter.worker_name(reporter.current())}
    # torchrun prints a banner unless the thread count is set; each process takes its share.
    if "OMP_NUM_THREADS" not in os.environ:
        variables["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // plan.nproc_per_node))
    args = parse_args([*plan.launcher_args(), "--module", "harness", *worker_args])  # type: ignore[no-untyped-call]
    with _environment(variables), _signal_handlers(), _log_level("torch.distributed.elastic", logging.CRITICAL):
        try:
            run(args)  # type: ignore[no-untyped-call]
            return 0
        except (torch.distributed.DistError, RendezvousError) as exc:  # the machines did not meet
            raise HarnessError(
                f"The machines did not meet at rdzv_endpoint {plan.rdzv_endpoint} within {plan.rdzv_timeout} s "
                f"({type(exc).__name__}: {first_line(exc, 120)}); start the same command on every machine, with "
                "machine 0's reachable address and a free port.") from None
        except ChildFailedError as exc:
            rank, failure = _root_cause(exc.failures)
            if rank == 0 and failure.exitcode in HANDLED_EXIT_CODES:
                return int(failure.exitcode)
            reason = _describe(rank, failure)
        except (KeyboardInterrupt, SignalException) as exc:  # Ctrl-C / kill: the processes mark their runs KILLED
            signum = getattr(exc, "sigval", signal.SIGINT)
            if signum in (signal.SIGINT, signal.SIGTERM):
                return 130
            reason = f"the launcher received {signal.Signals(signum).name}"
    unrecorded = _end_launched_runs(tracking_uri, experiment, launch_id, reason)
    raise HarnessError(f"{reason}; {unrecorded or 'its runs are marked FAILED'}. Continue with `{continue_with}`.")


@contextlib.contextmanager
def _environment(variables: Mapping[str, str | None]) -> Iterator[None]:
    """`variables` set (None: removed) for the launched processes to inherit, then restored."""
    before = {name: os.environ.get(name) for name in variables}
    try:
        for name, value in variables.items():
            _set_variable(name, value)
        yield
    finally:
        for name, value in before.items():
            _set_variable(name, value)


def _set_variable(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextlib.contextmanager
def _signal_handlers() -> Iterator[None]:
    """The process's signal handlers back once the launcher is done: it installs its own (they
    raise its SignalException) for SIGINT, SIGTERM, SIGHUP and SIGQUIT."""
    names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    saved = {sig: signal.getsignal(sig) for sig in (getattr(signal, n) for n in names if hasattr(signal, n))}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():  # the only thread that may set them
            for sig, handler in saved.items():
                if handler is not None:  # None: set from C, cannot be put back from Python
                    signal.signal(sig, handler)


@contextlib.contextmanager
def _log_level(name: str, level: int) -> Iterator[None]:
    """Logger `name` at `level` (we report the launcher's failures ourselves), then as it was."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def _root_cause(failures: dict[int, Any]) -> tuple[int, Any]:
    """The failure that started it (rank, ProcessFailure): the earliest that is not a process
    stopped because of another one (it lost its peer, or the launcher sent it SIGTERM)."""
    from harness.distributed import PEER_LOST_EXIT

    collateral = (PEER_LOST_EXIT, 130, -signal.SIGTERM)
    ordered = sorted(failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    causes = [item for item in ordered if item[1].exitcode not in collateral]
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
    from harness.tracking import Tracker

    try:
        tracker = Tracker.open(tracking_uri)
        experiment_id = tracker.find_experiment(experiment)
        if experiment_id is None:
            return None
        for run in tracker.launched_runs(experiment_id, launch_id):
            tracker.end_run(run.run_id, "FAILED", reason)
        return None
    except HarnessError as exc:
        return f"MLflow could not record it ({exc})"


# ----------------------------------------------------------------- in the launched processes


def is_main_process() -> bool:
    """Whether this process is rank 0 of its launch (or not launched at all)."""
    from harness import distributed

    world = distributed.env_world()
    return world is None or world[0] == 0


@contextlib.contextmanager
def rank_0_prints() -> Iterator[None]:
    """Under a launcher only rank 0 writes to stdout (progress, tables): the others would repeat
    it once per process. Errors still reach stderr from any rank."""
    if is_main_process():
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def hand_back(outcome: Mapping[str, Any]) -> None:
    """In the first process of a launch on this machine (local rank 0): write `outcome` (plain
    data) where the launcher reads it. Elsewhere nothing."""
    path = os.environ.get(OUTCOME_ENV)
    if not path or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    partial = Path(f"{path}.partial")
    try:
        partial.write_text(json.dumps(dict(outcome)))
        partial.replace(path)  # whole or not at all: the launcher may read it as the process dies
    except OSError:  # the launcher is gone (its folder with it): nobody is left to tell
        pass


def says_interrupted(exc: KeyboardInterrupt) -> bool:
    """Whether this process should say that it was interrupted and how to continue: not when the
    launched processes said it already, and not on ranks other than 0."""
    return not getattr(exc, "reported", False) and is_main_process()


def stopped_by_launcher(exc: KeyboardInterrupt) -> bool:
    """Whether `exc` is the SIGTERM a launcher sends its processes when another one died (the
    launcher names that one: this process stays quiet)."""
    from harness.tracking import LAUNCH_ENV

    return bool(os.environ.get(LAUNCH_ENV)) and isinstance(exc, Terminated)


def peer_lost_exit(exc: BaseException) -> int | None:
    """The exit code of a launched process stopped because a peer died (it stays quiet: the
    launcher names the process that failed, in one line), or None for any other error."""
    from harness.tracking import LAUNCH_ENV

    if not os.environ.get(LAUNCH_ENV):  # (checked first: no PyTorch to import for a plain error)
        return None
    from harness import distributed

    if isinstance(exc, distributed.GroupFailure) and exc.__cause__ is not None \
            and distributed.is_group_failure(exc.__cause__):
        return distributed.PEER_LOST_EXIT
    return None
