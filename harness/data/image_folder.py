"""Your own images: one class per sub-folder, or the class as a file-name prefix (cat.1.jpg).

Layouts under `data_path`:
- `train/` and `test/` sub-folders (each holding either layout below): test is `test/`;
- otherwise every image under `data_path`; a fixed `test_fraction` is held out as the test set.
Class per sub-folder (`data_path/cat/x.jpg`) or per file-name prefix (`data_path/cat.1.jpg`).
Images stream from disk through a DataLoader with workers (decode + resize there); the rest of
the preprocessing runs per batch on the training device.

Unreadable images fail the run rather than being skipped: skipping would silently change which
images form the fixed test split. Every file's header is checked once when the folder is indexed
(one line naming the first bad file and the count); damage only a full decode finds (a truncated
JPEG) ends the run when a worker meets it, again as one line naming the file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from harness.data import Data, register_dataset
from harness.data.in_memory import TEST_SPLIT_SEED, seeded_split
from harness.errors import DataError, HarnessError, first_line

if TYPE_CHECKING:
    from harness.config import TrainConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_SIZE = 224
# ImageNet statistics: what pretrained torchvision models were trained with.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def scan(root: Path) -> tuple[list[Path], list[str]]:
    """Image files under `root` (sorted) and their class names (folder or file-name prefix)."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    labels = []
    for p in files:
        rel = p.relative_to(root)
        labels.append(rel.parts[0] if len(rel.parts) > 1 else p.name.split(".")[0])
    return files, labels


def unreadable(files: Sequence[Path]) -> list[tuple[Path, str]]:
    """The files PIL cannot identify or whose structure is broken, with why (header-level check:
    `Image.open` + `verify()`, no pixel decoding, so it stays cheap for large folders)."""
    from PIL import Image

    bad = []
    for path in files:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
            bad.append((path, f"{type(exc).__name__}: {first_line(exc, 120)}"))
    return bad


def check_readable(files: Sequence[Path], root: Path) -> None:
    """Raise one line naming the first unreadable image under `root` and how many there are."""
    bad = unreadable(files)
    if bad:
        path, why = bad[0]
        raise DataError(f"Image '{path}' cannot be read ({why}); {len(bad)} of {len(files)} images under '{root}' "
                        "are unreadable: delete or replace them.")


@dataclass
class UnreadableImage:
    """Returned instead of a sample (and a batch) when a file fails to decode in a worker: a
    DataLoader re-raises a worker's exception with the worker's whole traceback as its message,
    so the failure travels as data and the main process raises one line."""

    path: Path
    reason: str

    def error(self) -> HarnessError:
        return DataError(f"Image '{self.path}' cannot be decoded ({self.reason}); delete or replace it.")


def collate(samples: list[tuple[Tensor, int] | UnreadableImage]) -> tuple[Tensor, Tensor] | UnreadableImage:
    """The default collation, unless a sample failed to decode: then that failure."""
    for sample in samples:
        if isinstance(sample, UnreadableImage):
            return sample
    return torch.utils.data.default_collate(samples)


class FolderImages(torch.utils.data.Dataset):
    """Decodes one file to a uint8 RGB tensor (3, size, size); picklable for worker processes."""

    def __init__(self, files: list[Path], labels: list[int], size: int) -> None:
        self.files, self.labels, self.size = files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | UnreadableImage:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as img:
                img = img.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001 - any decode failure is this file's fault
            return UnreadableImage(self.files[i], f"{type(exc).__name__}: {first_line(exc, 120)}")
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), self.labels[i]


