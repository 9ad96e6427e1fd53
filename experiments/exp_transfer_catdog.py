"""Cats vs dogs from an image folder with torchvision's ResNet-18: fine-tuning vs frozen features.

Put images under data/catdog/ either as cat/*.jpg + dog/*.jpg or as cat.1.jpg, dog.2.jpg
(Kaggle's layout); optional train/ and test/ sub-folders fix the test set. Pretrained weights
are downloaded by torchvision on first use. Recipe of PyTorch's transfer-learning tutorial:
SGD lr 0.001 momentum 0.9, StepLR every 7 epochs by 0.1.
"""

import dataclasses

from harness.config import TrainConfig
from harness.experiment import Experiment

base = TrainConfig(
    model="tv_resnet18", dataset="image_folder", data_path="data/catdog", image_size=224,
    pretrained=True, epochs=15, batch_size=32, optimizer="sgd", lr=0.001, momentum=0.9,
    scheduler="step", step_size=7, gamma=0.1, augment=True, val_fraction=0.2, seed=0,
)

experiment = Experiment(
    name="exp_transfer_catdog",
    description="ResNet-18 (ImageNet weights) fine-tuned vs frozen feature extractor on an image folder.",
    variants={
        "finetune": base,
        "feature_extractor": dataclasses.replace(base, freeze_backbone=True),
    },
)
