"""examples/quickstart.ipynb, executed top to bottom by a real Jupyter kernel (nbclient + ipykernel)
in a fresh working folder, and its outputs checked: the comparison table names both variants, the
accuracy it prints is above chance, the learning curve is an image, the study has its 3 trials and
`harness.predict` returned a row per image. The notebook is the newcomer's first contact with the
Python API, so a change that breaks it fails here. Executing it costs about a minute of CPU."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from conftest import REPO, _point_at

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[dev]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e '.[dev]')")

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"
CELL_TIMEOUT = 600  # seconds per cell: training cells take ~10-60 s, more on a loaded 2-core machine
# Run first, in the test's copy only: which Python the kernel is and where it works.
PROBE = "import json, os, sys\nprint(json.dumps({'prefix': sys.prefix, 'cwd': os.getcwd()}))"


def _tagged(nb, tag: str):  # noqa: ANN001, ANN202 - nbformat's NotebookNode
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"the notebook should have one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _stdout(cell) -> str:  # noqa: ANN001
    return "".join(o["text"] for o in cell["outputs"] if o["output_type"] == "stream" and o["name"] == "stdout")


def _shown(cell, mime: str = "text/plain") -> str:  # noqa: ANN001
    return "".join(o["data"].get(mime, "") for o in cell["outputs"]
                   if o["output_type"] in ("execute_result", "display_data"))


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """(the executed notebook, its working folder): run once for the checks below, with its own
    MLflow store, checkpoints and experiments folder (the kernel inherits the environment)."""
    folder = tmp_path_factory.mktemp("notebook")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE, metadata={"tags": ["probe"]}))
    with pytest.MonkeyPatch.context() as mp:
        _point_at(mp, folder)
        mp.setenv("PYTHONUNBUFFERED", "1")
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT, startup_timeout=120,
                                         resources={"metadata": {"path": str(folder)}})
        client.execute()  # raises CellExecutionError, with the cell's traceback, if any cell fails
    return nb, folder


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), \
        "commit examples/quickstart.ipynb with its outputs cleared"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_kernel_is_this_python_in_the_working_folder(executed) -> None:  # noqa: ANN001
    nb, folder = executed
    probe = json.loads(_stdout(_tagged(nb, "probe")))
    assert os.path.realpath(probe["prefix"]) == os.path.realpath(sys.prefix), "the kernel runs another Python"
    assert os.path.realpath(probe["cwd"]) == os.path.realpath(folder)
    # Everything it recorded is in that folder: the MLflow store, the Optuna study, the checkpoints.
    for name in ("mlflow.db", "optuna.db", "checkpoints", "mlruns"):
        assert (folder / name).exists(), name


def test_no_cell_failed(executed) -> None:  # noqa: ANN001
    nb, _ = executed
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o["output_type"] == "error"]
    assert not errors
    assert all(c.execution_count is not None for c in nb.cells if c.cell_type == "code")


def test_outputs(executed) -> None:  # noqa: ANN001
    nb, _ = executed
    summary = json.loads(_stdout(_tagged(nb, "summary")))
    variants = summary["variants"]
    assert len(variants) == 2

    table = _shown(_tagged(nb, "table"))
    assert all(v in table for v in variants), table
    assert all(v in _shown(_tagged(nb, "table"), "text/html") for v in variants)

    chance = summary["chance"]
    assert chance == pytest.approx(0.1)
    accuracy = summary["test_acc"]
    assert set(accuracy) == set(variants)
    assert all(a is not None and a > chance for a in accuracy.values()), accuracy
    assert max(accuracy.values()) > 5 * chance, accuracy  # the better variant is far above chance

    # In a kernel the reporter is the notebook's: one display line per epoch, updated in place to
    # its end (the bar full, the epoch's validation numbers), and no plain epoch lines.
    train = _tagged(nb, "train")
    bars = [o["data"]["text/plain"] for o in train["outputs"] if o["output_type"] == "display_data"]
    assert len(bars) == 6, bars  # 2 variants x 3 epochs
    assert all(re.search(r"/3  \[#{30}\] (\d+)/\1  val loss [\d.]+ acc [\d.]+", bar) for bar in bars), bars
    assert not any(bar.startswith("'") for bar in bars)  # the text itself, not a str's repr
    assert " epoch 1/3 " not in _stdout(train)

    plot = _tagged(nb, "plot")
    assert any("image/png" in o.get("data", {}) for o in plot["outputs"]), "the learning-curve cell drew no image"

    assert summary["trials"] == 3
    assert set(summary["best_params"]) == {"lr"}

    assert summary["predicted"] == 8, summary
    assert summary["correct"] >= 1
    shown = _shown(_tagged(nb, "predict"))
    assert "class_1" in shown and "prob_1" in shown, shown
    assert shown.count(".png") == 8, shown


def test_notebook_file_is_where_readme_says() -> None:
    assert "examples/quickstart.ipynb" in Path(REPO / "README.md").read_text()
