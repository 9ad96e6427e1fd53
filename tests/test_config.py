"""TrainConfig validation, --set overrides, experiments, schedules and optimizers."""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.config import TrainConfig, flatten, parse_overrides, parse_value
from harness.errors import HarnessError
from harness.experiment import (
    Experiment,
    experiment_names,
    experiments_dir,
    load_experiment,
)
from harness.optim import OPTIMIZERS, build_optimizer, build_scheduler
from harness.validation import check_config


@pytest.fixture(autouse=True)
def _default_experiments_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Look experiments up in the repo's own folder, whatever the environment says."""
    monkeypatch.delenv("HARNESS_EXPERIMENTS_DIR", raising=False)


# ------------------------------------------------------------------ validation


def test_defaults_are_valid() -> None:
    """The default config builds."""
    assert TrainConfig().model == "lenet_relu"


# Values TrainConfig rejects itself, when built.
INVALID_VALUES = [
    {"lr": 0.0},
    {"lr": -0.1},
    {"batch_size": 0},
    {"val_fraction": 1.0},
    {"val_fraction": -0.1},
    {"epochs": 0},
    {"momentum": 1.0},
    {"gamma": 0.0},
    {"test_fraction": 0.0},
    {"train_limit": 0},
    {"dropout": 1.0},
    {"device": "gpu"},
    {"nesterov": True, "momentum": 0.0},
    {"early_stopping_metric": "val_f1"},
    {"dataset": "image_folder"},  # needs data_path
    {"model": "tv_resnet18", "freeze_backbone": True},  # freeze needs pretrained
    # every float finite: inf and nan otherwise fail only in training (a NaN loss)
    {"lr": float("inf")},
    {"lr": float("nan")},
    {"lr": float("-inf")},
    {"momentum": float("nan")},
    {"weight_decay": float("inf")},
    {"gamma": float("nan")},
    {"val_fraction": float("nan")},
    {"test_fraction": float("inf")},
    {"dropout": float("nan")},
    {"grad_clip": float("inf")},
    {"label_smoothing": float("nan")},
    # bounded ints: absurd values otherwise fail later (allocation, NumPy's seeding, MLflow)
    {"image_size": 100_000_000},  # a 1.28e18-byte allocation in the first batch
    {"image_size": 4097},
    {"image_size": 0},
    {"seed": -1},
    {"seed": 2**32},
    {"seed": 10**20},
    {"epochs": 1_000_001},
    {"batch_size": 1_000_001},
    {"eval_batch_size": 0},
    {"eval_batch_size": 1_000_001},
    {"num_workers": -1},
    {"num_workers": 1025},
    {"warmup_epochs": 1_000_001},
    {"step_size": 1_000_001},
    {"milestones": (1_000_001,)},
    {"early_stopping_patience": 1_000_001},
    # training recipes
    {"mixup_alpha": -0.2},
    {"cutmix_alpha": float("nan")},
    {"mix_prob": 1.5},
    {"random_erasing": -0.1},
    {"ema_decay": 1.0},
    {"ema_decay": 0.0},
    {"accumulate_steps": 0},
    {"min_lr": -1e-4},
]
# Combinations only `check_config` can reject: they depend on what the model supports.
INVALID_FOR_MODEL = [
    {"model": "lenet", "pretrained": True},  # pretrained needs a torchvision model
    {"model": "lenet", "image_size": 8},  # below LeNet's minimum
]


def _ids(changes: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in changes.items())


@pytest.mark.parametrize("changes", INVALID_VALUES + INVALID_FOR_MODEL, ids=_ids)
def test_invalid_values_rejected(changes: dict) -> None:
    """Invalid values raise HarnessError, both when built and when overridden (then checked)."""
    with pytest.raises(HarnessError):
        check_config(TrainConfig(**changes))
    with pytest.raises(HarnessError):
        check_config(TrainConfig().override(**changes))


@pytest.mark.parametrize("changes", INVALID_VALUES, ids=_ids)
def test_invalid_values_rejected_when_built(changes: dict) -> None:
    """Value checks need no registry: TrainConfig itself raises, without check_config."""
    with pytest.raises(HarnessError):
        TrainConfig(**changes)
    with pytest.raises(HarnessError):
        TrainConfig().override(**changes)


