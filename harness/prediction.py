"""`harness predict`: a logged model classifies image files (top-k classes and probabilities).

MODEL is a model URI (`runs:/<run_id>/model`, `models:/<name>@<alias>`, `models:/<name>/<version>`)
or an experiment name: then the best variant (by `best_val_acc`, the comparison table's ranking)
of its latest finished `harness run`. The model says what it takes in its metadata
(`lifecycle.model_metadata`): class names in output order, channels and image size. The logged
model takes raw float images in [0, 1] at the dataset's native size and channel count and does its
own normalisation, so each file is read with PIL, converted to grayscale ('L') or 'RGB', resized
to that size (bilinear, aspect ratio not kept: as `image_folder` trains) and scaled to [0, 1].
An image over MAX_DECODE_PIXELS is decoded reduced if it is a JPEG (libjpeg's 1/2 to 1/8 scale,
`Image.draft`) and otherwise listed as unreadable from its header alone, before its pixels are read.

Speed: the next batch is decoded while the model runs on the current one (PIL and PyTorch release
the GIL in their C code). The first images are decoded one by one and timed: slow ones (photos)
are then decoded by one thread per core, quick ones (small PNGs, whose cost is mostly Python's own
work under the GIL) by one thread, as more would only contend. Batches run under
`torch.inference_mode` and go to the device as uint8; on the CPU the model leaves a core to the
decoding while decoding is what it waits for (`ThreadTuner`). `harness bench` measures it.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import tracking
from harness.errors import ConfigError, DataError, ModelFormatError, UnknownNameError, first_line
from harness.registry import unknown_name_message
from harness.tracking import Tracker, TrackingError, no_runs_message
from harness.uris import redact, redact_text

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FORMATS = ("table", "csv", "json")
MODES = {1: "L", 3: "RGB"}  # model input channels -> the PIL mode images are converted to
MODEL_FORMS = "runs:/<run_id>/model, models:/<name>@<alias>, models:/<name>/<version> or an experiment name"
PROBE_IMAGES = 8  # decoded first, one by one, to time them
THREADED_DECODE_SECONDS = 250e-6  # per image: above it, decoding threads pay (see `decode_workers`)
PROGRESS_MIN_IMAGES = 1000  # fewer take seconds at most: no bar
DECIMALS = 6  # probabilities as printed (csv, json)
# Pillow's default Image.MAX_IMAGE_PIXELS (a 1 GiB RGBA image / 3): at most this many pixels are decoded.
MAX_DECODE_PIXELS = 89_478_485
SYMLINK_LOOP = "symlink loop (it points at itself or a cycle)"


@dataclass(frozen=True)
class ModelChoice:
    """The model to classify with and what its metadata says it takes."""

    uri: str
    classes: tuple[str, ...]  # in output order
    channels: int
    image_size: int
    picked: str | None = None  # which run an experiment name resolved to (for stderr)


@dataclass(frozen=True)
class Prediction:
    """One image's top-k classes, most probable first."""

    path: str
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class Unreadable:
    """A file that could not be classified, and why."""

    path: str
    reason: str


@dataclass
class Decoded:
    """A batch of decoded images: uint8 (n, C, H, W) and their paths; the files that failed."""

    images: np.ndarray
    paths: list[str]
    failed: list[Unreadable] = field(default_factory=list)


@dataclass
class PredictOutcome:
    """What `predict` found: the model used, one prediction per readable image, the failures."""

    model: ModelChoice
    predictions: list[Prediction]
    unreadable: list[Unreadable]
    top_k: int


# ----------------------------------------------------------------- options and files


def check_options(fmt: str, top_k: int, batch_size: int, device: str) -> None:
    """Fail on a bad option before MLflow or any image is read."""
    if fmt not in FORMATS:
        raise UnknownNameError(unknown_name_message("format", fmt, FORMATS))
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1; got {top_k}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1; got {batch_size}.")
    if device not in ("auto", "cpu", "mps") and not (device == "cuda" or device.startswith("cuda:")):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda' ('cuda:N' for one GPU); got '{device}'.")


