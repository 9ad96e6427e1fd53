"""`harness ui`: the MLflow UI on the same tracking store and artifact root that `harness run` uses.

With a local store (the default `sqlite:///mlflow.db`, another database, or a file store) this
starts `mlflow server` as a child process on localhost, waits until it answers, prints its
address and serves until Ctrl-C. With an http(s) tracking server the UI is already there:
nothing is started, its address is printed after checking that it answers.

The server (with its uvicorn worker and job-runner children) runs in its own process group, and
a tiny watchdog process ends that whole group once `harness ui` is gone, however it ended, even by
SIGKILL (POSIX; see `_Watchdog`).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness import reporter
from harness.errors import ConfigError, HarnessError, TrackingError
from harness.uris import redact

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
START_TIMEOUT_S = 120.0  # `mlflow server` takes 10-20 s to answer on a busy 2-core machine
# SIGTERM to SIGKILL once `harness ui` has died: nobody waits for a clean stop any more (the
# server's huey job consumers can take longer than this to obey SIGTERM).
WATCHDOG_GRACE_S = 5.0
_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}
_LOOPBACK_HOSTS = {"localhost", "::1"}
_REMOTE_SCHEMES = {"http", "https"}
_IN_USE_ERRNOS = {errno.EADDRINUSE, 10048}  # 10048: WSAEADDRINUSE on Windows
# The environment variables `mlflow server` reads for --backend-store-uri and
# --default-artifact-root (click `envvar=` in mlflow/cli/__init__.py).
BACKEND_STORE_ENV = "MLFLOW_BACKEND_STORE_URI"
ARTIFACT_ROOT_ENV = "MLFLOW_DEFAULT_ARTIFACT_ROOT"


@dataclass(frozen=True)
class UiServer:
    """A planned local `mlflow server`: what to run, the environment variables it adds (the
    store URI travels there, not on the command line), and where it will answer."""

    tracking_uri: str
    artifact_root: str
    host: str
    port: int
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The address to open in a browser (a wildcard bind is browsed on 127.0.0.1)."""
        return _http_url(self.host, self.port)


def is_remote(tracking_uri: str) -> bool:
    """True for an http(s) tracking server, whose own UI is the one to use."""
    return _scheme(tracking_uri) in _REMOTE_SCHEMES


def artifact_root(tracking_uri: str, cwd: Path | None = None) -> str:
    """Where `harness run` from `cwd` puts artifacts of new experiments in this store.

    Mirrors MLflow's client defaults: a file store keeps artifacts inside itself; any database
    store (sqlite, postgresql, ...) uses `./mlruns` of the working folder, as an absolute path.
    Existing runs carry their own absolute artifact URI, so this only matters for experiments
    the UI creates, which then land where `harness run` would have put them.
    """
    folder = Path(cwd or Path.cwd())
    scheme = _scheme(tracking_uri)
    if scheme == "file":
        return tracking_uri
    if scheme == "":  # a plain path is a file store, like file:
        return os.path.abspath(folder / tracking_uri)
    return os.path.abspath(folder / "mlruns")


def allowed_hosts(host: str, port: int) -> str | None:
    """`--allowed-hosts` for a server bound to a specific non-loopback `host`, else None.

    MLflow 3's server rejects Host headers other than localhost and private IPs (DNS-rebinding
    protection). Its defaults cover 127.0.0.1 and a wildcard bind reached by a private IP; a
    server bound to a named interface must also accept its own name, so that one is added.
    """
    if host in _WILDCARD_HOSTS or host in _LOOPBACK_HOSTS or host.startswith("127."):
        return None
    try:  # MLflow's own default list, extended rather than replaced
        from mlflow.server.security_utils import get_default_allowed_hosts

        defaults = get_default_allowed_hosts()
    except ImportError:
        defaults = ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*"]
    shown = f"[{host}]" if ":" in host else host
    return ",".join([*defaults, shown, f"{shown}:{port}"])


def server_env(tracking_uri: str, artifacts: str) -> dict[str, str]:
    """The variables that give `mlflow server` its store (`tracking_uri`) and artifact root.

    Passed in the environment, not as `--backend-store-uri`: a command line is readable by every
    user of the machine (`ps`), and a database URI may hold a password. The artifact root is set
    explicitly: without it MLflow 3 would give experiments created through the server
    `mlflow-artifacts:/` locations under ./mlartifacts, not ./mlruns.
    """
    return {BACKEND_STORE_ENV: tracking_uri, ARTIFACT_ROOT_ENV: artifacts}


