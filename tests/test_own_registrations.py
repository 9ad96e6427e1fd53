"""A user's own model and dataset, registered from their own files (outside the package), through
the real commands: `harness list`, `show` and `run` find them; mistakes in them are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import child, folder_env, harness_here, one_error_line, write_experiment

from harness import TrainConfig, tensor_data
from harness.errors import DataError

# A model and a dataset of the user's own, in a helper file experiments share (`import _mine`).
HELPER = '''
import torch
from torch import nn

import harness


@harness.register_model("my_mlp", min_image_size=8)
def my_mlp(in_channels: int, num_classes: int, image_size: int, dropout: float | None = None) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 64), nn.ReLU(),
                         nn.Dropout(dropout or 0.0), nn.Linear(64, num_classes))


@harness.register_dataset("my_blobs")
def my_blobs(config: harness.TrainConfig, data_dir) -> harness.Data:
    # Three classes of 16x16 RGB images, channels last, floats in [0, 1]: each class one colour plus noise.
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(900) % 3
    colours = torch.eye(3)[labels]
    images = (colours[:, None, None, :] * 0.6 + 0.4 * torch.rand(900, 16, 16, 3, generator=g)).clamp(0, 1)
    return harness.tensor_data(images.numpy(), labels.numpy(), ["red", "green", "blue"], config,
                               source="three colours, generated")
'''

EXPERIMENT = '''
import _mine  # noqa: F401 - registers my_mlp and my_blobs

from harness import Experiment, TrainConfig

experiment = Experiment(
    name="{name}",
    description="my own model on my own data",
    variants={{"mlp": TrainConfig(model="my_mlp", dataset="my_blobs", epochs=2, batch_size=64, lr=0.05,
                                  dropout=0.1, device="cpu")}},
)
'''


def _mine(root: Path) -> dict[str, str]:
    (root / "experiments").mkdir(parents=True, exist_ok=True)
    (root / "experiments" / "_mine.py").write_text(HELPER)
    return folder_env(root)


def test_own_model_and_dataset_from_a_users_file_train_end_to_end(tmp_path: Path) -> None:
    env = _mine(tmp_path)
    write_experiment(tmp_path, "mine", EXPERIMENT.format(name="mine"))
    write_experiment(tmp_path, "mine_too", EXPERIMENT.format(name="mine_too"))  # the same helper, imported twice

    listed = harness_here("list", cwd=tmp_path, env=env)
    assert listed.returncode == 0 and "mine" in listed.stdout and "mine_too" in listed.stdout, listed
    assert "broken" not in listed.stdout.lower() and not listed.stderr.strip(), listed
    shown = harness_here("show", "mine", cwd=tmp_path, env=env)
    assert shown.returncode == 0 and "my_mlp" in shown.stdout and "my_blobs" in shown.stdout, shown

    result = harness_here("run", "mine", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    run = child(env["MLFLOW_TRACKING_URI"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "my_mlp" and run.data.params["dataset"] == "my_blobs"
    assert run.data.metrics["test_acc"] > 0.9, run.data.metrics  # the colours are easy: chance is 1/3
    again = harness_here("run", "mine_too", cwd=tmp_path, env=env)  # registered again by the same function
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(("source", "expected"), [
    ('@harness.register_model("lenet")\ndef lenet(in_channels, num_classes):\n    return None\n',
     "model 'lenet' is built into harness; register yours under another name"),
    ('@harness.register_model("tv_mine")\ndef mine(in_channels, num_classes):\n    return None\n',
     "model names starting with 'tv_' are reserved"),
    ('@harness.register_model("needs_width")\ndef build(in_channels, num_classes, width):\n    return None\n',
     "needs 'width', which harness does not pass; give it a default"),
    ('@harness.register_dataset("mnist")\ndef load(config, data_dir):\n    return None\n',
     "dataset 'mnist' is built into harness"),
], ids=["built-in model", "reserved prefix", "unknown builder argument", "built-in dataset"])
def test_a_bad_registration_is_one_line_naming_the_file(tmp_path: Path, source: str, expected: str) -> None:
    env = folder_env(tmp_path)
    write_experiment(tmp_path, "bad", f"import harness\n\n{source}\nexperiment = harness.Experiment("
                     "name='bad', description='', variants={'a': harness.TrainConfig()})\n")
    result = harness_here("show", "bad", cwd=tmp_path, env=env)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "experiments/bad.py" in line and expected in line, line


def test_two_files_registering_one_name_differently_are_told_apart(tmp_path: Path) -> None:
    """Both files define their own `clash_mlp`: whichever loads second is refused, naming the first."""
    env = folder_env(tmp_path)
    body = ('import harness\nfrom torch import nn\n\n@harness.register_model("clash_mlp")\n'
            'def build(in_channels, num_classes, image_size):\n    return nn.Flatten()\n\n'
            "experiment = harness.Experiment(name='{name}', description='', variants={{'a': "
            "harness.TrainConfig(model='clash_mlp', dataset='synthetic')}})\n")
    write_experiment(tmp_path, "clash_a", body.format(name="clash_a"))
    write_experiment(tmp_path, "clash_b", body.format(name="clash_b"))
    listed = harness_here("list", cwd=tmp_path, env=env)
    assert "model 'clash_mlp' is already registered by harness_experiments.clash_a.build" in listed.stdout, listed
    assert "clash_a " in listed.stdout.splitlines()[0] and "broken" not in listed.stdout.splitlines()[0], listed


def test_dropout_for_a_builder_without_it_and_a_loader_returning_no_data_are_one_line(tmp_path: Path) -> None:
    env = folder_env(tmp_path)
    write_experiment(tmp_path, "nodrop", (
        'import harness\nfrom torch import nn\n\n@harness.register_model("nodrop_mlp")\n'
        'def build(in_channels, num_classes, image_size):\n    return nn.Flatten()\n\n'
        '@harness.register_dataset("nodata")\ndef load(config, data_dir):\n    return [1, 2, 3]\n\n'
        "experiment = harness.Experiment(name='nodrop', description='', variants={"
        "'drop': harness.TrainConfig(model='nodrop_mlp', dataset='synthetic', dropout=0.5),"
        "'nodata': harness.TrainConfig(model='lenet_relu', dataset='nodata', epochs=1, device='cpu')})\n"))
    shown = harness_here("show", "nodrop", cwd=tmp_path, env=env)
    assert shown.returncode == 2
    assert "the builder of model 'nodrop_mlp' takes no dropout argument" in one_error_line(shown.stderr)

    result = harness_here("run", "nodrop", "--set", "drop.dropout=none", cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert ("The loader of dataset 'nodata' (harness_experiments.nodrop.load) returned list, not a harness.Data"
            in result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_experiments_dir_option_points_every_command_at_another_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "lab" / "exps"
    write_experiment(tmp_path / "lab", "elsewhere", (
        "import harness\nexperiment = harness.Experiment(name='elsewhere', description='found by the option', "
        "variants={'a': harness.TrainConfig(dataset='synthetic', epochs=1, train_limit=200, device='cpu')})\n"))
    (tmp_path / "lab" / "experiments").rename(elsewhere)
    env = {k: v for k, v in folder_env(tmp_path).items() if k != "HARNESS_EXPERIMENTS_DIR"}
    listed = harness_here("--experiments-dir", str(elsewhere), "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0 and "elsewhere" in listed.stdout, listed
    result = harness_here("--experiments-dir", str(elsewhere), "run", "elsewhere", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    missing = harness_here("--experiments-dir", str(tmp_path / "nope"), "list", cwd=tmp_path, env=env)
    assert missing.returncode == 2
    assert "is not a folder; give the folder that holds your <name>.py experiment files" in one_error_line(
        missing.stderr)


# ----------------------------------------------------------------- tensor_data


def test_tensor_data_takes_the_common_array_layouts() -> None:
    config = TrainConfig(val_fraction=0.1, test_fraction=0.2, seed=3)
    labels = np.arange(100) % 4
    layouts = {
        "uint8 NCHW": torch.randint(0, 256, (100, 3, 12, 12), dtype=torch.uint8),
        "float NHWC": torch.rand(100, 12, 12, 3).numpy(),
        "uint8 NHW": np.random.default_rng(0).integers(0, 256, (100, 12, 12), dtype=np.uint8),
    }
    for name, images in layouts.items():
        data = tensor_data(images, labels, ["a", "b", "c", "d"], config)
        channels = 1 if name.endswith("NHW") else 3
        assert data.in_channels == channels and data.native_size == 12, name
        assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (channels, 12, 12), name
        assert (len(data.train), len(data.val), len(data.test)) == (72, 8, 20), name
        assert data.classes == ["a", "b", "c", "d"] and len(data.mean) == channels
    # The float images are the same pixels, scaled to 0-255.
    floats = layouts["float NHWC"]
    whole = tensor_data(floats, labels, list("abcd"), TrainConfig(val_fraction=0.0),
                        test=(floats[:5], labels[:5]))
    assert torch.equal(whole.test.images, (torch.as_tensor(floats[:5]).permute(0, 3, 1, 2) * 255).round().byte())


@pytest.mark.parametrize(("images", "labels", "expected"), [
    (torch.rand(10, 1, 8, 9), torch.zeros(10), "are 8x9 pixels; harness trains on square images"),
    (torch.rand(10, 1, 8, 8) * 2, torch.zeros(10), "floating point outside [0, 1]"),
    (torch.zeros(10, 1, 8, 8, dtype=torch.int32), torch.zeros(10), "are torch.int32; pass uint8"),
    (torch.rand(10, 1, 8, 8), torch.zeros(9, dtype=torch.long), "must be 10 whole numbers, one per image"),
    (torch.rand(10, 1, 8, 8), torch.full((10,), 2), "A label of the images is 2, outside 0..1"),
    (torch.rand(10, 8), torch.zeros(10), "have shape (10, 8)"),
], ids=["not square", "floats beyond 1", "int32", "labels too few", "label beyond classes", "2-d"])
def test_tensor_data_says_what_to_change(images: torch.Tensor, labels: torch.Tensor, expected: str) -> None:
    with pytest.raises(DataError, match=None) as info:
        tensor_data(images, labels, ["x", "y"], TrainConfig())
    assert expected in str(info.value), info.value