def find_images(paths: Sequence[Path]) -> tuple[list[Path], list[Unreadable]]:
    """The image files among `paths` (folders searched recursively for IMAGE_SUFFIXES, any case;
    a file named directly is taken whatever its extension), each once, in the order given (a
    folder's files sorted); and the paths that lead to no file (missing, a symlink loop or a
    broken symlink, named directly or met in a folder), each with why."""
    files: list[Path] = []
    missing: list[Unreadable] = []
    seen: set[str] = set()
    for path in paths:
        if path.is_dir():
            found, broken = search_folder(path)
        elif path.is_file():
            found, broken = [path], []
        else:
            found, broken = [], [Unreadable(str(path), _why_not_there(path))]
        for bad in broken:
            if (key := f"missing:{os.path.abspath(bad.path)}") not in seen:  # once, as files are
                seen.add(key)
                missing.append(bad)
        for p in found:
            key = os.path.abspath(p)  # no syscall per file: folders can hold many
            if key not in seen:
                seen.add(key)
                files.append(p)
    return files, missing


def search_folder(folder: Path) -> tuple[list[Path], list[Unreadable]]:
    """The files with an IMAGE_SUFFIXES name under `folder`, sorted, symlinked folders not followed
    (as `Path.rglob`, so a cycle of folder links cannot recurse forever); and the symlinks in it that
    lead nowhere (loops, broken ones) and sub-folders that cannot be listed. `os.scandir` says which
    entries are folders or links without a syscall per file; only links are stat-ed."""
    found: list[Path] = []
    broken: list[Unreadable] = []
    pending = [os.fspath(folder)]
    while pending:
        here = pending.pop()
        try:
            with os.scandir(here) as listing:
                entries = list(listing)
        except OSError as exc:
            broken.append(Unreadable(str(Path(here)), f"folder cannot be listed ({exc.strerror})"))
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            elif entry.is_symlink() and not os.path.exists(entry.path):  # any name: it may have stood for a folder
                broken.append(Unreadable(str(Path(entry.path)), _why_not_there(Path(entry.path))))
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                found.append(Path(entry.path))
    return sorted(found), sorted(broken, key=lambda b: b.path)


