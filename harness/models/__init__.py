"""The model registry: every architecture is built by name.

A builder takes `(in_channels, num_classes, image_size, dropout, pretrained)` and returns an
`nn.Module` mapping (N, in_channels, image_size, image_size) to (N, num_classes) logits.
Importing this package registers the classic CNNs and every torchvision classification
model (as `tv_<name>`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from harness.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered architecture, and the smallest input it accepts."""

    build: Callable[..., nn.Module]
    min_image_size: int
    supports_pretrained: bool = False


def _load_torchvision_models() -> None:
    # Importing torchvision.models takes about a second; only `tv_*` names need it.
    from harness.models import torchvision_models  # noqa: F401


MODELS: Registry[ModelSpec] = Registry("model", _load_torchvision_models)


def register_model(
    name: str, *, min_image_size: int, supports_pretrained: bool = False
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder under `name`."""

    def add(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.add(name, ModelSpec(build, min_image_size, supports_pretrained))
        return build

    return add


def model_names() -> list[str]:
    """All registered model names."""
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


# Registration happens on import; keep these at the bottom.
from harness.models import alexnet, googlenet, lenet, mobilenet, resnet  # noqa: E402,F401
