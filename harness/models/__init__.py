"""The model registry: every architecture is built by name.

A builder takes `(in_channels, num_classes, image_size, dropout, pretrained)` and returns an
`nn.Module` mapping (N, in_channels, image_size, image_size) to (N, num_classes) logits.

Your own model is registered from any file with `@harness.register_model("name")` (see
`register_model`); it takes effect when that file (an experiment, a notebook) runs.

Importing this package does not import PyTorch: the classic CNNs are declared here (name,
smallest input, pretrained support), so config checks need no torch, and their builders are
imported on the first `build_model`. Every torchvision classification model is reachable as
`tv_<name>`, registered the first time a `tv_*` name is looked up.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.errors import ConfigError
from harness.registry import Deferred, Registry

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered architecture, and the smallest input it accepts."""

    build: Callable[..., nn.Module]
    min_image_size: int
    supports_pretrained: bool = False

    @property
    def takes_dropout(self) -> bool:
        """Whether the builder uses a config's `dropout` (every built-in one does)."""
        return not isinstance(self.build, _OwnBuilder) or "dropout" in self.build.takes


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


# What `build_model` passes a builder; a builder of the user's own may take only some of them.
BUILDER_ARGS = ("in_channels", "num_classes", "image_size", "dropout", "pretrained", "freeze_backbone")


class _OwnBuilder:
    """A user's builder, called with the arguments of BUILDER_ARGS it declares (all of them if it
    takes **kwargs), so `def my_mlp(in_channels, num_classes, image_size)` is enough."""

    def __init__(self, name: str, build: Callable[..., nn.Module]) -> None:
        params = inspect.signature(build).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            self.takes = set(BUILDER_ARGS)
        else:
            self.takes = {p.name for p in params if p.name in BUILDER_ARGS}
        needed = [p.name for p in params if p.default is p.empty and p.name not in BUILDER_ARGS
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if needed:
            raise ConfigError(f"model '{name}': its builder {getattr(build, '__qualname__', build)} needs "
                              f"{', '.join(repr(n) for n in needed)}, which harness does not pass; give "
                              f"{'it a default' if len(needed) == 1 else 'them defaults'} (harness passes "
                              f"{', '.join(BUILDER_ARGS)}).")
        self.build = build

    def __call__(self, **kwargs: object) -> nn.Module:
        return self.build(**{k: v for k, v in kwargs.items() if k in self.takes})


def register_model(name: str, *, min_image_size: int = 1, supports_pretrained: bool = False,
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model builder under `name`, from any file (an experiment file, a notebook)::

        @harness.register_model("my_mlp", min_image_size=8)
        def my_mlp(in_channels: int, num_classes: int, image_size: int) -> nn.Module: ...

    The builder returns an `nn.Module` mapping (N, in_channels, image_size, image_size) to
    (N, num_classes) logits; it may take any of `in_channels`, `num_classes`, `image_size`,
    `dropout`, `pretrained`, `freeze_backbone` (only those are passed). `min_image_size` is the
    smallest side it accepts (checked before training); `supports_pretrained` lets a config ask
    for `pretrained`. Registering the same function again replaces it (a file imported twice);
    a built-in name, or a name another function registered, is a ConfigError.

    Inside the package, the decorator binds the builder of a name declared above instead.
    """

    def bind(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        module = getattr(build, "__module__", "") or ""
        if name in _OWN_BUILDERS and module == _OWN_BUILDERS[name].module:
            _OWN_BUILDERS[name].bind(build)
        elif module.startswith("harness.models."):  # the package's own: declared above, sizes known torch-free
            raise ValueError(
                f"model '{name}' is not declared; add it to harness/models/__init__.py with its module and "
                "min_image_size (declared there so that config checks need no torch)"
            )
        else:
            if not (isinstance(min_image_size, int) and min_image_size >= 1):
                raise ConfigError(f"model '{name}': min_image_size must be a whole number of pixels >= 1, "
                                  f"not {min_image_size!r}.")
            spec = ModelSpec(_OwnBuilder(name, build), min_image_size, supports_pretrained)
            MODELS.add_own(name, spec, build)
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
