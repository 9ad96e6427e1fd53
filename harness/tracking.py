"""The one owner of MLflow: `Tracker`, opened once per command on an explicit tracking URI.

Every MLflow call of every command goes through a `Tracker`'s methods, each naming its run
id: there is no process-global tracking URI and no fluent "active run", so parallel trials and
resumed runs cannot log into each other. MLflow is imported when a tracker is opened, not
when this module is imported: commands that track nothing never pay for it.
"""

from __future__ import annotations

import errno
import functools
import inspect
import io
import logging
import os
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import harness
from harness import reporter
from harness.config import TrainConfig, flatten
from harness.errors import HarnessError, TrackingError, first_line, os_error_reason, retry
from harness.registry import closest_name
from harness.uris import redact, redact_text

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from harness.distributed import Dist

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's embedded default; artifacts go to ./mlruns
PARENT_RUN = "mlflow.parentRunId"
STUDY_NAME_TAG = "optuna.study_name"  # on a study's parent run and its trials (the name Optuna-MLflow tools use)
TRIAL_NUMBER_TAG = "optuna.trial_number"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
DATASET_CONTEXT_TAG = "mlflow.data.context"  # on a dataset input: train / validation / test
KIND_TAG = "harness.kind"  # "run" / "study" parents; "variant" / "trial" children
VARIANT_TAG = "harness.variant"
TRIAL_STATE_TAG = "harness.trial_state"  # Optuna's own state name (COMPLETE, PRUNED, FAIL) on trial runs
SEED_TAG = "harness.seed"  # the config seed of a child run (repeated runs train each variant at several)
FAILURE_TAG = "harness.failure_reason"
DATA_DIGEST_TAG = "harness.data_digest"  # all of a child run's splits in one digest (`harness compare`'s data column)
# Seconds a resumed run lay idle between its sessions (summed over resumes; `lifecycle.log_pause`):
# `harness compare` takes them off end - start, so its wall time counts the time the run was worked on.
PAUSED_METRIC = "paused_seconds"
# Runs started by one `harness run --nproc-per-node` launch carry its id, so that the launcher can
# end them with the reason when a process died before it could (`harness.launch`).
LAUNCH_ENV = "HARNESS_LAUNCH_ID"
LAUNCH_TAG = "harness.launch_id"
# The calls whose answers every rank needs (run ids, what is already logged); all other calls are
# rank 0's alone. See `open_for`.
SHARED_CALLS = ("ensure_experiment", "find_experiment", "start_run", "metric_history")
_PARAM_LIMIT = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH in MLflow 3

# Every wait on a tracking server is bounded: MLflow's defaults (7 retries with doubling
# back-off, 120 s per request) leave a dead server unnoticed for over ten minutes. With these, a
# request fails within about 3 s when the server is gone (connection refused) and about 35 s
# when it hangs (3 tries of 10 s). Set the variables yourself to choose otherwise.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_UNREACHABLE_SIGNS = ("Max retries exceeded", "Connection refused", "Failed to establish", "timed out",
                      "Connection aborted", "RemoteDisconnected")

F = TypeVar("F", bound=Callable[..., Any])


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri`, else MLFLOW_TRACKING_URI, else the embedded sqlite store in the working folder."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_sqlite_file(uri: str) -> None:
    """Raise at once if a `sqlite:///PATH` store cannot be written: PATH a folder, or its file or
    folder read-only (MLflow would retry for minutes before saying so)."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    if str(path) in ("", ":memory:"):
        return
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise TrackingError(f"{path} is a folder, not a database file")
    if path.exists() and not os.access(path, os.W_OK):
        raise TrackingError(f"{path} is not writable "
                            f"({'read-only file system' if not os.access(folder, os.W_OK) else 'permission denied'})")
    if folder.exists() and not os.access(folder, os.W_OK):
        raise TrackingError(f"folder {folder} is not writable (sqlite needs it for its journal)")


