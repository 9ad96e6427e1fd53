"""Datasets in their real on-disk formats, and damaged data: one clear line naming the file.

The first part loads Fashion-MNIST (IDX files) and CIFAR-10/100 (pickled batches) through
torchvision's own dataset classes from generated files in the exact layouts torchvision reads,
and checks that their class names reach a real `harness run`'s confusion matrix. Only
torchvision's md5 check is bypassed (the generated files cannot match the published sums).

The second part is a table of faults, each a `harness run` of the quickstart: exit code 1, exactly one
`error:` line on stderr naming the file, no traceback; in MLflow the variant FAILED with that one-line
reason in `harness.failure_reason`, the parent FAILED, nothing left RUNNING. Faults that need real
worker processes run as real `python -m harness run` processes (in parallel); the rest through the
same CLI in-process, for speed.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_experiment, harness_popen, runs, sqlite_uri
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness.cli import app
from harness.config import TrainConfig
from harness.data import load_data
from harness.errors import HarnessError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = ["apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
                    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
                    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
                    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
                    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
                    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
                    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
                    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew",
                    "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower",
                    "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train", "trout",
                    "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm"]


# ------------------------------------------------------------------ writers of the real formats


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes (magic 0x0000080N, big-endian dimensions), as MNIST ships it."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.tobytes())
    return path


def write_mnist_family(root: Path, folder: str = "FashionMNIST", n_train: int = 300, n_test: int = 100) -> Path:
    """`root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte` (uncompressed, as torchvision
    leaves them after extracting its download); every class present; returns the raw folder."""
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28)) + labels[:, None, None] * 19  # brightness tells the class
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return raw


def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar(root: Path, hundred: bool = False, n_train: int = 300, n_test: int = 100) -> Path:
    """CIFAR as its python archive extracts: `cifar-10-batches-py/data_batch_1..5, test_batch,
    batches.meta` or `cifar-100-python/train, test, meta`; each batch a pickled dict with 'data'
    (N x 3072 uint8, channel-major) and 'labels' (CIFAR-100: 'fine_labels' and 'coarse_labels').
    Returns the batch folder."""
    rng = np.random.default_rng(1)
    classes = CIFAR100_CLASSES if hundred else CIFAR10_CLASSES

    def batch(n: int, name: str) -> dict:
        labels = [i % len(classes) for i in range(n)]
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        if hundred:
            return {"batch_label": name, "data": data, "fine_labels": labels, "coarse_labels": [y // 5 for y in labels]}
        return {"batch_label": name, "data": data, "labels": labels}

    if hundred:
        folder = root / "cifar-100-python"
        _pickle(folder / "train", batch(n_train, "train"))
        _pickle(folder / "test", batch(n_test, "test"))
        _pickle(folder / "meta", {"fine_label_names": classes, "coarse_label_names": [f"super{i}" for i in range(20)]})
    else:
        folder = root / "cifar-10-batches-py"
        for i in range(1, 6):
            _pickle(folder / f"data_batch_{i}", batch(n_train // 5, f"training batch {i} of 5"))
        _pickle(folder / "test_batch", batch(n_test, "testing batch 1 of 1"))
        _pickle(folder / "batches.meta", {"label_names": classes, "num_cases_per_batch": n_train // 5})
    return folder


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bypass only torchvision's md5 comparison for CIFAR: a file must still exist."""
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


# ------------------------------------------------------------------ real formats through a real `harness run`


def _confusion_classes(workdir: Path) -> list[str]:
    """The class names (rows) of the confusion matrix CSV of the latest quickstart variant."""
    import pandas as pd

    client = MlflowClient()
    exp = client.get_experiment_by_name("quickstart")
    run = next(r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags)
    assert run.info.status == "FINISHED"
    csv = client.download_artifacts(run.info.run_id, "confusion_matrix.csv", str(workdir))
    return [str(c) for c in pd.read_csv(csv, index_col=0).index]


@pytest.mark.parametrize(("dataset", "write", "classes"), [
    ("fashion_mnist", lambda root: write_mnist_family(root), FASHION_CLASSES),
    ("cifar10", lambda root: write_cifar(root), CIFAR10_CLASSES),
    ("cifar100", lambda root: write_cifar(root, hundred=True, n_train=400), CIFAR100_CLASSES),
])
@pytest.mark.usefixtures("no_md5")
def test_real_format_reaches_confusion_matrix(workdir: Path, dataset: str, write: Callable[[Path], Path],
                                              classes: list[str]) -> None:
    """torchvision reads the generated files; a 1-epoch run logs a confusion matrix with their class names."""
    write(workdir / "data")
    result = CliRunner().invoke(app, ["run", "quickstart", "--set", f"dataset={dataset}", "--set", "epochs=1",
                                      "--set", "batch_size=64", "--data-dir", str(workdir / "data")])
    assert result.exit_code == 0, result.output
    assert _confusion_classes(workdir) == classes


