"""MNIST, Fashion-MNIST, CIFAR-10/100 through torchvision's own classes and download path.

Files already on disk are checked before (IDX) or after (CIFAR pickles) torchvision reads them,
so a damaged file is reported as one line naming it and what is wrong, not as "missing", a bare
AssertionError, or a silently shortened dataset.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from harness.data import Data, register_dataset
from harness.data.in_memory import InMemorySplit, channel_stats, train_val
from harness.errors import DataError, HarnessError, first_line

if TYPE_CHECKING:
    from harness.config import TrainConfig

CIFAR_IMAGE_BYTES = 3 * 32 * 32  # one CIFAR image in a batch's 'data' array


def damaged(path: Path, what: str) -> HarnessError:
    """The one-line error for a dataset file that is on disk but unusable."""
    return DataError(f"{path} is damaged ({what}); delete it to download it again or replace it.")


def _files_expected(cls: type, root: Path) -> tuple[Path, list[str]]:
    """Where torchvision looks for a dataset's files, and their names."""
    if hasattr(cls, "resources"):  # MNIST family: raw IDX files (gzipped downloads)
        return root / cls.__name__ / "raw", [name for name, _ in cls.resources]
    return root, [cls.filename]  # CIFAR: one archive, extracted next to it


def _on_disk(cls: type, root: Path) -> list[Path]:
    """The extracted files torchvision reads (both splits), whether present or not."""
    if hasattr(cls, "resources"):
        raw = root / cls.__name__ / "raw"
        return [raw / name.removesuffix(".gz") for name, _ in cls.resources]
    folder = root / cls.base_folder
    return [folder / name for name, _ in cls.train_list + cls.test_list] + [folder / cls.meta["filename"]]


# ------------------------------------------------------------------ MNIST family: IDX files


def idx_dims(path: Path, ndim: int) -> list[int]:
    """The dimensions in the header of IDX file `path`, after checking that it holds unsigned
    bytes in `ndim` dimensions and exactly as many bytes as its header announces."""
    size = path.stat().st_size
    header = 4 + 4 * ndim
    with path.open("rb") as f:
        head = f.read(header)
    if size == 0:
        raise damaged(path, "empty: 0 bytes")
    expected = 0x0800 + ndim  # 0x08: unsigned bytes; then the number of dimensions
    magic = int.from_bytes(head[:4].ljust(4, b"\0"), "big")
    if head[:2] == b"\x1f\x8b":
        raise damaged(path, "still gzip-compressed; gunzip it or put the .gz file next to it instead")
    if magic != expected:
        raise damaged(path, f"bad magic number 0x{magic:08x}, expected 0x{expected:08x} for an IDX file of "
                            f"unsigned bytes in {ndim} dimension{'s' if ndim > 1 else ''}")
    if size < header:
        raise damaged(path, f"truncated: {size:,} bytes, shorter than its {header}-byte header")
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    want = header + int(np.prod(dims, dtype=np.int64))
    if size < want:
        raise damaged(path, f"truncated: {size:,} of {want:,} bytes")
    if size > want:
        raise damaged(path, f"{size:,} bytes where its header ({' x '.join(map(str, dims))}) announces {want:,}")
    return dims


def check_idx_files(cls: type, root: Path, n_classes: int) -> None:
    """Check the raw IDX files of an MNIST-family dataset that are on disk (missing ones are
    torchvision's to download): header, size, image/label counts, label range."""
    raw = root / cls.__name__ / "raw"
    for split in ("train", "t10k"):
        images, labels = raw / f"{split}-images-idx3-ubyte", raw / f"{split}-labels-idx1-ubyte"
        n_images = idx_dims(images, 3)[0] if images.is_file() else None
        n_labels = idx_dims(labels, 1)[0] if labels.is_file() else None
        if n_labels is not None:
            values = np.fromfile(labels, dtype=np.uint8, offset=8)
            if len(values) and values.max() >= n_classes:
                at = int(np.argmax(values >= n_classes))
                raise damaged(labels, f"label {values[at]} at position {at:,}, outside 0-{n_classes - 1}")
        if n_images is not None and n_labels is not None and n_images != n_labels:
            raise DataError(f"{images} holds {n_images:,} images but {labels} holds {n_labels:,} labels; "
                            "they must match: delete both to download them again or replace them.")


