"""Model registry and architectures: shapes, gradients and the classic layouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.errors import ConfigError, HarnessError
from harness.models import (
    MODELS,
    build_model,
    min_image_size,
    model_names,
    register_model,
)
from harness.models.torchvision_models import _build as build_torchvision
from harness.registry import Deferred, Registry

# The harness's own architectures (torchvision's are registered as tv_*): new ones join automatically.
OWN_MODELS = [name for name in model_names() if not name.startswith("tv_")]

# (in_channels, image_size): MNIST-like and CIFAR-like inputs.
INPUTS = {"mnist_like": (1, 28), "cifar_like": (3, 32)}


def _check_forward_backward(model: nn.Module, in_channels: int, size: int, num_classes: int = 10) -> None:
    """Output is (2, num_classes) and one backward pass gives finite grads on every trainable param."""
    torch.manual_seed(0)
    model.train()
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, "model has no trainable parameters"
    for name, p in trainable:
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"


def _modules(model: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def test_own_models_found() -> None:
    """The classic CNNs are registered (guards against the parametrization silently going empty)."""
    assert {"lenet", "lenet_relu", "alexnet", "googlenet", "resnet18", "mobilenet"} <= set(OWN_MODELS)


# ------------------------------------------------------------------ shapes and gradients


@pytest.mark.parametrize("inputs", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("name", OWN_MODELS)
def test_own_model_shape_and_grads(name: str, inputs: str) -> None:
    """Every own model maps (2, C, S, S) to (2, 10) logits and trains (finite gradients)."""
    in_channels, size = INPUTS[inputs]
    model = build_model(name, in_channels=in_channels, num_classes=10, image_size=size)
    _check_forward_backward(model, in_channels, size)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", OWN_MODELS)
def test_own_model_at_min_image_size(name: str, in_channels: int) -> None:
    """The smallest advertised image size really works."""
    size = min_image_size(name)
    model = build_model(name, in_channels=in_channels, num_classes=10, image_size=size)
    _check_forward_backward(model, in_channels, size)


@pytest.mark.parametrize("name", OWN_MODELS)
def test_own_model_at_64px(name: str) -> None:
    """At 64 px the ImageNet-style stems (GoogLeNet, ResNet, MobileNet) are used; they must work too."""
    model = build_model(name, in_channels=3, num_classes=5, image_size=64)
    _check_forward_backward(model, 3, 64, num_classes=5)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_tv_resnet18_shape(in_channels: int) -> None:
    """torchvision's ResNet-18 without weights: stem adapted to the channels, head to the classes."""
    model = build_model("tv_resnet18", in_channels=in_channels, num_classes=7, image_size=32, pretrained=False)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 7)
    first_conv = _modules(model, nn.Conv2d)[0]
    assert first_conv.in_channels == in_channels


def test_torchvision_freeze_backbone_trains_only_head() -> None:
    """freeze_backbone leaves exactly the final Linear layer trainable."""
    model = build_torchvision("resnet18", in_channels=3, num_classes=2, image_size=32, pretrained=False,
                              freeze_backbone=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert model.fc.out_features == 2
    assert any(not p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------ classic layouts


@pytest.mark.parametrize(("name", "activation"), [("lenet", nn.Sigmoid), ("lenet_relu", nn.ReLU)])
def test_lenet_classic_definition(name: str, activation: type[nn.Module]) -> None:
    """LeNet-5: 5x5 convs with 6 and 16 maps, linear 400-120-84-10, one activation type throughout."""
    model = build_model(name, in_channels=1, num_classes=10, image_size=28)
    convs = _modules(model, nn.Conv2d)
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(6, (5, 5)), (16, (5, 5))]
    linears = _modules(model, nn.Linear)
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(400, 120), (120, 84), (84, 10)]
    # Two after the convs, two between the linear layers.
    assert len(_modules(model, activation)) == 4
    other = nn.ReLU if activation is nn.Sigmoid else nn.Sigmoid
    assert not _modules(model, other)