def server_command(host: str, port: int) -> list[str]:
    """The `mlflow server` command line (the store and artifact root come from `server_env`).

    Artifact serving stays on (MLflow's default) so runs that were logged through an
    `mlflow server` in this folder (`mlflow-artifacts:/` URIs) also open. One worker: a single
    local user, and four workers would quadruple start-up time and memory. No access log: the
    server's log then holds start-up and errors only, and does not grow with every page view.
    """
    command = [sys.executable, "-m", "mlflow", "server",
               "--host", host, "--port", str(port), "--workers", "1", "--uvicorn-opts", "--no-access-log"]
    hosts = allowed_hosts(host, port)
    return command + ["--allowed-hosts", hosts] if hosts else command


def plan(tracking_uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, cwd: Path | None = None) -> UiServer:
    """Check `host:port` and build the server command; `port=0` picks a free port."""
    chosen = pick_port(host, port)
    artifacts = artifact_root(tracking_uri, cwd)
    return UiServer(tracking_uri, artifacts, host, chosen, server_command(host, chosen),
                    server_env(tracking_uri, artifacts))


def pick_port(host: str, port: int) -> int:
    """`port` if it can be bound on `host` now (0: any free port); a HarnessError otherwise."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is not a TCP port; use a number from 1 to 65535 (0 picks a free one).")
    try:
        return _bind_probe(host, port)
    except socket.gaierror:
        raise ConfigError(f"host '{host}' is not a known host name or address; use e.g. host '127.0.0.1'.") from None
    except OSError as exc:
        if port and exc.errno in _IN_USE_ERRNOS:
            hint = _free_port_hint(host)
            raise ConfigError(f"Port {port} on {host} is already in use (another MLflow UI?); "
                              f"pick another port{hint}.") from None
        raise ConfigError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          "choose another host or port.") from None


def _bind_probe(host: str, port: int) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn does: lets a port whose old connections sit in TIME_WAIT count as free,
        # while a port someone listens on still fails.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        return sock.getsockname()[1]


def _free_port_hint(host: str) -> str:
    try:
        return f" (e.g. port={_bind_probe(host, 0)}, free right now)"
    except OSError:
        return ""


def serve(tracking_uri: str | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          echo: Callable[[str], None] = reporter.status, timeout: float = START_TIMEOUT_S) -> None:
    """Serve the MLflow UI for the tracking store until Ctrl-C (or SIGTERM); returns after a clean stop.

    Prints the address once the server answers. For an http(s) tracking URI nothing is
    started: the server's own address is printed (after checking that it answers) and this
    returns at once.
    """
    # Imported here: it pulls in MLflow. The one definition of the default store.
    from harness import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    if is_remote(uri):
        _check_remote(uri)
        echo(f"MLflow UI for {redact(uri)} is that tracking server's own: open {_public_url(uri)} "
             "(nothing to start here).")
        return
    if _scheme(uri).startswith("databricks"):
        raise TrackingError(f"'{redact(uri)}' is a Databricks workspace; open its MLflow UI in the workspace.")
    server = plan(uri, host, port)
    missing = _missing_sqlite_file(uri)
    # Open the store as `harness run` does: a dead database fails here in seconds with one
    # sentence (`mlflow server` retries for minutes), and a new sqlite file gets its schema and
    # default experiment with artifacts in ./mlruns, exactly as a first `harness run` would.
    tracking.Tracker.open(uri)
    log = tempfile.NamedTemporaryFile(prefix="harness-ui-", suffix=".log", delete=False)  # noqa: SIM115 - outlives this block
    log_path = Path(log.name)
    keep_log = False
    with log, _terminate_as_interrupt():
        # Own session: a Ctrl-C in the terminal reaches only us, so the server is stopped in
        # order (no uvicorn/click noise) and never left running behind an interrupted harness.
        proc = subprocess.Popen(server.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **server.env}, start_new_session=os.name == "posix")
        watchdog: _Watchdog | None = None
        try:
            watchdog = _Watchdog.start(proc.pid)  # at once: the server must not outlive a kill -9 of us
            wait_until_up(proc, server.url, timeout, log_path)
            echo(f"MLflow UI for {redact(uri)} at {server.url} (Ctrl-C to stop)")
            if missing:
                echo(f"{missing} did not exist: the store starts empty until `harness run` writes to it.")
            echo("In the UI, runs, metrics and artifacts are under 'Model training' (top left) "
                 "or an experiment's 'Training runs'.")
            code = proc.wait()
            raise TrackingError(f"The MLflow server stopped on its own (exit code {code}): "
                                f"{_log_tail(log_path)} (full log: {log_path}).")
        except HarnessError:
            keep_log = True  # the error message points at it
            raise
        except KeyboardInterrupt:
            echo("MLflow UI stopped.")
        finally:
            stop(proc)
            if watchdog is not None:
                watchdog.release()
            if not keep_log:
                log_path.unlink(missing_ok=True)


def _missing_sqlite_file(uri: str) -> str | None:
    """The sqlite file of `uri` if it does not exist yet (the server will create it empty)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return path if path and path != ":memory:" and not Path(path).exists() else None


