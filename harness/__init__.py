"""harness: reproducible, tracked image-classification experiments in PyTorch.

The public API, exported lazily so that `import harness` (and `harness list` / `show`) loads no
PyTorch, MLflow or pandas until a function is called::

    import harness
    result = harness.run("quickstart", set={"epochs": 1})
    result.table                       # the comparison, as `harness compare` prints it
    model = result.load_model("lenet_relu")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(("run", "tune", "compare", "runs", "predict", "lr_find", "report", "resolve", "RunResult",
                     "TuneResult", "VariantRecord"), "harness.api"),
    "load_experiment": "harness.experiment",
    "Experiment": "harness.experiment",
    "TrainConfig": "harness.config",
    "FloatRange": "harness.search_space",
    "IntRange": "harness.search_space",
    "Choice": "harness.search_space",
    **dict.fromkeys(("HarnessError", "ConfigError", "UnknownNameError", "ExperimentFileError", "DataError",
                     "TrackingError", "ModelFormatError", "ResumeError", "WriteError"), "harness.errors"),
    "register_model": "harness.models",
    "register_dataset": "harness.data",
    "Data": "harness.data",
    "tensor_data": "harness.data.in_memory",
    "Callback": "harness.train",
    "Reporter": "harness.reporter",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # the names as type checkers and IDEs see them
    from harness.api import (  # noqa: F401
        RunResult,
        TuneResult,
        VariantRecord,
        compare,
        lr_find,
        predict,
        report,
        resolve,
        run,
        runs,
        tune,
    )
    from harness.config import TrainConfig  # noqa: F401
    from harness.data import Data, register_dataset  # noqa: F401
    from harness.data.in_memory import tensor_data  # noqa: F401
    from harness.errors import (  # noqa: F401
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
    from harness.experiment import Experiment, load_experiment  # noqa: F401
    from harness.models import register_model  # noqa: F401
    from harness.reporter import Reporter  # noqa: F401
    from harness.search_space import Choice, FloatRange, IntRange  # noqa: F401
    from harness.train import Callback  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import the module of a public name on first use (PEP 562), and keep the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
