"""The model registry: every architecture is built by name.

A builder takes `(in_channels, num_classes, image_size, dropout, pretrained)` and returns an
`nn.Module` mapping (N, in_channels, image_size, image_size) to (N, num_classes) logits.

Importing this package does not import PyTorch: the classic CNNs are declared here (name,
smallest input, pretrained support), so config checks need no torch, and their builders are
imported on the first `build_model`. Every torchvision classification model is reachable as
`tv_<name>`, registered the first time a `tv_*` name is looked up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.registry import Deferred, Registry

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered architecture, and the smallest input it accepts."""

    build: Callable[..., nn.Module]
    min_image_size: int
    supports_pretrained: bool = False


def _load_torchvision_models() -> None:
    # Importing torchvision.models (and so torch) takes seconds; only `tv_*` names need it, so only
    # a `tv_*` name, or asking for every name, pays for it.
    from harness.models import torchvision_models  # noqa: F401


MODELS: Registry[ModelSpec] = Registry(
    "model", _load_torchvision_models,
    more_prefix="tv_", more_description="tv_<name> for any torchvision classification model (e.g. tv_resnet18)",
)

# The harness's own builders, by name: bound by `register_model` in their modules.
_OWN_BUILDERS: dict[str, Deferred] = {}


def _declare(name: str, module: str, *, min_image_size: int, supports_pretrained: bool = False) -> None:
    """Declare own model `name`, built by a function in harness/models/<module>.py."""
    build = Deferred("model", name, f"harness.models.{module}")
    MODELS.add(name, ModelSpec(build, min_image_size, supports_pretrained))
    _OWN_BUILDERS[name] = build


# 12 px is the smallest side that leaves LeNet's second conv a 5x5 window: 12 -> 6 -> 2 -> 1.
_declare("lenet", "lenet", min_image_size=12)
_declare("lenet_relu", "lenet", min_image_size=12)
_declare("alexnet", "alexnet", min_image_size=16)  # expects roughly 224 px but runs from 16 px up
_declare("googlenet", "googlenet", min_image_size=8)
_declare("resnet18", "resnet", min_image_size=8)
_declare("mobilenet", "mobilenet", min_image_size=8)


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator binding a builder to own model `name`, declared above with its module and sizes.

    An undeclared name, a second builder, or one from another module is a ValueError.
    """

    def bind(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name not in _OWN_BUILDERS:
            raise ValueError(
                f"model '{name}' is not declared; add it to harness/models/__init__.py with its module and "
                "min_image_size (declared there so that config checks need no torch)"
            )
        _OWN_BUILDERS[name].bind(build)
        return build

    return bind


def model_names() -> list[str]:
    """All registered model names (imports torchvision for the `tv_*` ones)."""
    return MODELS.names()


def min_image_size(name: str) -> int:
    """Smallest image side (pixels) model `name` works with."""
    return MODELS.get(name).min_image_size


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    dropout: float | None = None,
    pretrained: bool = False,
    freeze_backbone: bool = False,
) -> nn.Module:
    """Build registered model `name` for inputs of shape (N, in_channels, image_size, image_size)."""
    spec = MODELS.get(name)
    return spec.build(
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        dropout=dropout,
        pretrained=pretrained,
        freeze_backbone=freeze_backbone,
    )