def check_reachable(uri: str) -> None:
    """Raise within seconds if a database or tracking server store does not answer (MLflow's
    own retries take minutes to give up); local stores pass."""
    scheme = uri.split(":", 1)[0]
    if scheme.startswith(("postgresql", "mysql", "mssql")):
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri)
        try:
            engine.connect().close()
        finally:
            engine.dispose()
    elif scheme in ("http", "https"):
        import requests

        requests.get(uri.rstrip("/") + "/health", timeout=10).raise_for_status()


def now_ms() -> int:
    """The current time as MLflow stores it (ms since the epoch)."""
    return int(time.time() * 1000)


def _short(value: str) -> str:
    return value if len(value) <= _PARAM_LIMIT else value[: _PARAM_LIMIT - 3] + "..."


@dataclass(frozen=True)
class DatasetRecord:
    """One dataset input of a run (MLflow's "Datasets used"): `source` and `profile` as logged (JSON text)."""

    context: str  # train / validation / test, "" when untagged
    name: str
    digest: str
    source: str
    profile: str


@dataclass(frozen=True)
class RunRecord:
    """One tracked run as the rest of the harness sees it: plain values, no MLflow object.
    Times are ms since the epoch, as MLflow stores them (`end_time` is None while it runs);
    `metrics` holds each metric's latest value."""

    run_id: str
    name: str
    experiment_id: str
    status: str  # RUNNING, FINISHED, FAILED or KILLED
    start_time: int
    end_time: int | None
    artifact_uri: str
    params: Mapping[str, str]
    metrics: Mapping[str, float]
    tags: Mapping[str, str]
    datasets: tuple[DatasetRecord, ...] = ()

    @classmethod
    def of(cls, run: Run) -> RunRecord:
        """The record of an MLflow `Run` (the one place that reads MLflow's run entity)."""
        info, data = run.info, run.data
        datasets = tuple(
            DatasetRecord(context=next((t.value for t in d.tags or [] if t.key == DATASET_CONTEXT_TAG), ""),
                          name=d.dataset.name, digest=d.dataset.digest, source=d.dataset.source or "",
                          profile=d.dataset.profile or "")
            for d in (run.inputs.dataset_inputs if run.inputs else None) or [])
        return cls(run_id=info.run_id, name=info.run_name or "", experiment_id=info.experiment_id,
                   status=info.status, start_time=info.start_time or 0, end_time=info.end_time,
                   artifact_uri=info.artifact_uri or "", params=dict(data.params),
                   metrics=dict(data.metrics), tags=dict(data.tags), datasets=datasets)


