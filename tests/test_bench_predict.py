"""The `harness predict` benchmark section runs and reports consistent ratios (tiny sizes, no
timing assertions), on the session's quickstart model: nothing is trained here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import quickstart_run_ids
from PIL import Image

from harness.bench.mnist_sample import SAMPLE_DIR
from harness.bench.predict import measure_predict, write_mnist_pngs


def _pngs(folder: Path, count: int) -> list[Path]:
    """MNIST PNGs when the sample is here, else generated 28x28 grayscale ones."""
    if SAMPLE_DIR.is_dir():
        files = write_mnist_pngs(folder, count)
        assert files is not None
        return files
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = [folder / f"{i:05d}.png" for i in range(count)]
    for path in files:
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
    return files


def test_mnist_pngs_are_the_sample_and_absent_sample_gives_none(tmp_path: Path) -> None:
    assert write_mnist_pngs(tmp_path / "none", 5, source=tmp_path / "absent") is None
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"no MNIST sample at {SAMPLE_DIR}")
    files = write_mnist_pngs(tmp_path / "pngs", 5)
    assert [p.name for p in files] == [f"{i:05d}.png" for i in range(5)]
    with Image.open(files[0]) as img:
        assert img.mode == "L" and img.size == (28, 28)


def test_predict_benchmark_measures_every_contender(quickstart_store: Path, tmp_path: Path) -> None:
    from harness.tracking import Tracker

    files = _pngs(tmp_path / "pngs", 40)
    _, child = quickstart_run_ids()
    row = measure_predict(Tracker.open(), f"runs:/{child}/model", files, batch_size=16, repeats=2, log=lambda _: None)
    for key in ("harness", "pyfunc", "harness_model", "decode", "script"):
        assert row[key] > 0 and row[f"{key}_spread"] >= 0, key
    assert row["harness/pyfunc"] == pytest.approx(row["harness"] / row["pyfunc"])
    assert row["harness_model/pyfunc"] == pytest.approx(row["harness_model"] / row["pyfunc"])
    assert row["harness/script"] == pytest.approx(row["harness"] / row["script"])
    assert row["images"] == 40 and row["batch_size"] == 16 and row["device"] == "cpu"
    assert 0 <= row["harness_lean_share"] <= 1  # read from torch's threads after each batch