# ------------------------------------------------------------------ CIFAR: pickled batches


def _unpickle(path: Path) -> Any:  # noqa: ANN401 - whatever the file holds
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")  # as torchvision reads them
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same: not a CIFAR pickle
        raise damaged(path, f"not a readable pickle: {type(exc).__name__}: {first_line(exc, 120)}") from None


def check_cifar_files(cls: type, root: Path) -> None:
    """Read every CIFAR file of `cls` under `root` and raise for the first one that is not what
    torchvision expects: a pickled dict with 'data' (N x 3072 bytes) and as many labels, each
    below the class count; the meta file with its class names. Also reports a file whose md5
    differs from torchvision's. Called only once torchvision has failed, to say which file."""
    from torchvision.datasets import cifar

    folder = root / cls.base_folder
    meta_path = folder / cls.meta["filename"]
    meta = _unpickle(meta_path)
    if not isinstance(meta, dict) or cls.meta["key"] not in meta:
        raise damaged(meta_path, f"lacks its '{cls.meta['key']}' key")
    n_classes = len(meta[cls.meta["key"]])
    for name, _ in cls.train_list + cls.test_list:
        path = folder / name
        entry = _unpickle(path)
        if not isinstance(entry, dict):
            raise damaged(path, f"holds a {type(entry).__name__}, not a dict")
        if "data" not in entry:
            raise damaged(path, "lacks its 'data' key")
        labels = entry.get("labels", entry.get("fine_labels"))
        if labels is None:
            raise damaged(path, "lacks its 'labels' / 'fine_labels' key")
        data = np.asarray(entry["data"])
        if data.size % CIFAR_IMAGE_BYTES:
            raise damaged(path, f"'data' holds {data.size:,} values, not a whole number of 32x32x3 images")
        if data.size // CIFAR_IMAGE_BYTES != len(labels):
            raise damaged(path, f"{data.size // CIFAR_IMAGE_BYTES:,} images but {len(labels):,} labels")
        bad = [y for y in labels if not 0 <= int(y) < n_classes]
        if bad:
            raise damaged(path, f"label {bad[0]} outside 0-{n_classes - 1}")
    # Checksums last, so a file with a structural fault is named for it, not another for its md5.
    # Looked up on the module at call time, so a test's md5 bypass applies here too.
    for path, md5 in [(folder / n, m) for n, m in cls.train_list + cls.test_list] + [(meta_path, cls.meta["md5"])]:
        if not cifar.check_integrity(str(path), md5):
            raise damaged(path, "its md5 checksum is not the published one")


# ------------------------------------------------------------------ opening through torchvision


def _open(cls: type, root: Path, train: bool, name: str, n_classes: int):  # noqa: ANN202 (a torchvision dataset)
    """Open a torchvision dataset from `root`, downloading it if it is not there yet; a damaged
    file on disk is a HarnessError naming it."""
    is_cifar = not hasattr(cls, "resources")
    if not is_cifar:
        check_idx_files(cls, root, n_classes)  # cheap (headers and sizes): before torchvision's asserts
    present = all(p.is_file() for p in _on_disk(cls, root))
    try:
        ds = cls(root=str(root), train=train, download=False)
    except Exception as exc:  # noqa: BLE001 - translated below: damaged file, or not on disk yet
        if present:
            if is_cifar:
                check_cifar_files(cls, root)  # raises naming the damaged file
            folder = _on_disk(cls, root)[0].parent
            raise DataError(f"Dataset '{name}' in {folder} could not be read ({type(exc).__name__}: "
                            f"{first_line(exc, 160)}); delete its files to download them again "
                            "or replace them.") from None
        ds = _download(cls, root, train, name)
    targets = np.asarray(ds.targets)
    if len(ds.data) != len(targets) or (len(targets) and (targets.min() < 0 or targets.max() >= len(ds.classes))):
        if is_cifar:
            check_cifar_files(cls, root)
        raise DataError(f"Dataset '{name}' under {root} has {len(ds.data):,} images but {len(ds.targets):,} labels "
                        "or labels beyond its classes; delete its files to download them again.")
    return ds


