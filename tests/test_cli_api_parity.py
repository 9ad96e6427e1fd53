"""The CLI is a thin layer over the public API: for each command family (run, tune, compare,
runs, predict, lr-find, report), the command and the same call of `harness.*` give the same
records: the same params, metrics and tags in MLflow, the same table rows, the same files. Run
ids, times, speeds and output paths differ between two calls and are left out.

run, tune and lr-find train (1 epoch on a few hundred digits, in `workdir`); the others read the
session's finished quickstart run and study (`quickstart_store`)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import QUICKSTART_MODEL
from conftest import harness as cli
from helpers import Collected, experiment_runs, quickstart_run_ids
from PIL import Image

import harness

SMALL = {"epochs": 1, "train_limit": 200}
SMALL_ARGS = ["--set", "epochs=1", "--set", "train_limit=200", "--no-system-metrics"]
# What two identical calls still record differently: how long things took and how fast.
TIMING = re.compile(r"(seconds|per_second)$")
VOLATILE_TAGS = {"mlflow.parentRunId"}
VOLATILE_COLUMNS = {"run_id", "train_seconds", "wall_seconds", "elapsed_seconds", "images_per_second",
                    "duration_seconds"}


def record(run: Any) -> dict[str, Any]:
    """What a run recorded, without what differs between two identical calls."""
    return {
        "status": run.info.status,
        "params": dict(run.data.params),
        "metrics": {k: v for k, v in run.data.metrics.items() if not TIMING.search(k)},
        "tags": {k: v for k, v in run.data.tags.items() if k not in VOLATILE_TAGS},
    }


def children_records(experiment: str, parent_id: str) -> dict[str, dict[str, Any]]:
    """Each child run of `parent_id` by name (variant, "variant seed=N" or trial), as `record`s."""
    return {r.info.run_name: record(r) for r in experiment_runs(experiment, parent=parent_id)}


def stable(table: pd.DataFrame) -> list[dict[str, Any]]:
    """A comparison table's rows without ids and times."""
    return table.drop(columns=[c for c in table.columns if c in VOLATILE_COLUMNS]).to_dict("records")


def latest_parent(experiment: str, kind: str) -> str:
    return experiment_runs(experiment, kind)[-1].info.run_id


