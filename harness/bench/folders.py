"""The streamed path of users with their own photos (the cat/dog folder case): training images/s
of the harness's `image_folder` loading against torchvision's tutorial pipeline, and what limits
both.

Data: 2,000 JPEGs of 256x256 (quality 90, ~19 kB: smooth random colour patterns at three scales
plus fine grain, so they take a photo's decode time rather than a flat image's) in two class
folders, written once to a temporary folder. The harness holds out its fixed test fraction (20%);
each case trains on a seeded random sample of the remaining 1,600 (1,000 images at 64 px, 256 at
224 px: a few minutes in all on 2 cores).

Contenders, same model, optimizer (SGD + momentum), batch, seed and training images:
1. harness: `load_data` with dataset=image_folder (decode + resize in 2 DataLoader workers,
   uint8 batches, normalisation per batch on the device) and `build_trainer` +
   `train_one_epoch` (the loop `fit_epoch` times; no evaluation);
2. tutorial: `torchvision.datasets.ImageFolder` + Compose([Resize((s, s)), ToTensor(),
   Normalize(ImageNet mean/std)]) + DataLoader(num_workers=2, shuffle=True) and a plain loop,
   model in the default memory format (what a hand-written script has);
3. in_memory: the harness's loop on the same images decoded once into memory (what the harness
   does for MNIST/CIFAR): the compute floor of the streamed path;
4. harness_1thread: as 1 with one intra-op thread in the training process (torch's default is
   one per core), leaving the other cores to the decoding workers: what oversubscribing the cores
   costs.
Contenders alternate epoch by epoch, and so do two loading-only passes (each pipeline's
DataLoader iterated without training: its decode-limited images/s with 2 workers). Images/s is
the median over the epochs after the first (warm-up). Measured once, in this process on one
core: JPEG decode alone, a harness worker's decode + resize, a tutorial worker's decode + Resize +
ToTensor + Normalize.

What limits the streamed path: `bound` is "compute" when the in-memory floor is below the
harness's loading-only rate, else "loading"; `decode_cpu_share` is the share of the machine's
CPU time a harness training epoch spends in its workers' decode + resize
(harness images/s / (cores x worker images/s on one core)). On a machine with few cores the
workers and the training threads share them, so training runs below both limits;
harness_1thread/harness says how much of that is the threads waiting on each other.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.bench.recipes import median_and_spread
from harness.bench.throughput import interleave, loader_epochs
from harness.config import TrainConfig
from harness.data import Data
from harness.data.image_folder import StreamedSplit
from harness.data.in_memory import InMemorySplit

CLASSES = ("cat", "dog")


@dataclass(frozen=True)
class FolderCase:
    """One setting: the config the harness trains with (dataset image_folder); `train_images`
    None trains on the whole pool, else on a seeded random sample of that many (both classes:
    `train_limit` would take the first files in sorted order, all of one class)."""

    label: str
    config: TrainConfig
    train_images: int | None = None


# ------------------------------------------------------------------ data


def smooth_pattern(rng: np.random.Generator, size: int) -> Any:
    """A PIL RGB image: random colour fields at three scales (bicubic-upsampled grids) plus fine
    grain, compressing like a photo (~19 kB at 256 px, quality 90) rather than a flat image."""
    from PIL import Image

    out = np.zeros((size, size, 3), np.float32)
    for cells, weight in ((3, 0.5), (9, 0.3), (33, 0.2)):
        grid = Image.fromarray((rng.random((cells, cells, 3)) * 255).astype(np.uint8))
        out += weight * np.asarray(grid.resize((size, size), Image.BICUBIC), np.float32)
    out += rng.normal(0, 6, out.shape)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def write_jpeg_folder(root: Path, count: int = 2000, size: int = 256, quality: int = 90, seed: int = 0) -> Path:
    """`count` JPEGs of `size` x `size` split evenly over the class folders `root`/cat and
    `root`/dog; returns `root` (the data_path to train on)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        name = CLASSES[i % len(CLASSES)]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        smooth_pattern(rng, size).save(folder / f"{name}.{i:05d}.jpg", "JPEG", quality=quality)
    return root