@pytest.mark.parametrize(("dataset", "write", "shape", "n_classes"), [
    ("fashion_mnist", write_mnist_family, (1, 28, 28), 10),
    ("cifar10", write_cifar, (3, 32, 32), 10),
    ("cifar100", lambda root: write_cifar(root, hundred=True), (3, 32, 32), 100),
])
@pytest.mark.usefixtures("no_md5")
def test_real_format_splits(tmp_path: Path, dataset: str, write: Callable[[Path], Path], shape: tuple[int, ...],
                            n_classes: int) -> None:
    """Train + validation hold every training image, the test split the test files', labels intact."""
    write(tmp_path)
    data = load_data(TrainConfig(dataset=dataset, val_fraction=0.1), data_dir=tmp_path)
    assert (len(data.train) + len(data.val), len(data.test)) == (300, 100)
    assert tuple(data.test.images.shape[1:]) == shape and len(data.classes) == n_classes
    assert data.test.labels.tolist() == [i % n_classes for i in range(100)]


# ------------------------------------------------------------------ damaged files at the loader (in-process)


def _truncate(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _set_bytes(path: Path, offset: int, new: bytes) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(new)] = new
    path.write_bytes(bytes(raw))
    return path


def _gzip(path: Path) -> Path:
    import gzip

    path.write_bytes(gzip.compress(path.read_bytes()))
    return path


def _unpickle_rewrite(path: Path, change: Callable[[dict], object]) -> Path:
    with path.open("rb") as f:
        entry = pickle.load(f, encoding="latin1")
    _pickle(path, change(entry))
    return path


def _idx_labels(path: Path, labels: list[int]) -> Path:
    return write_idx(path, np.array(labels))


# (case, dataset, how the file is damaged -> the damaged file, what the message must say)
LOADER_FAULTS = [
    ("idx truncated", "fashion_mnist",
     lambda r: _truncate(write_mnist_family(r) / "train-images-idx3-ubyte", 1000), "truncated: 1,000 of 235,216 bytes"),
    ("idx shorter than header", "fashion_mnist",
     lambda r: _truncate(write_mnist_family(r) / "t10k-labels-idx1-ubyte", 6), "shorter than its 8-byte header"),
    ("idx bad magic", "fashion_mnist",
     lambda r: _set_bytes(write_mnist_family(r) / "train-images-idx3-ubyte", 0, b"\x12\x34\x56\x78"),
     "bad magic number 0x12345678, expected 0x00000803"),
    ("idx empty", "mnist",
     lambda r: _truncate(write_mnist_family(r, "MNIST") / "train-labels-idx1-ubyte", 0), "empty: 0 bytes"),
    ("idx extra bytes", "mnist",
     lambda r: _set_bytes(write_mnist_family(r, "MNIST") / "t10k-images-idx3-ubyte", 78_416, b"xx"), "78,418 bytes"),
    ("idx still gzipped", "fashion_mnist",
     lambda r: _gzip(write_mnist_family(r) / "train-labels-idx1-ubyte"), "still gzip-compressed"),
    ("idx label out of range", "fashion_mnist",
     lambda r: _idx_labels(write_mnist_family(r) / "t10k-labels-idx1-ubyte", [3] * 50 + [12] * 50),
     "label 12 at position 50, outside 0-9"),
    ("cifar batch not a pickle", "cifar10",
     lambda r: _truncate(write_cifar(r) / "data_batch_3", 100), "not a readable pickle"),
    ("cifar batch garbage", "cifar10",
     lambda r: ((write_cifar(r) / "test_batch").write_bytes(b"<html>not found</html>")
                and r / "cifar-10-batches-py" / "test_batch"),
     "not a readable pickle"),
    ("cifar batch lacks data", "cifar100",
     lambda r: _unpickle_rewrite(write_cifar(r, hundred=True) / "train",
                                 lambda e: {k: v for k, v in e.items() if k != "data"}),
     "lacks its 'data' key"),
    ("cifar batch count mismatch", "cifar10",
     lambda r: _unpickle_rewrite(write_cifar(r) / "data_batch_2", lambda e: {**e, "labels": e["labels"][:10]}),
     "60 images but 10 labels"),
    ("cifar meta lacks names", "cifar10",
     lambda r: _unpickle_rewrite(write_cifar(r) / "batches.meta", lambda e: {}), "lacks its 'label_names' key"),
]