def _download(cls: type, root: Path, train: bool, name: str):  # noqa: ANN202 (a torchvision dataset)
    """torchvision's own download (and extraction) into `root`, or one line on where to put the
    files, saying why the download failed; what the failed attempt created is removed."""
    tops = [root / cls.__name__] if hasattr(cls, "resources") else [root / cls.filename, root / cls.base_folder]
    root_existed = root.exists()
    before = {p for top in tops if top.exists() for p in (top, *top.rglob("*"))}
    try:
        return cls(root=str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same explanation
        _remove_created(tops, before, root if not root_existed else None)
        folder, files = _files_expected(cls, root)
        raise DataError(
            f"Dataset '{name}' is not in {folder} and could not be downloaded ({download_cause(exc)}); "
            f"put {', '.join(files)} into {folder} (or point --data-dir or HARNESS_DATA_DIR at where they are), "
            f"{instead(name, root)}"
        ) from None


def instead(name: str, root: Path) -> str:
    """The end of the missing-dataset sentence: the datasets the run could use with what is on
    this machine (torchvision sets whose files are all under `root`, else the bundled digits),
    and the override that switches to them."""
    import torchvision.datasets as tvd

    here = {other: _files_expected(cls, root)[0] for other, cls in
            ((other, getattr(tvd, class_name)) for other, class_name in _CLASSES.items() if other != name)
            if all(p.is_file() for p in _on_disk(cls, root))}
    if here:
        listed = ", ".join(f"{other} (in {folder})" for other, folder in here.items())
        return f"or train on a dataset this machine has, {listed}: add --set dataset={next(iter(here))} to the command."
    return ("or train on scikit-learn's bundled digits, which need no download: add --set dataset=digits "
            "to the command.")


def download_cause(exc: BaseException) -> str:
    """Why a torchvision download failed, in one line. The MNIST family's error is "Error
    downloading FILE:" with each mirror's error on the lines after it: the last one is kept."""
    lines = [_PLAIN.get(line.strip(), line.strip()) for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (f"{lines[0]} {lines[-1]}" if len(lines) > 1 and lines[0].endswith(":") else lines[0])[:240]


# torchvision's words for a download whose md5 checksum does not match
_PLAIN = {"File not found or corrupted.": "the downloaded file's md5 checksum is not the published one"}


def _remove_created(tops: list[Path], before: set[Path], new_root: Path | None) -> None:
    """Delete what is under `tops` and not in `before` (deepest first; folders only once empty),
    then `new_root` if the attempt created it and it is empty: the user's data folder is left as
    it was, files that were there kept."""
    for top in tops:
        if not (top.exists() or top.is_symlink()):
            continue
        created = [p for p in (top, *top.rglob("*")) if p not in before]
        for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
            except OSError:  # a folder still holding what was there before
                pass
    if new_root is not None:
        try:
            new_root.rmdir()
        except OSError:
            pass


def _as_uint8_nchw(data: object) -> Tensor:
    t = torch.as_tensor(np.asarray(data))
    if t.ndim == 3:  # MNIST family: (N, H, W)
        return t.unsqueeze(1).contiguous()
    return t.permute(0, 3, 1, 2).contiguous()  # CIFAR: (N, H, W, C)


_CLASSES: dict[str, str] = {}  # dataset name -> its torchvision class


def _register(name: str, class_name: str, hflip: bool, n_classes: int) -> None:
    _CLASSES[name] = class_name

    def load(config: TrainConfig, data_dir: Path) -> Data:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        train_ds = _open(cls, data_dir, True, name, n_classes)
        test_ds = _open(cls, data_dir, False, name, n_classes)
        full = InMemorySplit(_as_uint8_nchw(train_ds.data), torch.as_tensor(train_ds.targets))
        test = InMemorySplit(_as_uint8_nchw(test_ds.data), torch.as_tensor(test_ds.targets))
        train, val = train_val(full, config)
        mean, std = channel_stats(train.images)
        files = tuple(_on_disk(cls, data_dir))
        return Data(train, val, test, list(train_ds.classes), full.images.shape[1], full.images.shape[-1], mean, std,
                    hflip, source=str(files[0].parent.resolve()), source_files=files)

    register_dataset(name)(load)


_register("mnist", "MNIST", hflip=False, n_classes=10)  # mirrored digits are different symbols
_register("fashion_mnist", "FashionMNIST", hflip=True, n_classes=10)
_register("cifar10", "CIFAR10", hflip=True, n_classes=10)
_register("cifar100", "CIFAR100", hflip=True, n_classes=100)
