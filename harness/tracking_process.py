"""MLflow in a child process, for `harness run`.

Importing MLflow and opening its store takes 1.5-2 s of single-threaded Python, and so does
importing PyTorch. In one process they add up before the first training step; `harness run`
starts this child before it imports PyTorch, so both happen at once on two cores, and training
starts about 1.7 s sooner (quickstart on a 2-core CPU: 5.6 s -> 3.8 s to the first step). The
end-to-end time stays the same: the child imports PyTorch itself for `log_model`. Importing it
earlier, while the main process trains, made training 2-3x slower on two cores (PyTorch's
OpenMP threads stall when another process takes a core), so it is not done.

The child serves the functions of `harness.tracking` decorated with `@forwarded`: the main
process calls them with a `TrackingProcess` where they take an `MlflowClient`, and never
imports MLflow. Protocol: pickled `(function name, args, kwargs)` requests on the child's
stdin, pickled `(ok, result or exception)` replies on its stdout (the child sends its own
prints to stderr). Calls are synchronous, so a failed write fails the caller exactly as
in-process MLflow would.
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from harness.errors import HarnessError

F = TypeVar("F", bound=Callable[..., Any])


class TrackingProcess:
    """A child process holding the MLflow client on tracking URI `uri` (None: the default).

    It connects at once; a store that cannot be used is reported by the first call, as the
    same one-line `HarnessError` that `tracking.connect` raises. Use as a context manager or
    call `close()`; if this process dies, the child sees its stdin close and exits."""

    def __init__(self, uri: str | None = None) -> None:
        # Ctrl-C in a terminal signals the whole process group; the child must outlive it to
        # mark the runs KILLED, so it gets its own group and ignores SIGINT/SIGTERM. It ends
        # when this process closes its stdin.
        group = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if sys.platform == "win32"
                 else {"start_new_session": True})
        # Where this harness was imported from goes last on the child's path: an installed
        # harness is found as usual, one imported from a checkout by path is found too.
        package_root = str(Path(__file__).resolve().parent.parent)
        bootstrap = f"import sys; sys.path.append({package_root!r}); from harness.tracking_process import main; main()"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", bootstrap, uri or ""],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, **group,
        )

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run `harness.tracking.<name>(client, *args, **kwargs)` in the child; return its result
        or raise its exception here."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        request = pickle.dumps((name, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)  # fails here, not mid-stream
        try:
            self._proc.stdin.write(request)
            self._proc.stdin.flush()
            ok, value = pickle.load(self._proc.stdout)
        except (EOFError, BrokenPipeError, OSError) as exc:
            code = self._proc.poll()
            raise HarnessError(
                f"The MLflow tracking process ended unexpectedly (exit code {code}, {type(exc).__name__}); "
                "see the messages above, then rerun (with --resume to keep the checkpoints)."
            ) from None
        if ok:
            return value
        raise value

    def close(self) -> None:
        """Tell the child to exit. Every call has already been answered, so nothing is waited
        for: the child's interpreter shutdown (1-2 s with PyTorch loaded) overlaps ours."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:  # the child is gone already
                pass
            threading.Thread(target=self._proc.wait, daemon=True).start()  # reaped when it exits

    def __enter__(self) -> TrackingProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def forwarded(fn: F) -> F:
    """Decorator for `tracking` functions whose first argument is the client: given a
    `TrackingProcess` instead, the call runs in that process. Arguments and results must pickle."""

    @functools.wraps(fn)
    def wrapper(client: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(client, TrackingProcess):
            return client.call(fn.__name__, *args, **kwargs)
        return fn(client, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else a RuntimeError with its type and message; the child's
    traceback goes along as a note for the error report."""
    if not isinstance(exc, HarnessError) and hasattr(exc, "add_note"):
        exc.add_note("In the MLflow tracking process:\n" + "".join(traceback.format_exception(exc)))
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception type may refuse to pickle
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def serve(uri: str | None, requests: IO[bytes], replies: IO[bytes]) -> None:
    """The child's loop: connect, then answer requests until `requests` closes."""
    from harness import tracking

    try:
        client: Any = tracking.connect(uri)
        failure: HarnessError | None = None
    except HarnessError as exc:
        client, failure = None, exc
    while True:
        try:
            name, args, kwargs = pickle.load(requests)
        except EOFError:
            return
        try:
            if failure is not None:
                raise failure
            fn = getattr(tracking, name)
            reply: tuple[bool, Any] = (True, fn.__wrapped__(client, *args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            reply = (False, _portable(exc))
        try:  # pickled whole before writing: a half-written reply would break the stream
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - a result that does not pickle
            data = pickle.dumps((False, _portable(exc)), protocol=pickle.HIGHEST_PROTOCOL)
        replies.write(data)
        replies.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The replies own the real stdout; anything MLflow prints goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.argv[1] or None, sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