class StreamedSplit:
    """A split read from disk batch by batch through a DataLoader."""

    def __init__(self, images: FolderImages, num_workers: int, pin_memory: bool) -> None:
        self.images, self.num_workers, self.pin_memory = images, num_workers, pin_memory

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, shuffle: bool,
                generator: torch.Generator | None) -> Iterator[tuple[Tensor, Tensor]]:
        return self._read(torch.utils.data.DataLoader(
            self.images, batch_size=batch_size, shuffle=shuffle, generator=generator,
            num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=collate,
        ))

    def train_batches(self, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1, epoch: int = 0,
                      seed: int = 0) -> Iterator[tuple[Tensor, Tensor, int]]:
        """Shuffled batches; with several ranks, PyTorch's `DistributedSampler` (seeded by `seed`,
        reshuffled by `set_epoch`) gives each rank `batch_size / world` samples a step. To give
        every rank the same number of steps it repeats up to world - 1 samples an epoch."""
        if world == 1:
            for images, labels in self.batches(batch_size, True, generator):
                yield images, labels, len(labels)
            return
        sampler = torch.utils.data.DistributedSampler(self.images, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=seed)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            self.images, batch_size=batch_size // world, sampler=sampler,
            num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=collate,
        )
        for images, labels in self._read(loader):
            yield images, labels, len(labels) * world  # every rank's part of a step has the same size

    def shard(self, rank: int, world: int) -> StreamedSplit:
        """Rank `rank`'s contiguous share of the images, for evaluation (no padding)."""
        n = len(self.images)
        start, stop = n * rank // world, n * (rank + 1) // world
        part = FolderImages(self.images.files[start:stop], self.images.labels[start:stop], self.images.size)
        return StreamedSplit(part, self.num_workers, self.pin_memory)

    def _read(self, loader: torch.utils.data.DataLoader) -> Iterator[tuple[Tensor, Tensor]]:
        """The loader's batches; a file that failed to decode in a worker is one line."""
        try:
            for batch in loader:
                if isinstance(batch, UnreadableImage):
                    raise batch.error()
                yield batch
        except HarnessError:
            raise
        except Exception as exc:
            # Anything else a worker raised arrives with its traceback as the message: keep its last line.
            lines = [line for line in str(exc).splitlines() if line.strip()]
            if "DataLoader worker" not in str(exc) or not lines:
                raise
            raise DataError(f"Reading images failed in a DataLoader worker ({lines[-1].strip()[:200]}).") from None


@register_dataset("image_folder")
def load_image_folder(config: TrainConfig, data_path_unused: Path) -> Data:
    """Index the images under `config.data_path` and split them (validation seeded by `seed`)."""
    root = Path(config.data_path or "")
    if not root.is_dir():
        raise DataError(f"data_path '{root}' is not a folder; point data_path at your images.")
    size = config.image_size or DEFAULT_SIZE
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_files, train_names = scan(root / "train")
        test_files, test_names = scan(root / "test")
    else:
        files, names = scan(root)
        rest, test_idx = seeded_split(len(files), config.test_fraction, TEST_SPLIT_SEED)
        train_files, train_names = [files[i] for i in rest], [names[i] for i in rest]
        test_files, test_names = [files[i] for i in test_idx], [names[i] for i in test_idx]
    check_readable(train_files + test_files, root)
    classes = sorted(set(train_names))
    if len(classes) < 2:
        raise DataError(
            f"Found {len(train_files)} images in {len(classes)} class(es) under '{root}'; "
            "an image folder needs at least two classes (sub-folders, or file names like cat.1.jpg)."
        )
    unknown = sorted(set(test_names) - set(classes))
    if unknown:
        raise DataError(f"Test images under '{root}' have classes missing from training: {', '.join(unknown)}.")
    index = {c: i for i, c in enumerate(classes)}
    tr_idx, val_idx = seeded_split(len(train_files), config.val_fraction, config.seed)
    if config.train_limit is not None:
        tr_idx = tr_idx[: config.train_limit]
    pin = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())

    def split(files: list[Path], names: list[str]) -> StreamedSplit:
        return StreamedSplit(FolderImages(files, [index[n] for n in names], size), config.num_workers, pin)

    pick = lambda idx: ([train_files[i] for i in idx], [train_names[i] for i in idx])  # noqa: E731
    val = split(*pick(val_idx)) if len(val_idx) else None
    return Data(split(*pick(tr_idx)), val, split(test_files, test_names), classes, 3, size,
                IMAGENET_MEAN, IMAGENET_STD, hflip=True, source=str(root.resolve()))
