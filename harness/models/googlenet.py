"""GoogLeNet (Szegedy et al., 2014) built from Inception blocks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness.models import register_model


def conv_relu(cin: int, cout: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding=kernel_size // 2), nn.ReLU(inplace=True))


class Inception(nn.Module):
    """Four parallel paths concatenated on channels: 1x1; 1x1->3x3; 1x1->5x5; 3x3 max-pool->1x1."""

    def __init__(self, cin: int, c1: int, c3: tuple[int, int], c5: tuple[int, int], cpool: int) -> None:
        super().__init__()
        self.p1 = conv_relu(cin, c1, 1)
        self.p2 = nn.Sequential(conv_relu(cin, c3[0], 1), conv_relu(c3[0], c3[1], 3))
        self.p3 = nn.Sequential(conv_relu(cin, c5[0], 1), conv_relu(c5[0], c5[1], 5))
        self.p4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_relu(cin, cpool, 1))
        self.out_channels = c1 + c3[1] + c5[1] + cpool

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.p1(x), self.p2(x), self.p3(x), self.p4(x)], dim=1)


class GoogLeNet(nn.Module):
    """Inception v1 stages 3-5 (the paper's channel counts) behind a stem chosen by input size.

    At ImageNet-like sizes the stem is the paper's 7x7/2 conv, pools and 3x3 conv (4x down);
    below 64 px a single 3x3 conv keeps the small image's resolution for the Inception stages.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, dropout: float = 0.4) -> None:
        super().__init__()
        if image_size >= 64:
            self.stem = nn.Sequential(
                conv_relu(in_channels, 64, 7, stride=2), nn.MaxPool2d(3, 2, padding=1),
                conv_relu(64, 64, 1), conv_relu(64, 192, 3), nn.MaxPool2d(3, 2, padding=1),
            )
        else:
            self.stem = conv_relu(in_channels, 192, 3)
        self.blocks = nn.Sequential(
            Inception(192, 64, (96, 128), (16, 32), 32),
            Inception(256, 128, (128, 192), (32, 96), 64),
            nn.MaxPool2d(3, 2, padding=1),
            Inception(480, 192, (96, 208), (16, 48), 64),
            Inception(512, 160, (112, 224), (24, 64), 64),
            Inception(512, 128, (128, 256), (24, 64), 64),
            Inception(512, 112, (144, 288), (32, 64), 64),
            Inception(528, 256, (160, 320), (32, 128), 128),
            nn.MaxPool2d(3, 2, padding=1),
            Inception(832, 256, (160, 320), (32, 128), 128),
            Inception(832, 384, (192, 384), (48, 128), 128),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(1024, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


@register_model("googlenet")
def googlenet(in_channels: int, num_classes: int, image_size: int, dropout: float | None = None,
              **_: object) -> nn.Module:
    """GoogLeNet-style Inception network (no auxiliary classifiers)."""
    return GoogLeNet(in_channels, num_classes, image_size, 0.4 if dropout is None else dropout)
