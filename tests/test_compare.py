"""`harness run --repeat/--seeds`, `harness compare` and `harness runs`, checked against MLflow's own client.

The runs are made once per module (small digits runs, 2 epochs) and only read by the tests:
a single run and a `--repeat 2` run of a two-variant experiment, and a `--repeat 2` run of a
variant that diverges (FAILED children, for `harness runs` and `--resume`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import harness
from helpers import experiment_runs, write_experiment
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CMP = '''
from harness.config import TrainConfig
from harness.experiment import Experiment

base = TrainConfig(model="lenet_relu", dataset="digits", epochs=2, batch_size=32, optimizer="sgd", lr=0.05,
                   momentum=0.9, train_limit=600)
experiment = Experiment(name="cmp", description="compare test", variants={
    "fast": base,
    "slow": TrainConfig(model="lenet_relu", dataset="digits", epochs=2, batch_size=32, optimizer="sgd", lr=0.01,
                        momentum=0.5, train_limit=600, seed=5),
})
'''

BROKEN = '''
from harness.config import TrainConfig
from harness.experiment import Experiment

experiment = Experiment(name="broken", description="diverges", variants={
    "diverges": TrainConfig(dataset="synthetic", model="lenet_relu", epochs=2, train_limit=1000, optimizer="sgd",
                            lr=1e6, momentum=0.9),
})
'''


@dataclass
class Store:
    root: Path
    single: str  # parent run id of `harness run cmp`
    repeated: str  # parent run id of `harness run cmp --repeat 2`
    repeated_output: str  # what that command printed
    broken: str  # parent run id of `harness run broken --repeat 2` (FAILED)
    single_output: str  # what `harness run cmp` printed
    broken_output: str  # what `harness run broken --repeat 2` printed


def _parent_ids(experiment: str) -> list[str]:
    return [r.info.run_id for r in experiment_runs(experiment, "run")]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("HARNESS_CHECKPOINT_DIR", str(root / "checkpoints"))
        mp.setenv("HARNESS_EXPERIMENTS_DIR", str(root / "experiments"))
        mlflow.set_tracking_uri(uri)
        write_experiment(root, "cmp", CMP)
        write_experiment(root, "broken", BROKEN)
        runner = CliRunner()
        single = runner.invoke(app, ["run", "cmp"])
        assert single.exit_code == 0, single.output
        repeated = runner.invoke(app, ["run", "cmp", "--repeat", "2"])
        assert repeated.exit_code == 0, repeated.output
        broken = runner.invoke(app, ["run", "broken", "--repeat", "2"])
        assert broken.exit_code == 1, broken.output
        first, second = _parent_ids("cmp")
        yield Store(root, first, second, repeated.output, _parent_ids("broken")[0], single.output, broken.output)


def _children(parent_id: str) -> pd.DataFrame:
    exp_names = ["cmp", "broken"]
    return mlflow.search_runs(experiment_names=exp_names, filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, (path, len(data))


def _table_columns(output: str) -> dict[str, list[str]]:
    """The first rich table in `output`: header -> its cells, top to bottom."""
    rows = [[cell.strip() for cell in line.strip().strip("│┃").split("│" if "│" in line else "┃")]
            for line in output.splitlines() if "│" in line or "┃" in line]
    header, *body = rows
    return {name: [row[i] for row in body] for i, name in enumerate(header)}


def test_the_end_of_run_table_says_the_final_status_and_one_format_per_column(store: Store) -> None:
    """The table printed when `harness run` ends: titled with the parent's final status (it
    was read while the run was still RUNNING), and every number column in one format."""
    assert f"of run {store.single} (FINISHED)" in store.single_output, store.single_output
    assert "(RUNNING)" not in store.single_output + store.repeated_output
    columns = _table_columns(store.single_output)
    decimals = {"val acc": 4, "test acc": 4, "test loss": 4, "wall s": 1, "elapsed s": 1, "img/s": 0, "best ep": 0,
                "epochs": 0}
    assert {"val acc", "test acc", "wall s", "img/s"} <= set(columns), columns
    for header, places in decimals.items():
        if header not in columns:  # elapsed s: only where it differs from wall s
            continue
        cells = [c for c in columns[header] if c]
        assert cells, (header, columns)
        for cell in cells:
            whole, _, fraction = cell.replace(",", "").partition(".")
            assert whole.isdigit() and len(fraction) == places and (not fraction or fraction.isdigit()), (header, cells)


def test_no_table_when_no_variant_finished(store: Store) -> None:
    """Every seed of `broken` diverged: the errors, and no table of empty accuracies before them."""
    assert "│" not in store.broken_output and "┃" not in store.broken_output, store.broken_output
    assert store.broken_output.count("error: variant 'diverges") == 2, store.broken_output


def test_repeat_trains_every_variant_once_per_seed(store: Store) -> None:
    children = _children(store.repeated)
    assert sorted(children["tags.mlflow.runName"]) == ["fast seed=0", "fast seed=1", "slow seed=5", "slow seed=6"]
    for _, run in children.iterrows():
        variant, seed = run["tags.mlflow.runName"].split(" seed=")
        assert run["tags.harness.variant"] == variant
        assert run["tags.harness.seed"] == run["params.seed"] == seed
        assert run["status"] == "FINISHED"
    assert MlflowClient().get_run(store.repeated).data.params["repeat"] == "2"
    # the terminal table after a repeated run: one row per variant, n and mean ± std
    assert "mean ± std over seeds" in store.repeated_output and "±" in store.repeated_output
    assert store.repeated_output.count("│ fast") == 1 and store.repeated_output.count("│ slow") == 1


def test_compare_single_run_matches_mlflow(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = harness(capsys, "compare", "cmp", "--run", store.single, "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["parent_run_id"] == store.single and doc["metric"] == "best_val_acc" and not doc["repeated"]
    rows = doc["rows"]
    mlflow_runs = _children(store.single).set_index("run_id")
    assert {r["run_id"] for r in rows} == set(mlflow_runs.index)
    for row in rows:
        run = mlflow_runs.loc[row["run_id"]]
        assert row["variant"] == run["tags.harness.variant"] and row["status"] == run["status"] == "FINISHED"
        for key in ("best_val_acc", "test_acc", "test_loss", "train_seconds"):
            assert row[key] == pytest.approx(run[f"metrics.{key}"], rel=1e-9), key
        assert row["images_per_second"] == pytest.approx(run["metrics.median_images_per_second"], rel=1e-9)
        for key in ("best_epoch", "epochs_run", "param_count"):
            assert row[key] == int(run[f"metrics.{key}"]), key
        for key in ("lr", "momentum", "weight_decay"):
            assert row[key] == float(run[f"params.{key}"]), key
        assert row["batch_size"] == int(run["params.batch_size"]) and row["optimizer"] == run["params.optimizer"]
        assert row["model"] == "lenet_relu" and row["dataset"] == "digits"
        assert "p_vs_best" not in row  # one run per variant: no claims about differences
    accs = [r["best_val_acc"] for r in rows]
    assert accs == sorted(accs, reverse=True)

    code, out, _ = harness(capsys, "compare", "cmp", "--run", store.single, "--format", "csv", "--metric", "test_loss")
    frame = pd.read_csv(io.StringIO(out))
    assert code == 0 and set(frame["run_id"]) == set(mlflow_runs.index)
    assert list(frame["test_loss"]) == sorted(frame["test_loss"])  # a loss sorts ascending

    code, out, _ = harness(capsys, "compare", "cmp", "--run", store.single, "--format", "markdown")
    assert code == 0 and "| variant |" in out and "| fast |" in out and "no difference is tested" in out

    code, out, err = harness(capsys, "compare", "cmp", "--run", store.single, "--out", "figs")
    assert code == 0 and "variants of run" in out and "fast" in out and "slow" in out
    for name in ("learning_curves.png", "confusion_matrices.png"):
        _png(store.root / "figs" / name)
        assert f"figs/{name}" in err
    logged = {Path(a.path).name for a in MlflowClient().list_artifacts(store.single, "compare")}
    assert {"learning_curves.png", "confusion_matrices.png", "comparison.csv"} <= logged


def test_compare_repeated_run_shows_mean_std_and_n(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = harness(capsys, "compare", "cmp", "--format", "json")  # latest run: the repeated one
    assert code == 0, err
    doc = json.loads(out)
    assert doc["parent_run_id"] == store.repeated and doc["repeated"]
    children = _children(store.repeated)
    for row in doc["rows"]:
        mine = children[children["tags.harness.variant"] == row["variant"]]
        assert row["n"] == 2 and len(set(row["seeds"].split(","))) == 2
        assert row["test_acc_mean"] == pytest.approx(mine["metrics.test_acc"].mean())
        assert row["test_acc_std"] == pytest.approx(np.std(mine["metrics.test_acc"], ddof=1))
        assert set(row["run_ids"].split(",")) == set(mine["run_id"])
        assert {"p_vs_best", "p_vs_best_holm", "differs_from_best"} <= set(row)
    assert doc["rows"][0]["differs_from_best"] is None  # the best is not compared with itself
    means = [r["best_val_acc_mean"] for r in doc["rows"]]
    assert means == sorted(means, reverse=True)

    code, out, _ = harness(capsys, "compare", "cmp")
    assert code == 0 and "±" in out and "vs best" in out and "Welch" in out
    _png(store.root / "compare" / "cmp" / "learning_curves.png")


def test_compare_confusion_pairs_first_vs_last_epoch(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = harness(capsys, "compare", "cmp", "--confusion", "--format", "json")
    assert code == 0, err
    pairs = json.loads(out)["confused_pairs"]
    assert pairs and {p["variant"] for p in pairs} <= {"fast", "slow"}
    # counts are pooled over the variant's seeds: check one against the logged arrays
    pair = pairs[0]
    client = MlflowClient()
    children = _children(store.repeated)
    ids = children.loc[children["tags.harness.variant"] == pair["variant"], "run_id"]
    arrays = [np.load(client.download_artifacts(i, "val_confusion/per_epoch.npy", str(store.root))) for i in ids]
    classes = json.loads(Path(client.download_artifacts(ids.iloc[0], "val_confusion/classes.json", str(store.root)))
                         .read_text())["classes"]
    t, p = classes.index(pair["true"]), classes.index(pair["predicted"])
    assert pair["first_count"] == sum(int(a[0, t, p]) for a in arrays)
    assert pair["last_count"] == sum(int(a[-1, t, p]) for a in arrays)
    assert pair["rate_change"] == pytest.approx(pair["last_rate"] - pair["first_rate"])

    code, out, _ = harness(capsys, "compare", "cmp", "--confusion")
    assert code == 0 and "true → predicted" in out and "first epoch" in out
    _png(store.root / "compare" / "cmp" / "confusion_epochs.png")
    logged = {Path(a.path).name for a in client.list_artifacts(store.repeated, "compare")}
    assert {"confusion_epochs.png", "confused_pairs.csv"} <= logged


def test_runs_lists_failed_run_with_resume_command(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = harness(capsys, "runs", "broken")
    assert code == 0, err
    parent_line = next(line for line in out.splitlines() if store.broken in line)
    assert "FAILED" in parent_line and "harness run broken --resume" in parent_line
    assert "diverges seed=0" in out and "diverges seed=1" in out
    assert "non-finite" in out or "became" in out  # the failure reason

    code, out, _ = harness(capsys, "runs", "cmp", "--limit", "1")
    assert code == 0 and store.repeated in out and store.single not in out
    assert "harness run cmp --resume" not in out  # finished runs have nothing to continue


def test_resume_with_repeats_matches_children_by_variant_and_seed(store: Store,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = set(_children(store.broken)["run_id"])
    code, _, err = harness(capsys, "run", "broken", "--resume", "--repeat", "3")
    assert code == 2 and "started with repeat=2" in err
    code, _, err = harness(capsys, "run", "broken", "--resume", "--set", "seed=7")  # would train seeds 7 and 8
    assert code == 2 and "trained variant 'diverges' at seed 0" in err
    assert MlflowClient().get_run(store.broken).info.status == "FAILED"  # a refused resume leaves the run as it was

    code, out, err = harness(capsys, "run", "broken", "--resume")  # follows the recorded --repeat 2
    assert code == 1, err
    assert f"Resuming run {store.broken}" in out
    after = _children(store.broken)
    assert set(after["run_id"]) == before and set(after["status"]) == {"FAILED"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["compare", "cmp", "--metric", "best_val_accc"],
         "Unknown metric 'best_val_accc'. Did you mean 'best_val_acc'"),
        (["compare", "cmp", "--run", "0123456789abcdef"], "No run '0123456789abcdef' in experiment 'cmp'"),
        (["compare", "cmp", "--format", "yaml"], "Unknown format 'yaml'"),
        (["compare", "cmp", "--study"], "No `harness tune cmp` of experiment 'cmp' is recorded yet"),
        (["compare", "never_ran"], "run `harness run never_ran` first"),
        (["compare", "cmpp"], "(did you mean 'cmp'?)"),
        (["runs", "never_ran"], "run `harness run never_ran` first"),
        (["run", "cmp", "--repeat", "0"], "error: repeat must be at least 1"),
        (["run", "cmp", "--repeat", "2", "--seeds", "0,1"], "error: repeat and seeds exclude each other"),
        (["run", "cmp", "--seeds", "0,x"], "Cannot parse seeds '0,x'"),
    ],
)
def test_bad_input_is_one_clear_line(store: Store, capsys: pytest.CaptureFixture[str], args: list[str],
                                     expected: str) -> None:
    code, out, err = harness(capsys, *args)
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and expected in err


def test_compare_without_a_name_compares_the_latest_run_in_the_store(store: Store,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`harness compare` alone: the newest `harness run` of any experiment, and a note saying which;
    `--run ID` alone: that run's experiment."""
    parents = [(name, r) for name in ("cmp", "broken") for r in experiment_runs(name, "run")]
    name, latest = max(parents, key=lambda pair: pair[1].info.start_time)
    code, out, err = harness(capsys, "compare", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["parent_run_id"] == latest.info.run_id
    assert err.startswith(f"note: comparing {name} run {latest.info.run_id}, the latest run in the store"), err
    code, out, err = harness(capsys, "compare", "--run", store.single, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["parent_run_id"] == store.single
    assert err.startswith(f"note: comparing cmp run {store.single}"), err


def test_compare_without_a_name_in_an_empty_store_is_one_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    empty = f"sqlite:///{tmp_path}/empty.db"
    code, out, err = harness(capsys, "compare", "--tracking-uri", empty)
    assert code == 2, (out, err)
    assert err.strip() == ("error: No `harness run` is recorded in this tracking store yet; run `harness run NAME` "
                           "first, or name the experiment to compare.")
    code, out, err = harness(capsys, "compare", "--run", "0123456789abcdef", "--tracking-uri", empty)
    assert code == 2 and err.startswith("error: No run 0123456789abcdef is recorded in this tracking store"), err


def test_compare_child_run_id_points_to_its_parent(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    child_id = _children(store.single)["run_id"].iloc[0]
    code, _, err = harness(capsys, "compare", "cmp", "--run", child_id)
    assert code == 2 and f"run_id '{store.single}'" in err and len(err.strip().splitlines()) == 1


def test_compare_out_must_be_a_folder(store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`--out` naming a file (or a folder under a file) is one line naming it, before MLflow is read;
    `write_reports` itself refuses it too, and the file is left as it was."""
    from harness.comparison import load_comparison, write_reports
    from harness.errors import HarnessError
    from harness.tracking import Tracker

    existing = tmp_path / "report.csv"
    existing.write_text("mine")
    for out, expected in ((existing, f"out '{existing}' is a file, not a folder"),
                          (existing / "sub", f"out '{existing / 'sub'}': {existing} is a file, not a folder")):
        code, _, err = harness(capsys, "compare", "cmp", "--out", str(out))
        assert code == 2, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: ") and expected in err
    tracker = Tracker.open(None)
    with pytest.raises(HarnessError, match="is a file, not a folder"):
        write_reports(tracker, load_comparison(tracker, "cmp", store.single), existing)
    assert existing.read_text() == "mine"


def test_a_column_of_seconds_reads_in_one_format() -> None:
    """The report's example: a `wall s` column of 6.43, 45 and 0.289 printed 6.4300, 45 and 0.2890."""
    from harness.comparison import _show_number, column_places

    wall = pd.Series([6.43, 45.0, 0.289])
    assert [_show_number(v, column_places("wall_seconds", wall)) for v in wall] == ["6.4", "45.0", "0.3"]
    loss = pd.Series([0.5, 12.25, float("nan")])
    assert [_show_number(v, column_places("test_loss", loss)) for v in loss] == ["0.5", "12.2", ""]
    assert column_places("test_acc", pd.Series([0.95, 0.1])) == 4
    assert column_places("test_loss", pd.Series([1e6])) == 0


def test_holm_adjusts_and_keeps_order() -> None:
    from harness import stats

    assert stats.holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])


def test_welch_claims_only_what_the_seed_spread_supports() -> None:
    from scipy.stats import ttest_ind

    from harness import stats

    acc = {"a": [0.90, 0.91, 0.92], "b": [0.80, 0.81, 0.79], "c": [0.905, 0.915, 0.89], "d": [0.5]}
    runs = pd.DataFrame([{"variant": v, "seed": i, "status": "FINISHED", "run_id": f"{v}{i}", "acc": x}
                         for v, xs in acc.items() for i, x in enumerate(xs)])
    summary = stats.sort_by(stats.seed_summary(runs, ["acc"]), "acc_mean", "acc")
    assert list(summary["variant"]) == ["a", "c", "b", "d"] and list(summary["n"]) == [3, 3, 3, 1]
    table = stats.compare_to_best(runs, summary, "acc").set_index("variant")
    assert table.loc["b", "p_vs_best"] == pytest.approx(ttest_ind(acc["b"], acc["a"], equal_var=False).pvalue)
    assert table.loc["b", "differs_from_best"] is True  # 11 points apart, spread of 1 point
    assert table.loc["c", "differs_from_best"] is False  # within the seed-to-seed spread
    assert table.loc["d", "differs_from_best"] is None and table.loc["a", "differs_from_best"] is None  # n=1; itself
    assert stats.verdict(table.reset_index().iloc[2], "a").startswith("differs (p=")
