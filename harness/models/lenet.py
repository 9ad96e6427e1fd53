"""LeNet-5 (LeCun et al., 1998) as in the common Fashion-MNIST recipe."""

from __future__ import annotations

from torch import Tensor, nn

from harness.models import register_model


class ToSize(nn.Module):
    """Adaptive average pooling to `size` x `size`, skipped when the input already has that size
    (the 28/32 px case: an identity pool still costs ~2% of a LeNet step on a CPU)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.pool = nn.AdaptiveAvgPool2d((size, size))

    def forward(self, x: Tensor) -> Tensor:
        return x if x.shape[-2:] == (self.size, self.size) else self.pool(x)


class LeNet(nn.Module):
    """5x5 convs with 6 and 16 maps, 2x2 average pooling, then 120-84-classes.

    The first conv pads by 2 so 28x28 inputs keep the classic 32x32 geometry (16x5x5 features);
    an adaptive pool makes other sizes land on 5x5 too.
    """

    def __init__(self, in_channels: int, num_classes: int, activation: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), activation(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), activation(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            ToSize(5),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), activation(),
            nn.Linear(120, 84), activation(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# Names and smallest input size (12 px) are declared in harness/models/__init__.py.
@register_model("lenet")
def lenet(in_channels: int, num_classes: int, **_: object) -> nn.Module:
    """The original sigmoid LeNet."""
    return LeNet(in_channels, num_classes, nn.Sigmoid)


@register_model("lenet_relu")
def lenet_relu(in_channels: int, num_classes: int, **_: object) -> nn.Module:
    """LeNet with ReLU activations: trains much faster with plain SGD."""
    return LeNet(in_channels, num_classes, nn.ReLU)
