"""LeNet vs AlexNet on Fashion-MNIST, each with the classic recipe known to train it.

- LeNet: the original sigmoid network on 28x28 inputs (first conv padded by 2). Plain SGD at
  lr 0.01 leaves it at chance after 3 epochs; Adam at lr 0.01, batch 64, 5 epochs reaches
  about 87% test accuracy.
- AlexNet: single-channel input resized to 224x224 (the common Fashion-MNIST recipe), SGD at
  lr 0.01, batch 128, 10 epochs, dropout 0.5: about 88-90%; very slow on a CPU.

Quick CPU run: --set alexnet.image_size=64 --set train_limit=6000 (a few minutes).
"""

from harness.config import TrainConfig
from harness.experiment import Experiment

experiment = Experiment(
    name="exp_lenet_vs_alexnet",
    description="LeNet (sigmoid, Adam) vs AlexNet (224 px, SGD) on Fashion-MNIST, classic definitions.",
    variants={
        "lenet": TrainConfig(
            model="lenet", dataset="fashion_mnist", epochs=5, batch_size=64,
            optimizer="adam", lr=0.01, momentum=0.0, seed=0,
        ),
        "alexnet": TrainConfig(
            model="alexnet", dataset="fashion_mnist", epochs=10, batch_size=128,
            optimizer="sgd", lr=0.01, momentum=0.0, image_size=224, seed=0,
        ),
    },
)
