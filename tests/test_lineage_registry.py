"""Results put to use in MLflow: dataset lineage (`mlflow.log_input` digests, `harness compare`'s
data column), system metrics, logged-model linked metrics, and `--register` with the champion
alias moved only on improvement."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import QUICKSTART_MODEL, QUICKSTART_TUNED_MODEL, harness
from helpers import children_of, write_experiment
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness import promotion
from harness.cli import app
from harness.config import TrainConfig
from harness.data import lineage, load_data
from harness.tracking import DATA_DIGEST_TAG, VARIANT_TAG, Tracker


def _inputs(run) -> dict[str, tuple[str, str, dict]]:
    """context -> (name, digest, profile) of a run's dataset inputs."""
    out = {}
    for d in run.inputs.dataset_inputs:
        (context,) = [t.value for t in d.tags if t.key == "mlflow.data.context"]
        out[context] = (d.dataset.name, d.dataset.digest, json.loads(d.dataset.profile))
    return out


# ----------------------------------------------------------------- lineage


def test_variants_log_their_splits_with_digests_and_compare_warns_on_different_data(workdir: Path) -> None:
    write_experiment(workdir, "lineage", textwrap.dedent("""
        from harness.config import TrainConfig
        from harness.experiment import Experiment

        base = TrainConfig(model="lenet_relu", dataset="digits", epochs=1, batch_size=64)
        experiment = Experiment(name="lineage", description="same data, other lr, fewer images", variants={
            "base": base, "other_lr": base.override(lr=0.02), "limited": base.override(train_limit=300)})
    """))
    result = CliRunner().invoke(app, ["run", "lineage", "--no-system-metrics"])
    assert result.exit_code == 0, result.output
    runs = {r.data.tags[VARIANT_TAG]: r for r in children_of("lineage")}
    inputs = {v: _inputs(r) for v, r in runs.items()}
    assert set(inputs["base"]) == {"train", "validation", "test"}
    name, digest, profile = inputs["base"]["train"]
    assert name == "digits" and len(digest) == 32 and profile == {"num_samples": 1294, "num_classes": 10}
    assert inputs["base"] == inputs["other_lr"]  # other settings, same bytes
    assert inputs["limited"]["train"][1] != digest and inputs["limited"]["train"][2]["num_samples"] == 300
    assert inputs["limited"]["test"] == inputs["base"]["test"]
    assert runs["base"].data.tags[DATA_DIGEST_TAG] == runs["other_lr"].data.tags[DATA_DIGEST_TAG]
    # --no-system-metrics: none recorded.
    assert not any(k.startswith("system/") for k in runs["base"].data.metrics)

    shown = CliRunner().invoke(app, ["compare", "lineage", "--format", "csv"])
    assert shown.exit_code == 0, shown.output
    header = shown.stdout.splitlines()[0].split(",")
    assert "data" in header
    assert "warning: variants did not read the same data" in shown.stderr and "limited" in shown.stderr



def test_digests_are_cached_per_data_folder_and_follow_the_bytes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainConfig(model="lenet_relu", dataset="digits")
    data = load_data(config)
    first = lineage.split_records(config, data, tmp_path)
    assert (tmp_path / lineage.CACHE_FILE).is_file()

    def no_hashing(*args: object) -> str:
        raise AssertionError("hashed again despite a valid cache entry")

    monkeypatch.setattr(lineage, "split_digest", no_hashing)
    assert lineage.split_records(config, data, tmp_path) == first
    monkeypatch.undo()
    # Other settings that change the bytes: new digests, computed and added to the cache.
    other = config.override(val_fraction=0.2)
    changed = lineage.split_records(other, load_data(other), tmp_path)
    assert changed[0].digest != first[0].digest and changed[2].digest == first[2].digest
    # A damaged cache is rebuilt, not fatal.
    (tmp_path / lineage.CACHE_FILE).write_text("{not json")
    assert lineage.split_records(config, data, tmp_path) == first


