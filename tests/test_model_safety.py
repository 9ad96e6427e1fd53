"""No code runs from a model artifact: `harness predict` (and every other load through the Tracker)
reads the model's MLmodel and files first and loads only the pt2 format harness logs. Each hostile
model here carries a real payload that would create a file when unpickled; the tests assert that
the file never appears, that the refusal is one line naming the format and the opt-in, and that
the opt-in (`--trust-model`) does load a trusted pickle model."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import harness
from helpers import cli_error_line, quickstart_run_ids
from test_predict import write_images

from harness.model_format import UntrustedModelError
from harness.tracking import Tracker

METADATA = {"classes": [str(d) for d in range(10)], "in_channels": 1, "image_size": 28, "dataset": "digits"}


def _touch(path: str) -> int:
    """What the payload does when unpickled: create `path` (proof that code ran)."""
    Path(path).write_text("pwned")
    return 0


class PayloadModule(torch.nn.Module):
    """A real module that, pickled, unpickles as a call to `_touch` (the classic `__reduce__` payload)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.fc = torch.nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))

    def __reduce__(self):  # noqa: ANN204 - the pickle protocol
        return (os.system, (f"touch {self.marker}",))


class PayloadPyfunc(mlflow.pyfunc.PythonModel):
    """A pyfunc `python_model` whose pickle runs the payload."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def predict(self, context, model_input):  # noqa: ANN001, ANN201 - MLflow's interface
        return model_input

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def _log_hostile(kind: str, marker: Path) -> str:
    """A model logged into the quickstart experiment the way an attacker with write access would;
    returns its runs:/ URI."""
    experiment = mlflow.get_experiment_by_name("quickstart")
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        if kind == "pickle":
            mlflow.pytorch.log_model(PayloadModule(str(marker)), name="model", serialization_format="pickle",
                                     metadata=METADATA, pip_requirements=["torch"])
        else:
            mlflow.pyfunc.log_model(name="model", python_model=PayloadPyfunc(str(marker)), metadata=METADATA,
                                    pip_requirements=["mlflow"])
    assert not marker.exists()  # logging itself ran nothing
    return f"runs:/{run.info.run_id}/model"


@pytest.mark.parametrize("kind, named", [("pickle", "pickle format"), ("pyfunc", "not a PyTorch model")])
def test_predict_refuses_a_pickled_model_and_runs_none_of_it(quickstart_store: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str], kind: str,
                                                              named: str) -> None:
    marker = tmp_path / f"payload-ran-{kind}"
    uri = _log_hostile(kind, marker)
    write_images(tmp_path / "images")
    code, out, err = harness(capsys, "predict", uri, str(tmp_path / "images"))
    line = cli_error_line((code, out, err))
    assert named in line and "trust_model=True" in line and uri in line, line
    assert "'int' object" not in err
    assert not marker.exists(), "the payload ran"
    # The same guard sits under the Python API and the benchmark's pyfunc loader.
    tracker = Tracker.open()
    for load in (tracker.load_model, tracker.load_pyfunc):
        with pytest.raises(UntrustedModelError):
            load(uri)
    assert not marker.exists(), "the payload ran"


def test_a_model_shipping_code_is_refused(quickstart_store: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`code_paths` would put the artifact's own Python files on sys.path before loading."""
    module = tmp_path / "evil_helpers.py"
    module.write_text("X = 1\n")
    experiment = mlflow.get_experiment_by_name("quickstart")
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        example = torch.zeros(1, 1, 28, 28).numpy()
        mlflow.pytorch.log_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), name="model",
                                 code_paths=[str(module)], input_example=example, metadata=METADATA,
                                 pip_requirements=["torch"])
    write_images(tmp_path / "images")
    assert "its own Python code" in cli_error_line(harness(capsys, "predict", f"runs:/{run.info.run_id}/model",
                                                               str(tmp_path / "images")))


def test_the_harness_model_loads_and_trust_is_an_explicit_opt_in(quickstart_store: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, child = quickstart_run_ids()
    images = tmp_path / "images"
    write_images(images)
    code, out, err = harness(capsys, "predict", f"runs:/{child}/model", str(images), "--format", "csv")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 7  # header + 6 images
    # A trusted pickle-format model (no payload) loads with the opt-in, and only with it.
    experiment = mlflow.get_experiment_by_name("quickstart")
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
        mlflow.pytorch.log_model(net, name="model", serialization_format="pickle", metadata=METADATA,
                                 pip_requirements=["torch"])
    uri = f"runs:/{run.info.run_id}/model"
    assert "pickle format" in cli_error_line(harness(capsys, "predict", uri, str(images)))
    code, out, err = harness(capsys, "predict", uri, str(images), "--format", "csv", "--trust-model")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 7


def test_loading_a_model_keeps_the_users_tracking_uri(quickstart_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own URI switch deleted $MLFLOW_TRACKING_URI on the way out: a second command in the
    same process then used another store."""
    import os

    _, child = quickstart_run_ids()
    before = os.environ["MLFLOW_TRACKING_URI"]
    Tracker.open().model_info(f"runs:/{child}/model")
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
