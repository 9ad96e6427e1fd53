"""Five classic CNNs on CIFAR-10 with one shared recipe.

SGD + momentum with weight decay, one warmup epoch then cosine decay, random crop + flip.
Every network runs at CIFAR's native 32x32 (stems adapt; see harness/models/). On a 2-core
CPU an epoch of ResNet-18 takes many minutes: use a GPU, or --set train_limit=5000 epochs=3.
"""

import dataclasses

from harness.config import TrainConfig
from harness.experiment import Experiment

recipe = TrainConfig(
    dataset="cifar10", epochs=30, batch_size=128, optimizer="sgd", lr=0.05, momentum=0.9,
    weight_decay=5e-4, scheduler="cosine", warmup_epochs=1, augment=True, init="kaiming", seed=0,
)

experiment = Experiment(
    name="exp_classic_cnns",
    description="LeNet, AlexNet, GoogLeNet (Inception), ResNet-18 and MobileNet v1 on CIFAR-10.",
    variants={
        # The sigmoid-free LeNet: the classic sigmoid one barely trains with this SGD recipe.
        "lenet": dataclasses.replace(recipe, model="lenet_relu", init="default"),
        "alexnet": dataclasses.replace(recipe, model="alexnet", lr=0.01),
        "googlenet": dataclasses.replace(recipe, model="googlenet"),
        "resnet18": dataclasses.replace(recipe, model="resnet18"),
        "mobilenet": dataclasses.replace(recipe, model="mobilenet"),
    },
)