def _why_not_there(path: Path) -> str:
    """Why `path` (neither a file nor a folder) cannot be read, in words."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return SYMLINK_LOOP
        if os.path.islink(path):
            return f"broken symlink (its target {os.readlink(path)} does not exist)"
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return f"cannot be read ({exc.strerror})"
        return "no such file or folder"
    return "not a file or folder (a device, pipe or socket)"


def no_images_message(paths: Sequence[Path], missing: Sequence[Unreadable] = ()) -> str:
    """One line for paths that hold no image file (some of them, `missing`, not there or broken, with why)."""
    def shown(names: Sequence[str]) -> str:
        return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")

    absent = {m.path for m in missing}
    present = [str(p) for p in paths if str(p) not in absent]
    where = f"No image files ({' '.join(IMAGE_SUFFIXES)}) found in {shown(present)}" if present else "Nothing to read"
    by_reason: dict[str, list[str]] = {}
    for m in missing:
        by_reason.setdefault(m.reason, []).append(m.path)
    gone = "; ".join(f"{shown(sorted(set(names)))}: {reason}" for reason, names in by_reason.items())
    return f"{where}{f' ({gone})' if gone else ''}; give image files or folders holding them (searched recursively)."


# ----------------------------------------------------------------- which model


def resolve_model(tracker: Tracker, model: str) -> ModelChoice:
    """The model `model` names (a model URI, or an experiment's best variant) and its metadata.
    Unknown runs, registered models, aliases and experiments are one HarnessError naming the fix."""
    if "://" in model or model.startswith(("runs:/", "models:/")):
        _check_exists(tracker, model)
        uri, picked = model, None
    else:
        uri, picked = best_model_uri(tracker, model)
    return _choice(uri, _model_info(tracker, uri), picked)


def best_model_uri(tracker: Tracker, experiment: str) -> tuple[str, str]:
    """(model URI, what was picked) of the best finished variant of the experiment's latest finished
    `harness run`, ranked as `harness compare` ranks them (best_val_acc; with repeated seeds the
    best variant by mean, then its best seed)."""
    from harness.comparison import DEFAULT_METRIC, best_run, load_comparison

    experiment_id = tracker.find_experiment(experiment)
    if experiment_id is None:
        raise UnknownNameError(f"{no_runs_message(tracker, experiment)} MODEL is {MODEL_FORMS}.")
    parent = tracker.latest_parent_run(experiment_id, kind="run", finished_only=True)
    if parent is None:
        raise UnknownNameError(f"Experiment '{experiment}' has no finished `harness run` yet; finish one (`harness run "
                               f"{experiment}`, or resume the interrupted one) or give a model URI "
                               f"(MODEL is {MODEL_FORMS}).")
    parent_id = parent.run_id
    comparison = load_comparison(tracker, experiment, run_id=parent_id, metric=DEFAULT_METRIC)
    best = best_run(comparison)
    if best is None:
        raise UnknownNameError(f"Run {parent_id} of '{experiment}' has no finished variant with a model; see "
                               f"`harness compare {experiment} --run {parent_id}`.")
    import pandas as pd

    value, seed = best.get(comparison.metric), best.get("seed")
    score = f"{value:.4f}" if pd.notna(value) else "n/a"  # a run without a validation split has none
    seed = f", seed {int(seed)}" if comparison.repeated and pd.notna(seed) else ""
    picked = (f"Using run {best['run_id']} (variant {best['variant']}{seed}, {comparison.metric} {score}) of "
              f"{experiment}'s run {parent_id}")
    return f"runs:/{best['run_id']}/model", picked


def _check_exists(tracker: Tracker, uri: str) -> None:
    """Name a missing run or alias in words (MLflow's own messages are long and about artifacts)."""
    store = redact(tracker.uri)
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].strip("/").split("/", 1)[0]
        if not run_id or tracker.find_run(run_id) is None:
            raise UnknownNameError(f"No run '{run_id}' in tracking store {store}; check the run id (`harness runs "
                                   "EXPERIMENT` lists them) or tracking_uri, or give the experiment name to use its "
                                   "best variant.")
    elif uri.startswith("models:/") and "@" in uri:
        name, alias = uri[len("models:/"):].rsplit("@", 1)
        if tracker.alias_version(name, alias) is None:
            raise UnknownNameError(f"No registered model '{name}' with alias '{alias}' in tracking store {store}; "
                                   "register one (`harness run EXPERIMENT --register NAME`), check the name and alias "
                                   "(MLflow UI, Models page) or tracking_uri, or give models:/NAME/VERSION.")


def _model_info(tracker: Tracker, uri: str) -> dict[str, Any]:
    """`Tracker.model_info`, with a missing model said in one clear line."""
    try:
        return tracker.model_info(uri)
    except TrackingError as exc:
        if exc.unreachable:  # already one clear line about the server
            raise
        reason = redact_text(first_line(exc.__cause__ or exc, 150), tracker.uri)
        raise UnknownNameError(_missing_model_message(tracker, uri, reason)) from None


def _missing_model_message(tracker: Tracker, uri: str, reason: str) -> str:
    store = redact(tracker.uri)
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
        run = tracker.find_run(run_id)
        if run is not None and run.tags.get(tracking.KIND_TAG) in ("run", "study"):
            return (f"Run {run_id} is a parent run: its variants hold the models; give one of their run ids "
                    "(`harness compare EXPERIMENT` lists them) or the experiment name to use its best variant.")
        status = f" (status {run.status})" if run is not None else ""
        return (f"Run {run_id}{status} has no logged model at '{path or 'model'}'; a variant's model is "
                f"runs:/<run_id>/model, and failed or stopped variants have none.")
    if uri.startswith("models:/"):
        return (f"Cannot find {uri} in the model registry of tracking store {store} ({reason}); check the name and "
                "version (MLflow UI, Models page) or tracking_uri.")
    return f"Cannot read model '{uri}' ({reason}); MODEL is {MODEL_FORMS}."


def _choice(uri: str, info: dict[str, Any], picked: str | None) -> ModelChoice:
    """The model's metadata as a ModelChoice; a model without it is one line."""
    meta = info.get("metadata") or {}
    if not all(key in meta for key in ("classes", "in_channels", "image_size")):
        raise ModelFormatError(f"Model {uri} has no class names or input shape in its metadata (it was logged by an "
                               "older harness); retrain it (`harness run EXPERIMENT`) to log a model harness predict "
                               "can use.")
    channels = int(meta["in_channels"])
    if channels not in MODES:
        raise ModelFormatError(f"Model {uri} takes {channels}-channel images; harness predict reads images as "
                               "grayscale (1 channel) or RGB (3).")
    return ModelChoice(uri, tuple(str(c) for c in meta["classes"]), channels, int(meta["image_size"]), picked)


def load_module(tracker: Tracker, uri: str, device: torch.device, trust: bool = False) -> torch.nn.Module:
    """The logged PyTorch module on `device` (it takes [0, 1] float images, returns logits); a
    model in any format but the one harness logs is refused unless `trust` (`harness.model_format`).

    Loaded onto the CPU (`Tracker.load_model`: MLflow's pyfunc loader would also check the
    model's requirements, about 1.3 s, and put it on a visible GPU, where it refuses to move a
    torch.export program); moving its weights ourselves works for the harness's models."""
    module = tracker.load_model(uri, trust=trust)
    if device.type != "cpu":
        try:
            module = module.to(device)
        except Exception as exc:  # noqa: BLE001 - anything torch says about moving it is one line
            raise ConfigError(f"Cannot move model {uri} to {device} ({first_line(exc)}); use device 'cpu'.") from None
    return module




def pick_device(name: str) -> torch.device:
    """`auto` = cuda > mps > cpu; a GPU that is asked for but not there is one line."""
    import torch

    from harness.device import resolve_device

    device = resolve_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}': no CUDA GPU is visible here; use device 'cpu' (or 'auto').")
    return device


