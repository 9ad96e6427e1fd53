"""The one owner of MLflow: tracking URI, experiments, runs, params, metrics and artifacts.

Everything goes through an explicit run id (MlflowClient), never a process-global "active
run", so parallel trials and resumed runs cannot log into each other. MLflow is imported inside
the functions, not here: `harness run` calls the `@forwarded` ones with a `TrackingProcess`,
which runs them in a child process, so its own process never pays for MLflow's import.
"""

from __future__ import annotations

import io
import logging
import os
import platform
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import harness
from harness.config import TrainConfig, flatten
from harness.errors import HarnessError, first_line, retry
from harness.tracking_process import TrackingProcess, forwarded

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

# What the `@forwarded` functions take: a client here, or the process that holds one.
Client = Union["MlflowClient", TrackingProcess]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's embedded default; artifacts go to ./mlruns
PARENT_RUN = "mlflow.parentRunId"
KIND_TAG = "harness.kind"  # "run" for a `harness run` parent, "variant" for its children
VARIANT_TAG = "harness.variant"
TRIAL_STATE_TAG = "harness.trial_state"  # complete / pruned / failed, on `harness tune` trial runs
SEED_TAG = "harness.seed"  # the config seed of a child run (repeated runs train each variant at several)
FAILURE_TAG = "harness.failure_reason"
_PARAM_LIMIT = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH in MLflow 3


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri`, else MLFLOW_TRACKING_URI, else the embedded sqlite store in the working folder."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def redact(uri: str) -> str:
    """`uri` with any password replaced by *** (for messages printed to the terminal)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def connect(uri: str | None = None) -> MlflowClient:
    """A client on the resolved tracking URI (also made the process default for mlflow.* calls)."""
    import mlflow

    resolved = resolve_tracking_uri(uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter on stderr
    mlflow.set_tracking_uri(resolved)
    try:
        check_reachable(resolved)
        return retry(lambda: _checked_client(resolved))
    except Exception as exc:  # noqa: BLE001 - bad URI, server down, missing driver
        password = urllib.parse.urlsplit(resolved).password
        reason = first_line(exc).replace(password, "***") if password else first_line(exc)
        raise HarnessError(
            f"Cannot use MLflow tracking store '{redact(resolved)}' ({reason}); "
            "check --tracking-uri / MLFLOW_TRACKING_URI and that the server is reachable."
        ) from None


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


def _checked_client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)  # a database store creates its schema here
    client.search_experiments(max_results=1)  # fails now, not mid-run, if the store is unusable
    return client


@forwarded
def ensure_experiment(client: Client, name: str, description: str = "") -> str:
    """Id of MLflow experiment `name`, created (with `description` as its note) if missing.

    """
    import mlflow

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, tags={"mlflow.note.content": description})
    except mlflow.exceptions.MlflowException:
        exp = client.get_experiment_by_name(name)  # another worker created it at the same moment
        if exp is None:
            raise
        return exp.experiment_id


@forwarded
def start_run(client: Client, experiment_id: str, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
    """Create a run (nested under `parent_id` if given); returns its id."""
    all_tags = dict(tags)
    if parent_id:
        all_tags[PARENT_RUN] = parent_id
    return client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id


@forwarded
def reopen_run(client: Client, run_id: str) -> None:
    """Mark an interrupted run RUNNING again (resume logs into the same run)."""
    client.update_run(run_id, status="RUNNING")


@forwarded
def end_run(client: Client, run_id: str, status: str, reason: str | None = None) -> None:
    """Terminate a run as FINISHED, FAILED or KILLED, recording `reason` as a tag."""
    if reason:
        client.set_tag(run_id, FAILURE_TAG, reason[:5000])
    client.set_terminated(run_id, status=status)


def _short(value: str) -> str:
    return value if len(value) <= _PARAM_LIMIT else value[: _PARAM_LIMIT - 3] + "..."


@forwarded
def log_params(client: Client, run_id: str, params: dict[str, str]) -> None:
    """Log params in one batch, shortening values beyond MLflow's length limit."""
    from mlflow.entities import Param

    items = [Param(k, _short(str(v))) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])


@forwarded
def log_metrics(client: Client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log several metrics at one step in a single request."""
    log_epochs(client, run_id, [(step, metrics, now_ms())])


def now_ms() -> int:
    """The current time as MLflow stores it (ms since the epoch)."""
    return int(time.time() * 1000)


@forwarded
def log_epochs(client: Client, run_id: str, records: list[tuple[int, dict[str, float], int]]) -> None:
    """Log (step, metrics, timestamp in ms) records in as few requests as MLflow allows."""
    from mlflow.entities import Metric

    metrics = [Metric(k, float(v), ms, step) for step, record, ms in records for k, v in record.items()]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


@forwarded
def set_tags(client: Client, run_id: str, tags: dict[str, str]) -> None:
    """Set several tags in one request."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def git_commit(folder: Path) -> str | None:
    """The git commit of `folder`'s repository, if it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


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
    commit = git_commit(Path(source_file).parent if source_file else Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    return tags


@forwarded
def log_config(client: Client, run_id: str, config: TrainConfig, source_file: str | None) -> None:
    """Every config field as a param, the full config as JSON, and the experiment's source file."""
    log_params(client, run_id, flatten(config))
    client.log_dict(run_id, config.to_dict(), "config.json")
    if source_file and Path(source_file).is_file():
        client.log_artifact(run_id, source_file, "source")


def log_figure(client: Client, run_id: str, figure: Any, artifact_file: str) -> None:
    """Save a matplotlib figure as a PNG artifact and free it (rendered here: figures stay in
    the process that drew them)."""
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    figure.savefig(png, format="png")
    plt.close(figure)
    log_bytes(client, run_id, png.getvalue(), artifact_file)


@forwarded
def log_bytes(client: Client, run_id: str, data: bytes, artifact_file: str) -> None:
    """Save `data` as the artifact `artifact_file` (a path inside the run's artifacts)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_bytes(data)
        parent = str(Path(artifact_file).parent)
        client.log_artifact(run_id, str(path), None if parent == "." else parent)


@forwarded
def log_text(client: Client, run_id: str, text: str, artifact_file: str) -> None:
    """Save `text` as the artifact `artifact_file`."""
    client.log_text(run_id, text, artifact_file)


@forwarded
def log_dict(client: Client, run_id: str, data: dict[str, Any], artifact_file: str) -> None:
    """Save `data` as a JSON (or YAML, by extension) artifact."""
    client.log_dict(run_id, data, artifact_file)


@forwarded
def log_file(client: Client, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Copy the local file `path` into the run's artifacts (under `artifact_path`)."""
    client.log_artifact(run_id, str(path), artifact_path)


def log_array(client: Client, run_id: str, array: Any, artifact_file: str) -> None:
    """Save a NumPy array (`.npy`) as an artifact."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    log_bytes(client, run_id, buffer.getvalue(), artifact_file)


@forwarded
def log_model(client: Client, run_id: str, model: Any, input_example: Any) -> str:
    """`mlflow.pytorch.log_model` into run `run_id` with a signature and input example."""
    import mlflow
    import mlflow.pytorch
    import torch
    import torchvision
    from mlflow.models import infer_signature

    with torch.inference_mode():
        output = model(torch.from_numpy(input_example)).numpy()
    signature = infer_signature(input_example, output)
    # Explicit requirements: MLflow's inference imports the model in a subprocess (~10 s).
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
                    f"harness=={harness.__version__}"]
    with mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=input_example,
                                        pip_requirements=requirements)
    return info.model_uri


# ----------------------------------------------------------------- reading runs back


@forwarded
def latest_parent_run(client: Client, experiment_id: str, unfinished_only: bool = False,
                      kind: str = "run") -> Run | None:
    """The newest parent run of the experiment (`kind` "run" for `harness run`, "study" for
    `harness tune`), optionally only unfinished ones."""
    filt = f"tags.`{KIND_TAG}` = '{kind}'"
    if unfinished_only:
        filt += " and attributes.status != 'FINISHED'"
    runs = client.search_runs([experiment_id], filter_string=filt, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


@forwarded
def children(client: Client, experiment_id: str, parent_id: str) -> list[Run]:
    """Every child run of `parent_id` (all seeds of all variants, or all trials), oldest first."""
    return client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_RUN}` = '{parent_id}'",
                              order_by=["attributes.start_time ASC"], max_results=5000)