@pytest.mark.parametrize(("case", "dataset", "damage", "what"), LOADER_FAULTS, ids=[c[0] for c in LOADER_FAULTS])
@pytest.mark.usefixtures("no_md5")
def test_damaged_file_is_one_line_naming_it(tmp_path: Path, case: str, dataset: str,
                                            damage: Callable[[Path], Path], what: str) -> None:
    """Each damaged file gives a HarnessError: one line, the file's path, what is wrong with it."""
    path = damage(tmp_path)
    with pytest.raises(HarnessError) as info:
        load_data(TrainConfig(dataset=dataset), data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert f"{path} is damaged" in message and what in message, message


def test_idx_count_mismatch_names_both_files(tmp_path: Path) -> None:
    """1,500 images with 1,000 labels is an error naming both files, not 1,000 silent samples."""
    raw = write_mnist_family(tmp_path, "MNIST", n_train=1500)
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(1000))
    with pytest.raises(HarnessError) as info:
        load_data(TrainConfig(dataset="mnist"), data_dir=tmp_path)
    message = str(info.value)
    assert f"{raw / 'train-images-idx3-ubyte'} holds 1,500 images" in message
    assert f"{raw / 'train-labels-idx1-ubyte'} holds 1,000 labels" in message


def test_cifar_checksum_mismatch_is_named(tmp_path: Path) -> None:
    """Without the test's md5 bypass, intact-looking files that are not the published ones are
    named as such (not reported missing, not re-downloaded over)."""
    write_cifar(tmp_path)
    with pytest.raises(HarnessError, match=r"data_batch_1 is damaged \(its md5 checksum is not the published one\)"):
        load_data(TrainConfig(dataset="cifar10"), data_dir=tmp_path)


# ------------------------------------------------------------------ image folders