# ----------------------------------------------------------------- decoding


class TooLarge(ValueError):
    """An image with more pixels than `decode` decodes (MAX_DECODE_PIXELS), even reduced."""


class _PillowCheckOff:
    """Pillow's decompression-bomb check off while any thread is inside: it is one module setting
    (Image.MAX_IMAGE_PIXELS), so the first thread in saves it and the last one out restores it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.saved: int | None = None
        self.image: Any = None  # PIL.Image, imported on first use (not when this module is)

    def __enter__(self) -> None:
        if self.image is None:
            from PIL import Image

            self.image = Image
        with self.lock:
            if self.inside == 0:
                self.saved, self.image.MAX_IMAGE_PIXELS = self.image.MAX_IMAGE_PIXELS, None
            self.inside += 1

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.inside -= 1
            if self.inside == 0:
                self.image.MAX_IMAGE_PIXELS = self.saved


_PILLOW_CHECK_OFF = _PillowCheckOff()


def _open_header(path: Path | str) -> Any:
    """`Image.open` (it reads only the header) without Pillow's decompression-bomb check, which from
    the header's size alone prints a DecompressionBombWarning (with a file:line) or raises, before
    `Image.draft` could shrink a JPEG: `decode` checks the pixels it will decode instead."""
    from PIL import Image

    with _PILLOW_CHECK_OFF:
        return Image.open(path)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} MP"


def decode(path: Path | str, channels: int, size: int) -> np.ndarray:
    """One file as the model's raw input, uint8 (channels, size, size): read with PIL, converted
    to grayscale or RGB, resized bilinearly to size x size. An image over MAX_DECODE_PIXELS is
    decoded reduced if PIL can (a JPEG, at 1/2 to 1/8 scale and still at least size x size),
    else it raises TooLarge before its pixels are read. Raises what PIL raises."""
    from PIL import Image

    with _open_header(path) as img:
        width, height = img.size
        if width * height > MAX_DECODE_PIXELS:
            img.draft(MODES[channels], (size, size))  # a no-op for formats other than JPEG
            if img.size[0] * img.size[1] > MAX_DECODE_PIXELS:
                scale = f" even at 1/{round(width / img.size[0])} scale" if img.size != (width, height) else ""
                raise TooLarge(f"{width}x{height} pixels ({_megapixels(width * height)}) is over the "
                               f"{_megapixels(MAX_DECODE_PIXELS)} decoding limit{scale}; resize it first")
        if img.mode != MODES[channels]:
            img = img.convert(MODES[channels])
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        # tobytes + frombuffer: 15% less per small image than np.asarray's array interface.
        pixels = np.frombuffer(img.tobytes(), np.uint8).reshape(size, size, channels)
    return pixels.transpose(2, 0, 1)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images as the logged model takes them: float32 in [0, 1] (what `predict` feeds it)."""
    return images.astype(np.float32) / 255


