"""End-to-end `harness run`: MLflow records read back through MLflow's own client."""

from __future__ import annotations

import textwrap
from pathlib import Path

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import pytest
import torch
from helpers import (
    copy_experiment,
    experiment_runs,
    harness_here,
    harness_popen,
    history,
    steps,
    wait_for_checkpoint,
    write_experiment,
)
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness.cli import app
from harness.config import TrainConfig, field_names
from harness.data import load_data


def _write_variants(folder: Path, name: str, variants: str) -> None:
    """Experiment NAME in `folder` whose variants dict holds `variants` (entries, as source)."""
    body = textwrap.indent(textwrap.dedent(variants).strip(), "    ")
    write_experiment(folder, name, "from harness.config import TrainConfig\nfrom harness.experiment import Experiment\n"
                     f'experiment = Experiment(name="{name}", description="test", variants={{\n{body}\n}})\n')


def child(experiment: str, variant: str):
    return next(r for r in experiment_runs(experiment)
                if r.info.run_name == variant and "mlflow.parentRunId" in r.data.tags)


def artifact_paths(run_id: str, path: str = "") -> set[str]:
    client = MlflowClient()
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out.add(info.path)
        if info.is_dir:
            out |= artifact_paths(run_id, info.path)
    return out


def test_quickstart_records_everything(workdir: Path) -> None:
    result = CliRunner().invoke(app, ["run", "quickstart", "--set", "epochs=3"])
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    parents = [r for r in experiment_runs("quickstart") if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    run = child("quickstart", "lenet_relu")
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    # every config field is a param
    assert set(field_names()) <= set(run.data.params)
    assert run.data.params["model"] == "lenet_relu" and run.data.params["epochs"] == "3"
    for tag in ("torch.version", "torchvision.version", "harness.version", "device", "host"):
        assert tag in run.data.tags
    from harness.device import resolve_device

    assert run.data.tags["device"] == str(resolve_device("auto"))  # the device used, not "auto"
    assert run.data.params["device"] == "auto"  # the config as written
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_second"):
        assert steps(None, run.info.run_id, key) == [1, 2, 3], key
    for key in ("test_loss", "test_acc", "best_epoch", "param_count"):
        assert key in run.data.metrics
    assert run.data.metrics["test_acc"] > 0.8
    arts = artifact_paths(run.info.run_id)
    for expected in ("confusion_matrix.png", "confusion_matrix.csv", "per_class_metrics.csv", "learning_curves.png",
                     "val_confusion/per_epoch.npy", "val_confusion/classes.json", "checkpoint/best.pt",
                     "config.json", "source/quickstart.py"):
        assert expected in arts, (expected, arts)
    # per-epoch validation confusion matrices: (epochs, classes, classes)
    local = client.download_artifacts(run.info.run_id, "val_confusion/per_epoch.npy", str(workdir))
    per_epoch = np.load(local)
    assert per_epoch.shape == (3, 10, 10)
    # comparison table on the parent
    assert {"comparison.csv", "comparison.md"} <= artifact_paths(parents[0].info.run_id)
    # the comparison table printed at the end shows the logged test accuracy
    assert "lenet_relu" in result.output and f"{run.data.metrics['test_acc']:.4f}" in result.output

    # the logged model takes raw [0, 1] images at native size and reproduces test_acc
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    config = TrainConfig.from_dict(mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/config.json"))
    test = load_data(config).test
    with torch.inference_mode():
        logits = model(test.images.float() / 255)
    acc = (logits.argmax(1) == test.labels).sum().item() / len(test)
    assert acc == pytest.approx(run.data.metrics["test_acc"], abs=1e-9)
    # Its requirements are its real ones: torch, never this package ("harness" on PyPI is another project).
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"runs:/{run.info.run_id}/model")).read_text().split()
    assert [r for r in requirements if r.startswith("torch")] == [f"torch=={torch.__version__.split('+')[0]}"]
    assert not any(r.lower().startswith("harness") for r in requirements), requirements
    # The portable way to use it, with no harness and no torch tensors: pyfunc on a NumPy array.
    predictions = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(
        test.images[:8].float().numpy() / 255)
    assert np.asarray(predictions).shape == (8, len(config_classes(run)))


def config_classes(run) -> list[str]:  # noqa: ANN001
    return mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/val_confusion/classes.json")["classes"]