def folder_data(case: FolderCase) -> Data:
    """The harness's own loading of `case` (`load_data`, dataset image_folder), with the
    training split cut to `case.train_images` when set (the rest is an unused validation split)."""
    from harness.data import load_data

    config = case.config
    if case.train_images is not None:
        pool = len(load_data(config.override(val_fraction=0.0)).train)
        if case.train_images < pool:
            config = config.override(val_fraction=1 - case.train_images / pool)
    return load_data(config)


# ------------------------------------------------------------------ contenders


def harness_epochs(config: TrainConfig, data: Data) -> Iterator[float]:
    """Images/s of each successive training epoch of the harness's loop on `data` (`fit_epoch`'s
    training part: any validation split is left out, as it is not what is compared)."""
    from harness.train import build_trainer, train_one_epoch

    t = build_trainer(config, data)
    epoch = 0
    while True:
        epoch += 1
        start = time.perf_counter()
        totals = train_one_epoch(t, (), epoch)
        totals.loss  # noqa: B018 - reads the loss back: the device has finished the epoch
        yield totals.seen / (time.perf_counter() - start)


def with_threads(epochs: Iterator[float], threads: int) -> Iterator[float]:
    """`epochs` with torch's intra-op threads set to `threads` during each epoch (restored between
    them, so the other contenders keep theirs)."""
    while True:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            rate = next(epochs)
        finally:
            torch.set_num_threads(before)
        yield rate


def in_memory_data(data: Data, batch_size: int) -> Data:
    """`data` with its training split decoded once (through the harness's own loader) into memory."""
    images, labels = zip(*data.train.batches(batch_size, False, None))
    return dataclasses.replace(data, train=InMemorySplit(torch.cat(images), torch.cat(labels)))


def streamed_files(data: Data) -> list[Path]:
    """The files of `data`'s training split (an image folder's `StreamedSplit`)."""
    assert isinstance(data.train, StreamedSplit), type(data.train)
    return data.train.images.files


def tutorial_dataset(data: Data, image_size: int) -> torch.utils.data.Dataset:
    """torchvision's ImageFolder with the tutorial's transforms, narrowed to the harness's
    training files (the same images in both contenders)."""
    from torchvision import datasets, transforms

    files = streamed_files(data)
    root = Path(files[0]).parents[1]
    tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                             transforms.Normalize(data.mean, data.std)])
    folder = datasets.ImageFolder(str(root), transform=tf)
    index = {Path(path).resolve(): i for i, (path, _) in enumerate(folder.samples)}
    return torch.utils.data.Subset(folder, [index[Path(p).resolve()] for p in files])


def tutorial_epochs(config: TrainConfig, dataset: torch.utils.data.Dataset, num_classes: int) -> Iterator[float]:
    """Images/s of each successive epoch of the tutorial's DataLoader and a plain loop."""
    from harness.device import resolve_device
    from harness.models import build_model

    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = build_model(config.model, in_channels=3, num_classes=num_classes, image_size=config.image_size).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True,
                                         num_workers=config.num_workers)
    yield from loader_epochs(model, optimizer, loader, device)


def loading_epochs(batches: Callable[[], Iterator[Sequence[Any]]]) -> Iterator[float]:
    """Images/s of each successive pass over `batches()` without training: a loader's own limit."""
    while True:
        start, seen = time.perf_counter(), 0
        for batch in batches():
            seen += len(batch[1])
        yield seen / (time.perf_counter() - start)


def one_core_rates(data: Data, tutorial: torch.utils.data.Dataset, count: int = 200,
                   repeats: int = 3) -> dict[str, float]:
    """Images/s on one core, in this process, over the first `count` training files (median of
    `repeats` passes): JPEG decode alone, a harness worker's item, a tutorial worker's item."""
    from PIL import Image

    files = streamed_files(data)[:count]
    n = len(files)
    worker = data.train.images  # type: ignore[attr-defined]  # the FolderImages a DataLoader worker calls

    def decode() -> None:
        for path in files:
            with Image.open(path) as img:
                np.asarray(img.convert("RGB"))

    work = {"decode_1core": decode,
            "harness_worker_1core": lambda: [worker[i] for i in range(n)],
            "tutorial_worker_1core": lambda: [tutorial[i] for i in range(n)]}
    seconds: dict[str, list[float]] = {name: [] for name in work}
    threads = torch.get_num_threads()
    # One thread, as in a DataLoader worker: the tutorial's ToTensor/Normalize are torch ops, and
    # an intra-op pool on a busy machine makes them many times slower than one core's work.
    torch.set_num_threads(1)
    try:
        for _ in range(repeats):  # alternating, as the epochs are
            for name, fn in work.items():
                start = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {name: n / statistics.median(values) for name, values in seconds.items()}