def test_lenet_28px_keeps_classic_geometry() -> None:
    """28x28 input gives the classic 16x5x5 feature map before the classifier."""
    model = build_model("lenet", in_channels=1, num_classes=10, image_size=28)
    feats = model.features(torch.zeros(1, 1, 28, 28))
    assert feats.shape == (1, 16, 5, 5)


def test_alexnet_classic_layout() -> None:
    """11x11/4 conv 96, 5x5 conv 256, 3x3 convs 384/384/256, two 4096 FC layers with Dropout(0.5)."""
    model = build_model("alexnet", in_channels=1, num_classes=10, image_size=224)
    convs = _modules(model, nn.Conv2d)
    assert [(c.out_channels, c.kernel_size) for c in convs] == [
        (96, (11, 11)), (256, (5, 5)), (384, (3, 3)), (384, (3, 3)), (256, (3, 3)),
    ]
    assert convs[0].stride == (4, 4)
    linears = _modules(model, nn.Linear)
    assert [lin.out_features for lin in linears] == [4096, 4096, 10]
    dropouts = _modules(model, nn.Dropout)
    assert len(dropouts) == 2
    assert all(d.p == 0.5 for d in dropouts)


def test_alexnet_dropout_override() -> None:
    """An explicit dropout replaces the default 0.5."""
    model = build_model("alexnet", in_channels=3, num_classes=10, image_size=32, dropout=0.2)
    assert [d.p for d in _modules(model, nn.Dropout)] == [0.2, 0.2]


def test_alexnet_224px_feature_map() -> None:
    """At 224 px every pool applies and the features are 256x5x5 (d2l's layout)."""
    model = build_model("alexnet", in_channels=1, num_classes=10, image_size=224)
    with torch.no_grad():
        assert model.features(torch.zeros(1, 1, 224, 224)).shape == (1, 256, 5, 5)


def test_resnet18_batchnorm_and_projection_shortcuts() -> None:
    """ResNet-18 uses BatchNorm and 1x1 projection shortcuts where the shape changes."""
    model = build_model("resnet18", in_channels=3, num_classes=10, image_size=32)
    assert _modules(model, nn.BatchNorm2d)
    projections = [c for c in _modules(model, nn.Conv2d) if c.kernel_size == (1, 1)]
    # One per stage transition: 64->128, 128->256, 256->512.
    assert [(c.in_channels, c.out_channels, c.stride) for c in projections] == [
        (64, 128, (2, 2)), (128, 256, (2, 2)), (256, 512, (2, 2)),
    ]
    # 1 stem conv + 8 blocks x 2 convs + 3 projections; one linear head: 18 weight layers.
    assert len(_modules(model, nn.Conv2d)) - len(projections) + len(_modules(model, nn.Linear)) == 18


def test_googlenet_inception_concatenates_paths() -> None:
    """GoogLeNet is built from Inception blocks whose output is the channel concat of four paths."""
    from harness.models.googlenet import Inception

    model = build_model("googlenet", in_channels=3, num_classes=10, image_size=32)
    blocks = _modules(model, Inception)
    assert len(blocks) == 9
    block = blocks[0]
    x = torch.randn(1, 192, 8, 8)
    with torch.no_grad():
        out = block(x)
        paths = [block.p1(x), block.p2(x), block.p3(x), block.p4(x)]
    assert out.shape == (1, 64 + 128 + 32 + 32, 8, 8) == (1, block.out_channels, 8, 8)
    assert torch.equal(out, torch.cat(paths, dim=1))


def test_mobilenet_has_depthwise_convs() -> None:
    """MobileNet v1 uses depthwise convs (groups == in_channels) followed by 1x1 pointwise convs."""
    model = build_model("mobilenet", in_channels=3, num_classes=10, image_size=32)
    depthwise = [c for c in _modules(model, nn.Conv2d) if c.groups > 1]
    assert len(depthwise) == 13
    assert all(c.groups == c.in_channels == c.out_channels and c.kernel_size == (3, 3) for c in depthwise)


# ------------------------------------------------------------------ registry


def test_registry_duplicate_raises_value_error() -> None:
    """Registering a second object under an existing name is a programming error."""
    registry: Registry[int] = Registry("thing")
    registry.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.add("a", 2)
    assert registry.get("a") == 1


