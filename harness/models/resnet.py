"""ResNet-18 (He et al., 2015) from basic residual blocks with batch norm."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from harness.models import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; a 1x1 conv projects it when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNet18(nn.Module):
    """Four stages of two blocks (64-128-256-512 channels), global average pool, linear head.

    Below 64 px the stem is a stride-1 3x3 conv without max-pool (the usual CIFAR variant);
    otherwise the ImageNet 7x7/2 conv and 3x3/2 max-pool.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        if image_size >= 64:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, 2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, 1, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
            )
        layers: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)))


@register_model("resnet18")
def resnet18(in_channels: int, num_classes: int, image_size: int, **_: object) -> nn.Module:
    """ResNet-18 with 1x1 projection shortcuts."""
    return ResNet18(in_channels, num_classes, image_size)
