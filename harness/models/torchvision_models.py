"""Every torchvision classification model, reachable as `tv_<name>` (e.g. `tv_resnet18`).

With `pretrained=true` the ImageNet weights are loaded (downloaded on first use), the stem is
adapted to the input channels and the classification head is replaced for `num_classes`.
"""

from __future__ import annotations

import functools

import torch
import torchvision
from torch import nn

from harness.errors import ConfigError, DataError
from harness.models import MODELS, ModelSpec

# Models whose architecture cannot shrink below these sizes (their stems downsample aggressively,
# or, for vision transformers, pretrained position embeddings fix the size).
_MIN_SIZE = {"inception_v3": 75, "alexnet": 63, "maxvit_t": 224}
# Models built for one input size, which torchvision takes as a constructor argument.
_SIZE_ARG = {"maxvit_t": "input_size"}


def _size_arg(tv_name: str) -> str | None:
    return "image_size" if tv_name.startswith("vit_") else _SIZE_ARG.get(tv_name)


def _min_size(tv_name: str) -> int:
    return 224 if tv_name.startswith("vit_") else _MIN_SIZE.get(tv_name, 32)


def _parent_and_attr(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = dotted.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the last Linear layer for a fresh one with `num_classes` outputs; return it."""
    name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    head = nn.Linear(last.in_features, num_classes)
    parent, attr = _parent_and_attr(model, name)
    setattr(parent, attr, head)
    return head


def _adapt_stem(model: nn.Module, in_channels: int) -> None:
    """Make the first conv take `in_channels`; pretrained RGB filters are averaged for grey input."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        mean = conv.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.repeat(1, in_channels, 1, 1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent, attr = _parent_and_attr(model, name)
    setattr(parent, attr, new)


def _build(tv_name: str, *, in_channels: int, num_classes: int, image_size: int, pretrained: bool,
           freeze_backbone: bool = False, dropout: float | None = None, **_: object) -> nn.Module:
    kwargs: dict[str, object] = {}
    size_arg = _size_arg(tv_name)
    if size_arg and not pretrained:
        # maxvit takes (height, width), vit one side; pretrained weights only fit their own size.
        kwargs[size_arg] = (image_size, image_size) if size_arg == "input_size" else image_size
    if tv_name in ("googlenet", "inception_v3") and not pretrained:
        kwargs["aux_logits"] = False  # one output tensor, like every other model here
    if dropout is not None:
        kwargs["dropout"] = dropout
    try:
        if pretrained:
            model = torchvision.models.get_model(tv_name, weights="DEFAULT", **kwargs)
        else:
            model = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"torchvision model '{tv_name}' does not accept these settings ({exc}).") from None
    except Exception as exc:  # noqa: BLE001 - download failures surface as URLError, OSError, RuntimeError...
        weights = torchvision.models.get_model_weights(tv_name).DEFAULT
        raise DataError(
            f"Could not load pretrained weights for '{tv_name}' ({type(exc).__name__}: {exc}); "
            f"connect to the internet once, or put {weights.url.rsplit('/', 1)[-1]} into "
            f"{torch.hub.get_dir()}/checkpoints/, or set pretrained=false."
        ) from None
    _adapt_stem(model, in_channels)
    if pretrained:
        _replace_head(model, num_classes)
    if freeze_backbone:
        for p in model.parameters():
            p.requires_grad_(False)
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        for p in head.parameters():
            p.requires_grad_(True)
    return model


def _register_all() -> None:
    for tv_name in torchvision.models.list_models(module=torchvision.models):
        MODELS.add(
            f"tv_{tv_name}",
            ModelSpec(functools.partial(_build, tv_name), _min_size(tv_name), supports_pretrained=True),
        )


_register_all()