def wait_until_up(proc: subprocess.Popen, url: str, timeout: float, log_path: Path | None = None) -> None:
    """Poll `url`/health until it answers 200; a HarnessError if the process exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _log_tail(log_path) if log_path else ""
            raise TrackingError(f"The MLflow server exited during start-up (exit code {proc.returncode}): {tail}"
                                + (f" (full log: {log_path})." if log_path else ""))
        if _answers(url + "/health"):
            return
        time.sleep(0.3)
    raise TrackingError(f"The MLflow server did not answer at {url} within {timeout:.0f} s"
                        + (f"; see its log {log_path}." if log_path else "."))


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Terminate the server and its workers (SIGTERM to its process group, then SIGKILL)."""
    if proc.poll() is not None:
        return
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # stuck, or a second Ctrl-C: stop now
        _signal_group(proc, signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
        proc.wait(timeout=grace)
    if os.name == "posix":  # the uvicorn worker may outlive its parent by a moment
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


# The watchdog's whole program (stdlib only, run with `python -I -S -c`): block on stdin, a pipe
# whose write end only `harness ui` holds, until EOF, which comes when that end is closed: a
# normal stop, or the harness's death in any way, since the kernel closes a dead process's files.
# Then end the server's process group: SIGTERM, and SIGKILL if anything is left after the grace.
_WATCHDOG = """
import os, signal, sys, time
pgid, grace = int(sys.argv[1]), float(sys.argv[2])
while os.read(0, 512):
    pass
try:
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.1)
        os.killpg(pgid, 0)  # ProcessLookupError once the whole group is gone
    os.killpg(pgid, signal.SIGKILL)
except (ProcessLookupError, PermissionError):
    pass
"""


@dataclass
class _Watchdog:
    """A separate process that ends the server's process group when this process goes away.

    Needed because a SIGKILLed `harness ui` runs no cleanup, and PR_SET_PDEATHSIG would only reach
    the direct child, not the uvicorn worker and job consumers. The watchdog holds the read end of
    a pipe whose write end only this process holds; EOF on it means "harness ui is gone". It runs
    in its own session, so neither a Ctrl-C in the terminal nor a kill of our process group ends
    it with us. POSIX only (process groups); elsewhere the server is stopped by `stop` alone.
    """

    proc: subprocess.Popen
    lifeline: int  # the pipe's write end; never written, only closed (by us, or by our death)

    @classmethod
    def start(cls, pgid: int, grace: float = WATCHDOG_GRACE_S) -> _Watchdog | None:
        """A watchdog for process group `pgid`; None where there are no process groups."""
        if os.name != "posix":
            return None
        # os.pipe's ends are not inheritable (PEP 446): the server, started before, and any later
        # child never hold the write end, so only our exit or `release` closes it.
        read_end, write_end = os.pipe()
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG, str(pgid), str(grace)],
                                    stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)  # the watchdog has its own copy
        return cls(proc, write_end)

    def release(self) -> None:
        """Let the watchdog end what is left of the group (normally nothing) and exit."""
        os.close(self.lifeline)
        try:
            self.proc.wait(timeout=WATCHDOG_GRACE_S + 5)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # it ends the group on its own
            pass


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM/SIGHUP like Ctrl-C so the server child is stopped, not orphaned."""
    if threading.current_thread() is not threading.main_thread() or os.name != "posix":
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_remote(uri: str) -> None:
    from harness import tracking

    try:
        tracking.check_reachable(uri)  # GET <uri>/health
    except Exception:  # noqa: BLE001 - refused, timed out, HTTP error: all mean "not answering"
        raise TrackingError(f"The tracking server {redact(uri)} does not answer; check that it runs and "
                            "tracking_uri / MLFLOW_TRACKING_URI.") from None


def _answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _log_tail(path: Path | None, lines: int = 3) -> str:
    """The last meaningful lines of the server's log, joined on one line."""
    if path is None or not path.exists():
        return ""
    text = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(text[-lines:])[-600:]


def _scheme(uri: str) -> str:
    head, sep, _ = uri.partition(":")
    # "C:\\..." (a Windows drive) and plain paths have no URI scheme.
    return head.lower() if sep and len(head) > 1 and "/" not in head else ""


def _http_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in _WILDCARD_HOSTS else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def _public_url(uri: str) -> str:
    """A server URI without credentials, for printing and opening in a browser."""
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