def test_same_seed_gives_identical_metrics(workdir: Path) -> None:
    for _ in range(2):
        result = CliRunner().invoke(app, ["run", "quickstart", "--set", "epochs=2"])
        assert result.exit_code == 0, result.output
    children = [r for r in experiment_runs("quickstart") if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    histories = [[value for _, value in history(None, r.info.run_id, "val_loss")] for r in children]
    assert histories[0] == histories[1]
    assert children[0].data.metrics["test_acc"] == children[1].data.metrics["test_acc"]


def test_failing_variant_is_marked_failed_and_others_kept(workdir: Path) -> None:
    _write_variants(workdir, "two", """
        "good": TrainConfig(dataset="synthetic", model="lenet_relu", epochs=1, train_limit=1000),
        "diverges": TrainConfig(dataset="synthetic", model="lenet_relu", epochs=2, train_limit=1000,
                                optimizer="sgd", lr=1e6, momentum=0.9),
    """)
    result = CliRunner().invoke(app, ["run", "two"])
    assert result.exit_code == 1
    good, bad = child("two", "good"), child("two", "diverges")
    assert good.info.status == "FINISHED" and "test_acc" in good.data.metrics
    assert bad.info.status == "FAILED"
    assert ("non-finite" in bad.data.tags["harness.failure_reason"]
            or "became" in bad.data.tags["harness.failure_reason"])
    parent = next(r for r in experiment_runs("two") if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FAILED"


def _history(run_id: str) -> dict[str, list[float]]:
    return {k: [value for _, value in history(None, run_id, k)]
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")}


RESUMABLE = """
    "net": TrainConfig(dataset="synthetic", model="lenet_relu", epochs=3, train_limit=2000, batch_size=32,
                       scheduler="cosine", warmup_epochs=1, augment=True, dropout=0.1),
"""


def test_killed_run_resumes_to_the_same_history(workdir: Path) -> None:
    _write_variants(workdir, "resumable", RESUMABLE)
    proc = harness_popen("run", "resumable", cwd=workdir)
    wait_for_checkpoint(proc, workdir / "checkpoints")
    proc.kill()  # SIGKILL: no chance to clean up, the runs stay RUNNING
    proc.wait()
    interrupted = child("resumable", "net")
    assert interrupted.info.status == "RUNNING"
    ckpt = torch.load(next(workdir.glob("checkpoints/*/last.pt")), weights_only=True)
    assert 1 <= ckpt["fit"]["epoch"] < 3

    resumed = harness_here("run", "resumable", "--resume", cwd=workdir)
    out, err = resumed.stdout, resumed.stderr
    assert resumed.returncode == 0, err
    assert "resuming after epoch" in out
    done = child("resumable", "net")
    assert done.info.run_id == interrupted.info.run_id and done.info.status == "FINISHED"

    fresh = CliRunner().invoke(app, ["run", "resumable"])
    assert fresh.exit_code == 0, fresh.output
    children = [r for r in experiment_runs("resumable") if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    reference = next(r for r in children if r.info.run_id != done.info.run_id)
    assert _history(done.info.run_id) == _history(reference.info.run_id)
    assert MlflowClient().get_run(done.info.run_id).data.metrics["test_acc"] == reference.data.metrics["test_acc"]


def test_interrupt_marks_run_killed(workdir: Path) -> None:
    _write_variants(workdir, "interrupted", RESUMABLE.replace("epochs=3", "epochs=50"))
    proc = harness_popen("run", "interrupted", cwd=workdir)
    wait_for_checkpoint(proc, workdir / "checkpoints")
    proc.terminate()  # SIGTERM, handled like Ctrl-C
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "--resume" in err
    assert child("interrupted", "net").info.status == "KILLED"
    parent = next(r for r in experiment_runs("interrupted") if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "KILLED"


def test_resume_without_interrupted_run_is_a_clear_error(workdir: Path) -> None:
    proc = harness_here("run", "quickstart", "--resume", cwd=workdir)
    err = proc.stderr
    assert proc.returncode == 2
    assert err.strip().startswith("error: No interrupted run of 'quickstart'") and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "quickstrat"], "Did you mean 'quickstart'"),
        (["run", "quickstart", "--set", "lrr=0.1"], "Unknown config key 'lrr'. Did you mean 'lr'"),
        (["run", "quickstart", "--set", "lr=fast"], "Cannot parse 'fast' for lr"),
        (["run", "quickstart", "--set", "lr=0"], "lr must be greater than 0"),
        (["run", "quickstart", "--set", "batch_size=0"], "batch_size must be at least 1"),
        (["run", "quickstart", "--set", "val_fraction=1"], "val_fraction must be in [0, 1)"),
        (["run", "quickstart", "--set", "model=lenett"], "Did you mean 'lenet'"),
        (["run", "quickstart", "--set", "optimizer=adamm"], "Unknown optimizer 'adamm'"),
        (["run", "quickstart", "--set", "scheduler=cosin"], "Unknown scheduler 'cosin'"),
        (["run", "quickstart", "--set", "dataset=mnits"], "Did you mean 'mnist'"),
        (["run", "quickstart", "--set", "resnet.lr=0.1"], "Unknown variant of 'quickstart' 'resnet'"),
        (["show", "quickstart", "--set", "epochs"], "is not of the form key=value"),
        (["run", "quickstart", "--tracking-uri", "postgresql://nobody@127.0.0.1:9/none"],
         "Cannot use MLflow tracking store"),
    ],
)
def test_bad_input_is_one_clear_line(workdir: Path, args: list[str], expected: str) -> None:
    proc = harness_here(*args, cwd=workdir)
    err = proc.stderr
    assert proc.returncode == 2, (proc.stdout, err)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err


def test_missing_dataset_names_files_and_folder(workdir: Path) -> None:
    proc = harness_here("run", "quickstart", "--set", "dataset=fashion_mnist", "--data-dir", str(workdir / "nodata"),
                        cwd=workdir)
    err = proc.stderr
    assert proc.returncode == 1
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1
    assert "fashion_mnist" in line[0] and "train-images-idx3-ubyte.gz" in line[0] and "FashionMNIST/raw" in line[0]
    assert child("quickstart", "lenet_relu").info.status == "FAILED"


def test_list_and_show(workdir: Path) -> None:
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0 and "quickstart" in result.output
    result = CliRunner().invoke(app, ["show", "quickstart", "--json", "--set", "lenet_relu.lr=0.2"])
    assert result.exit_code == 0
    import json

    shown = json.loads(result.output)
    assert shown["variants"]["lenet_relu"]["lr"] == 0.2


def _write_catdog(folder: Path, per_class: int = 12) -> Path:
    """Kaggle-style cat.N.png / dog.N.png images whose colour tells the class."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for cls, base in (("cat", (200, 60, 60)), ("dog", (60, 60, 200))):
        for i in range(per_class):
            pixels = np.clip(rng.normal(base, 30, size=(40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{cls}.{i}.png")
    return folder


def test_transfer_experiment_on_an_image_folder(workdir: Path) -> None:
    copy_experiment(workdir, "exp_transfer_catdog")
    images = _write_catdog(workdir / "catdog")
    result = CliRunner().invoke(app, [
        "run", "exp_transfer_catdog", "--set", f"data_path={images}", "--set", "pretrained=false",
        "--set", "freeze_backbone=false", "--set", "image_size=32", "--set", "epochs=1", "--set", "num_workers=0",
        "--set", "batch_size=8",
    ])
    assert result.exit_code == 0, result.output
    for variant in ("finetune", "feature_extractor"):
        run = child("exp_transfer_catdog", variant)
        assert run.info.status == "FINISHED"
        assert run.data.params["dataset"] == "image_folder"
        assert "confusion_matrix.png" in artifact_paths(run.info.run_id)
    csv = MlflowClient().download_artifacts(child("exp_transfer_catdog", "finetune").info.run_id,
                                            "confusion_matrix.csv", str(workdir))
    assert "cat" in Path(csv).read_text() and "dog" in Path(csv).read_text()


def test_pretrained_weights_offline_fail_clearly(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy_experiment(workdir, "exp_transfer_catdog")
    images = _write_catdog(workdir / "catdog", per_class=4)
    monkeypatch.setenv("TORCH_HOME", str(workdir / "torch_home"))  # no cached weights
    proc = harness_here("run", "exp_transfer_catdog", "--set", f"data_path={images}", "--set", "finetune.epochs=1",
                        "--set", "image_size=32", "--set", "num_workers=0", cwd=workdir)
    err = proc.stderr
    if proc.returncode == 0:
        pytest.skip("pretrained weights could be downloaded here (network available)")
    assert proc.returncode == 1 and "Traceback" not in err
    assert "Could not load pretrained weights for 'resnet18'" in err and "pretrained=false" in err


def test_shipped_lenet_vs_alexnet_runs_small(workdir: Path) -> None:
    copy_experiment(workdir, "exp_lenet_vs_alexnet")
    result = CliRunner().invoke(app, [
        "run", "exp_lenet_vs_alexnet", "--set", "dataset=synthetic", "--set", "train_limit=300",
        "--set", "epochs=1", "--set", "alexnet.image_size=32",
    ])
    assert result.exit_code == 0, result.output
    alexnet = child("exp_lenet_vs_alexnet", "alexnet")
    assert alexnet.data.params["image_size"] == "32" and alexnet.data.params["model"] == "alexnet"
    assert alexnet.data.params["optimizer"] == "sgd"
    assert child("exp_lenet_vs_alexnet", "lenet").data.params["optimizer"] == "adam"