@pytest.mark.parametrize("changes", INVALID_FOR_MODEL + [{"model": "resnet19"}, {"optimizer": "adamw2"}], ids=_ids)
def test_registry_checks_wait_for_check_config(changes: dict) -> None:
    """Names and model limits are not checked when built (config.py reads no registry), only by check_config."""
    config = TrainConfig(**changes)
    with pytest.raises(HarnessError):
        check_config(config)


def test_bounds_are_inclusive() -> None:
    """The largest accepted values build: the bounds stop typos, never a real run."""
    from harness.config import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_IMAGE_SIZE, MAX_NUM_WORKERS, SEED_LIMIT

    config = TrainConfig(seed=SEED_LIMIT - 1, image_size=MAX_IMAGE_SIZE, epochs=MAX_EPOCHS, batch_size=MAX_BATCH_SIZE,
                         eval_batch_size=MAX_BATCH_SIZE, num_workers=MAX_NUM_WORKERS, warmup_epochs=MAX_EPOCHS,
                         step_size=MAX_EPOCHS, milestones=(MAX_EPOCHS,), early_stopping_patience=MAX_EPOCHS)
    assert config.seed == 2**32 - 1 and config.image_size == 4096


def test_seed_range_is_shared_with_seed_plans() -> None:
    """`--seeds` and TrainConfig.seed accept the same range (one constant)."""
    from harness.config import SEED_LIMIT
    from harness.seeds import SeedPlan

    SeedPlan(seeds=(0, SEED_LIMIT - 1))
    with pytest.raises(HarnessError, match="^seeds must be integers from 0 to 4294967295"):
        SeedPlan(seeds=(SEED_LIMIT,))
    with pytest.raises(HarnessError, match="reaches seed 4294967296"):
        SeedPlan(repeat=2).check({"net": TrainConfig(seed=SEED_LIMIT - 1)})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": float("inf")}, "lr must be a finite number greater than 0 (got inf)."),
        ({"lr": float("nan")}, "lr must be a finite number greater than 0 (got nan)."),
        ({"lr": 0.0}, "lr must be greater than 0 (got 0.0)."),
        ({"dropout": float("inf")}, "dropout must be a finite number in [0, 1) or none (got inf)."),
        ({"seed": -1}, "seed must be from 0 to 4294967295 (got -1)."),
        ({"image_size": 100_000_000}, "image_size must be from 1 to 4096 pixels or none (got 100000000)."),
        ({"batch_size": 0}, "batch_size must be at least 1 and at most 1,000,000 (got 0)."),
    ],
)
def test_invalid_value_messages(changes: dict, message: str) -> None:
    """One sentence naming the field, the allowed range and the value given."""
    with pytest.raises(HarnessError) as info:
        TrainConfig(**changes)
    assert str(info.value) == message


def test_check_config_returns_the_config() -> None:
    """A valid config comes back unchanged, so calls can be chained."""
    config = TrainConfig(model="tv_resnet18", pretrained=True, freeze_backbone=True, image_size=32)
    assert check_config(config) is config


