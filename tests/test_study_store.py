"""`harness.study_store`: reading studies without the training stack. `harness study`,
`harness dashboard` and `harness report --study` only read a study, so each runs here in a fresh
interpreter that must end without PyTorch (or the harness's training modules) loaded; importing
torch costs seconds. Also the reading helpers themselves, on a study made with Optuna directly."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from helpers import copy_experiment, python

from harness.errors import HarnessError
from harness.study_store import (
    STD_ATTR,
    TRIAL_RUN_ATTR,
    best_summary,
    load_study,
    open_storage,
    trials_table,
)

TRAINING_STACK = ("torch", "torchvision", "harness.train", "harness.lifecycle", "harness.trial", "harness.runner",
                  "harness.tuning")

# Appended to the code under test: which of TRAINING_STACK it loaded, as the last stdout line.
_REPORT_LOADED = f"""
import json, sys
print(json.dumps([m for m in {TRAINING_STACK!r} if m in sys.modules]))
"""


def _loaded_after(code: str, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    """The TRAINING_STACK modules a fresh interpreter holds after running `code` in `cwd`."""
    result = python("-c", code + _REPORT_LOADED, cwd=cwd, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# Runs `harness ARGS...` through the console's `main` (user errors: one line, exit code 2), in-process.
_CLI = """
import sys
from harness.cli import main

sys.argv = ["harness", *{args!r}]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
"""


@pytest.fixture()
def study_folder(tmp_path: Path) -> Path:
    """A folder with the quickstart experiment and `optuna.db` holding study 's': 3 trials written
    by Optuna alone (no training), with the user attributes `harness tune` sets."""
    copy_experiment(tmp_path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db", direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(TRIAL_RUN_ATTR, f"run{trial.number}")
        trial.set_user_attr(STD_ATTR, 0.01)
        return trial.suggest_float("lr", 1e-3, 1.0, log=True)

    study.optimize(objective, n_trials=3)
    return tmp_path


def test_importing_the_module_loads_no_training_stack(tmp_path: Path) -> None:
    assert _loaded_after("import harness.study_store\n", tmp_path) == []


def test_harness_study_runs_without_torch(study_folder: Path) -> None:
    args = ["study", "quickstart", "--study-name", "s", "--storage", "sqlite:///optuna.db"]
    env = {"HARNESS_EXPERIMENTS_DIR": str(study_folder / "experiments")}
    assert _loaded_after(_CLI.format(args=args), study_folder, env) == []


def test_dashboard_opens_a_study_without_torch(study_folder: Path) -> None:
    pytest.importorskip("optuna_dashboard")
    code = ("from harness.dashboard import open_dashboard\n"
            "dashboard = open_dashboard('sqlite:///optuna.db', port=0, study='s')\n"
            "dashboard.server.server_close()\n")
    assert _loaded_after(code, study_folder) == []


def test_study_report_is_written_without_torch(quickstart_store: Path, tmp_path: Path) -> None:
    """`harness report quickstart --study` on the session's real study (trained elsewhere)."""
    out = tmp_path / "study.html"
    args = ["report", "quickstart", "--study", "--out", str(out)]
    assert _loaded_after(_CLI.format(args=args), quickstart_store) == []
    assert '<section id="study">' in out.read_text()


def test_trials_table_and_summary_read_the_study(study_folder: Path) -> None:
    study = load_study(f"sqlite:///{study_folder}/optuna.db", "s")
    table = trials_table(study)
    assert list(table["number"]) == [0, 1, 2] and list(table[TRIAL_RUN_ATTR]) == ["run0", "run1", "run2"]
    assert table["mean ± std"].str.endswith("± 0.0100").all()
    assert best_summary(study).startswith("Study 's': 3 finished trials; best trial ")


def test_unknown_study_and_unopenable_storage_are_one_line(study_folder: Path) -> None:
    with pytest.raises(HarnessError, match=r"Unknown study in .* 't'\. Choose one of: s\."):
        load_study(f"sqlite:///{study_folder}/optuna.db", "t")
    with pytest.raises(HarnessError, match="Cannot open the Optuna journal file"):
        open_storage(f"journal:{study_folder}/no/such/folder/journal.log")
