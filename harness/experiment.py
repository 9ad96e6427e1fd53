"""Experiments: a name, a description and named variants (TrainConfigs), one per file.

Each file `experiments/<name>.py` defines a module-level `experiment = Experiment(...)`.
The folder is `HARNESS_EXPERIMENTS_DIR`, else `./experiments`, else the one shipped beside
the harness package. Names are plain identifiers, so a name can never reach outside that folder.
Files starting with `_` are helpers that experiment files may import (`import _models`): the
folder is on sys.path while a file runs. A file that fails to import (any exception, `sys.exit`,
`os._exit`, a `raise KeyboardInterrupt`) is reported as one HarnessError naming the file, the
line and the error.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from harness.config import Overrides, TrainConfig, field_names
from harness.errors import ExperimentFileError, HarnessError, UnknownNameError, first_line
from harness.registry import unknown_name_message
from harness.search_space import DEFAULT_SEARCH_SPACE, SearchSpace
from harness.validation import check_config


@dataclass(frozen=True)
class Experiment:
    """A named set of variants to train and compare."""

    name: str
    description: str
    variants: Mapping[str, TrainConfig]
    search_space: SearchSpace = field(default_factory=lambda: dict(DEFAULT_SEARCH_SPACE))  # for `harness tune`
    source_file: str | None = field(default=None, compare=False)  # set by the loader

    def __post_init__(self) -> None:
        if not self.variants:
            raise ExperimentFileError(f"Experiment '{self.name}' defines no variants; add at least one TrainConfig.")
        for name, cfg in self.variants.items():
            if not isinstance(cfg, TrainConfig):
                raise ExperimentFileError(f"Variant '{name}' of experiment '{self.name}' is not a TrainConfig.")
        for key in self.search_space:
            if key not in field_names():
                raise ExperimentFileError(
                    f"Search-space name '{key}' of experiment '{self.name}' is not a config field; "
                    + unknown_name_message("config key", key, field_names())
                )

    def resolve(self, overrides: Overrides | None = None, *, light: bool = False) -> dict[str, TrainConfig]:
        """Variants with `--set` overrides applied (common first, then per variant), values and
        names checked (`check_config`; `light`: without the costly imports a `tv_*` name needs)."""
        overrides = overrides or Overrides()
        unknown = set(overrides.per_variant) - set(self.variants)
        if unknown:
            raise UnknownNameError(unknown_name_message(f"variant of '{self.name}'", sorted(unknown)[0], self.variants))
        return {
            name: check_config(dataclasses.replace(cfg, **{**overrides.common, **overrides.per_variant.get(name, {})}),
                               light=light)
            for name, cfg in self.variants.items()
        }


def experiments_dir() -> Path:
    """Where experiment files are looked up."""
    env = os.environ.get("HARNESS_EXPERIMENTS_DIR")
    if env:
        return Path(env)
    local = Path("experiments")
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent.parent / "experiments"


def experiment_names(folder: Path | None = None) -> list[str]:
    """Names of all experiment files (without `.py`), sorted; files starting with `_` are helpers."""
    folder = folder or experiments_dir()
    return sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))


def check_name(name: str) -> str:
    """Return `name` if it is a plain identifier (what an experiment file's name must be), else
    raise UnknownNameError: a name such as `../x` would otherwise import a file outside the folder."""
    if not name.isidentifier():
        raise UnknownNameError(f"Experiment name '{name}' is not a plain name: use letters, digits and _ only "
                               "(the file experiments/<name>.py; `harness list` shows them).")
    return name


def load_experiment(name: str, folder: Path | None = None) -> Experiment:
    """Import `experiments/<name>.py` and return its `experiment` object.

    Raises HarnessError (one line naming the file, and the line when known) for a bad name, a
    missing file, and a file that fails to import or defines no matching `experiment`."""
    folder = folder or experiments_dir()
    if not name.isidentifier():
        # Nothing is built from the name before this check: only a file `harness list` found
        # (e.g. my-exp.py) gets a hint, anything else (../x) is refused as it is.
        if name in experiment_names(folder):
            raise ExperimentFileError(f"{_shown(folder / f'{name}.py')}: the file name is not a plain name "
                                      f"(letters, digits and _); rename it to {_identifier_like(name)}.py.")
        check_name(name)
    path = folder / f"{name}.py"
    shown = _shown(path)
    if not path.is_file():
        raise UnknownNameError(unknown_name_message("experiment", name, experiment_names(folder)))
    spec = importlib.util.spec_from_file_location(f"harness_experiments.{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with _noting_ctrl_c() as ctrl_c, _refusing_os_exit(), _importable_from(folder):
        try:
            spec.loader.exec_module(module)
        except _OsExitCalled as exc:  # os._exit would end the process at once, output unflushed
            raise ExperimentFileError(_import_failure(shown, path, f"calls os._exit({exc.code!r}) at import")) from None
        except KeyboardInterrupt:
            if ctrl_c:  # a real Ctrl-C (SIGINT) while importing: the user wants to stop
                raise
            raise ExperimentFileError(_import_failure(shown, path, "raises KeyboardInterrupt at import")) from None
        except SystemExit as exc:  # an experiment file must not end the command
            raise ExperimentFileError(_import_failure(shown, path, f"calls sys.exit({exc.code!r}) at import")) from None
        except HarnessError as exc:  # e.g. an invalid TrainConfig: its message says what to change
            raise ExperimentFileError(_import_failure(shown, path, first_line(exc))) from None
        except SyntaxError as exc:  # its line is in the exception, not in the traceback
            raise ExperimentFileError(_syntax_failure(shown, path, exc)) from None
        except BaseException as exc:  # noqa: BLE001 - any other fault of the file's own code or imports
            raise ExperimentFileError(
                _import_failure(shown, path, f"{type(exc).__name__}: {first_line(exc)}")) from None
    exp = getattr(module, "experiment", None)
    if not isinstance(exp, Experiment):
        raise ExperimentFileError(f"{shown} must define `experiment = Experiment(...)` at module level.")
    if exp.name != name:
        raise ExperimentFileError(f"{shown} defines experiment '{exp.name}'; rename it to '{name}' to match its file.")
    return dataclasses.replace(exp, source_file=str(path.resolve()))


@contextmanager
def _importable_from(folder: Path) -> Iterator[None]:
    """The experiments folder on sys.path while a file runs, so experiments can share a helper
    file (`import _models`, from experiments/_models.py), as a script imports its neighbours."""
    entry = str(folder.resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _shown(path: Path) -> str:
    """`path` as the user knows it: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (OSError, ValueError):
        return str(path)


def _identifier_like(name: str) -> str:
    """A plain name close to `name`, to suggest as the file's new name (my-exp -> my_exp)."""
    cleaned = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return cleaned if cleaned.isidentifier() else f"exp_{cleaned}"


def _line_in(path: Path) -> int | None:
    """The line of `path` being run when the exception now handled was raised (its innermost frame
    in that file: for a fault inside an imported module, the file's own import line)."""
    target = os.path.abspath(path)  # the import compiles the file under its absolute path
    line = None
    for frame in traceback.extract_tb(sys.exc_info()[2]):
        if os.path.abspath(frame.filename) == target:
            line = frame.lineno
    return line


def _import_failure(shown: str, path: Path, what: str) -> str:
    line = _line_in(path)
    return f"{shown}{f' line {line}' if line else ''}: {what}"


def _syntax_failure(shown: str, path: Path, exc: SyntaxError) -> str:
    message = f"{type(exc).__name__}: {exc.msg}"
    if exc.filename and os.path.abspath(exc.filename) == os.path.abspath(path) and exc.lineno:
        return f"{shown} line {exc.lineno}: {message}"
    # A syntax error in a module the file imports: name that module too.
    where = f" ({exc.filename} line {exc.lineno})" if exc.filename else ""
    return _import_failure(shown, path, message + where)


class _OsExitCalled(BaseException):
    """Raised in place of `os._exit(code)` while an experiment file is imported (a BaseException, so
    that a file's own `except Exception` does not swallow it)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextmanager
def _refusing_os_exit() -> Iterator[None]:
    """While importing a file, make `os._exit` raise `_OsExitCalled` instead of ending the process, then
    restore it. Only in this process and thread: a forked child or another thread exits as asked."""
    real_exit = os._exit
    pid, thread = os.getpid(), threading.get_ident()

    def refused_exit(code: int) -> NoReturn:
        if os.getpid() != pid or threading.get_ident() != thread:
            real_exit(code)
        raise _OsExitCalled(code)

    os._exit = refused_exit
    try:
        yield
    finally:
        os._exit = real_exit


@contextmanager
def _noting_ctrl_c() -> Iterator[list[bool]]:
    """While importing a file, note a real Ctrl-C (SIGINT) in the yielded list, then act as the
    handler in place did: a file's own `raise KeyboardInterrupt` is then told apart from the user's."""
    pressed: list[bool] = []
    # Signals reach the main thread only; a handler installed outside Python (None) cannot be restored.
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is None:
        yield pressed
        return

    def handler(signum: int, frame: object) -> None:
        pressed.append(True)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)
