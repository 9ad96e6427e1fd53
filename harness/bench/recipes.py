"""What each training-recipe primitive costs per training image, against the plain path.

Contenders, one per primitive, each a `build_trainer` of the same config with one field changed:
plain, +trivialaugment, +randaugment (magnitude 9), +mixup (alpha 0.2), +cutmix (alpha 1.0),
+random_erasing (p = 0.25), +ema (decay 0.999). Every epoch is training only (val_fraction = 0,
so `fit_epoch` times `train_one_epoch`, what the primitive touches, and no evaluation).

Cases: ReLU LeNet at batch 64 on the real MNIST sample (synthetic MNIST-shaped data when the
sample is absent); ResNet-18 at batch 128 on CIFAR-shaped data with flip + crop for the per-image
augmentations and EMA, on 256 images (~50x LeNet's compute per image: more would take many
minutes on 2 cores).

Contenders alternate epoch by epoch (this machine's speed drifts); images/s is the median over
the epochs after the first (warm-up; LeNet's short epochs: 3x the epochs asked), with the relative
spread (max-min)/median. ratio_vs_plain is images/s over plain's; cost = 1 - ratio_vs_plain (the
share of a plain epoch's speed lost).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.bench.throughput import Case, interleave
from harness.config import TrainConfig
from harness.data import Data

# (name, the config fields it changes); "plain" first: every ratio is against it.
Recipe = tuple[str, dict[str, Any]]
LENET_RECIPES: tuple[Recipe, ...] = (
    ("plain", {}),
    ("trivialaugment", {"auto_augment": "trivialaugment"}),
    ("randaugment", {"auto_augment": "randaugment"}),
    ("mixup", {"mixup_alpha": 0.2}),
    ("cutmix", {"cutmix_alpha": 1.0}),
    ("random_erasing", {"random_erasing": 0.25}),
    ("ema", {"ema_decay": 0.999}),
)
# ResNet-18 is ~50x LeNet's compute per image: only the primitives whose cost could still show.
RESNET_RECIPES: tuple[Recipe, ...] = tuple(
    r for r in LENET_RECIPES if r[0] in ("plain", "trivialaugment", "randaugment", "random_erasing", "ema"))


def median_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """(median, (max-min)/median) of the epochs after the first (warm-up); all of them if one."""
    measured = list(values[1:]) if len(values) > 1 else list(values)
    median = statistics.median(measured)
    return median, (max(measured) - min(measured)) / median


def trainer_epochs(config: TrainConfig, data: Data) -> Iterator[float]:
    """Images/s of each successive training epoch of one run through the product's `fit_epoch`
    (no callbacks: tracking's cost is the throughput benchmark's subject, not this one's)."""
    from harness.train import FitState, build_trainer, fit_epoch

    t = build_trainer(config, data)
    state = FitState()
    while True:
        yield fit_epoch(t, state)["images_per_second"]


def measure_recipes(case: Case, data: Data, recipes: Sequence[Recipe], epochs: int,
                    log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per recipe of `case` (the first recipe is the baseline, "plain"): images/s, its
    spread, the ratio to the baseline and the cost (1 - ratio)."""
    contenders = {name: trainer_epochs(case.config.override(**changes), data) for name, changes in recipes}
    rates = interleave(contenders, epochs, log, f"recipes {case.label}")
    medians = {name: median_and_spread(values) for name, values in rates.items()}
    base = medians[recipes[0][0]][0]
    rows = []
    for name, changes in recipes:
        rate, spread = medians[name]
        rows.append({"case": case.label, "recipe": name,
                     "changes": ", ".join(f"{k}={v}" for k, v in changes.items()) or "-",
                     "images": len(data.train), "images_per_second": rate, "spread": spread,
                     "ratio_vs_plain": rate / base, "cost": 1 - rate / base})
    return rows


@dataclass(frozen=True)
class RecipeCase:
    """One case: its config, where its data is, the recipes compared and how many epochs each
    contender trains per epoch asked of the benchmark (`epoch_factor`)."""

    case: Case
    data_dir: Path | None
    recipes: tuple[Recipe, ...]
    epoch_factor: int = 1


def recipe_cases(data_dir: Path | None, device: str, cifar: bool) -> list[RecipeCase]:
    """ReLU LeNet at batch 64 on MNIST (synthetic without the sample) with every primitive;
    ResNet-18 at batch 128 on CIFAR-shaped data with flip + crop (256 images) when `cifar`."""
    dataset = "mnist" if data_dir is not None else "synthetic"
    # As the throughput cases: no validation split, so every epoch is training only.
    lenet = TrainConfig(model="lenet_relu", dataset=dataset, optimizer="sgd", lr=0.05, momentum=0.9, seed=0,
                        batch_size=64, val_fraction=0.0, device=device, early_stopping_patience=None)
    # A LeNet epoch on 2 cores lasts well under a second, so one burst of other work decides it:
    # three times as many epochs (still ~1 min in all) give the medians more samples.
    cases = [RecipeCase(Case(f"lenet_relu/{dataset}/bs64", lenet), data_dir, LENET_RECIPES, epoch_factor=3)]
    if cifar:
        resnet = TrainConfig(model="resnet18", dataset="synthetic_rgb", optimizer="sgd", lr=0.05, momentum=0.9,
                             seed=0, batch_size=128, augment=True, train_limit=256, val_fraction=0.0, device=device)
        cases.append(RecipeCase(Case("resnet18/synthetic_rgb/bs128+flip+crop", resnet), None, RESNET_RECIPES))
    return cases


def run_recipes(data_dir: Path | None, device: str, epochs: int, cifar: bool = True,
                log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], list[str]]:
    """Every recipe case (see `recipe_cases`), each for `epochs` x its `epoch_factor` epochs:
    (the rows of `measure_recipes`, case after case; notes, e.g. that LeNet ran on synthetic data
    because the MNIST sample is absent)."""
    from harness.data import load_data

    notes = [] if data_dir is not None else [
        "recipes: the MNIST sample (shared/data/mnist-t10k) is absent; LeNet ran on synthetic MNIST-shaped data"]
    for note in notes:
        log(note)
    rows: list[dict[str, Any]] = []
    for rc in recipe_cases(data_dir, device, cifar):
        rows += measure_recipes(rc.case, load_data(rc.case.config, rc.data_dir), rc.recipes, epochs * rc.epoch_factor,
                                log)
    return rows, notes