def run_seed(run: Run) -> int | None:
    """The config seed a child run trained with (its seed tag, else its logged `seed` param)."""
    text = run.data.tags.get(SEED_TAG, run.data.params.get("seed"))
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


@forwarded
def find_experiment(client: Client, name: str) -> str | None:
    """Id of MLflow experiment `name`, or None if it does not exist (nothing is created)."""
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else None


@forwarded
def experiment_names(client: Client) -> list[str]:
    """Names of the experiments in the store (for "did you mean" hints)."""
    return [e.name for e in client.search_experiments(max_results=1000)]


@forwarded
def find_run(client: Client, run_id: str) -> Run | None:
    """Run `run_id`, or None if the store has no such run."""
    import mlflow

    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


@forwarded
def parent_runs(client: Client, experiment_id: str, limit: int) -> list[Run]:
    """The newest `limit` parent runs (`harness run` and `harness tune`) of the experiment, newest first."""
    runs = [r for kind in ("run", "study") for r in client.search_runs(
        [experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{kind}'",
        order_by=["attributes.start_time DESC"], max_results=limit)]
    return sorted(runs, key=lambda r: r.info.start_time, reverse=True)[:limit]


@forwarded
def metric_history(client: Client, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of a metric, by step; per-epoch metrics use step = epoch."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@forwarded
def download_artifact(client: Client, run_id: str, path: str, dst: Path) -> Path | None:
    """Download artifact `path` of a run into folder `dst`; None if the run has no such artifact."""
    parent = str(Path(path).parent)
    listed = {a.path for a in client.list_artifacts(run_id, None if parent == "." else parent)}
    if path not in listed:
        return None
    # MLflow draws a progress bar on stderr for every download; a command that fetches a few
    # small files per run would bury its own output under them.
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    finally:
        if previous is None:
            del os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"]
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous
