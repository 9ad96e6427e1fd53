"""Datasets, splits, batching and the on-device transforms."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import TrainConfig
from harness.data import load_data
from harness.data.in_memory import InMemorySplit
from harness.data.transforms import (
    BatchTransform,
    Preprocess,
    random_crop,
    random_hflip,
)
from harness.errors import HarnessError

CPU = torch.device("cpu")


# ------------------------------------------------------------------ digits (bundled with scikit-learn)


@pytest.fixture(scope="module")
def digits():
    """The digits dataset with default settings (seed 0)."""
    return load_data(TrainConfig(dataset="digits"))


def test_digits_shapes_and_dtype(digits) -> None:  # noqa: ANN001
    """Every split is uint8 (N, 1, 28, 28) with int64 labels 0-9; 1,797 images in total."""
    assert (digits.in_channels, digits.native_size, digits.classes) == (1, 28, [str(d) for d in range(10)])
    for split in (digits.train, digits.val, digits.test):
        assert split.images.dtype == torch.uint8
        assert split.images.shape[1:] == (1, 28, 28)
        assert split.labels.dtype == torch.int64
        assert set(split.labels.unique().tolist()) <= set(range(10))
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert digits.hflip is False


def test_digits_split_fractions(digits) -> None:  # noqa: ANN001
    """Test is test_fraction of everything; val is val_fraction of train+val."""
    config = TrainConfig(dataset="digits")
    assert len(digits.test) == round(1797 * config.test_fraction)
    train_val = len(digits.train) + len(digits.val)
    assert len(digits.val) == pytest.approx(config.val_fraction * train_val, abs=1)


def test_digits_test_split_fixed_across_seeds(digits) -> None:  # noqa: ANN001
    """Seed 1 scores on the same test images as seed 0, but its train/val split differs."""
    other = load_data(TrainConfig(dataset="digits", seed=1))
    assert torch.equal(other.test.images, digits.test.images)
    assert torch.equal(other.test.labels, digits.test.labels)
    assert len(other.val) == len(digits.val)
    assert not torch.equal(other.val.images, digits.val.images)
    assert not torch.equal(other.train.images, digits.train.images)


def test_digits_same_seed_same_split(digits) -> None:  # noqa: ANN001
    """Loading twice with the same seed gives identical splits."""
    again = load_data(TrainConfig(dataset="digits"))
    assert torch.equal(again.train.images, digits.train.images)
    assert torch.equal(again.val.labels, digits.val.labels)


def test_digits_train_limit_and_no_val() -> None:
    """train_limit caps the training split; val_fraction=0 means no validation split."""
    limited = load_data(TrainConfig(dataset="digits", train_limit=100))
    assert len(limited.train) == 100
    no_val = load_data(TrainConfig(dataset="digits", val_fraction=0.0))
    assert no_val.val is None
    assert len(no_val.train) + len(no_val.test) == 1797


def test_digits_channel_stats(digits) -> None:  # noqa: ANN001
    """mean/std are per channel on the [0, 1] scale, computed from the training split."""
    x = digits.train.images.float() / 255
    assert digits.mean == pytest.approx((x.mean().item(),), rel=1e-4)
    assert digits.std == pytest.approx((x.std().item(),), rel=1e-4)


# ------------------------------------------------------------------ synthetic


@pytest.mark.parametrize(("name", "channels", "size", "hflip"),
                         [("synthetic", 1, 28, False), ("synthetic_rgb", 3, 32, True)])
def test_synthetic_shapes(name: str, channels: int, size: int, hflip: bool) -> None:
    """Synthetic datasets have MNIST / CIFAR shapes, 10 classes and the same test set for any seed."""
    data = load_data(TrainConfig(dataset=name, val_fraction=0.1))
    assert (data.in_channels, data.native_size, data.hflip, len(data.classes)) == (channels, size, hflip, 10)
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.uint8
        assert split.images.shape[1:] == (channels, size, size)
    assert (len(data.train), len(data.val), len(data.test)) == (9000, 1000, 2000)
    other = load_data(TrainConfig(dataset=name, seed=1, train_limit=50))
    assert len(other.train) == 50
    assert torch.equal(other.test.images, data.test.images)


# ------------------------------------------------------------------ in-memory batching


def _indexed_split(n: int = 23) -> InMemorySplit:
    """A split whose label is the sample index (images encode it too)."""
    images = (torch.arange(n, dtype=torch.uint8)[:, None, None, None]).expand(n, 1, 2, 2).clone()
    return InMemorySplit(images, torch.arange(n))


def test_batches_unshuffled_in_order() -> None:
    """Without shuffle, batches come in order; the last one is smaller."""
    split = _indexed_split()
    batches = list(split.batches(5, shuffle=False, generator=None))
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(23))


def test_shuffled_batches_cover_every_sample_once() -> None:
    """A shuffled epoch visits each sample exactly once, with images and labels kept together."""
    split = _indexed_split()
    seen = []
    for x, y in split.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert x.dtype == torch.uint8
        assert torch.equal(x[:, 0, 0, 0].long(), y)
        seen += y.tolist()
    assert sorted(seen) == list(range(23))
    assert seen != list(range(23))  # actually shuffled


def test_shuffle_with_seeded_generator_is_reproducible() -> None:
    """The same generator seed gives the same order; another seed a different one."""
    split = _indexed_split(50)

    def order(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return [i for _, y in split.batches(8, shuffle=True, generator=g) for i in y.tolist()]

    assert order(3) == order(3)
    assert order(3) != order(4)


# ------------------------------------------------------------------ transforms


def test_random_crop_keeps_shape_and_shifts() -> None:
    """Each crop is the image shifted by at most `padding` px, zero-filled at the border."""
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8) + 1  # strictly positive so padding zeros are recognisable
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, padding=2, generator=g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows), f"image {i} is not a shifted crop"


def test_random_crop_padding_zero_is_identity() -> None:
    """padding=0 leaves the batch unchanged."""
    x = torch.rand(4, 1, 5, 7)
    assert torch.equal(random_crop(x, padding=0, generator=torch.Generator().manual_seed(0)), x)


def test_random_crop_reproducible() -> None:
    """The same generator seed gives the same crops."""
    x = torch.rand(8, 3, 16, 16)
    a = random_crop(x, 4, torch.Generator().manual_seed(7))
    b = random_crop(x, 4, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_random_hflip() -> None:
    """Each image is either unchanged or mirrored; some of each; reproducible with the seed."""
    x = torch.rand(32, 3, 4, 5)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    same = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or s for f, s in zip(flipped, same))
    assert any(flipped) and any(same)
    assert torch.equal(out, random_hflip(x, torch.Generator().manual_seed(0)))


def test_preprocess_resizes_and_normalises() -> None:
    """Preprocess resizes 28 -> 32 and applies (x - mean) / std."""
    pre = Preprocess(mean=(0.5,), std=(0.25,), image_size=32)
    out = pre(torch.full((2, 1, 28, 28), 0.75))
    assert out.shape == (2, 1, 32, 32)
    assert torch.allclose(out, torch.ones_like(out))  # (0.75 - 0.5) / 0.25
    same_size = pre(torch.zeros(1, 1, 32, 32))
    assert torch.allclose(same_size, torch.full_like(same_size, -2.0))


@pytest.mark.parametrize("augment", [False, True])
def test_batch_transform_output(augment: bool) -> None:
    """uint8 batches become float32, normalised, at the Preprocess image_size (augmented or not)."""
    transform = BatchTransform(Preprocess((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), image_size=32), CPU, augment=augment,
                               hflip=True)
    images = torch.full((4, 3, 28, 28), 255, dtype=torch.uint8)
    out = transform(images, train=True, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == (4, 3, 32, 32)
    if augment:
        # Random-crop borders are zero (the mean colour after normalisation), the rest is (1-0.5)/0.5.
        assert set(out.unique().tolist()) <= {0.0, 1.0}
    else:
        assert torch.allclose(out, torch.ones_like(out))
    evaluated = transform(images, train=False)
    assert torch.allclose(evaluated, torch.ones_like(evaluated))  # never augmented at evaluation


# ------------------------------------------------------------------ image folders


def _write_png(path: Path, rng: np.random.Generator, size: int = 20) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    colour = rng.integers(0, 256, size=3, dtype=np.uint8)
    Image.fromarray(np.broadcast_to(colour, (size, size + 4, 3)).copy()).save(path)


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    """24 images named like Kaggle's cats vs dogs: cat.1.png ... dog.12.png."""
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(1, 13):
            _write_png(tmp_path / "flat" / f"{cls}.{i}.png", rng)
    return tmp_path / "flat"


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """One sub-folder per class: cat/*.png and dog/*.png, 10 each."""
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        for i in range(10):
            _write_png(tmp_path / "nested" / cls / f"img{i}.png", rng)
    return tmp_path / "nested"


def _folder_config(path: Path, **changes) -> TrainConfig:  # noqa: ANN003
    return TrainConfig(dataset="image_folder", data_path=str(path), image_size=32, num_workers=0, device="cpu",
                       **changes)


def _files(split) -> list[str]:  # noqa: ANN001 - a StreamedSplit
    return [p.name for p in split.images.files]


@pytest.mark.parametrize("layout", ["flat_folder", "class_folders"])
def test_image_folder_loads(layout: str, request: pytest.FixtureRequest) -> None:
    """Both layouts give classes cat/dog and uint8 (B, 3, 32, 32) batches with 0/1 labels."""
    root = request.getfixturevalue(layout)
    data = load_data(_folder_config(root))
    assert data.classes == ["cat", "dog"]
    assert (data.in_channels, data.native_size) == (3, 32)
    total = len(data.train) + len(data.val) + len(data.test)
    assert total == len(list(root.rglob("*.png")))
    x, y = next(iter(data.train.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32)
    assert set(y.tolist()) <= {0, 1}
    labels = torch.cat([y for _, y in data.test.batches(8, shuffle=False, generator=None)])
    assert len(labels) == len(data.test)


def test_image_folder_labels_match_file_names(flat_folder: Path) -> None:
    """A sample's label is the class of its file-name prefix."""
    data = load_data(_folder_config(flat_folder))
    images = data.train.images
    for i in range(len(images)):
        assert data.classes[images.labels[i]] == images.files[i].name.split(".")[0]


def test_image_folder_split_deterministic(flat_folder: Path) -> None:
    """Same seed, same split; the test split does not depend on the seed."""
    a = load_data(_folder_config(flat_folder, seed=3))
    b = load_data(_folder_config(flat_folder, seed=3))
    c = load_data(_folder_config(flat_folder, seed=4))
    assert (_files(a.train), _files(a.val), _files(a.test)) == (_files(b.train), _files(b.val), _files(b.test))
    assert _files(a.test) == _files(c.test)
    assert not set(_files(a.train)) & set(_files(a.test))
    assert not set(_files(a.train)) & set(_files(a.val))


def test_image_folder_train_test_subfolders(tmp_path: Path) -> None:
    """train/ and test/ sub-folders fix the test set."""
    rng = np.random.default_rng(2)
    for part, n in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _write_png(tmp_path / part / cls / f"{i}.png", rng)
    data = load_data(_folder_config(tmp_path, val_fraction=0.0))
    assert data.classes == ["cat", "dog"]
    assert (len(data.train), len(data.test)) == (12, 4)
    assert data.val is None


def test_image_folder_single_class(tmp_path: Path) -> None:
    """A folder with only one class cannot be a classification dataset."""
    rng = np.random.default_rng(3)
    for i in range(6):
        _write_png(tmp_path / f"cat.{i}.png", rng)
    with pytest.raises(HarnessError, match="at least two classes"):
        load_data(_folder_config(tmp_path))


def test_image_folder_missing_path(tmp_path: Path) -> None:
    """A data_path that is not a folder gives a HarnessError naming it."""
    missing = tmp_path / "nope"
    with pytest.raises(HarnessError, match="nope"):
        load_data(_folder_config(missing))


# ------------------------------------------------------------------ torchvision datasets (offline)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every urllib download fail at once, as on a machine without internet."""

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.usefixtures("no_network")
def test_mnist_missing_offline_explains_where_to_put_files(tmp_path: Path) -> None:
    """Not on disk and no download: the error names the folder and the expected files."""
    with pytest.raises(HarnessError) as info:
        load_data(TrainConfig(dataset="mnist"), data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte.gz" in message
    assert "t10k-labels-idx1-ubyte.gz" in message


@pytest.mark.usefixtures("no_network")
def test_a_failed_download_says_why_and_leaves_the_data_folder_as_it_was(tmp_path: Path) -> None:
    """torchvision's "Error downloading FILE:" ends in a colon; the cause (here no network) is on
    the next lines: it is in the message. The FashionMNIST/raw/ the attempt made is removed, a
    folder the user had (and what is in it) is not."""
    data = tmp_path / "data"
    with pytest.raises(HarnessError) as info:
        load_data(TrainConfig(dataset="fashion_mnist"), data_dir=data)
    cause = "(Error downloading train-images-idx3-ubyte.gz: <urlopen error network disabled in tests>)"
    assert cause in str(info.value), info.value
    assert not data.exists(), list(data.rglob("*"))  # it did not exist before: not left behind, even empty

    kept = tmp_path / "mine" / "FashionMNIST" / "notes.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("mine")
    with pytest.raises(HarnessError):
        load_data(TrainConfig(dataset="fashion_mnist"), data_dir=tmp_path / "mine")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "mine").rglob("*")) == [
        Path("mine/FashionMNIST"), Path("mine/FashionMNIST/notes.txt")]
    assert kept.read_text() == "mine"