def test_model_registry_refuses_a_second_lenet() -> None:
    """A builder from outside the package cannot take the built-in 'lenet'; the original stays."""
    original = MODELS.get("lenet")
    with pytest.raises(ConfigError, match="built into harness"):
        register_model("lenet")(lambda **_: nn.Identity())
    assert MODELS.get("lenet") is original


def test_register_model_refuses_an_undeclared_name_inside_the_package() -> None:
    """A package builder for a name not declared in harness/models/__init__.py is refused (its sizes
    would be unknown without importing torch); outside the package the same name is a user's own."""

    def build(**_: object) -> nn.Module:
        return nn.Identity()

    build.__module__ = "harness.models.fake"
    with pytest.raises(ValueError, match="not declared"):
        register_model("lenet7")(build)
    assert "lenet7" not in MODELS


def test_deferred_binds_once_and_only_from_its_module() -> None:
    """A Deferred entry takes one implementation, from the module it names, and imports that module on first call."""
    entry = Deferred("model", "fake", __name__)
    with pytest.raises(ValueError, match="declared to live in"):
        entry.bind(len)  # builtins, not this module
    entry.bind(_modules)
    with pytest.raises(ValueError, match="already registered"):
        entry.bind(_modules)
    assert entry.impl is _modules
    unbound = Deferred("model", "ghost", "harness.errors")  # imports fine but registers nothing
    with pytest.raises(RuntimeError, match="did not register"):
        unbound()


def test_registry_prefix_defers_load_more() -> None:
    """With more_prefix, only names with the prefix (or listing every name) run load_more; other misses
    are answered at once and describe the entries not yet loaded."""
    calls = []

    def load_more() -> None:
        calls.append(1)
        registry.add("x_two", 2)

    registry: Registry[int] = Registry("thing", load_more, more_prefix="x_", more_description="x_<name> for more")
    registry.add("one", 1)
    assert "onf" not in registry and calls == []
    with pytest.raises(HarnessError) as info:
        registry.get("onee")
    assert str(info.value) == "Unknown thing 'onee'. Did you mean 'one'? Choose one of: one, or x_<name> for more."
    assert calls == []
    assert registry.get("x_two") == 2 and calls == [1]
    with pytest.raises(HarnessError) as info:
        registry.get("onee")
    assert str(info.value) == "Unknown thing 'onee'. Did you mean 'one'? Choose one of: one, x_two."


def test_unknown_model_suggests_closest() -> None:
    """A typo in a model name gives a HarnessError naming the closest model."""
    with pytest.raises(HarnessError, match="lenett") as info:
        build_model("lenett", in_channels=1, num_classes=10, image_size=28)
    assert "Did you mean 'lenet'?" in str(info.value)
    with pytest.raises(HarnessError):
        min_image_size("resnet19")


def test_unknown_torchvision_model_suggests_closest() -> None:
    """A typo in a tv_* name loads torchvision's list and suggests the closest tv_ model."""
    with pytest.raises(HarnessError, match="Did you mean 'tv_resnet18'"):
        min_image_size("tv_resnet19")


def test_model_metadata() -> None:
    """Sizes and pretrained support as declared (own models) or derived (tv_*); tests/test_cli_light.py
    checks that own-model checks need no torch."""
    assert (min_image_size("lenet"), min_image_size("alexnet"), min_image_size("resnet18")) == (12, 16, 8)
    assert not MODELS.get("mobilenet").supports_pretrained
    assert MODELS.get("tv_resnet18").supports_pretrained


# A few light torchvision models whose architecture is not size-agnostic (the rest are covered by
# tv_resnet18 above; building all ~80 torchvision models would take minutes).
@pytest.mark.parametrize("name", ["tv_alexnet", "tv_vit_b_32", "tv_maxvit_t", "tv_squeezenet1_1"])
def test_torchvision_model_at_min_image_size(name: str) -> None:
    """A tv_* model runs at the min_image_size that config validation accepts for it."""
    size = min_image_size(name)
    model = build_model(name, in_channels=3, num_classes=4, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 4)
