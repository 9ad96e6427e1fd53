"""The benchmark machinery runs and reports consistent ratios (no timing assertions)."""

from __future__ import annotations

import pytest

from harness.bench.throughput import Case, run_case
from harness.config import TrainConfig
from harness.data import load_data


def test_run_case_measures_every_contender() -> None:
    config = TrainConfig(model="lenet_relu", dataset="synthetic", batch_size=64, train_limit=512, seed=0)
    result = run_case(Case("tiny", config), load_data(config), epochs=2, log=lambda _: None)
    for key in ("tutorial", "floor", "harness", "harness_eval", "harness_untracked"):
        assert result[key] > 0, key
    assert result["harness/floor"] == pytest.approx(result["harness"] / result["floor"])
    assert result["harness/tutorial"] == pytest.approx(result["harness"] / result["tutorial"])
    assert result["images"] == 512


def test_scaling_runs_one_and_two_processes_and_reports_ratios() -> None:
    from harness.bench.scaling import measure_scaling, plan_contenders

    plan = plan_contenders("cpu", nproc=2, cores=2)  # the 2-core plan on any machine: 1x1, 1x2, 2x1 (gloo)
    config = TrainConfig(model="lenet_relu", dataset="synthetic", batch_size=64, train_limit=256, val_fraction=0.0,
                         seed=0)
    rows = measure_scaling(Case("tiny", config), None, plan, epochs=2, log=lambda _: None)
    assert [(r["processes"], r["threads_per_process"]) for r in rows] == [(1, 1), (1, 2), (2, 1)]
    by_shape = {(r["processes"], r["threads_per_process"]): r for r in rows}
    for r in rows:
        assert r["case"] == "tiny" and r["device"] == "cpu" and r["images_per_second"] > 0 and r["spread"] >= 0
        assert r["ratio_vs_1proc_all_cores"] == pytest.approx(
            r["images_per_second"] / by_shape[1, 2]["images_per_second"])
    # Efficiency counts baseline-sized shares of the machine: 1 for the baseline, 2 for the others.
    assert by_shape[1, 1]["efficiency"] == pytest.approx(1.0)
    assert by_shape[2, 1]["efficiency"] == pytest.approx(
        by_shape[2, 1]["images_per_second"] / (2 * by_shape[1, 1]["images_per_second"]))

def test_study_comparison_spends_the_budget_and_reports_every_strategy() -> None:
    from harness.bench.study import compare_strategies
    from harness.search_space import DEFAULT_SEARCH_SPACE

    base = TrainConfig(model="lenet_relu", dataset="synthetic", epochs=2, train_limit=256, seed=0)
    rows = compare_strategies(base, DEFAULT_SEARCH_SPACE, load_data(base), budget_epochs=6, seeds=(0,),
                              strategies=(("tpe", "median"), ("random", "none")), log=lambda _: None)
    by_name = {r["strategy"]: r for r in rows}
    assert set(by_name) == {"tpe+median", "random+none"}
    assert by_name["random+none"]["trials"] == 3 and by_name["random+none"]["pruned"] == 0  # 3 trials x 2 epochs
    best = max(r["best_val_acc"] for r in rows)
    for r in rows:
        assert 0 < r["best_val_acc"] <= 1
        assert 1 <= r["epochs_to_within_tol"] <= 6 + 1  # the last trial may finish one epoch past the budget
    # The strategy holding the overall best reached it within the budget.
    assert any(r["best_val_acc"] == best and r["reached_within_tol"] == "1/1" for r in rows)


def test_startup_is_measured_from_a_real_harness_run() -> None:
    from harness.bench.startup import measure_startup

    result = measure_startup(repeats=1, log=lambda _: None)
    assert 0 < result["first_run_seconds"] < 120
    # The floor is a fresh interpreter importing torch, building an optimizer and importing mlflow:
    # never free.
    assert 0.1 < result["floor_seconds"] < 120
    assert result["harness/floor"] == result["median_later_seconds"] / result["floor_seconds"]
    assert {"import torch", "first optimizer (imports torch._dynamo)"} <= set(result["imports"])
    # `harness run` imports MLflow in its own process, and so does the floor script it is compared with.
    assert "import mlflow" in result["imports"] and result["imports"]["import mlflow"] > 0
    assert "import mlflow" in result["floor_probe"]
    # The tracked floor also opens the store and starts a run: it costs more than the bare floor.
    assert result["tracked_floor_seconds"] > 0.1
    assert result["harness/tracked_floor"] == result["median_later_seconds"] / result["tracked_floor_seconds"]


def test_bad_bench_options_are_one_line_and_exit_2() -> None:
    from helpers import harness

    for args, expected in ((["--epochs", "1"], "--epochs must be at least 2"),
                           (["--study-budget", "-1"], "--study-budget must be 0"),
                           (["--study-seeds", "0"], "--study-seeds must be at least 1")):
        proc = harness("bench", *args, timeout=None)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and expected in proc.stderr


def test_recipe_costs_cover_every_primitive_against_plain() -> None:
    from harness.bench.recipes import LENET_RECIPES, measure_recipes

    config = TrainConfig(model="lenet_relu", dataset="synthetic", batch_size=64, train_limit=128, val_fraction=0.0,
                         seed=0)
    rows = measure_recipes(Case("tiny", config), load_data(config), LENET_RECIPES, epochs=2, log=lambda _: None)
    assert [r["recipe"] for r in rows] == ["plain", "trivialaugment", "randaugment", "mixup", "cutmix",
                                           "random_erasing", "ema"]
    for r in rows:
        assert r["case"] == "tiny" and r["images"] == 128 and r["images_per_second"] > 0 and r["spread"] >= 0
        assert r["ratio_vs_plain"] == pytest.approx(r["images_per_second"] / rows[0]["images_per_second"])
        assert r["cost"] == pytest.approx(1 - r["ratio_vs_plain"])
    assert rows[0]["ratio_vs_plain"] == 1.0 and rows[0]["changes"] == "-"


def test_folder_benchmark_trains_both_pipelines_on_generated_jpegs(tmp_path) -> None:
    from harness.bench.folders import FolderCase, folder_data, measure_folder, write_jpeg_folder

    root = write_jpeg_folder(tmp_path / "catdog", count=30, size=40)
    assert sorted(p.name for p in root.iterdir()) == ["cat", "dog"] and len(list(root.rglob("*.jpg"))) == 30
    config = TrainConfig(model="lenet_relu", dataset="image_folder", data_path=str(root), image_size=16, batch_size=8,
                         val_fraction=0.0, num_workers=1, device="cpu", seed=0)
    case = FolderCase("tiny", config, train_images=16)
    data = folder_data(case)
    assert len(data.train) == 16 and len(data.classes) == 2
    row = measure_folder(case, data, epochs=2, log=lambda _: None)
    for key in ("harness", "tutorial", "in_memory", "harness_1thread", "harness_loading", "tutorial_loading",
                "decode_1core", "harness_worker_1core", "tutorial_worker_1core"):
        assert row[key] > 0, key
    assert row["harness/tutorial"] == pytest.approx(row["harness"] / row["tutorial"])
    assert row["images"] == 16 and row["image_size"] == 16 and row["bound"] in ("compute", "loading")
