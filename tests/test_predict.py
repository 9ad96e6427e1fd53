"""`harness predict` end to end on the session's finished quickstart run (LeNet on digits: 10
classes '0'..'9', grayscale 28x28): every MODEL form, the three output formats, agreement with
MLflow's own pyfunc loader, unreadable files, and one-line errors. Nothing is trained here."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import QUICKSTART_MODEL, harness
from helpers import cli_error_line, quickstart_run_ids
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app

CLASSES = [str(d) for d in range(10)]


# ----------------------------------------------------------------- helpers


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16 * 255).astype(np.uint8), bunch.target


def _digit_image(index: int, size: int = 28, mode: str = "L") -> Image.Image:
    images, _ = _digits()
    return Image.fromarray(images[index]).resize((size, size), Image.BILINEAR).convert(mode)


def write_images(folder: Path) -> list[Path]:
    """Digits as the files users have: grayscale and RGB, PNG/JPEG/BMP/WebP, other sizes, upper-case
    extensions, a sub-folder; plus a text file the folder search must ignore."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir(exist_ok=True)
    specs = [("d0.png", 0, 28, "L"), ("d1.jpg", 1, 28, "RGB"), ("sub/d2.png", 2, 40, "RGB"),
             ("sub/D3.PNG", 3, 28, "L"), ("d4.bmp", 4, 64, "L"), ("d5.webp", 5, 28, "RGB")]
    paths = []
    for name, index, size, mode in specs:
        path = folder / name
        _digit_image(index, size, mode).save(path)
        paths.append(path)
    (folder / "notes.txt").write_text("not an image")
    return paths