@pytest.mark.usefixtures("no_network")
def test_a_missing_dataset_names_the_ones_this_machine_has_and_the_override(tmp_path: Path) -> None:
    """Fashion-MNIST missing, MNIST on disk: the sentence offers mnist, where it is, and the
    override; with nothing on disk it offers the bundled digits (no download)."""
    from test_faults_data import write_mnist_family

    raw = write_mnist_family(tmp_path, "MNIST")
    with pytest.raises(HarnessError) as info:
        load_data(TrainConfig(dataset="fashion_mnist"), data_dir=tmp_path)
    assert f"mnist (in {raw})" in str(info.value) and "add --set dataset=mnist to the command" in str(info.value)
    with pytest.raises(HarnessError) as info:
        load_data(TrainConfig(dataset="fashion_mnist"), data_dir=tmp_path / "empty")
    assert "add --set dataset=digits to the command" in str(info.value), info.value


def test_a_download_refused_by_the_server_names_the_http_status(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(request, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        url = getattr(request, "full_url", request)
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib.request, "urlopen", not_found)
    with pytest.raises(HarnessError) as info:
        load_data(TrainConfig(dataset="cifar10"), data_dir=tmp_path)
    assert "could not be downloaded (HTTP Error 404: Not Found)" in str(info.value), info.value
    assert list(tmp_path.iterdir()) == []


def test_download_cause_reads_torchvisions_messages() -> None:
    from harness.data.torchvision_sets import download_cause

    mnist = RuntimeError("Error downloading t10k-images-idx3-ubyte.gz:\nTried https://a/, got:\nHTTP Error 503: x\n"
                         "Tried https://b/, got:\n<urlopen error timed out>\n")
    assert download_cause(mnist) == "Error downloading t10k-images-idx3-ubyte.gz: <urlopen error timed out>"
    assert download_cause(RuntimeError("File not found or corrupted.")) == (
        "the downloaded file's md5 checksum is not the published one")
    assert download_cause(OSError()) == "OSError"


@pytest.mark.usefixtures("no_network")
def test_cifar10_missing_offline_explains_where_to_put_files(tmp_path: Path) -> None:
    """CIFAR-10's error names the data folder and its archive."""
    with pytest.raises(HarnessError) as info:
        load_data(TrainConfig(dataset="cifar10"), data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "cifar-10-python.tar.gz" in message


def test_every_declared_dataset_has_a_loader() -> None:
    """Each name declared in harness/data/__init__.py is bound by its module (imported on first use)."""
    from harness.data import DATASETS

    for name in DATASETS.names():
        assert callable(DATASETS.get(name).impl), name


def test_register_dataset_refuses_undeclared_package_loaders_and_built_in_names() -> None:
    """Inside the package loaders bind only to declared names; from outside, a built-in name is refused."""
    from harness.data import DATASETS, register_dataset
    from harness.errors import ConfigError

    def load(config: TrainConfig, data_dir: Path) -> None:
        return None

    load.__module__ = "harness.data.fake"
    with pytest.raises(ValueError, match="not declared"):
        register_dataset("digitz")(load)
    assert "digitz" not in DATASETS
    with pytest.raises(ConfigError, match="built into harness"):
        register_dataset("digits")(lambda config, data_dir: None)


class _RecordingConfig:
    """A TrainConfig stand-in that records which fields a loader reads."""

    def __init__(self, config: TrainConfig) -> None:
        self._config, self.read = config, set()

    def __getattr__(self, name: str):  # noqa: ANN204
        self.read.add(name)
        return getattr(self._config, name)


def test_loaders_read_only_the_data_fields(flat_folder: Path, tmp_path: Path) -> None:
    """`harness tune` reuses a dataset across trials with equal DATA_FIELDS; that is only safe if
    no loader reads another field."""
    from harness.bench.mnist_sample import SAMPLE_DIR, write_mnist_raw
    from harness.data import DATA_FIELDS, DATASETS

    cases = [(TrainConfig(dataset=name, train_limit=64), None) for name in ("digits", "synthetic", "synthetic_rgb")]
    cases.append((_folder_config(flat_folder), None))
    if (SAMPLE_DIR / "t10k-images-idx3-ubyte.gz").is_file():  # the real sample, when this checkout has it
        cases.append((TrainConfig(dataset="mnist"), write_mnist_raw(tmp_path / "mnist", train=500)))
    for config, data_dir in cases:
        recorder = _RecordingConfig(config)
        DATASETS.get(config.dataset)(recorder, data_dir or tmp_path)  # type: ignore[arg-type]
        assert recorder.read <= set(DATA_FIELDS), (config.dataset, recorder.read - set(DATA_FIELDS))


def test_image_folder_shards_for_data_parallel_training(flat_folder: Path) -> None:
    """Training: PyTorch's DistributedSampler (same steps on every rank, reshuffled per epoch);
    evaluation: contiguous shards, every image exactly once."""
    from harness.data.image_folder import FolderImages, StreamedSplit, scan

    files = scan(flat_folder)[0][:23]  # an odd count: 2 ranks cannot share it evenly
    split = StreamedSplit(FolderImages(files, list(range(23)), 8), num_workers=0, pin_memory=False)  # label = index
    parts = [list(split.train_batches(6, torch.Generator(), rank, 2, epoch=1, seed=0)) for rank in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 4
    seen = [i for part in parts for _, y, _ in part for i in y.tolist()]
    assert set(seen) == set(range(23)) and len(seen) == 24  # the sampler repeats one image to even the ranks out
    assert all(size == 2 * len(y) for part in parts for _, y, size in part)
    again = [i for _, y, _ in split.train_batches(6, torch.Generator(), 0, 2, epoch=1, seed=0) for i in y.tolist()]
    other = [i for _, y, _ in split.train_batches(6, torch.Generator(), 0, 2, epoch=2, seed=0) for i in y.tolist()]
    assert again == [i for _, y, _ in parts[0] for i in y.tolist()] and other != again  # set_epoch reshuffles
    shards = [split.shard(rank, 2) for rank in (0, 1)]
    assert sorted(i for s in shards for _, y in s.batches(5, False, None) for i in y.tolist()) == list(range(23))
