"""`harness predict`'s path against MLflow's own pyfunc loader, on the same images and batches.

Data: 2,000 images of the real MNIST sample (../shared/data/mnist-t10k) written as 28x28
grayscale PNGs to a temporary folder; the section is skipped with a note when the sample is not
on this machine. Model: the quickstart's ReLU LeNet, trained for one epoch on scikit-learn's digits
(8x8 upscaled to 28x28 grayscale: MNIST's shape) into a temporary MLflow store, and logged as
`harness run` logs it. Its accuracy does not matter here; its speed does.

Contenders, in one process, alternating repeat by repeat (the first repeat is a warm-up), all on
the CPU, at the same batch size:
1. harness: `predict_files`, the whole path after model loading: read + decode + resize with
   PIL in the decoding threads, batches through the model under `inference_mode`, softmax, top-3,
   torch's threads set by its `ThreadTuner`;
2. pyfunc: the same decoded float32 batches (decoded before timing) through
   `mlflow.pyfunc.load_model(uri).predict(batch)`, what a serving stack would call;
3. harness_model: the harness's loaded model alone on those same batches, with pyfunc's threads;
4. decode: the harness's decoding alone (its threads, no model): what limits the whole path;
5. script: what a hand-written script does end to end: PIL decode one file after another, then
   pyfunc on each batch.
Ratios: harness_model/pyfunc (the same work: the model call), harness/pyfunc (the harness also
reads and decodes the files, pyfunc gets them decoded) and harness/script (the same work end to
end). Also: `decode_threads` (what `decode_workers` chose for these files) and
`harness_lean_share` (the share of the harness's batches run with one thread fewer, read from
torch's setting after each batch).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.bench.mnist_sample import SAMPLE_DIR
from harness.bench.recipes import median_and_spread
from harness.bench.throughput import interleave

EXPERIMENT = "bench_predict"


# ------------------------------------------------------------------ data and model


def write_mnist_pngs(root: Path, count: int = 2000, source: Path = SAMPLE_DIR) -> list[Path] | None:
    """The first `count` images of the MNIST sample as 28x28 grayscale PNGs under `root`, or None
    when the sample is not on this machine."""
    from PIL import Image

    images_file = source / "t10k-images-idx3-ubyte.gz"
    if not images_file.is_file():
        return None
    raw = gzip.decompress(images_file.read_bytes())
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:count]  # IDX: 16-byte header
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pixels in enumerate(images):
        path = root / f"{i:05d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@contextlib.contextmanager
def _working_in(folder: Path) -> Iterator[None]:
    """Run with `folder` as the working folder and checkpoint root (MLflow's sqlite store keeps
    artifacts in ./mlruns), restoring both afterwards."""
    previous_dir, previous_ckpt = Path.cwd(), os.environ.get("HARNESS_CHECKPOINT_DIR")
    os.chdir(folder)
    os.environ["HARNESS_CHECKPOINT_DIR"] = str(folder / "checkpoints")
    try:
        yield
    finally:
        os.chdir(previous_dir)
        if previous_ckpt is None:
            os.environ.pop("HARNESS_CHECKPOINT_DIR", None)
        else:
            os.environ["HARNESS_CHECKPOINT_DIR"] = previous_ckpt


def train_model(folder: Path, epochs: int = 1) -> tuple[Any, str]:
    """(tracker, model URI): the quickstart's LeNet trained for `epochs` on digits into a new
    MLflow store under `folder`, through `run_experiment` as `harness run` does."""
    from harness.config import TrainConfig
    from harness.experiment import Experiment
    from harness.runner import run_experiment
    from harness.tracking import Tracker

    config = TrainConfig(model="lenet_relu", dataset="digits", epochs=epochs, batch_size=32, optimizer="sgd", lr=0.05,
                         momentum=0.9, seed=0, device="cpu")
    exp = Experiment(name=EXPERIMENT, description="harness predict benchmark model", variants={"lenet_relu": config})
    folder.mkdir(parents=True, exist_ok=True)
    with _working_in(folder), contextlib.redirect_stdout(io.StringIO()):  # epoch lines: not the bench's output
        tracker = Tracker.open(f"sqlite:///{folder / 'mlflow.db'}")
        outcome = run_experiment(tracker, exp, {"lenet_relu": config}, system_metrics=None)
    if outcome.failed:
        raise RuntimeError(f"training the benchmark model failed: {outcome.failed[0].reason}")
    return tracker, f"runs:/{outcome.results[0].run_id}/model"


# ------------------------------------------------------------------ contenders


def _rates(work: Callable[[], object], images: int) -> Iterator[float]:
    """Images/s of each successive call of `work`."""
    while True:
        start = time.perf_counter()
        work()
        yield images / (time.perf_counter() - start)


def measure_predict(tracker: Any, uri: str, files: Sequence[Path], batch_size: int = 256, repeats: int = 7,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """One row: images/s of every contender (median after the warm-up repeat, spread) and the ratios."""
    import torch

    from harness import prediction as predict

    choice = predict.resolve_model(tracker, uri)
    cpu = torch.device("cpu")
    module = predict.load_module(tracker, uri, cpu)
    pyfunc = tracker.load_pyfunc(uri)  # where the harness's model runs too
    batches = [predict.to_float(b.images) for b in
               predict.decoded_batches(files, choice.channels, choice.image_size, batch_size)]
    n = sum(len(b) for b in batches)
    if n != len(files):
        raise RuntimeError(f"{len(files) - n} benchmark images could not be decoded")

    def forward() -> None:
        with torch.inference_mode():
            for batch in batches:
                module(torch.from_numpy(batch))

    def script() -> None:
        for start in range(0, len(files), batch_size):
            part = files[start : start + batch_size]
            pyfunc.predict(predict.to_float(np.stack(
                [predict.decode(p, choice.channels, choice.image_size) for p in part])))

    full_threads = torch.get_num_threads()
    lean: list[bool] = []  # per batch of every harness repeat: run with fewer threads than torch's setting

    def harness() -> None:
        # Seen from outside, through the progress callback `harness predict` has anyway: it is
        # called after each batch, before the thread tuner decides on the next one.
        predict.predict_files(module, choice, files, 3, batch_size, cpu,
                              on_batch=lambda _: lean.append(torch.get_num_threads() < full_threads))

    contenders = {
        "harness": _rates(harness, n),
        "pyfunc": _rates(lambda: [pyfunc.predict(batch) for batch in batches], n),
        "harness_model": _rates(forward, n),
        "decode": _rates(
            lambda: list(predict.decoded_batches(files, choice.channels, choice.image_size, batch_size)), n),
        "script": _rates(script, n),
    }
    rates = interleave(contenders, repeats, log, "predict")
    row: dict[str, Any] = {"case": f"lenet_relu/mnist-png{choice.image_size}/bs{batch_size}", "images": n,
                           "batch_size": batch_size, "device": "cpu", "threads": torch.get_num_threads(),
                           "decode_threads": predict.decode_workers(
                               predict.probe(files[: predict.PROBE_IMAGES], choice.channels, choice.image_size)[1])}
    for name, values in rates.items():
        row[name], row[f"{name}_spread"] = median_and_spread(values)
    row["harness_lean_share"] = sum(lean) / len(lean) if lean else 0.0
    row["harness_model/pyfunc"] = row["harness_model"] / row["pyfunc"]
    row["harness/pyfunc"] = row["harness"] / row["pyfunc"]
    row["harness/script"] = row["harness"] / row["script"]
    return row


def run_predict(log: Callable[[str], None] = print, count: int = 2000, repeats: int = 7,
                batch_size: int = 256) -> tuple[list[dict[str, Any]], list[str]]:
    """Write the PNGs and train the model in a temporary folder, then measure (see the module
    docstring); (rows, notes). No MNIST sample here: no rows, and a note saying why."""
    with tempfile.TemporaryDirectory() as tmp:
        files = write_mnist_pngs(Path(tmp) / "pngs", count)
        if files is None:
            return [], [f"predict: skipped, the MNIST sample is not at {SAMPLE_DIR}"]
        log(f"predict: wrote {len(files)} MNIST PNGs; training the quickstart LeNet (1 epoch)")
        tracker, uri = train_model(Path(tmp) / "store")
        return [measure_predict(tracker, uri, files, batch_size, repeats, log)], []
