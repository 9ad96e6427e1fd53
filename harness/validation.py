"""Checks of a TrainConfig against the registries: names, and what the chosen model allows.

`TrainConfig` checks its own values when built but imports no registry (so it needs neither
PyTorch nor the registries' modules); everything that needs a registry is checked here.
None of it imports PyTorch, except a `tv_*` model name, which loads torchvision's model list
(unless the check is `light`).
"""

from __future__ import annotations

from harness.config import TrainConfig
from harness.data import DATASETS
from harness.errors import ConfigError
from harness.models import MODELS
from harness.optim import INITS, OPTIMIZERS, SCHEDULERS


def check_config(config: TrainConfig, *, light: bool = False) -> TrainConfig:
    """Raise HarnessError unless every name in `config` is registered and the model accepts its
    image_size and pretrained settings; return `config` unchanged otherwise. `light`: import
    nothing costly, so a name only torchvision could confirm (`tv_*`) is left unchecked, with
    what its model allows (`harness list`)."""
    for name, registry in (
        (config.model, MODELS),
        (config.dataset, DATASETS),
        (config.optimizer, OPTIMIZERS),
        (config.scheduler, SCHEDULERS),
        (config.init, INITS),
    ):
        if light and registry.is_deferred(name):
            continue
        registry.get(name)  # a miss raises HarnessError naming the closest registered name
    if light and MODELS.is_deferred(config.model):
        return config
    spec = MODELS.get(config.model)
    if config.image_size is not None and config.image_size < spec.min_image_size:
        raise ConfigError(
            f"image_size {config.image_size} is too small for model '{config.model}'; "
            f"use at least {spec.min_image_size}."
        )
    if config.dropout is not None and not spec.takes_dropout:
        raise ConfigError(f"dropout {config.dropout} would be ignored: the builder of model '{config.model}' takes no "
                          "dropout argument; leave dropout unset or add a `dropout` parameter to the builder.")
    if (config.pretrained or config.freeze_backbone) and not spec.supports_pretrained:
        raise ConfigError(f"pretrained/freeze_backbone need a torchvision model (tv_*), not '{config.model}'.")
    return config