def assert_same_records(by_cli: dict[str, dict[str, Any]], by_api: dict[str, dict[str, Any]]) -> None:
    assert sorted(by_cli) == sorted(by_api)
    for name, cli_run in by_cli.items():
        api_run = by_api[name]
        assert cli_run["status"] == api_run["status"] == "FINISHED", name
        assert cli_run["params"] == api_run["params"], name
        assert cli_run["tags"] == api_run["tags"], name
        assert cli_run["metrics"].keys() == api_run["metrics"].keys(), name
        for key, value in cli_run["metrics"].items():
            assert api_run["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, key)


# ----------------------------------------------------------------- commands that train


def test_run(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "run", "quickstart", *SMALL_ARGS)
    assert code == 0, err
    cli_parent = latest_parent("quickstart", "run")
    result = harness.run("quickstart", set=SMALL, system_metrics=False)
    assert result.status == "FINISHED" and result.parent_run_id != cli_parent
    assert_same_records(children_records("quickstart", cli_parent),
                        children_records("quickstart", result.parent_run_id))
    assert stable(harness.compare("quickstart", run_id=cli_parent)) == stable(result.table)
    assert [v.variant for v in result.variants] == ["lenet_relu"]
    assert f"quickstart: 1 variant of run {cli_parent}" in out  # the table the command printed is that run's


def test_tune(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{workdir}/optuna.db"
    code, out, err = cli(capsys, "tune", "quickstart", "--trials", "1", "--study-name", "by-cli", "--storage", storage,
                         *SMALL_ARGS)
    assert code == 0, err
    result = harness.tune("quickstart", trials=1, study_name="by-api", storage=storage, set=SMALL, system_metrics=False)
    assert result is not None
    import optuna

    by_cli = optuna.load_study(study_name="by-cli", storage=storage)
    assert [(t.state, t.params, t.value) for t in by_cli.trials] == \
        [(t.state, t.params, t.value) for t in result.study.trials]
    cli_parent = [r for r in experiment_runs("quickstart", "study")
                  if r.data.tags.get("optuna.study_name") == "by-cli"][-1].info.run_id
    assert f"(MLflow parent run {cli_parent})" in out
    cli_trials = children_records("quickstart", cli_parent)
    api_trials = children_records("quickstart", result.parent_run_id)
    for records in (cli_trials, api_trials):  # the study's own name is the one tag that must differ
        for run in records.values():
            run["tags"].pop("optuna.study_name", None)
    assert_same_records(cli_trials, api_trials)


def test_lr_find(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--steps", "15", "--min-lr", "1e-3", "--max-lr", "1"]
    code, out, err = cli(capsys, "lr-find", "quickstart", *args, "--set", "train_limit=200")
    assert code == 0, err
    logged = Collected()
    outcome = harness.lr_find("quickstart", steps=15, min_lr=1e-3, max_lr=1, set={"train_limit": 200},
                              reporter=logged)
    assert [line for line in err.splitlines() if line.startswith("warning:")] == logged.warnings
    assert logged.warnings and logged.statuses  # the grid warning, and the plain progress lines
    found = f"suggested lr {outcome.suggestion:.3g}" if outcome.suggestion is not None else "no suggestion"
    assert f"lenet_relu: {found}" in out and f"{len(outcome.test.lrs)} steps" in out
    cli_run, api_run = [r for r in experiment_runs("quickstart") if r.info.run_name == "lr-find-lenet_relu"]
    assert api_run.info.run_id == outcome.run_id
    assert_same_records({"lr-find": record(cli_run)}, {"lr-find": record(api_run)})


# ----------------------------------------------------------------- commands that read


def test_compare(quickstart_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = {}
    for study in (False, True):
        folder = tmp_path / f"cli-{'study' if study else 'run'}"
        code, out, err = cli(capsys, "compare", "quickstart", *(["--study"] if study else []), "--format", "csv",
                             "--out", str(folder))
        assert code == 0, err
        assert out == harness.compare("quickstart", study=study).to_csv(index=False)  # the same rows, all of them
        written[study] = folder, err
    # Writing: the same files, each announced on stderr by the command.
    folder, err = written[False]
    outcome = harness.api.compare_outcome("quickstart", out=tmp_path / "api")
    assert outcome.files and sorted(p.name for p in outcome.files) == sorted(p.name for p in folder.iterdir())
    assert [line for line in err.splitlines() if line.startswith("wrote ")] == \
        [f"wrote {folder / p.name} (also on run {outcome.comparison.parent_run_id} as compare/{p.name})"
         for p in outcome.files]


def test_runs(quickstart_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from harness import reports
    from harness.history import runs_note

    code, out, err = cli(capsys, "runs", "quickstart", "--limit", "5")
    assert code == 0, err
    frame = harness.runs("quickstart", limit=5)
    printed = io.StringIO()
    table = reports.rich_table(frame, "quickstart: recent runs", runs_note("quickstart"))
    Console(file=printed, width=220).print(table)
    assert out == printed.getvalue()  # the command prints the API's rows, every one


def test_predict(quickstart_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(4):
        pixels = (digits.images[i] / 16 * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((28, 28)).save(tmp_path / f"d{i}.png")
    (tmp_path / "broken.png").write_text("not an image")
    model = f"models:/{QUICKSTART_MODEL}@champion"
    code, out, err = cli(capsys, "predict", model, str(tmp_path), "--top-k", "2", "--format", "csv")
    assert code == 0, err
    logged = Collected()
    by_api = harness.predict(model, tmp_path, top_k=2, reporter=logged)
    assert len(by_api) == 4 and out == by_api.to_csv(index=False)
    assert any("broken.png" in line for line in logged.statuses)
    assert all(line in err.splitlines() for line in logged.statuses)


def test_report(quickstart_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "report", "quickstart", "--out", str(tmp_path / "cli.html"))
    assert code == 0, err
    path = harness.report("quickstart", out=tmp_path / "api.html")
    parent, _ = quickstart_run_ids()  # the latest finished run, which both describe
    assert path == tmp_path / "api.html"
    assert out.strip() == (f"wrote {tmp_path / 'cli.html'} ({path.stat().st_size / 1e6:.1f} MB; also on run "
                           f"{parent} as report/report.html)")

    def page(file: Path) -> str:  # without the one line that says when the page was made
        return re.sub(r"Generated [^<]* by", "Generated by", file.read_text())

    assert page(tmp_path / "cli.html") == page(path)