# ------------------------------------------------------------------ driver


def measure_folder(case: FolderCase, data: Data, epochs: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One row for `case`: training images/s of every contender (median after the warm-up epoch,
    spread), loading-only images/s of each pipeline, one-core worker rates, and the ratios."""
    config = case.config
    size = config.image_size or data.native_size
    tutorial = tutorial_dataset(data, size)
    tutorial_loader = torch.utils.data.DataLoader(tutorial, batch_size=config.batch_size, shuffle=True,
                                                  num_workers=config.num_workers)
    loader_rng = torch.Generator().manual_seed(config.seed)
    contenders = {
        "harness": harness_epochs(config, data),
        "tutorial": tutorial_epochs(config, tutorial, len(data.classes)),
        "in_memory": harness_epochs(config, in_memory_data(data, config.batch_size)),
        "harness_1thread": with_threads(harness_epochs(config, data), 1),
        "harness_loading": loading_epochs(lambda: data.train.train_batches(config.batch_size, loader_rng)),
        "tutorial_loading": loading_epochs(lambda: iter(tutorial_loader)),
    }
    rates = interleave(contenders, epochs, log, f"folders {case.label}")
    row: dict[str, Any] = {"case": case.label, "model": config.model, "image_size": size,
                           "batch_size": config.batch_size, "images": len(data.train),
                           "threads": torch.get_num_threads(),
                           "workers": config.num_workers}
    for name, values in rates.items():
        row[name], spread = median_and_spread(values)
        if not name.endswith("_loading"):
            row[f"{name}_spread"] = spread
    row["harness/tutorial"] = row["harness"] / row["tutorial"]
    row["harness/in_memory"] = row["harness"] / row["in_memory"]
    row["harness_1thread/harness"] = row["harness_1thread"] / row["harness"]
    row.update(one_core_rates(data, tutorial))
    row["decode_cpu_share"] = row["harness"] / ((os.cpu_count() or 1) * row["harness_worker_1core"])
    row["bound"] = "compute" if row["in_memory"] < row["harness_loading"] else "loading"
    return row


def folder_cases(root: Path, device: str, model: str = "lenet_relu") -> list[FolderCase]:
    """`model` at batch 64: at 64 px on 1,000 images, at 224 px on 256 (a 224 px image costs ~20x
    a 64 px one to train on; the counts keep the section to a few minutes on 2 cores). ReLU LeNet
    by default: its compute per image is near a worker's decode + resize, so the loading shows.
    MobileNet and ResNet-18 train at ~150-260 images/s at 64 px and ~20 at 224 px on 2 idle cores,
    against ~1,000-1,300 decodes + resizes/s per worker: any loader keeps up with them."""
    base = TrainConfig(model=model, dataset="image_folder", data_path=str(root), optimizer="sgd", lr=0.01,
                       momentum=0.9, seed=0, batch_size=64, val_fraction=0.0, num_workers=2, device=device,
                       early_stopping_patience=None)
    return [FolderCase(f"{model}/jpeg256->64/bs64", base.override(image_size=64), train_images=1000),
            FolderCase(f"{model}/jpeg256->224/bs64", base.override(image_size=224), train_images=256)]


def run_folders(device: str, epochs: int, log: Callable[[str], None] = print, count: int = 2000,
                cases: Callable[[Path, str], list[FolderCase]] = folder_cases) -> list[dict[str, Any]]:
    """Write the JPEG folder once (in a temporary folder) and measure every case on it; one row
    per case (see `measure_folder`)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "catdog"
        log(f"folders: writing {count} JPEGs to {root}")
        write_jpeg_folder(root, count)
        return [measure_folder(case, folder_data(case), epochs, log) for case in cases(root, device)]
