"""Quickstart: the ReLU LeNet on scikit-learn's bundled 8x8 digits (upscaled to 28x28).

Fully offline and well under a minute on a laptop CPU: the first thing to run.
"""

from harness.config import TrainConfig
from harness.experiment import Experiment

experiment = Experiment(
    name="quickstart",
    description="LeNet (ReLU) on scikit-learn's bundled digits: offline, under a minute on a CPU.",
    variants={
        "lenet_relu": TrainConfig(
            model="lenet_relu", dataset="digits", epochs=10, batch_size=32,
            optimizer="sgd", lr=0.05, momentum=0.9, seed=0,
        ),
    },
)
