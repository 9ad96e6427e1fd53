"""Errors are typed: every user-fixable error is a `HarnessError`, and its subclass says which kind
of mistake it is. Each subclass is raised here by a real raise site of the library (no training,
no network), and keeps the one-line message the CLI prints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.config import TrainConfig, parse_overrides
from harness.errors import (
    ConfigError,
    DataError,
    ExperimentFileError,
    HarnessError,
    ModelFormatError,
    ResumeError,
    TrackingError,
    UnknownNameError,
    WriteError,
)


def _raised(expected: type[HarnessError], action: Callable[[], object]) -> HarnessError:
    """The error `action` raises: of type `expected`, a HarnessError, with a one-line message."""
    with pytest.raises(expected) as info:
        action()
    exc = info.value
    assert isinstance(exc, HarnessError)
    message = str(exc)
    assert message and "\n" not in message.strip(), message
    return exc


def test_subclasses_are_harness_errors() -> None:
    for cls in (ConfigError, UnknownNameError, ExperimentFileError, DataError, TrackingError, ModelFormatError,
                ResumeError, WriteError):
        assert issubclass(cls, HarnessError) and cls.__doc__


def test_a_bad_config_value_is_a_config_error() -> None:
    exc = _raised(ConfigError, lambda: TrainConfig(epochs=0))
    assert "epochs" in str(exc)


def test_a_malformed_override_is_a_config_error() -> None:
    exc = _raised(ConfigError, lambda: parse_overrides(["epochs"]))
    assert str(exc) == "Override 'epochs' is not of the form key=value or VARIANT.key=value."
    _raised(ConfigError, lambda: parse_overrides(["epochs=many"]))


def test_an_unknown_config_key_is_an_unknown_name_error() -> None:
    exc = _raised(UnknownNameError, lambda: parse_overrides(["epoch=3"]))
    assert "Did you mean 'epochs'?" in str(exc)


def test_an_unknown_registry_name_is_an_unknown_name_error() -> None:
    from harness.models import MODELS

    exc = _raised(UnknownNameError, lambda: MODELS.get("lenett"))
    assert str(exc).startswith("Unknown model 'lenett'.")


def test_an_unknown_experiment_is_an_unknown_name_error(tmp_path: Path) -> None:
    from harness.experiment import load_experiment

    exc = _raised(UnknownNameError, lambda: load_experiment("nope", folder=tmp_path))
    assert "experiment 'nope'" in str(exc)


def test_a_broken_experiment_file_is_an_experiment_file_error(tmp_path: Path) -> None:
    from harness.experiment import load_experiment

    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "empty.py").write_text("x = 1\n")
    exc = _raised(ExperimentFileError, lambda: load_experiment("broken", folder=tmp_path))
    assert "boom" in str(exc)
    _raised(ExperimentFileError, lambda: load_experiment("empty", folder=tmp_path))


def test_a_missing_image_folder_is_a_data_error(tmp_path: Path) -> None:
    from harness.data import load_data

    config = TrainConfig(dataset="image_folder", data_path=str(tmp_path / "missing"))
    exc = _raised(DataError, lambda: load_data(config, tmp_path))
    assert "is not a folder" in str(exc)


def test_an_unusable_tracking_store_is_a_tracking_error(tmp_path: Path) -> None:
    from harness.tracking import Tracker
    from harness.tracking import TrackingError as ReExported

    assert ReExported is TrackingError  # still importable where it was defined before
    exc = _raised(TrackingError, lambda: Tracker.open(f"sqlite:///{tmp_path}"))
    assert str(exc).startswith("Cannot use MLflow tracking store")
    assert exc.unreachable is False


def test_a_model_that_is_not_harness_pt2_is_a_model_format_error(tmp_path: Path) -> None:
    from harness.model_format import UntrustedModelError, check_loadable

    _raised(ModelFormatError, lambda: check_loadable(tmp_path, "runs:/0/model"))  # no MLmodel file
    (tmp_path / "MLmodel").write_text("flavors:\n  pytorch:\n    model_data: data\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "model.pth").write_bytes(b"not loaded")
    exc = _raised(UntrustedModelError, lambda: check_loadable(tmp_path, "runs:/0/model"))
    assert isinstance(exc, ModelFormatError) and "pickle format" in str(exc)


def test_a_damaged_checkpoint_is_a_resume_error(tmp_path: Path) -> None:
    from harness import checkpoint

    path = tmp_path / "last.pt"
    path.write_bytes(b"")
    exc = _raised(ResumeError, lambda: checkpoint.load(path))
    assert str(exc).startswith(f"Checkpoint {path} is damaged")


def test_an_unwritable_output_is_a_write_error(tmp_path: Path) -> None:
    from harness import comparison, html_report

    exc = _raised(WriteError, lambda: html_report.check_out(tmp_path))
    assert "is a folder" in str(exc)
    file = tmp_path / "taken"
    file.write_text("")
    _raised(WriteError, lambda: comparison.check_out(file))


def test_a_rank_zero_error_keeps_its_type_on_the_other_ranks() -> None:
    from harness.distributed import _portable

    for cls in (ConfigError, TrackingError, UnknownNameError, ResumeError):
        again = _portable(cls("One sentence."))
        assert type(again) is cls and str(again) == "One sentence."


def test_every_error_class_is_exported_from_the_package() -> None:
    """`except harness.DataError:` works in a notebook without knowing the module."""
    import harness
    from harness import errors

    for name in ("HarnessError", "ConfigError", "UnknownNameError", "ExperimentFileError", "DataError",
                 "TrackingError", "ModelFormatError", "ResumeError", "WriteError"):
        assert getattr(harness, name) is getattr(errors, name)
        assert issubclass(getattr(harness, name), harness.HarnessError)