def test_an_image_folder_digest_hashes_its_files(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (i * 20, 100 if cls == "cat" else 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    config = TrainConfig(model="lenet_relu", dataset="image_folder", data_path=str(tmp_path / "imgs"), image_size=16,
                         val_fraction=0.0, test_fraction=0.3)
    before = lineage.split_records(config, load_data(config), tmp_path / "nowhere")
    assert [r.context for r in before] == ["train", "test"]  # no validation split
    assert before[0].source == str((tmp_path / "imgs").resolve())
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "imgs" / "cat" / "0.png")  # one file changes
    after = lineage.split_records(config, load_data(config), tmp_path / "nowhere")
    assert {r.digest for r in after} != {r.digest for r in before}


# ----------------------------------------------------------------- machine and model record


def test_child_runs_have_system_metrics_and_their_model_links_the_final_metrics(quickstart_store: Path) -> None:
    (child,) = children_of("quickstart")
    assert "system/cpu_utilization_percentage" in child.data.metrics
    assert "system/system_memory_usage_megabytes" in child.data.metrics
    models = MlflowClient().search_logged_models(experiment_ids=[child.info.experiment_id])
    (record,) = [m for m in models if m.source_run_id == child.info.run_id]
    linked = {m.key: m.value for m in record.metrics}
    assert linked["test_acc"] == pytest.approx(child.data.metrics["test_acc"])
    assert linked["best_val_acc"] == pytest.approx(child.data.metrics["best_val_acc"])
    assert "startup_seconds" not in linked  # logged before training: not the model's
    info = Tracker.open().model_info(f"runs:/{child.info.run_id}/model")
    assert info["metadata"]["classes"] == [str(d) for d in range(10)]
    assert info["metadata"]["in_channels"] == 1 and info["metadata"]["image_size"] == 28


# ----------------------------------------------------------------- registry


def test_register_points_the_champion_at_the_run_and_the_retrained_best(quickstart_store: Path) -> None:
    client = MlflowClient()
    (child,) = children_of("quickstart")
    champion = client.get_model_version_by_alias(QUICKSTART_MODEL, "champion")
    assert champion.run_id == child.info.run_id
    assert float(champion.tags["best_val_acc"]) == child.data.metrics["best_val_acc"]
    assert champion.tags["harness.champion_best_val_acc_before"] == "none"
    tuned = client.get_model_version_by_alias(QUICKSTART_TUNED_MODEL, "champion")
    retrained = client.get_run(tuned.run_id)
    assert retrained.data.tags[VARIANT_TAG] == "retrain-best" and "test_acc" in retrained.data.metrics
    assert tuned.tags["harness.study"] == "quickstart-lenet_relu"


def test_the_alias_moves_only_on_improvement(quickstart_store: Path) -> None:
    tracker = Tracker.open()
    (child,) = children_of("quickstart")
    uri = f"runs:/{child.info.run_id}/model"
    name = "alias-moves-test"
    first = promotion.register(tracker, uri, name, 0.50)
    worse = promotion.register(tracker, uri, name, 0.40)
    equal = promotion.register(tracker, uri, name, 0.50)
    better = promotion.register(tracker, uri, name, 0.60, tags={"note": "x"})
    assert (first.moved, worse.moved, equal.moved, better.moved) == (True, False, False, True)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == better.version
    tags = client.get_model_version(name, worse.version).tags
    assert (float(tags["best_val_acc"]), float(tags["harness.champion_best_val_acc_before"])) == (0.40, 0.50)
    assert tags["harness.promoted"] == "false"
    assert "does not beat version 1" in worse.describe() and "moved" in better.describe()
    # Another alias is independent of the champion.
    staging = promotion.register(tracker, uri, name, 0.10, alias="staging")
    assert staging.moved and str(client.get_model_version_by_alias(name, "champion").version) == better.version


@pytest.mark.parametrize("args, says", [
    (["run", "quickstart", "--register", "bad name"], "not a usable model name"),
    (["run", "quickstart", "--register", "ok", "--alias", "v3"], "not a usable alias"),
    (["run", "quickstart", "--register", "ok", "--set", "val_fraction=0"], "val_fraction=0"),
    (["tune", "quickstart", "--register", "ok"], "error: register needs retrain_best=True"),
])
def test_bad_register_options_are_one_line_before_training(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                          args: list[str], says: str) -> None:
    code, _, err = harness(capsys, *args)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (workdir / "checkpoints").exists()  # refused before anything trained


def test_runs_recording_the_same_new_dataset_at_once_all_succeed(workdir: Path) -> None:
    """Parallel trials (and workers) log the same splits at the same moment: MLflow's look-up then
    insert of a new dataset races, and the loser retries instead of failing its run."""
    from concurrent.futures import ThreadPoolExecutor

    tracker = Tracker.open()
    exp_id = tracker.ensure_experiment("race")
    runs = [tracker.start_run(exp_id, f"r{i}", {}) for i in range(8)]
    record = {"name": "digits", "context": "train", "digest": "0" * 32, "source": "/nowhere", "profile": {}}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda run_id: tracker.log_datasets(run_id, [record]), runs))
    assert all(len(tracker.find_run(r).datasets) == 1 for r in runs)
