"""Which data a run read: one record per split (train / validation / test) with a content digest.

A split's digest hashes its bytes: the decoded uint8 images and labels of an in-memory split, or
the files (relative path, class and raw bytes) of a streamed image folder. Runs on the same data
therefore show the same digest, and any change (other files, another `val_fraction`, a
`train_limit`) shows a different one. Digests are cached in `.harness-digests.json` in the data
folder, keyed by the split's settings and the size and modification time of the files it came
from, so a second run on unchanged data does not hash again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import TrainConfig
from harness.data import DATA_FIELDS, Data

CACHE_FILE = ".harness-digests.json"
DIGEST_BYTES = 16  # 32 hex characters: MLflow keeps at most 36 per dataset digest
CONTEXTS = ("train", "validation", "test")
# The config fields that change what a split holds (not where it is computed, or how fast).
_CONTENT_FIELDS = tuple(f for f in DATA_FIELDS if f not in ("device", "num_workers"))


@dataclass(frozen=True)
class SplitRecord:
    """One split as MLflow's dataset input records it."""

    name: str  # the dataset's registry name
    context: str  # train / validation / test
    digest: str
    source: str
    num_samples: int
    num_classes: int

    def as_input(self) -> dict[str, Any]:
        """The record in the shape `Tracker.log_datasets` takes."""
        source_type = "local" if Path(self.source).is_absolute() else "code"
        return {"name": self.name, "context": self.context, "digest": self.digest, "source": self.source,
                "source_type": source_type,
                "profile": {"num_samples": self.num_samples, "num_classes": self.num_classes}}


def split_records(config: TrainConfig, data: Data, data_dir: Path | None,
                  contexts: Iterable[str] = CONTEXTS) -> list[SplitRecord]:
    """A record for each of `contexts` the data has (no validation split: none), digests
    from the cache in `data_dir` (or the image folder itself) where still valid."""
    cache = _Cache(_cache_folder(data, data_dir))
    splits = {"train": data.train, "validation": data.val, "test": data.test}
    records = []
    for context in contexts:
        split = splits[context]
        if split is None:
            continue
        key = _cache_key(config, data, context, split)
        digest = cache.get(key)
        if digest is None:
            digest = split_digest(split, data.source)
            cache.put(key, digest)
        records.append(SplitRecord(config.dataset, context, digest, data.source, len(split), len(data.classes)))
    cache.save()
    return records


def combined_digest(records: Iterable[SplitRecord]) -> str:
    """One digest for all of a run's splits (what `harness compare`'s data column shows)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for r in sorted(records, key=lambda r: r.context):
        h.update(f"{r.context}:{r.digest};".encode())
    return h.hexdigest()


def split_digest(split: Any, source: str = "") -> str:
    """Content hash of one split: in-memory tensors, or a streamed folder's files."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    images = getattr(split, "images", None)
    if hasattr(images, "files"):  # a streamed image folder: hash the files, in order, with their classes
        root = Path(source) if source else None
        for path, label in zip(images.files, images.labels):
            resolved = Path(path).resolve()
            name = str(resolved.relative_to(root)) if root and resolved.is_relative_to(root) else str(path)
            h.update(f"{name}\0{label}\0".encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()
    h.update(str(tuple(split.images.shape)).encode())
    h.update(split.images.detach().cpu().contiguous().numpy().tobytes())
    h.update(split.labels.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _stats(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(p), -1, -1))
    return out


def _cache_key(config: TrainConfig, data: Data, context: str, split: Any) -> str:
    """What the split's bytes depend on: its settings and the files it was read from (a streamed
    split: its own files; in memory: the dataset's source files)."""
    images = getattr(split, "images", None)
    files = images.files if hasattr(images, "files") else data.source_files
    text = json.dumps([context, data.source, [getattr(config, f) for f in _CONTENT_FIELDS], len(split), _stats(files)],
                      default=str)
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_BYTES).hexdigest()


def _cache_folder(data: Data, data_dir: Path | None) -> Path | None:
    """The data folder, else the image folder itself: the first that exists and is writable."""
    for folder in (data_dir, Path(data.source) if Path(data.source).is_absolute() else None):
        if folder is not None and folder.is_dir() and os.access(folder, os.W_OK):
            return folder
    return None


class _Cache:
    """The digests of one data folder, read once and written back only if something was added."""

    def __init__(self, folder: Path | None) -> None:
        self.path = folder / CACHE_FILE if folder else None
        self.entries: dict[str, str] = {}
        self.changed = False
        if self.path is not None and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                self.entries = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache is rebuilt

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, digest: str) -> None:
        self.entries[key] = digest
        self.changed = True

    def save(self) -> None:
        """Write atomically (a concurrent run reads the old file or the new one); a full or
        read-only disk only costs the next run a re-hash."""
        if self.path is None or not self.changed:
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".digests-")
            with os.fdopen(fd, "w") as f:
                json.dump(self.entries, f)
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except (OSError, UnboundLocalError):
                pass