def decode_many(paths: Sequence[Path], channels: int, size: int) -> Decoded:
    """Decode `paths` into one uint8 array; files that fail are listed with the reason, not raised."""
    images = np.empty((len(paths), channels, size, size), np.uint8)
    kept: list[str] = []
    failed: list[Unreadable] = []
    for path in paths:
        try:
            images[len(kept)] = decode(path, channels, size)
        except TooLarge as exc:  # already a sentence
            failed.append(Unreadable(str(path), str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
            failed.append(Unreadable(str(path), f"{type(exc).__name__}: {first_line(exc, 120)}"))
            continue
        kept.append(str(path))
    return Decoded(images[: len(kept)], kept, failed)


def decode_workers(seconds_per_image: float) -> int:
    """Decoding threads for images that take `seconds_per_image` each on one core: one per core (at
    most 8) for slow ones, as PIL reads, decodes and resizes without the GIL (256 px JPEGs on 2
    cores: 1.5-1.7x the images/s of one thread); one for quick ones, whose cost is mostly Python's
    own work under the GIL, where a second thread only adds contention (28 px PNGs: 9.6k images/s
    with 2 threads against 22k with one)."""
    if seconds_per_image < THREADED_DECODE_SECONDS:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def probe(files: Sequence[Path], channels: int, size: int) -> tuple[Decoded, float]:
    """`files` decoded one by one in this thread, and the median seconds one took."""
    parts, seconds = [], []
    for path in files:
        start = time.perf_counter()
        parts.append(decode_many([path], channels, size))
        seconds.append(time.perf_counter() - start)
    return _joined(parts), statistics.median(seconds) if seconds else 0.0


def decoded_batches(files: Sequence[Path], channels: int, size: int, batch_size: int,
                    workers: int | None = None) -> Iterator[Decoded]:
    """`files` decoded in batches of up to `batch_size`, in order. Unless `workers` is given, the
    first PROBE_IMAGES come first as a batch of their own, decoded here one by one and timed to
    choose the number of decoding threads (`decode_workers`). Each later batch is split across the
    threads, and the next batch is decoded while the caller works on this one."""
    if not files:
        return
    first: Decoded | None = None
    if workers is None:
        first, seconds = probe(files[:PROBE_IMAGES], channels, size)
        workers = decode_workers(seconds)
        files = files[PROBE_IMAGES:]
    parts = [_split(files[s : s + batch_size], workers) for s in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(workers, thread_name_prefix="harness-decode") as pool:
        pending: deque[list[Future[Decoded]]] = deque()
        try:
            for batch in parts:
                pending.append([pool.submit(decode_many, part, channels, size) for part in batch])
                if first is not None:  # handed out once the threads have work
                    yield first
                    first = None
                if len(pending) > 1:  # one batch in flight ahead of the one handed out
                    yield _joined([f.result() for f in pending.popleft()])
            if first is not None:
                yield first
            while pending:
                yield _joined([f.result() for f in pending.popleft()])
        finally:
            for futures in pending:  # the caller stopped early: drop what was not started
                for future in futures:
                    future.cancel()


def _split(items: Sequence[Path], n: int) -> list[Sequence[Path]]:
    """`items` in at most `n` consecutive, near-equal, non-empty parts."""
    size = -(-len(items) // n)  # ceiling
    return [items[i : i + size] for i in range(0, len(items), size)]


def _joined(parts: list[Decoded]) -> Decoded:
    if len(parts) == 1:
        return parts[0]
    return Decoded(np.concatenate([p.images for p in parts]), [x for p in parts for x in p.paths],
                   [x for p in parts for x in p.failed])


# ----------------------------------------------------------------- classifying


class ThreadTuner:
    """torch's intra-op threads for the model on the CPU, chosen batch by batch: all of them (torch's
    setting) while the pipeline waits for the model, one fewer while it waits for decoding, leaving
    that core to the decoding threads. Decided from how long the caller waited for each batch
    against the model's time on the one before, from the third batch on (the first two fill the
    pipeline); `start_lean` for jobs long enough for decoding to overlap the model. Measured on 2
    cores: LeNet on 28 px PNGs (decoding bounds it) 16.4k images/s with 1 thread against 12.1k
    with 2; ResNet-18 at 64 px (the model bounds it) 414 with 2 against 248 with 1."""

    LEAN_ABOVE, FULL_BELOW = 0.10, 0.02  # waiting, as a share of the model's time; in between: no change

    def __init__(self, device: torch.device, start_lean: bool = False) -> None:
        import torch

        self.full = torch.get_num_threads()
        self.lean = max(1, self.full - 1)
        self.active = device.type == "cpu" and self.full > 1
        self.is_lean = False
        if self.active and start_lean:
            self._set(True)

    def update(self, batch: int, waited: float, model_seconds: float) -> None:
        """After batch number `batch` (0-based) arrived, `waited` seconds after the model took
        `model_seconds` on the previous one."""
        if not self.active or batch < 2:
            return
        if waited > self.LEAN_ABOVE * model_seconds:
            self._set(True)
        elif waited < self.FULL_BELOW * model_seconds:
            self._set(False)

    def _set(self, lean: bool) -> None:
        import torch

        if lean != self.is_lean:
            torch.set_num_threads(self.lean if lean else self.full)
            self.is_lean = lean

    def restore(self) -> None:
        """torch's own setting back."""
        import torch

        torch.set_num_threads(self.full)


def lean_from_the_start(files: int, batch_size: int) -> bool:
    """Whether `files` images in batches of `batch_size` are batches enough for decoding to overlap
    the model, so that `ThreadTuner` starts on the lean setting."""
    return files > PROBE_IMAGES + 2 * batch_size


def classify(module: torch.nn.Module, batches: Iterator[Decoded], classes: Sequence[str], top_k: int,
             device: torch.device, on_batch: Callable[[int], None] | None = None,
             start_lean: bool = False) -> tuple[list[Prediction], list[Unreadable]]:
    """Top-k (class, probability) of every decoded image, probabilities the softmax of the
    model's logits; and the files that failed to decode. `on_batch(n)` after each batch of n files
    (torch's threads still as they were for that batch); a `ThreadTuner` (lean from the start
    with `start_lean`) sets torch's threads as the batches come."""
    import torch

    k = min(top_k, len(classes))
    tuner = ThreadTuner(device, start_lean)
    predictions: list[Prediction] = []
    failed: list[Unreadable] = []
    model_seconds, waiting_since = 0.0, time.perf_counter()
    try:
        with torch.inference_mode():
            for number, batch in enumerate(batches):
                started = time.perf_counter()
                tuner.update(number, started - waiting_since, model_seconds)
                failed += batch.failed
                if len(batch.paths):
                    predictions += _top_k(module, batch, classes, k, device)
                waiting_since = time.perf_counter()
                model_seconds = waiting_since - started
                if on_batch is not None:
                    on_batch(len(batch.paths) + len(batch.failed))
    finally:
        tuner.restore()
    return predictions, failed


def _top_k(module: torch.nn.Module, batch: Decoded, classes: Sequence[str], k: int,
           device: torch.device) -> list[Prediction]:
    import torch

    # uint8 to the device (a quarter of float32's bytes), scaled there: float32 / 255 as `to_float`.
    x = torch.from_numpy(batch.images).to(device, non_blocking=True).float().div_(255)
    try:
        logits = module(x)
    except RuntimeError as exc:
        if device.type == "cpu":
            raise
        # A torch.export program may hold tensors made for the CPU when it was traced.
        raise ConfigError(f"The model cannot run on {device} ({first_line(exc)}); use device 'cpu'.") from None
    if logits.shape[1] != len(classes):
        raise ModelFormatError(f"The model returns {logits.shape[1]} scores per image but its metadata names "
                               f"{len(classes)} classes; it cannot be read by harness predict.")
    top = torch.softmax(logits.float(), dim=1).topk(k, dim=1)
    values, indices = top.values.cpu().numpy(), top.indices.cpu().numpy()
    return [Prediction(path, tuple(classes[j] for j in idx), tuple(float(p) for p in probs))
            for path, probs, idx in zip(batch.paths, values, indices)]


def predict_files(module: torch.nn.Module, model: ModelChoice, files: Sequence[Path], top_k: int = 3,
                  batch_size: int = 256, device: torch.device | None = None, workers: int | None = None,
                  on_batch: Callable[[int], None] | None = None) -> tuple[list[Prediction], list[Unreadable]]:
    """Read, decode and classify `files` with a loaded module (the whole path after model loading);
    `on_batch` as `classify`'s."""
    import torch

    device = device or torch.device("cpu")
    batches = decoded_batches(files, model.channels, model.image_size, batch_size, workers)
    return classify(module, batches, model.classes, top_k, device, on_batch,
                    start_lean=lean_from_the_start(len(files), batch_size))


def predict(tracker: Tracker, model: str, paths: Sequence[Path], top_k: int = 3, batch_size: int = 256,
            device: str = "auto", log: Callable[[str], None] = lambda _: None,
            progress: Callable[[int], AbstractContextManager[Callable[[int], None] | None]] | None = None,
            trust_model: bool = False) -> PredictOutcome:
    """`harness predict`: classify the images under `paths` with `model` (see the module docstring).

    Which run an experiment name picked and every unreadable file (with why) go to `log`; no
    image found, or none readable, is a HarnessError. `progress(total)` may give a context whose
    value is called with the number of files done after each batch. `trust_model` loads a model
    logged in a format that can run code as it loads (pickle, pyfunc): only for a trusted author."""
    check_options("table", top_k, batch_size, device)
    files, missing = find_images(paths)
    if not files:
        raise DataError(no_images_message(paths, missing))
    target = pick_device(device)  # a missing GPU is said before MLflow is read
    choice = resolve_model(tracker, model)
    if choice.picked:
        log(choice.picked)
    module = load_module(tracker, choice.uri, target, trust=trust_model)
    with (progress(len(files)) if progress else nullcontext()) as advance:
        predictions, failed = predict_files(module, choice, files, top_k, batch_size, target, on_batch=advance)
    unreadable = missing + failed
    for bad in unreadable:
        log(f"unreadable: {bad.path}: {bad.reason}")
    if not predictions:
        raise DataError(f"None of the {len(unreadable)} files could be read as an image (listed above); "
                        "give image files (.jpg .jpeg .png .bmp .webp) or folders holding them.")
    if unreadable:
        log(f"{len(unreadable)} of {len(files) + len(missing)} files could not be read; the others are classified.")
    return PredictOutcome(choice, predictions, unreadable, min(top_k, len(choice.classes)))


# ----------------------------------------------------------------- output


@contextmanager
def progress_bar(total: int) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr for many images when stderr is a terminal, else nothing."""
    import sys

    if total < PROGRESS_MIN_IMAGES or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("classifying", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("classifying", total=total)
        yield lambda n: bar.advance(task, n)


def rows(outcome: PredictOutcome) -> list[dict[str, Any]]:
    """One flat row per image: path, class_1, prob_1, ... (what csv writes)."""
    out = []
    for p in outcome.predictions:
        row: dict[str, Any] = {"path": p.path}
        for i, (name, prob) in enumerate(zip(p.classes, p.probabilities), start=1):
            row[f"class_{i}"] = name
            row[f"prob_{i}"] = round(prob, DECIMALS)
        out.append(row)
    return out


def render(outcome: PredictOutcome, fmt: str) -> str:
    """The predictions as csv (header path,class_1,prob_1,...) or json (a list of objects, each
    with path and top_k: [{class, probability}, ...])."""
    if fmt == "csv":
        header = ["path"] + [f"{kind}_{i}" for i in range(1, outcome.top_k + 1) for kind in ("class", "prob")]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows(outcome))
        return text.getvalue()
    if fmt == "json":
        doc = [{"path": p.path, "top_k": [{"class": c, "probability": round(v, DECIMALS)}
                                          for c, v in zip(p.classes, p.probabilities)]}
               for p in outcome.predictions]
        return json.dumps(doc, indent=1) + "\n"
    check_options(fmt, 1, 1, "cpu")
    raise ConfigError("The table format is printed with rich_table, not rendered as text.")


def rich_table(outcome: PredictOutcome) -> Any:
    """The predictions as a rich Table: path, then each rank's 'class  probability'."""
    from rich.table import Table

    n = len(outcome.predictions)
    table = Table(title=f"{outcome.model.uri}: top-{outcome.top_k} classes of {n} image{'s' if n != 1 else ''}",
                  caption="probability: softmax of the model's outputs", caption_justify="left")
    table.add_column("path", overflow="fold")
    for i in range(1, outcome.top_k + 1):
        table.add_column(f"#{i}")
    for p in outcome.predictions:
        table.add_row(p.path, *(f"{c}  {v:.1%}" for c, v in zip(p.classes, p.probabilities)))
    return table
