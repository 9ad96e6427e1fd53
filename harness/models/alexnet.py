"""AlexNet (Krizhevsky et al., 2012), single-tower, as in the common Fashion-MNIST recipe."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from harness.models import register_model


class MaxPoolIfFits(nn.Module):
    """3x3/2 max-pool, skipped when the feature map is already smaller than the window.

    At 224 px every pool applies (the classic layout); at CIFAR's 32 px the late pools would
    fail on 1x1 maps, so they become identities instead.
    """

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < 3:
            return x
        return F.max_pool2d(x, kernel_size=3, stride=2)


class AlexNet(nn.Module):
    """11x11/4 conv 96, 5x5 conv 256, 3x3 convs 384/384/256, 3x3/2 max-pools, 4096-4096 FC with dropout."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(inplace=True),
            MaxPoolIfFits(),
            nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            MaxPoolIfFits(),
            nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            MaxPoolIfFits(),
            # 224 px input gives 5x5 here (d2l's layout); other sizes are pooled to the same shape.
            nn.AdaptiveAvgPool2d((5, 5)),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * 5 * 5, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_model("alexnet")
def alexnet(in_channels: int, num_classes: int, dropout: float | None = None, **_: object) -> nn.Module:
    """Classic AlexNet; expects roughly 224 px inputs but runs from 16 px up."""
    return AlexNet(in_channels, num_classes, 0.5 if dropout is None else dropout)
