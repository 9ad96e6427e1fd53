"""`harness dashboard`: optuna-dashboard on the study storage that `harness tune` writes to.

The storage is resolved and opened exactly as `harness tune` / `harness study` do
(`harness.study_store.open_storage`: default `sqlite:///optuna.db`, any SQLAlchemy URL, or
`journal:PATH`). The dashboard is served in this process (optuna-dashboard's WSGI app on a
threaded wsgiref server), so a storage password never reaches a command line or a child
process; it is only ever printed through `harness.uris.redact`. optuna-dashboard is an
optional dependency: the `dashboard` extra.
"""

from __future__ import annotations

import errno
import socket
import socketserver
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from harness import reporter
from harness.errors import ConfigError, HarnessError, TrackingError
from harness.uris import redact

if TYPE_CHECKING:
    import optuna

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080  # optuna-dashboard's own default
# The distribution is harness-cnn, installed from its checkout: `harness` on PyPI is another project.
INSTALL_HINT = ("optuna-dashboard is not installed; install the dashboard extra with "
                "`pip install -e '.[dashboard]'` from the harness checkout (or `pip install optuna-dashboard`).")
_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}
_LOOPBACK_HOSTS = {"localhost", "::1"}
_IN_USE_ERRNOS = {errno.EADDRINUSE, 10048}  # 10048: WSAEADDRINUSE on Windows


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request (the dashboard polls while a page loads)."""

    daemon_threads = True  # Ctrl-C does not wait for a browser's open request
    allow_reuse_address = True  # as uvicorn and `harness ui`: a port in TIME_WAIT counts as free

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves socket.getfqdn(host): a reverse DNS lookup that can
        # hang for many seconds on a machine without network. The name is only used in CGI
        # variables, so the host as given does.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])
        self.setup_environ()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that closes a kept-open connection (a tab closed, a reload) resets it: not an
        # error worth a traceback in the terminal. Anything else still gets socketserver's report.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No access log: the terminal keeps the address line, not one line per page request."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@dataclass
class Dashboard:
    """A bound, not yet serving, optuna-dashboard: the storage it shows and where it answers."""

    storage_url: str
    server: WSGIServer
    study_id: int | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        """The page to open: the study's, with --study, else the list of studies."""
        page = f"/dashboard/studies/{self.study_id}" if self.study_id is not None else "/dashboard"
        return http_url(str(self.server.server_address[0]), self.port) + page

    def line(self) -> str:
        """The one line printed once it listens (the storage with any password hidden)."""
        return f"Optuna dashboard for {redact(self.storage_url)} at {self.url} (Ctrl-C to stop)"


def require_dashboard() -> ModuleType:
    """The optuna_dashboard module, or a HarnessError saying how to install the extra."""
    try:
        import optuna_dashboard
    except ImportError:
        raise HarnessError(INSTALL_HINT) from None
    return optuna_dashboard


def http_url(host: str, port: int) -> str:
    """The address to browse for a server bound to `host` (a wildcard bind is browsed on 127.0.0.1)."""
    shown = "127.0.0.1" if host in _WILDCARD_HOSTS else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def is_local_only(host: str) -> bool:
    """True when only this machine can reach a server bound to `host`."""
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def missing_storage_file(storage_url: str) -> str | None:
    """The file of a sqlite or journal storage if it does not exist (else None).

    Opening it would create an empty storage (a stray optuna.db in the wrong folder) and show
    no studies; better to say where `harness tune` would have written.
    """
    if storage_url.startswith("journal:"):
        path = storage_url.removeprefix("journal:")
    elif storage_url.startswith("sqlite:///"):
        path = storage_url.removeprefix("sqlite:///").split("?", 1)[0]
        if path in ("", ":memory:"):
            return None
    else:
        return None
    return path if not Path(path).exists() else None


def open_dashboard(storage_url: str | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                   study: str | None = None) -> Dashboard:
    """Open the storage, check `study` (if given) and bind `host:port` (0: any free port).

    Every failure is a one-line HarnessError: optuna-dashboard missing, no storage file, an
    unreachable or unusable storage (password hidden), an unknown study, a busy port.
    """
    dashboard_module = require_dashboard()  # first: it is instant, the storage may take seconds
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is not a TCP port; use a number from 1 to 65535 (0 picks a free one).")
    # Imported here: harness.study_store loads Optuna (about a second), not needed for the checks above.
    from harness.study_store import DEFAULT_STORAGE, load_study, open_storage

    url = storage_url or DEFAULT_STORAGE
    missing = missing_storage_file(url)
    if missing:
        raise TrackingError(f"No Optuna storage at {missing} ({redact(url)}): run `harness tune` in this folder "
                            "first, or pass the storage URL it used as storage.")
    storage = open_storage(url)  # the one resolution `harness tune` uses; its errors hide the password
    study_id = _study_id(storage, url, study, load_study) if study else None
    server = bind(host, port, dashboard_module.wsgi(storage))
    return Dashboard(url, server, study_id)


def _study_id(storage: optuna.storages.BaseStorage, url: str, name: str,
              load_study: Callable[[str | None, str], object]) -> int:
    load_study(url, name)  # an unknown name: `harness study`'s one line, with the closest names
    return storage.get_study_id_from_name(name)


def bind(host: str, port: int, app: Callable[..., Any]) -> WSGIServer:
    """A server for `app` listening on `host:port` now, or a HarnessError (busy port, unknown host).

    Binding is the check: nothing can take the port between a probe and the start.
    """
    server_class = _Server6 if ":" in host else _Server
    try:
        return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    except socket.gaierror:
        raise ConfigError(f"host '{host}' is not a known host name or address; use e.g. host '127.0.0.1'.") from None
    except OSError as exc:
        if exc.errno in _IN_USE_ERRNOS:
            raise ConfigError(f"Port {port} on {host} is already in use (another dashboard?); pick another "
                              "port (0 picks a free one).") from None
        raise ConfigError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          "choose another host or port.") from None


def serve(storage_url: str | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, study: str | None = None,
          echo: Callable[[str], None] = reporter.status) -> None:
    """Serve optuna-dashboard on the study storage until Ctrl-C; returns after a clean stop.

    Prints the address to open once the port is bound (the server answers from then on).
    """
    dashboard = open_dashboard(storage_url, host, port, study)
    try:
        echo(dashboard.line())
        if not is_local_only(host):
            # optuna-dashboard has no login, and its pages can rename and delete studies.
            echo(f"Listening on {host}: anyone who can reach this port can change and delete the studies.")
        dashboard.server.serve_forever()
    except KeyboardInterrupt:
        echo("Optuna dashboard stopped.")
    finally:
        dashboard.server.server_close()