def cli(*args: str) -> tuple[int, str, str]:
    """`harness ...` through CliRunner: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _check_rows(rows: list[dict], k: int) -> None:
    for row in rows:
        classes, probs = row["classes"], row["probs"]
        assert len(classes) == k and set(classes) <= set(CLASSES), row
        assert probs == sorted(probs, reverse=True), row
        assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-5, row


def _parse_csv(text: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    k = (len(reader.fieldnames) - 1) // 2
    assert reader.fieldnames == ["path"] + [f"{kind}_{i}" for i in range(1, k + 1) for kind in ("class", "prob")]
    return [{"path": r["path"], "classes": [r[f"class_{i}"] for i in range(1, k + 1)],
             "probs": [float(r[f"prob_{i}"]) for i in range(1, k + 1)]} for r in reader]


def _parse_json(text: str) -> list[dict]:
    return [{"path": r["path"], "classes": [t["class"] for t in r["top_k"]],
             "probs": [t["probability"] for t in r["top_k"]]} for r in json.loads(text)]


# ----------------------------------------------------------------- tests


def test_predict_csv_json_and_table_from_a_run_uri(quickstart_store: Path, tmp_path: Path) -> None:
    images = write_images(tmp_path / "images")
    _, child = quickstart_run_ids()
    uri = f"runs:/{child}/model"

    code, out, err = cli("predict", uri, str(tmp_path / "images"), "--format", "csv")
    assert code == 0, err
    rows = _parse_csv(out)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in images)  # notes.txt ignored, sub/ searched
    _check_rows(rows, 3)

    code, out, err = cli("predict", uri, str(tmp_path / "images"), "--format", "json", "--top-k", "5")
    assert code == 0, err
    by_json = _parse_json(out)
    _check_rows(by_json, 5)
    assert {r["path"]: r["classes"][0] for r in by_json} == {r["path"]: r["classes"][0] for r in rows}

    code, out, err = cli("predict", uri, str(images[0]), str(images[1]), "--top-k", "20")  # k beyond 10 classes: all 10
    assert code == 0, err
    assert "d0.png" in out and "d1.jpg" in out and "#10" in out and "#11" not in out


def test_predictions_match_mlflow_pyfunc_on_the_same_arrays(quickstart_store: Path, tmp_path: Path) -> None:
    from harness.prediction import decode, to_float

    images = write_images(tmp_path / "images")
    _, child = quickstart_run_ids()
    uri = f"runs:/{child}/model"
    code, out, err = cli("predict", uri, *map(str, images), "--format", "json", "--top-k", "10", "--batch-size", "4")
    assert code == 0, err
    ours = {r["path"]: r for r in _parse_json(out)}

    batch = to_float(np.stack([decode(p, 1, 28) for p in images]))
    assert (batch.shape == (len(images), 1, 28, 28) and batch.dtype == np.float32
            and 0 <= batch.min() <= batch.max() <= 1)
    logits = mlflow.pyfunc.load_model(uri).predict(batch)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for path, p in zip(images, probs):
        row = ours[str(path)]
        assert row["classes"][0] == CLASSES[int(p.argmax())], path
        expected = {CLASSES[i]: float(p[i]) for i in range(10)}
        assert ({c: pytest.approx(expected[c], abs=2e-6) for c in row["classes"]}
                == dict(zip(row["classes"], row["probs"])))
    # The model learned digits: most of these clean ones are read right.
    assert sum(ours[str(p)]["classes"][0] == str(d) for d, p in enumerate(images)) >= 4


def test_experiment_name_uses_the_best_variant_of_the_latest_finished_run(quickstart_store: Path,
                                                                          tmp_path: Path) -> None:
    images = write_images(tmp_path / "images")
    parent, child = quickstart_run_ids()
    code, out, err = cli("predict", "quickstart", str(images[0]), "--format", "csv")
    assert code == 0, err
    assert f"Using run {child} (variant lenet_relu, best_val_acc 0." in err and f"of quickstart's run {parent}" in err
    assert _parse_csv(out)[0]["path"] == str(images[0])  # stdout is only the csv


def test_registered_model_by_version_and_alias(quickstart_store: Path, tmp_path: Path, capsys) -> None:
    images = write_images(tmp_path / "images")
    _, child = quickstart_run_ids()
    name = f"predict-test-{uuid.uuid4().hex[:8]}"
    version = mlflow.register_model(f"runs:/{child}/model", name).version
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    for uri in (f"models:/{name}/{version}", f"models:/{name}@champion"):
        code, out, err = cli("predict", uri, str(images[0]), "--format", "json")
        assert code == 0, err
        _check_rows(_parse_json(out), 3)
    line = cli_error_line(harness(capsys, "predict", f"models:/{name}@staging", str(images[0])))
    assert f"No registered model '{name}' with alias 'staging'" in line
    line = cli_error_line(harness(capsys, "predict", f"models:/{name}/99", str(images[0])))
    assert f"models:/{name}/99" in line


def test_the_champion_harness_run_registered(quickstart_store: Path, tmp_path: Path) -> None:
    image = write_images(tmp_path / "images")[0]
    code, out, err = cli("predict", f"models:/{QUICKSTART_MODEL}@champion", str(image), "--format", "json")
    assert code == 0, err
    _check_rows(_parse_json(out), 3)


def test_unreadable_files_are_listed_and_the_others_predicted(quickstart_store: Path, tmp_path: Path, capsys) -> None:
    images = write_images(tmp_path / "images")
    (tmp_path / "images" / "fake.png").write_text("this is text, not a PNG")
    data = images[0].read_bytes()
    (tmp_path / "images" / "cut.png").write_bytes(data[: len(data) // 2])  # truncated inside its pixel data
    _, child = quickstart_run_ids()
    code, out, err = harness(capsys, "predict", f"runs:/{child}/model", str(tmp_path / "images"),
                             str(tmp_path / "missing.png"), "--format", "csv")
    assert code == 0, err
    assert sorted(r["path"] for r in _parse_csv(out)) == sorted(str(p) for p in images)
    for bad in ("fake.png", "cut.png", "missing.png"):
        assert any(line.startswith("unreadable: ") and bad in line for line in err.splitlines()), err
    assert "3 of 9 files could not be read" in err and "Traceback" not in err


def test_nothing_readable_or_no_image_is_one_line_and_non_zero(quickstart_store: Path, tmp_path: Path, capsys) -> None:
    _, child = quickstart_run_ids()
    uri = f"runs:/{child}/model"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "fake.jpg").write_text("not a JPEG")
    code, out, err = harness(capsys, "predict", uri, str(bad))
    assert code == 2 and out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("unreadable: ") and "fake.jpg" in lines[0]
    assert lines[-1].startswith("error: None of the 1 files could be read") and len(lines) == 2

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    line = cli_error_line(harness(capsys, "predict", uri, str(empty)))
    assert "No image files" in line and str(empty) in line
    line = cli_error_line(harness(capsys, "predict", uri, str(empty), str(tmp_path / "nope")))
    assert f"{tmp_path / 'nope'}: no such file or folder" in line and "No image files" in line


@pytest.mark.parametrize(("model", "expected"), [
    ("runs:/0123456789abcdef0123456789abcdef/model", "No run '0123456789abcdef0123456789abcdef'"),
    ("nosuchexperiment", "harness run nosuchexperiment"),
    ("quickstrat", "did you mean 'quickstart'"),
    ("models:/nope@champion", "No registered model 'nope' with alias 'champion'"),
    ("models:/nope/1", "models:/nope/1"),
])
def test_unknown_models_are_one_line(quickstart_store: Path, tmp_path: Path, capsys, model: str, expected: str) -> None:
    image = write_images(tmp_path / "images")[0]
    line = cli_error_line(harness(capsys, "predict", model, str(image)))
    assert expected in line, line
    assert len(line) < 400, line


def test_a_parent_run_or_a_model_without_metadata_is_one_line(quickstart_store: Path, tmp_path: Path, capsys) -> None:
    import torch

    image = write_images(tmp_path / "images")[0]
    parent, _ = quickstart_run_ids()
    line = cli_error_line(harness(capsys, "predict", f"runs:/{parent}/model", str(image)))
    assert f"Run {parent} is a parent run" in line

    # A model as an older harness logged it: no classes or input shape in its metadata.
    experiment_id = mlflow.MlflowClient().create_experiment(f"predict-older-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.pytorch.log_model(torch.nn.Linear(4, 2), name="model", pip_requirements=["torch"],
                                 input_example=np.zeros((1, 4), np.float32))
    line = cli_error_line(harness(capsys, "predict", f"runs:/{run.info.run_id}/model", str(image)))
    assert "no class names" in line and "older harness" in line


def test_bad_options_are_one_line(quickstart_store: Path, tmp_path: Path, capsys) -> None:
    import torch

    image = str(write_images(tmp_path / "images")[0])
    for args, expected in ((["--top-k", "0"], "error: top_k must be at least 1"),
                           (["--batch-size", "0"], "error: batch_size must be at least 1"),
                           (["--format", "xml"], "format"),
                           (["--device", "tpu"], "error: device must be 'auto', 'cpu' or 'cuda'")):
        assert expected in cli_error_line(harness(capsys, "predict", "quickstart", image, *args))
    if not torch.cuda.is_available():
        line = cli_error_line(harness(capsys, "predict", "quickstart", image, "--device", "cuda"))
        assert "no CUDA GPU" in line


def test_find_images_dedupes_and_keeps_order(tmp_path: Path) -> None:
    from harness.prediction import find_images

    images = write_images(tmp_path / "images")
    files, missing = find_images([images[1], tmp_path / "images", tmp_path / "nope"])
    assert files[0] == images[1] and len(files) == len(images) and len(set(files)) == len(files)
    assert [m.path for m in missing] == [str(tmp_path / "nope")]


def test_decoded_batches_keep_order_across_threads(tmp_path: Path) -> None:
    from harness.prediction import decode, decoded_batches

    images = write_images(tmp_path / "images")
    (tmp_path / "images" / "fake.png").write_text("text")
    files = images[:3] + [tmp_path / "images" / "fake.png"] + images[3:]
    batches = list(decoded_batches(files, 3, 16, batch_size=4, workers=3))
    assert [len(b.paths) + len(b.failed) for b in batches] == [4, 3]
    assert [p for b in batches for p in b.paths] == [str(p) for p in images]
    assert [f.path for b in batches for f in b.failed] == [str(files[3])]
    stacked = np.concatenate([b.images for b in batches])
    assert stacked.shape == (6, 3, 16, 16) and stacked.dtype == np.uint8
    assert np.array_equal(stacked[4], decode(images[4], 3, 16))


def test_decoding_probes_the_first_images_then_keeps_order(tmp_path: Path) -> None:
    from harness.prediction import PROBE_IMAGES, decoded_batches

    images = write_images(tmp_path / "images")
    files = images * 5  # 30 entries: the probe's batch of 8, then batches of 10
    batches = list(decoded_batches(files, 1, 28, batch_size=10))
    assert [len(b.paths) for b in batches] == [PROBE_IMAGES, 10, 10, 2]
    assert [p for b in batches for p in b.paths] == [str(p) for p in files]


def test_thread_tuner_leaves_a_core_to_decoding_only_when_the_model_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from harness.prediction import ThreadTuner

    set_to: list[int] = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    tuner = ThreadTuner(torch.device("cpu"))
    tuner.update(1, waited=5.0, model_seconds=1.0)  # the pipeline is still filling: no decision
    tuner.update(2, waited=0.5, model_seconds=1.0)  # waited on decoding: leave it a core
    tuner.update(3, waited=0.05, model_seconds=1.0)  # a little: no change
    tuner.update(4, waited=0.0, model_seconds=1.0)  # the model bounds it: every core
    tuner.restore()
    assert set_to == [3, 4, 4]  # lean at batch 2, kept at 3, full again at 4, then restored
    assert set_to[-1] == 4 and not ThreadTuner(torch.device("cuda")).active
    set_to.clear()
    ThreadTuner(torch.device("cpu"), start_lean=True).restore()
    assert set_to == [3, 4]
