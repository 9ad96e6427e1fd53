"""MobileNet v1 (Howard et al., 2017): depthwise-separable convolutions."""

from __future__ import annotations

from torch import Tensor, nn

from harness.models import register_model


def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv (one filter per channel) then 1x1 pointwise conv, each with BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


# (out_channels, stride) of the 13 depthwise-separable layers in the paper's Table 1.
_LAYERS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


class MobileNetV1(nn.Module):
    """The paper's layout; the stem conv uses stride 1 below 64 px so small images are not
    reduced to 1x1 before the last stage."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, 32, 2 if image_size >= 64 else 1)]
        cin = 32
        for cout, stride in _LAYERS:
            layers.append(depthwise_separable(cin, cout, stride))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(1024, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@register_model("mobilenet")
def mobilenet(in_channels: int, num_classes: int, image_size: int, dropout: float | None = None,
              **_: object) -> nn.Module:
    """MobileNet v1, width multiplier 1."""
    return MobileNetV1(in_channels, num_classes, image_size, 0.0 if dropout is None else dropout)
