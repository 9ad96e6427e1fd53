"""`harness list` and `harness show` work without PyTorch and MLflow: they only read experiment
files and check names, so they must not import either (each costs seconds). Each case runs the
CLI in a subprocess where importing torch, torchvision or mlflow fails."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import python

REPO = Path(__file__).resolve().parent.parent

# Makes torch, torchvision, mlflow and their submodules unimportable, then runs the given Python code.
_NO_TORCH = """
import sys


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "mlflow"):
            raise ImportError(f"{name} is blocked: this command must not need PyTorch or MLflow")
        return None


sys.meta_path.insert(0, _NoTorch())
"""

# Runs the harness CLI with the arguments after `-c CODE`, as `python -m harness` does (which is
# also what `torchrun -m harness` runs).
_CLI = _NO_TORCH + """
import runpy

sys.argv = ["harness", *sys.argv[1:]]
runpy.run_module("harness", run_name="__main__")
"""


@pytest.fixture()
def experiments_copy(tmp_path: Path) -> Path:
    """A working folder whose HARNESS_EXPERIMENTS_DIR is a copy of the repo's experiments."""
    shutil.copytree(REPO / "experiments", tmp_path / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _run(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"HARNESS_EXPERIMENTS_DIR": str(cwd / "experiments"), "COLUMNS": "200"}
    return python("-c", code, *args, cwd=cwd, env=env, timeout=120)


def test_blocker_blocks_torch(tmp_path: Path) -> None:
    """The guard itself works: importing torch under it fails (else the tests below prove nothing)."""
    result = _run(_NO_TORCH + "import torch.nn\n", cwd=tmp_path)
    assert result.returncode != 0 and "is blocked" in result.stderr


def test_list_without_torch(experiments_copy: Path) -> None:
    """`harness list` lists every experiment file, torch unimportable."""
    result = _run(_CLI, "list", cwd=experiments_copy)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert listed == sorted(p.stem for p in (REPO / "experiments").glob("*.py") if not p.name.startswith("_"))
    assert "quickstart" in listed


def test_list_marks_a_file_show_would_refuse_as_broken_without_torch(experiments_copy: Path) -> None:
    """A file that imports fine but names an unknown model (`lenet_rel`): `list` calls it broken
    with the line `show` prints, lists the others (a `tv_*` model among them), exits 1, torch
    unimportable."""
    (experiments_copy / "experiments" / "typo.py").write_text(
        "from harness.config import TrainConfig\nfrom harness.experiment import Experiment\n"
        "experiment = Experiment(name='typo', description='x', variants={'a': TrainConfig(model='lenet_rel')})\n")
    shown = _run(_CLI, "show", "typo", cwd=experiments_copy)
    assert shown.returncode == 2
    assert shown.stderr.startswith("error: Unknown model 'lenet_rel'. Did you mean 'lenet_relu'?"), shown.stderr
    result = _run(_CLI, "list", cwd=experiments_copy)
    assert result.returncode == 1, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert f"(broken: {shown.stderr.strip().removeprefix('error: ')})" in rows["typo"], rows["typo"]
    assert "broken" not in rows["quickstart"] and "broken" not in rows["exp_transfer_catdog"]
    assert result.stderr.strip().splitlines() == [shown.stderr.strip()]


def test_show_without_torch(experiments_copy: Path) -> None:
    """`harness show quickstart` prints the resolved variant table, torch unimportable."""
    result = _run(_CLI, "show", "quickstart", cwd=experiments_copy)
    assert result.returncode == 0, result.stderr
    assert "quickstart" in result.stdout
    assert "lenet_relu" in result.stdout and "digits" in result.stdout
    assert "search space" in result.stdout


def test_show_json_without_torch(experiments_copy: Path) -> None:
    """`harness show quickstart --json` prints parseable JSON with the variants, torch unimportable."""
    result = _run(_CLI, "show", "quickstart", "--json", cwd=experiments_copy)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == "quickstart"
    assert list(data["variants"]) == ["lenet_relu"]
    assert data["variants"]["lenet_relu"]["model"] == "lenet_relu"
    assert data["variants"]["lenet_relu"]["dataset"] == "digits"


def test_show_unknown_model_without_torch(experiments_copy: Path) -> None:
    """A misspelt model in --set: exit 2, one line on stderr suggesting the real name, no traceback."""
    result = _run(_CLI, "show", "quickstart", "--set", "model=lenett", cwd=experiments_copy)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Did you mean 'lenet'" in lines[0]
    assert "Traceback" not in result.stderr


def test_check_config_without_torch(tmp_path: Path) -> None:
    """Every own model, dataset, optimizer, schedule and init passes check_config without torch, and
    a model's limits are checked too."""
    code = _NO_TORCH + """
from harness.config import TrainConfig
from harness.errors import HarnessError
from harness.validation import check_config

for model in ("lenet", "lenet_relu", "alexnet", "googlenet", "resnet18", "mobilenet"):
    check_config(TrainConfig(model=model, image_size=32))
for dataset in ("digits", "synthetic", "synthetic_rgb", "mnist", "fashion_mnist", "cifar10", "cifar100"):
    check_config(TrainConfig(dataset=dataset))
check_config(TrainConfig(dataset="image_folder", data_path="somewhere"))
for optimizer in ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"):
    check_config(TrainConfig(optimizer=optimizer))
for scheduler in ("none", "step", "multistep", "cosine", "exponential"):
    check_config(TrainConfig(scheduler=scheduler))
for init in ("default", "xavier", "kaiming"):
    check_config(TrainConfig(init=init))
for bad in (dict(model="lenet", image_size=8), dict(model="lenet", pretrained=True), dict(optimizer="sgdd")):
    try:
        check_config(TrainConfig(**bad))
    except HarnessError:
        continue
    raise AssertionError(f"{bad} passed check_config")
print("ok")
"""
    result = _run(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