def test_config_module_is_a_leaf() -> None:
    """harness/config.py imports nothing from harness but errors and registry (both torch-free):
    no registry, so no PyTorch and no import cycle."""
    import harness.config

    tree = ast.parse(Path(harness.config.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in config.py"
            imported.add(node.module or "")
    own = {name for name in imported if name == "harness" or name.startswith("harness.")}
    assert own == {"harness.errors", "harness.registry"}
    others = {name.split(".")[0] for name in imported - own}
    assert others <= set(sys.stdlib_module_names), others - set(sys.stdlib_module_names)


@pytest.mark.parametrize("changes", [{"val_fraction": 0.0}, {"val_fraction": 0.99}, {"batch_size": 1}, {"lr": 1e-9}])
def test_boundary_values_accepted(changes: dict) -> None:
    """The inclusive ends of the valid ranges are accepted."""
    TrainConfig(**changes)


@pytest.mark.parametrize(
    ("field", "bad", "suggestion"),
    [
        ("model", "resnet19", "resnet18"),
        ("dataset", "cifar11", "cifar10"),
        ("optimizer", "adamw2", "adamw"),
        ("scheduler", "cosin", "cosine"),
    ],
)
def test_unknown_names_suggest_closest(field: str, bad: str, suggestion: str) -> None:
    """An unknown registry name: HarnessError with the bad name and the closest valid one."""
    with pytest.raises(HarnessError) as info:
        check_config(TrainConfig(**{field: bad}))
    message = str(info.value)
    assert f"'{bad}'" in message
    assert f"Did you mean '{suggestion}'?" in message


def test_unknown_name_without_close_match_lists_choices() -> None:
    """A name far from every choice gets no suggestion, but the valid choices are listed."""
    with pytest.raises(HarnessError) as info:
        check_config(TrainConfig(optimizer="zzzzzz"))
    message = str(info.value)
    assert "zzzzzz" in message and "Did you mean" not in message
    assert all(name in message for name in OPTIMIZERS.names())


def test_image_size_too_small_for_model() -> None:
    """image_size below the model's minimum is rejected with the minimum in the message."""
    with pytest.raises(HarnessError, match="at least 12"):
        check_config(TrainConfig(model="lenet", image_size=8))
    with pytest.raises(HarnessError, match="at least 32"):
        check_config(TrainConfig(model="tv_resnet18", image_size=28))
    assert check_config(TrainConfig(model="lenet", image_size=12)).image_size == 12


def test_config_is_frozen() -> None:
    """Configs are immutable; override() makes a validated copy."""
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.5  # type: ignore[misc]
    changed = config.override(lr=0.5)
    assert (config.lr, changed.lr) == (0.01, 0.5)


# ------------------------------------------------------------------ serialisation


def test_to_dict_from_dict_round_trip() -> None:
    """to_dict is JSON-serialisable and from_dict rebuilds an equal config (tuples included)."""
    config = TrainConfig(
        model="resnet18", scheduler="multistep", milestones=(3, 6), image_size=32,
        dropout=0.3, train_limit=100, augment=True,
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["milestones"] == [3, 6]
    rebuilt = TrainConfig.from_dict(data)
    assert rebuilt == config
    assert isinstance(rebuilt.milestones, tuple)


def test_from_dict_ignores_unknown_keys() -> None:
    """Keys from older/newer versions do not break loading a checkpoint's config."""
    assert TrainConfig.from_dict({"lr": 0.2, "no_such_field": 1}) == TrainConfig(lr=0.2)


def test_flatten_gives_strings_for_every_field() -> None:
    """flatten() has one string per field; tuples become comma-joined."""
    config = TrainConfig(scheduler="multistep", milestones=(3, 6))
    flat = flatten(config)
    assert set(flat) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(isinstance(v, str) for v in flat.values())
    assert flat["milestones"] == "3,6"
    assert flat["lr"] == "0.01"
    assert flat["image_size"] == "None"


# ------------------------------------------------------------------ overrides


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [
        ("epochs=3", "epochs", 3),
        ("lr=0.05", "lr", 0.05),
        ("lr=1e-3", "lr", 1e-3),
        ("augment=true", "augment", True),
        ("augment=False", "augment", False),
        ("nesterov=1", "nesterov", True),
        ("image_size=none", "image_size", None),
        ("image_size=64", "image_size", 64),
        ("dropout=None", "dropout", None),
        ("milestones=3,6", "milestones", (3, 6)),
        ("milestones= 3, 6 ", "milestones", (3, 6)),
        ("model=resnet18", "model", "resnet18"),
        ("data_path=a=b", "data_path", "a=b"),
    ],
)
def test_parse_overrides_types(item: str, key: str, value: object) -> None:
    """key=value is parsed to the field's type."""
    overrides = parse_overrides([item])
    assert overrides.common == {key: value}
    assert type(overrides.common[key]) is type(value)
    assert overrides.per_variant == {}


def test_parse_overrides_per_variant() -> None:
    """VARIANT.key=value goes to that variant; plain keys go to every variant."""
    overrides = parse_overrides(["epochs=2", "alexnet.image_size=64", "alexnet.lr=0.1", "lenet.lr=0.2"])
    assert overrides.common == {"epochs": 2}
    assert overrides.per_variant == {"alexnet": {"image_size": 64, "lr": 0.1}, "lenet": {"lr": 0.2}}


def test_parse_overrides_empty() -> None:
    """No --set options: nothing to override."""
    assert parse_overrides(None).common == {} and parse_overrides([]).per_variant == {}


def test_unknown_override_key_lists_choices() -> None:
    """An unknown key names the closest field and lists the valid ones."""
    with pytest.raises(HarnessError) as info:
        parse_overrides(["learning_rate=0.1"])
    message = str(info.value)
    assert "learning_rate" in message
    assert "batch_size" in message and "warmup_epochs" in message


def test_override_key_typo_suggests_field() -> None:
    """'epoch' suggests 'epochs'."""
    with pytest.raises(HarnessError, match="Did you mean 'epochs'"):
        parse_value("epoch", "3")


@pytest.mark.parametrize("item", ["lr=abc", "epochs=2.5", "augment=maybe", "milestones=3,x", "lr"])
def test_unparsable_override_raises(item: str) -> None:
    """Values that do not fit the field type (or a missing '=') give a HarnessError."""
    with pytest.raises(HarnessError):
        parse_overrides([item])


def test_unparsable_message_names_value_and_key() -> None:
    """The parse error says which value and key, and what was expected."""
    with pytest.raises(HarnessError, match="'abc' for lr: expected a number"):
        parse_overrides(["lr=abc"])


# ------------------------------------------------------------------ experiments


def _two_variant_experiment() -> Experiment:
    return Experiment(
        name="demo",
        description="two variants",
        variants={"a": TrainConfig(lr=0.01, epochs=5), "b": TrainConfig(lr=0.02, epochs=7)},
    )


def test_resolve_applies_common_then_per_variant() -> None:
    """Common overrides apply to every variant; per-variant ones win for their variant."""
    exp = _two_variant_experiment()
    resolved = exp.resolve(parse_overrides(["epochs=1", "lr=0.5", "b.lr=0.3", "b.epochs=2"]))
    assert (resolved["a"].epochs, resolved["a"].lr) == (1, 0.5)
    assert (resolved["b"].epochs, resolved["b"].lr) == (2, 0.3)
    assert exp.resolve() == dict(exp.variants)


def test_resolve_revalidates() -> None:
    """An override producing an invalid config is rejected."""
    with pytest.raises(HarnessError):
        _two_variant_experiment().resolve(parse_overrides(["lr=-1"]))


def test_resolve_checks_names() -> None:
    """resolve() runs check_config on every variant: a misspelt model in an override is caught,
    with the same message check_config gives."""
    with pytest.raises(HarnessError) as info:
        _two_variant_experiment().resolve(parse_overrides(["b.model=lenett"]))
    assert str(info.value).startswith("Unknown model 'lenett'. Did you mean 'lenet'? Choose one of: ")
    with pytest.raises(HarnessError, match="image_size 8 is too small for model 'lenet'; use at least 12."):
        _two_variant_experiment().resolve(parse_overrides(["model=lenet", "image_size=8"]))
    with pytest.raises(HarnessError,
                       match=r"pretrained/freeze_backbone need a torchvision model \(tv_\*\), not 'lenet'."):
        _two_variant_experiment().resolve(parse_overrides(["model=lenet", "pretrained=true"]))


def test_resolve_unknown_variant() -> None:
    """Overrides for a variant the experiment does not have: HarnessError suggesting the real one."""
    exp = Experiment("demo", "d", {"lenet": TrainConfig(), "alexnet": TrainConfig(model="alexnet")})
    with pytest.raises(HarnessError, match="Did you mean 'lenet'"):
        exp.resolve(parse_overrides(["lenett.lr=0.1"]))


def test_experiment_needs_variants() -> None:
    """An experiment without variants, or with a non-config variant, is rejected."""
    with pytest.raises(HarnessError):
        Experiment("demo", "d", {})
    with pytest.raises(HarnessError):
        Experiment("demo", "d", {"a": {"lr": 0.1}})  # type: ignore[dict-item]


def test_load_quickstart() -> None:
    """The shipped quickstart experiment loads and its variants are TrainConfigs."""
    exp = load_experiment("quickstart")
    assert exp.name == "quickstart"
    assert exp.variants and all(isinstance(c, TrainConfig) for c in exp.variants.values())
    assert exp.source_file and exp.source_file.endswith("quickstart.py")


def test_every_shipped_experiment_loads() -> None:
    """Every file in experiments/ defines a valid experiment (configs validated on import)."""
    names = experiment_names()
    assert "quickstart" in names
    for name in names:
        exp = load_experiment(name)
        assert exp.name == name
        exp.resolve()


def test_unknown_experiment_suggests_closest() -> None:
    """A misspelt experiment name suggests the real one."""
    assert experiments_dir().is_dir()
    with pytest.raises(HarnessError, match="Did you mean 'quickstart'") as info:
        load_experiment("quickstrat")
    assert "quickstrat" in str(info.value)


@pytest.mark.parametrize("name",
                         ["../quickstart", "../../tmp/x/evil", "sub/quickstart", "/tmp/evil", "quick start", ""])
def test_experiment_names_are_plain(name: str, tmp_path: Path) -> None:
    """A name that is not an identifier is refused before any path is built from it."""
    with pytest.raises(HarnessError, match="is not a plain name"):
        load_experiment(name, tmp_path)


def test_broken_experiment_file_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file failing at import is one HarnessError naming the file (relative to the working
    folder), its line and the error; the good files still load."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "bad.py").write_text("import os\n\nx = missing\n")
    with pytest.raises(HarnessError) as info:
        load_experiment("bad", Path("experiments"))
    assert str(info.value) == "experiments/bad.py line 3: NameError: name 'missing' is not defined"


# ------------------------------------------------------------------ schedules and optimizers


def _lrs_per_epoch(config: TrainConfig, epochs: int) -> list[float]:
    """The lr each epoch trains at, stepping the scheduler once per epoch as training does."""
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_then_constant() -> None:
    """warmup_epochs=2: lr/3, 2lr/3, then lr for good."""
    config = TrainConfig(lr=0.1, warmup_epochs=2, scheduler="none", epochs=5)
    assert _lrs_per_epoch(config, 5) == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1])


