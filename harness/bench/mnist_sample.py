"""Benchmark and test data: the official MNIST test set shipped in ../shared/data/mnist-t10k,
written out in torchvision's raw layout so `dataset=mnist` reads it offline (`harness bench`
and the tests use it; the product's dataset registry does not)."""

from __future__ import annotations

import gzip
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist-t10k"


def idx_header_split(raw: bytes, start: int, stop: int) -> bytes:
    """Rows [start, stop) of an IDX file, with the count in its header rewritten."""
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    row = 1
    for d in dims[1:]:
        row *= d
    body = raw[4 + 4 * ndim :]
    header = raw[:4] + (stop - start).to_bytes(4, "big") + raw[8 : 4 + 4 * ndim]
    return header + body[start * row : stop * row]


def write_mnist_raw(root: Path, train: int = 8000, source: Path = SAMPLE_DIR) -> Path:
    """Images 0..train-1 of the sample as MNIST's training set and the rest as its test set,
    under `root`/MNIST/raw; returns `root` (pass it as the data dir)."""
    raw_dir = root / "MNIST" / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    for kind, suffix in (("images", "idx3"), ("labels", "idx1")):
        raw = gzip.decompress((source / f"t10k-{kind}-{suffix}-ubyte.gz").read_bytes())
        total = int.from_bytes(raw[4:8], "big")
        (raw_dir / f"train-{kind}-{suffix}-ubyte").write_bytes(idx_header_split(raw, 0, train))
        (raw_dir / f"t10k-{kind}-{suffix}-ubyte").write_bytes(idx_header_split(raw, train, total))
    return root


def mnist_sample_dir(target: Path) -> Path | None:
    """The real MNIST sample (8,000 training / 2,000 test images) written under `target` (the
    data dir to pass to `load_data`), or None when the shared sample is not on this machine."""
    return write_mnist_raw(target) if SAMPLE_DIR.is_dir() else None
