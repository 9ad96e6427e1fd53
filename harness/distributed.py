"""Data-parallel training across processes: who this process is (`Dist`), the process group, and
the few collectives the harness needs.

Processes are started by PyTorch's own launcher (`torchrun`, or `harness run --nproc-per-node`,
see `harness.launch`), which sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; nothing else
is needed. Rank 0 is the only one that tracks (MLflow) and writes checkpoints; every other rank
learns what it must know from rank 0 by broadcast. A process started without those variables is
`SINGLE`: world size 1, and every helper here is then a no-op.
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from harness.errors import ConfigError, HarnessError, UnknownNameError, first_line

T = TypeVar("T")
_solo = threading.local()  # set while rank 0 runs a `from_main` function: nested calls stay local

BACKENDS = ("auto", "gloo", "nccl")
# How long a collective may wait for a silent peer before the group is torn down. A dead peer
# is usually noticed at once (its socket closes, and the launcher stops the other ranks); this
# bounds the case where it hangs instead. HARNESS_DIST_TIMEOUT (seconds) overrides it.
DEFAULT_TIMEOUT_SECONDS = 300
# Exit code of a process that stopped because a peer failed (the launcher reports the peer).
PEER_LOST_EXIT = 3


@dataclass(frozen=True)
class Dist:
    """This process's place in the group: global rank, world size, rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = "none"  # gloo | nccl once a group is initialised

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that tracks, checkpoints and prints."""
        return self.rank == 0

    @property
    def nnodes(self) -> int:
        """Machines in the group (torchrun starts the same number of processes on each)."""
        return max(1, self.world_size // max(1, self.local_world_size))

    # ------------------------------------------------------------ collectives

    def from_main(self, fn: Callable[[], T]) -> T:
        """`fn()` run on rank 0 only, its result (or its error) handed to every rank: the ranks
        then take the same branch. A `HarnessError` is raised again on every rank with the same
        message; any other error ends the other ranks with a `HarnessError` naming it."""
        if not self.enabled or getattr(_solo, "active", False):
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            _solo.active = True
            try:
                box[0] = ("ok", fn())
            except BaseException as exc:
                box[0] = ("error", _portable(exc))
                _mark_shared(exc)
                dist.broadcast_object_list(box, src=0)
                raise
            finally:
                _solo.active = False
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise _mark_shared(value)
        return value

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def sum_(self, *tensors: torch.Tensor) -> None:
        """Sum `tensors` over all ranks, in place."""
        if self.enabled:
            for t in tensors:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def max(self, value: float) -> float:
        """The largest `value` over all ranks."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        if self.backend == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard_range(self, n: int) -> tuple[int, int]:
        """[start, stop) of this rank's contiguous share of `n` items: every item in exactly one
        share, sizes differing by at most one (evaluation counts each sample once, no padding)."""
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank: after training steps
        each rank's last batch moved its own copy."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def rank_seed(self, seed: int, *stream: int) -> int:
        """A seed for this rank's own random stream (`stream` names it: dropout, augmentation,
        an epoch), derived from the run's seed: reproducible, and different on every rank."""
        import numpy as np

        return int(np.random.SeedSequence([seed, self.rank, *stream]).generate_state(1, np.uint64)[0] >> 1)


SINGLE = Dist()


class PeerFailed(HarnessError):
    """An error another rank (rank 0) met; every rank raises it so that all end the same way."""


class GroupFailure(HarnessError):
    """One rank failed on its own (or lost a peer): the processes cannot go on together."""


def _mark_shared(exc: BaseException) -> BaseException:
    exc.harness_shared = True  # type: ignore[attr-defined]
    return exc


def is_shared(exc: BaseException) -> bool:
    """Whether every rank raised `exc` alike (it came from rank 0 through `Dist.from_main`)."""
    return bool(getattr(exc, "harness_shared", False))


def _portable(exc: BaseException) -> BaseException:
    """What the other ranks raise for rank 0's `exc`: a `HarnessError` keeps its type where it
    can be rebuilt from its message; anything else becomes a `PeerFailed` naming it."""
    if isinstance(exc, KeyboardInterrupt):
        return KeyboardInterrupt()
    if isinstance(exc, HarnessError):
        try:
            return type(exc)(str(exc))
        except Exception:  # noqa: BLE001 - a subclass with other constructor arguments
            return PeerFailed(str(exc))
    return PeerFailed(f"rank 0 failed: {type(exc).__name__}: {first_line(exc)}")


def env_world() -> tuple[int, int, int, int] | None:
    """(rank, world size, local rank, local world size) set by the launcher, or None when this
    process was not started by one."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers; start the "
                          "processes with torchrun (or harness run --nproc-per-node N).") from None
    return rank, world, local, local_world


def choose_backend(requested: str, device: str) -> str:
    """nccl for CUDA devices, gloo for the CPU (`auto`); nccl without a GPU is one line."""
    if requested not in BACKENDS:
        from harness.registry import unknown_name_message

        raise UnknownNameError(unknown_name_message("distributed backend", requested, BACKENDS))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if requested == "nccl" or (requested == "auto" and cuda):
        if not torch.cuda.is_available():
            raise ConfigError("The nccl backend needs CUDA GPUs and this machine has none; use backend 'gloo' "
                              "(or 'auto') to train on CPU processes.")
        return "nccl"
    return "gloo"


def init_from_env(device: str = "auto", backend: str = "auto") -> Dist:
    """Join the process group the launcher set up (a no-op `SINGLE` outside one): pick the
    backend, bound every collective by the timeout, give each CPU rank its share of the cores
    and each CUDA rank its own GPU."""
    world = env_world()
    if world is None or world[1] == 1:
        return SINGLE
    rank, world_size, local_rank, local_world = world
    chosen = choose_backend(backend, device)
    if chosen == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"Local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                              "start at most that many processes per node.")
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    timeout = datetime.timedelta(seconds=float(os.environ.get("HARNESS_DIST_TIMEOUT", DEFAULT_TIMEOUT_SECONDS)))
    if not dist.is_initialized():
        dist.init_process_group(chosen, timeout=timeout)
    return Dist(rank, world_size, local_rank, local_world, chosen)


def shutdown() -> None:
    """Leave the process group (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_group_failure(exc: BaseException) -> bool:
    """Whether `exc` says the process group broke (a peer died or stopped answering): the
    command cannot go on with the next variant, as its peers are gone."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer", "timed out"))