def _write_images(folder: Path, per_class: int = 6, size: int = 24) -> Path:
    """JPEGs named like Kaggle's cats vs dogs: cat.0.jpg ... dog.N.jpg."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(folder / f"{cls}.{i}.jpg")
    return folder


def _half_jpeg(path: Path) -> Path:
    """A JPEG cut in the middle of its pixel data: its header reads fine, decoding it fails."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def test_image_folder_unreadable_files_counted_at_index(tmp_path: Path) -> None:
    """Files that are not images fail the load at once: the first one named, how many there are."""
    root = _write_images(tmp_path / "imgs")
    (root / "cat.1.jpg").write_bytes(b"")
    (root / "dog.4.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(HarnessError) as info:
        load_data(TrainConfig(dataset="image_folder", data_path=str(root), image_size=32, num_workers=0))
    message = str(info.value)
    assert "\n" not in message
    assert f"'{root / 'cat.1.jpg'}' cannot be read" in message and "2 of 12 images" in message


@pytest.mark.parametrize("workers", [0, 2])
def test_image_folder_decode_error_in_worker_is_one_line(tmp_path: Path, workers: int) -> None:
    """A JPEG whose header is fine but whose pixels are cut short fails when read, in a worker
    process or not, as one line naming it (never the worker's traceback)."""
    root = _write_images(tmp_path / "imgs")
    bad = _half_jpeg(root / "cat.2.jpg")
    data = load_data(TrainConfig(dataset="image_folder", data_path=str(root), image_size=32, num_workers=workers,
                                 val_fraction=0.0, device="cpu"))
    with pytest.raises(HarnessError) as info:
        for split in (data.train, data.test):
            for _ in split.batches(4, shuffle=False, generator=None):
                pass
    message = str(info.value)
    assert message.startswith(f"Image '{bad}' cannot be decoded (") and "\n" not in message, message


# ------------------------------------------------------------------ the CLI and MLflow, one subprocess per fault


@dataclass(frozen=True)
class Fault:
    """One way data goes wrong, as the user causes it, and the file the one error line must name."""

    case: str
    cause: Callable[[Path], tuple[list[str], Path]]  # folder -> (`harness run` args, the bad file it holds)
    says: str  # what the line must say besides the file name
    # A real `python -m harness` process (DataLoader workers, real stderr); the rest run in-process
    # through the same CLI, which keeps this file fast on a small machine.
    subprocess: bool = False


def _data_args(root: Path, dataset: str) -> list[str]:
    return ["--set", f"dataset={dataset}", "--data-dir", str(root / "data")]


def _folder_args(root: Path) -> list[str]:
    # num_workers is left at its default (2): images are decoded in worker processes.
    return ["--set", "dataset=image_folder", "--set", f"data_path={root / 'imgs'}", "--set", "image_size=32",
            "--set", "batch_size=4"]


def _not_a_jpeg(root: Path) -> tuple[list[str], Path]:
    bad = _write_images(root / "imgs") / "dog.3.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    return _folder_args(root), bad


def _count_mismatch(root: Path) -> tuple[list[str], Path]:
    raw = write_mnist_family(root / "data", "MNIST", n_train=1500)
    return _data_args(root, "mnist"), write_idx(raw / "train-labels-idx1-ubyte", np.zeros(1000))


CLI_FAULTS = [
    Fault("corrupt jpeg, caught at indexing", _not_a_jpeg, "cannot be read"),
    Fault("truncated jpeg, decoded in a worker",
          lambda r: (_folder_args(r), _half_jpeg(_write_images(r / "imgs") / "cat.2.jpg")), "cannot be decoded",
          subprocess=True),
    Fault("fashion-mnist idx truncated",
          lambda r: (_data_args(r, "fashion_mnist"),
                     _truncate(write_mnist_family(r / "data") / "train-images-idx3-ubyte", 1000)),
          "truncated: 1,000 of 235,216 bytes", subprocess=True),
    Fault("mnist idx bad magic",
          lambda r: (_data_args(r, "mnist"),
                     _set_bytes(write_mnist_family(r / "data", "MNIST") / "t10k-images-idx3-ubyte", 2, b"\x09")),
          "bad magic number 0x00000903"),
    Fault("mnist label file empty",
          lambda r: (_data_args(r, "mnist"),
                     _truncate(write_mnist_family(r / "data", "MNIST") / "train-labels-idx1-ubyte", 0)), "empty"),
    Fault("mnist 1,500 images, 1,000 labels", _count_mismatch, "holds 1,500 images but", subprocess=True),
    Fault("cifar-10 batch not a pickle",
          lambda r: (_data_args(r, "cifar10"), _truncate(write_cifar(r / "data") / "data_batch_4", 50)),
          "not a readable pickle", subprocess=True),
    Fault("cifar-100 batch lacks 'data'",
          lambda r: (_data_args(r, "cifar100"),
                     _unpickle_rewrite(write_cifar(r / "data", hundred=True) / "test",
                                       lambda e: {k: v for k, v in e.items() if k != "data"})),
          "lacks its 'data' key"),
]


def _prepare(fault: Fault, folder: Path) -> tuple[list[str], Path]:
    """The quickstart experiment in `folder`, the fault's data, and the `harness run` arguments."""
    copy_experiment(folder)
    args, bad = fault.cause(folder)
    return ["run", "quickstart", "--set", "epochs=1", "--tracking-uri", f"sqlite:///{folder}/mlflow.db", *args], bad


@pytest.fixture(scope="module")
def subprocess_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, Path, Path]]:
    """Every subprocess fault as `python -m harness run quickstart` in its own folder, all started at
    once: case -> (exit code, stderr, folder, bad file)."""
    procs = {}
    for fault in [f for f in CLI_FAULTS if f.subprocess]:
        folder = tmp_path_factory.mktemp("fault")
        args, bad = _prepare(fault, folder)
        env = {"HARNESS_EXPERIMENTS_DIR": str(folder / "experiments"), "OMP_NUM_THREADS": "1",
               "HARNESS_CHECKPOINT_DIR": str(folder / "checkpoints")}
        proc = harness_popen(*args, cwd=folder, env=env)
        procs[fault.case] = (proc, folder, bad)
    outcomes = {}
    for case, (proc, folder, bad) in procs.items():
        out, err = proc.communicate(timeout=300)
        outcomes[case] = (proc.returncode, err + ("Traceback" if "Traceback" in out else ""), folder, bad)
    return outcomes


@pytest.mark.parametrize("fault", CLI_FAULTS, ids=[f.case for f in CLI_FAULTS])
def test_cli_fault_is_one_line_and_failed_in_mlflow(request: pytest.FixtureRequest, fault: Fault) -> None:
    """Exit 1, one `error:` line naming the file and what is wrong, no traceback; in MLflow the
    variant FAILED with that reason (one line), the parent FAILED, no run RUNNING."""
    if fault.subprocess:
        code, stderr, folder, bad = request.getfixturevalue("subprocess_outcomes")[fault.case]
    else:
        folder = request.getfixturevalue("workdir")
        args, bad = _prepare(fault, folder)
        result = CliRunner().invoke(app, args)
        code, stderr = result.exit_code, result.stderr
        if result.exception and not isinstance(result.exception, SystemExit):  # escaped the CLI: a traceback
            stderr += "Traceback"
    assert code == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert errors[0].startswith("error: variant 'lenet_relu' FAILED: ")
    assert str(bad) in errors[0] and fault.says in errors[0], errors[0]

    found = runs(sqlite_uri(folder))
    assert not [r.info.run_name for r in found if r.info.status == "RUNNING"]
    (variant,) = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert (variant.info.status, parent.info.status) == ("FAILED", "FAILED")
    reason = variant.data.tags["harness.failure_reason"]
    assert "\n" not in reason and str(bad) in reason and fault.says in reason
    assert errors[0].endswith(reason)