def test_step_schedule_without_warmup() -> None:
    """step, step_size=2, gamma=0.1: 0.1, 0.1, 0.01, 0.01, 0.001."""
    config = TrainConfig(lr=0.1, scheduler="step", step_size=2, gamma=0.1, epochs=5)
    assert _lrs_per_epoch(config, 5) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_no_schedule_is_constant() -> None:
    """scheduler='none' without warmup keeps the lr unchanged (but still returns a scheduler)."""
    assert _lrs_per_epoch(TrainConfig(lr=0.1, epochs=4), 4) == pytest.approx([0.1] * 4)


def test_multistep_milestones_are_absolute_epochs_with_warmup() -> None:
    """Milestones count from the start of training, warmup included."""
    config = TrainConfig(lr=0.1, scheduler="multistep", milestones=(3, 5), gamma=0.1, warmup_epochs=1, epochs=6)
    assert _lrs_per_epoch(config, 6) == pytest.approx([0.05, 0.1, 0.1, 0.01, 0.01, 0.001])


def test_cosine_after_warmup_spans_remaining_epochs() -> None:
    """Cosine decay starts at the full lr after warmup and follows the closed form over the rest."""
    import math

    config = TrainConfig(lr=0.1, scheduler="cosine", warmup_epochs=2, epochs=6)
    expected = [0.1 / 3, 0.2 / 3] + [0.05 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert _lrs_per_epoch(config, 6) == pytest.approx(expected)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_builds_and_steps(name: str) -> None:
    """Every registered optimizer builds on a tiny model, uses the configured lr and takes a step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    config = TrainConfig(optimizer=name, lr=0.05)
    optimizer = build_optimizer(model, config)
    assert optimizer.param_groups[0]["lr"] == 0.05
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(8, 4)).square().mean().backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_optimizer_skips_frozen_params() -> None:
    """Only trainable parameters go to the optimizer."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, TrainConfig())
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 2
