"""Which logged models the harness loads: only the format it logs itself, checked before loading.

`harness` logs every model with `mlflow.pytorch.log_model` in MLflow's "pt2" format (a
`torch.export` archive, `data/model.pt2`), which MLflow can load without unpickling anything of
the artifact's own (with `MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false` it refuses an archive whose
records are not plain tensors and metadata). Any other form can run code as it loads: the
"pickle" serialisation (`data/model.pth`, read with cloudpickle), a pyfunc `python_model`
(`python_model.pkl`), or a model that ships `code/` to put on `sys.path`. MLflow 3 unpickles
those by default, so anyone who can write to a shared tracking store could run code on every
machine that loads from it. This module reads a downloaded model folder's MLmodel file (YAML,
parsed safely) and its file list, and refuses anything else before a byte of the model is
unpickled; `trust=True` is the explicit opt-in for a model whose author the user trusts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import ModelFormatError

SAFE_FORMAT = "pt2"
PT2_FILE = "model.pt2"
PICKLE_FILE = "model.pth"  # mlflow.pytorch's serialization_format="pickle"
TRUST_HINT = "trust_model=True"


class UntrustedModelError(ModelFormatError):
    """A logged model in a format that can execute code when loaded, refused before loading."""


def refusal(uri: str, form: str) -> str:
    """One sentence: what `uri` is, why it is not loaded, and the opt-in."""
    return (f"Model {uri} is {form}, which can run code when it is loaded; harness loads only the "
            f"'{SAFE_FORMAT}' (torch.export) models it logs itself: pass {TRUST_HINT} only if you trust "
            "whoever logged it, or retrain it with `harness run`.")


def check_loadable(folder: Path, uri: str, trust: bool = False) -> None:
    """Refuse (UntrustedModelError) the MLflow model in local `folder` unless it is a pytorch-flavor
    model in the pt2 format, with no code of its own; `trust` skips the check."""
    if trust:
        return
    flavors = _flavors(folder, uri)
    if "pytorch" not in flavors:
        pyfunc = flavors.get("python_function") or {}
        loader = pyfunc.get("loader_module") if isinstance(pyfunc, dict) else None
        named = ", ".join(sorted(flavors)) or "none"
        raise UntrustedModelError(refusal(uri, f"not a PyTorch model (MLflow flavors: {named}"
                                               + (f"; loaded by {loader}" if loader else "") + ")"))
    pytorch = flavors["pytorch"] if isinstance(flavors["pytorch"], dict) else {}
    pyfunc = flavors.get("python_function")
    if isinstance(pyfunc, dict) and pyfunc.get("loader_module", "mlflow.pytorch") != "mlflow.pytorch":
        raise UntrustedModelError(refusal(uri, f"a PyTorch model served by {pyfunc.get('loader_module')}"))
    if pytorch.get("code") or (isinstance(pyfunc, dict) and pyfunc.get("code")):
        raise UntrustedModelError(refusal(uri, "a model that ships its own Python code (MLflow's code_paths)"))
    data = folder / str(pytorch.get("model_data") or "data")
    if (data / PICKLE_FILE).exists() or data.is_file():
        raise UntrustedModelError(refusal(uri, "saved in MLflow's pickle format (serialization_format='pickle')"))
    if not (data / PT2_FILE).is_file():
        raise UntrustedModelError(refusal(uri, f"a PyTorch model without {PT2_FILE} (not the pt2 format)"))


def _flavors(folder: Path, uri: str) -> dict[str, Any]:
    """The `flavors` section of the folder's MLmodel file, read with a YAML loader that builds
    only plain data."""
    import yaml

    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise ModelFormatError(f"Model {uri} has no MLmodel file; it is not an MLflow model "
                               "(log it with `harness run`).")
    try:
        spec = yaml.safe_load(mlmodel.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"Model {uri} has an unreadable MLmodel file ({type(exc).__name__}); "
                               "it is not a model harness logged.") from None
    flavors = spec.get("flavors") if isinstance(spec, dict) else None
    return flavors if isinstance(flavors, dict) else {}