def run_seed(run: RunRecord) -> int | None:
    """The config seed a child run trained with (its seed tag, else its logged `seed` param)."""
    text = run.tags.get(SEED_TAG, run.params.get("seed"))
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _guarded(action: str) -> Callable[[F], F]:
    """Tracker methods fail with one `TrackingError` naming `action` (see `Tracker._error`),
    whatever MLflow, the database driver or the file system raised."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: Tracker, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except HarnessError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes one line
                raise self._error(exc, action, args[0] if args and isinstance(args[0], str) else None) from exc

        return wrapper  # type: ignore[return-value]

    return decorate


class Tracker:
    """An MLflow client on one explicit tracking URI; `Tracker.open(uri)` checks the store first."""

    def __init__(self, client: MlflowClient, uri: str) -> None:
        self._client = client
        self.uri = uri

    @property
    def local(self) -> Tracker:
        """This tracker (as `RankZeroTracker.local` is rank 0's): for work rank 0 does alone."""
        return self

    @classmethod
    def open(cls, uri: str | None = None) -> Tracker:
        """A tracker on the resolved URI (`uri`, else $MLFLOW_TRACKING_URI, else the embedded
        sqlite store); an unusable store is one TrackingError naming it (password hidden)."""
        import mlflow  # noqa: F401 - configures its loggers on import; quieted just below

        resolved = resolve_tracking_uri(uri)
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter on stderr
        # MLflow logs every failed database write with its traceback before raising; the raised
        # error is reported in one line (`_guarded`).
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        if resolved.split(":", 1)[0] in ("http", "https"):
            for name, value in HTTP_LIMITS.items():
                os.environ.setdefault(name, value)
            # urllib3 logs every retry as a warning; a store that is down is reported once, by us.
            logging.getLogger("urllib3").setLevel(logging.ERROR)
        try:
            check_sqlite_file(resolved)
            check_reachable(resolved)
            return cls(retry(lambda: _checked_client(resolved)), resolved)
        except Exception as exc:  # noqa: BLE001 - bad URI, server down, missing driver
            reason = redact_text(first_line(exc), resolved)
            raise TrackingError(
                f"Cannot use MLflow tracking store '{redact(resolved)}' ({reason}); "
                "check tracking_uri / MLFLOW_TRACKING_URI and that the server is reachable."
            ) from None

    def _error(self, exc: Exception, action: str, run_id: str | None = None) -> TrackingError:
        """One line for a failed MLflow call: the path and "no space left" for a local write, "does
        not answer" for a server that is down, else MLflow's own first line (passwords hidden)."""
        store = redact(self.uri)
        if isinstance(exc, OSError) and exc.errno is not None:
            hint = ("free some space, or log elsewhere with tracking_uri" if exc.errno == errno.ENOSPC else
                    "run from a writable folder (the default store keeps artifacts in ./mlruns), or log "
                    "elsewhere with tracking_uri")
            where = os_error_reason(exc) if exc.filename else f"{self._artifact_folder(run_id)}: {os_error_reason(exc)}"
            return TrackingError(f"Cannot {action} in MLflow ({where}); {hint}.")
        text = redact_text(first_line(exc), self.uri)
        chain = [exc, exc.__cause__, exc.__context__]
        if any(sign in str(e) for e in chain if e is not None for sign in _UNREACHABLE_SIGNS):
            return TrackingError(f"The MLflow tracking store {store} does not answer ({text[:120]})", unreachable=True)
        if "disk is full" in text or "No space left" in text:
            return TrackingError(f"Cannot {action} in MLflow store {store}: no space left on its disk ({text}).")
        return TrackingError(f"Cannot {action} in MLflow store {store}: {text}")

    def _artifact_folder(self, run_id: str | None) -> str:
        """Where run `run_id` keeps its artifacts, for messages about a failed local write."""
        try:
            uri = self._client.get_run(run_id).info.artifact_uri if run_id else ""
        except Exception:  # noqa: BLE001 - only for a message
            uri = ""
        return uri.removeprefix("file://") or "the MLflow artifact folder"

    # ------------------------------------------------------------- experiments and runs

    @_guarded("create the experiment")
    def ensure_experiment(self, name: str, description: str = "") -> str:
        """Id of MLflow experiment `name`, created (with `description` as its note) if missing."""
        from mlflow.exceptions import MlflowException

        exp = self._client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self._client.create_experiment(name, tags={"mlflow.note.content": description})
        except MlflowException:
            exp = self._client.get_experiment_by_name(name)  # another worker created it at the same moment
            if exp is None:
                raise
            return exp.experiment_id

    @_guarded("read experiments")
    def find_experiment(self, name: str) -> str | None:
        """Id of MLflow experiment `name`, or None if it does not exist (nothing is created)."""
        exp = self._client.get_experiment_by_name(name)
        return exp.experiment_id if exp is not None else None

    @_guarded("read experiments")
    def experiment_name(self, experiment_id: str) -> str | None:
        """Name of the MLflow experiment with id `experiment_id`, or None if there is none."""
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_experiment(experiment_id).name
        except MlflowException:
            return None

    @_guarded("read experiments")
    def experiment_description(self, name: str) -> str | None:
        """The description recorded when experiment `name` was created (its MLflow note), or None."""
        exp = self._client.get_experiment_by_name(name)
        return exp.tags.get("mlflow.note.content") or None if exp is not None else None

    @_guarded("read experiments")
    def experiment_names(self) -> list[str]:
        """Names of the experiments in the store (for "did you mean" hints)."""
        return [e.name for e in self._client.search_experiments(max_results=1000)]

    @_guarded("create a run")
    def start_run(self, experiment_id: str, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
        """Create a run (nested under `parent_id` if given); returns its id."""
        all_tags = dict(tags)
        if parent_id:
            all_tags[PARENT_RUN] = parent_id
        return self._client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id

    @_guarded("reopen a run")
    def reopen_run(self, run_id: str) -> None:
        """Mark an interrupted run RUNNING again (resume logs into the same run), without the
        failure reason of its interruption."""
        self._client.update_run(run_id, status="RUNNING")
        if FAILURE_TAG in self._client.get_run(run_id).data.tags:
            self._client.delete_tag(run_id, FAILURE_TAG)

    @_guarded("end a run")
    def end_run(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Terminate a run as FINISHED, FAILED or KILLED, recording `reason` as a tag."""
        if reason:
            self._client.set_tag(run_id, FAILURE_TAG, reason[:5000])
        self._client.set_terminated(run_id, status=status)

    @_guarded("read a run")
    def find_run(self, run_id: str) -> RunRecord | None:
        """Run `run_id`, or None if the store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            return RunRecord.of(self._client.get_run(run_id))
        except MlflowException:
            return None

    @_guarded("read runs")
    def latest_parent_run(self, experiment_id: str, unfinished_only: bool = False, kind: str = "run",
                          finished_only: bool = False) -> RunRecord | None:
        """The newest parent run of the experiment (`kind` "run" for `harness run`, "study" for
        `harness tune`), optionally only unfinished (or only finished) ones."""
        filt = f"tags.`{KIND_TAG}` = '{kind}'"
        if unfinished_only:
            filt += " and attributes.status != 'FINISHED'"
        if finished_only:
            filt += " and attributes.status = 'FINISHED'"
        runs = self._client.search_runs([experiment_id], filter_string=filt,
                                        order_by=["attributes.start_time DESC"], max_results=1)
        return RunRecord.of(runs[0]) if runs else None

    @_guarded("read runs")
    def latest_parent_anywhere(self, kind: str = "run") -> tuple[str, RunRecord] | None:
        """(experiment name, run) of the newest parent run of `kind` in the whole store, or None."""
        names = {e.experiment_id: e.name for e in self._client.search_experiments(max_results=1000)}
        runs = self._client.search_runs(list(names), filter_string=f"tags.`{KIND_TAG}` = '{kind}'",
                                        order_by=["attributes.start_time DESC"], max_results=1) if names else []
        return (names[runs[0].info.experiment_id], RunRecord.of(runs[0])) if runs else None

    @_guarded("read runs")
    def launched_runs(self, experiment_id: str, launch_id: str) -> list[RunRecord]:
        """The runs (parents and children) started by one `harness run --nproc-per-node` launch
        that did not finish."""
        return [RunRecord.of(r) for r in self._client.search_runs(
            [experiment_id], filter_string=f"tags.`{LAUNCH_TAG}` = '{launch_id}' and attributes.status != 'FINISHED'",
            max_results=5000)]

    @_guarded("read runs")
    def parent_runs(self, experiment_id: str, limit: int) -> list[RunRecord]:
        """The newest `limit` parent runs (`harness run` and `harness tune`) of the experiment, newest first."""
        runs = [RunRecord.of(r) for kind in ("run", "study") for r in self._client.search_runs(
            [experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{kind}'",
            order_by=["attributes.start_time DESC"], max_results=limit)]
        return sorted(runs, key=lambda r: r.start_time, reverse=True)[:limit]

    @_guarded("read runs")
    def children(self, experiment_id: str, parent_id: str) -> list[RunRecord]:
        """Every child run of `parent_id` (all seeds of all variants, or all trials), oldest first."""
        return [RunRecord.of(r) for r in self._client.search_runs(
            [experiment_id], filter_string=f"tags.`{PARENT_RUN}` = '{parent_id}'",
            order_by=["attributes.start_time ASC"], max_results=5000)]

    @_guarded("read metrics")
    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of a metric, by step; per-epoch metrics use step = epoch."""
        return sorted((m.step, m.value) for m in self._client.get_metric_history(run_id, key))

    # ------------------------------------------------------------- params, metrics, tags

    @_guarded("log params")
    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Log params in one batch, shortening values beyond MLflow's length limit."""
        from mlflow.entities import Param

        items = [Param(k, _short(str(v))) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self._client.log_batch(run_id, params=items[start : start + 100])

    @_guarded("log metrics")
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Log several metrics at one step in a single request."""
        self.log_epochs(run_id, [(step, metrics, now_ms())])

    @_guarded("log metrics")
    def log_epochs(self, run_id: str, records: list[tuple[int, dict[str, float], int]]) -> None:
        """Log (step, metrics, timestamp in ms) records in as few requests as MLflow allows."""
        from mlflow.entities import Metric

        metrics = [Metric(k, float(v), ms, step) for step, record, ms in records for k, v in record.items()]
        for start in range(0, len(metrics), 1000):
            self._client.log_batch(run_id, metrics=metrics[start : start + 1000])

    @_guarded("set tags")
    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set several tags in one request."""
        from mlflow.entities import RunTag

        self._client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @_guarded("log the config")
    def log_config(self, run_id: str, config: TrainConfig, source_file: str | None) -> None:
        """Every config field as a param, the full config as JSON, and the experiment's source file."""
        self.log_params(run_id, flatten(config))
        self._client.log_dict(run_id, config.to_dict(), "config.json")
        if source_file and Path(source_file).is_file():
            self._client.log_artifact(run_id, source_file, "source")

    # ------------------------------------------------------------- artifacts

    @_guarded("log an artifact")
    def log_bytes(self, run_id: str, data: bytes, artifact_file: str) -> None:
        """Save `data` as the artifact `artifact_file` (a path inside the run's artifacts)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            self._client.log_artifact(run_id, str(path), None if parent == "." else parent)

    @_guarded("log an artifact")
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Save `text` as the artifact `artifact_file`."""
        self._client.log_text(run_id, text, artifact_file)

    @_guarded("log an artifact")
    def log_dict(self, run_id: str, data: dict[str, Any], artifact_file: str) -> None:
        """Save `data` as a JSON (or YAML, by extension) artifact."""
        self._client.log_dict(run_id, data, artifact_file)

    @_guarded("log an artifact")
    def log_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Copy the local file `path` into the run's artifacts (under `artifact_path`)."""
        self._client.log_artifact(run_id, str(path), artifact_path)

    @_guarded("log a figure")
    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib figure as a PNG artifact and free it."""
        from harness.reports import release

        png = io.BytesIO()
        figure.savefig(png, format="png")
        release(figure)
        self.log_bytes(run_id, png.getvalue(), artifact_file)

    @_guarded("log an artifact")
    def log_array(self, run_id: str, array: Any, artifact_file: str) -> None:
        """Save a NumPy array (`.npy`) as an artifact."""
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, array)
        self.log_bytes(run_id, buffer.getvalue(), artifact_file)

    @_guarded("log the model")
    def log_model(self, run_id: str, model: Any, input_example: Any, metadata: dict[str, Any] | None = None,
                  step: int = 0) -> str:
        """`mlflow.pytorch.log_model` into run `run_id` with a signature, an input example,
        `metadata` (what `harness predict` needs: classes, channels, image size) and the model's
        real requirements (torch, plus torchvision only if one of its layers comes from it);
        returns the model URI. MLflow links the run's metrics logged at `step` to the
        logged-model record (`search_logged_models` shows them): log the final metrics at
        `step` first."""
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        with torch.inference_mode():
            output = model(torch.from_numpy(input_example)).numpy()
        signature = infer_signature(input_example, output)
        # Explicit requirements: MLflow's inference would import the model in a subprocess
        # (~10 s), and this package is not on the public index under its import name.
        # The logged-model record is created here, in the run's own experiment: left to MLflow,
        # it would go to the process's default experiment, where `runs:/<id>/model` misses it.
        run = self._client.get_run(run_id)
        record = self._client.create_logged_model(run.info.experiment_id, name="model", source_run_id=run_id,
                                                  params=dict(run.data.params))
        with self._model_logging_uri():
            info = mlflow.pytorch.log_model(model, name="model", run_id=run_id, model_id=record.model_id,
                                            signature=signature, input_example=input_example, step=step,
                                            metadata=metadata, pip_requirements=model_requirements(model))
        return info.model_uri

    @_guarded("read the model")
    def model_info(self, model_uri: str) -> dict[str, Any]:
        """What a logged model says of itself: its `metadata` (see `log_model`), the run that
        logged it (`run_id`) and its input signature (`inputs`, as text)."""
        from mlflow.models import get_model_info

        with self._model_logging_uri(), _quiet_downloads():
            info = get_model_info(model_uri)
        return {"metadata": dict(info.metadata or {}), "run_id": info.run_id,
                "inputs": str(info.signature.inputs) if info.signature else ""}

    @_guarded("load the model")
    def load_model(self, model_uri: str, trust: bool = False) -> Any:
        """The logged PyTorch model itself (`mlflow.pytorch.load_model`), on the CPU: a
        `torch.export` program, inference-only already (its `.eval()` raises). Only the format
        the harness logs is loaded (`harness.model_format`): anything that could run code as it
        is unpickled is refused first, unless `trust`."""
        import mlflow.pytorch

        with self._checked_model(model_uri, trust) as folder:
            return mlflow.pytorch.load_model(str(folder), map_location="cpu")

    @_guarded("load the model")
    def load_pyfunc(self, model_uri: str, trust: bool = False) -> Any:
        """MLflow's generic loader (`mlflow.pyfunc.load_model`): what a serving stack would call;
        the model on the CPU even where a GPU is visible, as `load_model` puts it. Checked as
        `load_model` checks it."""
        import mlflow.pyfunc

        with self._checked_model(model_uri, trust) as folder, _env("MLFLOW_DEFAULT_PREDICTION_DEVICE", "cpu"):
            return mlflow.pyfunc.load_model(str(folder))

    @contextmanager
    def _checked_model(self, model_uri: str, trust: bool) -> Iterator[Path]:
        """The model downloaded once into a temporary folder and checked there (what is checked is
        what is loaded); MLflow's own pickle guard on for the load, so it also refuses a pt2
        archive whose records are not plain tensors. `trust` lifts both."""
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException

        from harness.model_format import UntrustedModelError, check_loadable, refusal

        with tempfile.TemporaryDirectory(prefix="harness-model-") as tmp, self._model_logging_uri(), \
                _quiet_downloads():
            folder = Path(download_artifacts(artifact_uri=model_uri, dst_path=tmp))
            check_loadable(folder, model_uri, trust)
            with _env("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true" if trust else "false"):
                try:
                    yield folder
                except MlflowException as exc:
                    if not trust and "pickle" in str(exc).lower():
                        raise UntrustedModelError(refusal(model_uri, "a pt2 archive holding pickled objects "
                                                                     "beyond plain tensors")) from None
                    raise

    # ------------------------------------------------------------- model registry

    @_guarded("register the model")
    def register_model(self, model_uri: str, name: str, tags: dict[str, str]) -> str:
        """A new version of registered model `name` (created if missing) from `model_uri`, with
        `tags`; returns the version number. `mlflow.register_model` itself: it records the
        logged model (`models:/m-...`) as the version's source, which MLflow 3 can load back."""
        import mlflow

        with self._model_logging_uri():
            version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
        return str(version.version)

    @_guarded("read the model registry")
    def alias_version(self, name: str, alias: str) -> tuple[str, dict[str, str]] | None:
        """(version, tags) that alias `alias` of registered model `name` points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            version = self._client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise
        return str(version.version), dict(version.tags)

    @_guarded("read the model registry")
    def model_versions(self, name: str) -> list[tuple[str, dict[str, str]]]:
        """(version, tags) of every version of registered model `name`, read now from the store."""
        escaped = name.replace("'", "\\'")
        versions = self._client.search_model_versions(f"name = '{escaped}'")
        return [(str(v.version), dict(v.tags)) for v in versions]

    @_guarded("set a model alias")
    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point alias `alias` of registered model `name` at `version`. Two processes setting a
        new alias at once race in MLflow's look-up then insert; the loser retries (an update)."""
        retry(lambda: self._client.set_registered_model_alias(name, alias, version), delay=0.05,
              when=_insert_raced)

    @_guarded("tag a model version")
    def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Set tags on one version of a registered model."""
        for key, value in tags.items():
            self._client.set_model_version_tag(name, version, key, str(value))

    # ------------------------------------------------------------- lineage and machine

    @_guarded("log the datasets")
    def log_datasets(self, run_id: str, datasets: list[dict[str, Any]]) -> None:
        """Record each dataset the run read (`mlflow.log_input`: the UI's "Datasets used").
        Each item: name, digest, source, context (train / validation / test) and profile (a dict,
        e.g. sample and class counts)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [DatasetInput(Dataset(name=d["name"], digest=d["digest"], source_type=d.get("source_type", "local"),
                                       source=json.dumps({"uri": d["source"]}),
                                       profile=json.dumps(d.get("profile", {}))),
                               tags=[InputTag(DATASET_CONTEXT_TAG, d["context"])]) for d in datasets]
        # Two runs recording the same new dataset at once (parallel trials, workers): MLflow looks
        # it up, then inserts it, and the second insert fails on the unique key; the retry finds it.
        retry(lambda: self._client.log_inputs(run_id, datasets=inputs), delay=0.05, when=_insert_raced)

    @contextmanager
    def system_metrics(self, run_id: str, interval: float = 10.0) -> Iterator[None]:
        """MLflow's own system-metrics monitor (CPU, memory, disk, network; GPU when NVIDIA's
        management library is installed) on run `run_id` while the block runs, sampled every
        `interval` seconds ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins, as in MLflow). A run
        shorter than one interval still gets one sample, taken as the block ends."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)  # no "started monitoring" lines
        try:
            monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, tracking_uri=self.uri)
        except Exception as exc:  # noqa: BLE001 - e.g. psutil missing: the run trains without them
            reporter.warning(f"no system metrics for run {run_id} ({first_line(exc)}); "
                             "install psutil, or turn system metrics off (system_metrics=False)")
            yield
            return
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()
            try:
                if not any(k.startswith("system/") for k in self._client.get_run(run_id).data.metrics):
                    monitor.collect_metrics()
                    monitor.publish_metrics(monitor.aggregate_metrics())
                    monitor.mlflow_logger.flush()
            except Exception:  # noqa: BLE001 - a missing sample must not fail the run it describes
                pass

    @contextmanager
    def _model_logging_uri(self) -> Iterator[None]:
        """MLflow's model logging reads the process's tracking URI instead of taking a client:
        point it at this tracker's store for the duration of the call, then restore it."""
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        # MLflow's helper deletes $MLFLOW_TRACKING_URI on the way out when no URI was set in-process:
        # the next command in the same process (a notebook, a test) would miss the user's store.
        variable = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            with _use_tracking_uri(self.uri):
                yield
        finally:
            if variable is not None:
                os.environ["MLFLOW_TRACKING_URI"] = variable

    @_guarded("download an artifact")
    def download_artifact(self, run_id: str, path: str, dst: Path) -> Path | None:
        """Download artifact `path` of a run into folder `dst`; None if the run has no such artifact."""
        parent = str(Path(path).parent)
        listed = {a.path for a in self._client.list_artifacts(run_id, None if parent == "." else parent)}
        if path not in listed:
            return None
        with _quiet_downloads():
            return Path(self._client.download_artifacts(run_id, path, str(dst)))


def _insert_raced(exc: Exception) -> bool:
    """A write that lost a race on a unique key (another process inserted the same row first)."""
    return "IntegrityError" in type(exc).__name__ or "unique" in str(exc).lower()


def _quiet_downloads() -> AbstractContextManager[None]:
    """MLflow draws a progress bar on stderr for every artifact download; a command that fetches
    small files (a model, a few reports) would bury its own output under them."""
    return _env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """Environment variable `name` set to `value` for the block (MLflow reads its settings
    there), then restored."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def no_runs_message(tracker: Tracker, experiment: str) -> str:
    """One sentence for an experiment with nothing recorded, with the closest recorded name."""
    close = closest_name(experiment, tracker.experiment_names(), cutoff=0.6)
    hint = f" (did you mean '{close}'?)" if close else ""
    return (f"No runs of experiment '{experiment}' are recorded in this tracking store{hint}; "
            f"run `harness run {experiment}` first.")


def _checked_client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)  # a database store creates its schema here
    client.search_experiments(max_results=1)  # fails now, not mid-run, if the store is unusable
    return client


def model_requirements(model: Any) -> list[str]:
    """pip requirements of an exported model: torch, and torchvision only when one of the
    model's layers is torchvision's. Never this package: the exported graph does not import it
    (and the name `harness` on the public index is an unrelated project)."""
    import torch

    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    if any(type(m).__module__.startswith("torchvision") for m in model.modules()):
        from importlib.metadata import version

        requirements.append(f"torchvision=={version('torchvision').split('+')[0]}")
    return requirements


def git_commit(folder: Path) -> str | None:
    """The git commit of `folder`'s repository, if it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def open_for(uri: str | None, dist: Dist) -> Tracker:
    """This process's tracker: a `Tracker` with one process. With several, rank 0 opens it and
    every rank holds a `RankZeroTracker` on it (the others never import MLflow): the calls whose
    results decide what happens next (`SHARED_CALLS`) hand rank 0's answer to all."""
    if not dist.enabled:
        return Tracker.open(uri)
    opened: list[Tracker] = []

    def open_here() -> str:
        opened.append(Tracker.open(uri))
        return opened[0].uri

    resolved = dist.from_main(open_here)  # an unusable store: every rank's error
    return RankZeroTracker(dist, opened[0] if opened else None, resolved)


class RankZeroTracker(Tracker):
    """The tracker of every rank of a multi-process run, where only rank 0 holds the store: the
    ranks run the same code and make the same calls. The calls in SHARED_CALLS run on rank 0
    and hand their result (or error) to every rank; every other call runs on rank 0 alone and
    returns None elsewhere. Results are plain data, so the other ranks never import MLflow."""

    def __init__(self, dist: Dist, main: Tracker | None, uri: str) -> None:
        self._dist, self._main = dist, main
        self.uri = uri  # rank 0's resolved URI, on every rank

    @property
    def local(self) -> Tracker:
        """Rank 0's own tracker, for work rank 0 does alone (guard with `dist.is_main`)."""
        if self._main is None:
            raise RuntimeError(f"rank {self._dist.rank} holds no tracker: only rank 0 writes to MLflow")
        return self._main


def _rank_zero_call(name: str, shared: bool) -> Callable[..., Any]:
    def call(self: RankZeroTracker, *args: Any, **kwargs: Any) -> Any:
        if shared:
            return self._dist.from_main(lambda: getattr(self.local, name)(*args, **kwargs))
        return getattr(self.local, name)(*args, **kwargs) if self._dist.is_main else None

    call.__name__ = call.__qualname__ = name
    return call


# Every public method of Tracker, forwarded as the class docstring says (the signatures and types
# are Tracker's own: a RankZeroTracker is used wherever a Tracker is).
for _name, _member in list(vars(Tracker).items()):
    if not _name.startswith("_") and inspect.isfunction(_member):
        setattr(RankZeroTracker, _name, _rank_zero_call(_name, _name in SHARED_CALLS))


def environment_tags(device: str, source_file: str | None) -> dict[str, str]:
    """Versions, host, device and git commit: what reproduces the run's environment. `device`
    is recorded as resolved ("auto" becomes the cuda / mps / cpu it picks here)."""
    from importlib.metadata import version

    import torch

    from harness.device import resolve_device

    try:
        used = str(resolve_device(device))
    except (RuntimeError, ValueError):  # not a device torch knows: training will say so
        used = device

    # The torchvision version from its metadata: `import torchvision` costs a second of start-up.
    tags = {
        "harness.version": harness.__version__,
        "torch.version": str(torch.__version__),  # a str subclass whose unpickling would import torch
        "torchvision.version": version("torchvision"),
        "python.version": platform.python_version(),
        "device": used,
        "host": socket.gethostname(),
    }
    launch = os.environ.get(LAUNCH_ENV)
    if launch:
        tags[LAUNCH_TAG] = launch
    commit = git_commit(Path(source_file).parent if source_file else Path.cwd())
    if commit:
        tags[GIT_COMMIT_TAG] = commit
        tags["git_commit"] = commit
    return tags
