"""Modern training recipes on a classic CNN: the ReLU LeNet on MNIST, plain against each
primitive alone and all of them together, same epochs and seeds (run it with --repeat 3 to see
which differences are beyond seed noise).

- trivialaugment: TrivialAugmentWide per image (its rotations up to 135 degrees and shifts up to
  32 px were designed for natural photos, not digits: see the README for what it does here);
- mixup: MixUp with alpha 0.2 on every batch;
- ema: an exponential moving average of the weights (decay 0.995), validated, tested and
  exported instead of the raw weights;
- all: the three together.

Offline on the MNIST sample the README uses: --data-dir pointing at it (see README "Modern
training recipes").
"""

import dataclasses

from harness.config import TrainConfig
from harness.experiment import Experiment

base = TrainConfig(model="lenet_relu", dataset="mnist", epochs=15, batch_size=64, optimizer="sgd", lr=0.05,
                   momentum=0.9, weight_decay=5e-4, scheduler="cosine", warmup_epochs=1, seed=0)

experiment = Experiment(
    name="exp_recipes",
    description="ReLU LeNet on MNIST: plain vs TrivialAugment, MixUp, EMA and all three (run with --repeat 3).",
    variants={
        "plain": base,
        "trivialaugment": dataclasses.replace(base, auto_augment="trivialaugment"),
        "mixup": dataclasses.replace(base, mixup_alpha=0.2),
        "ema": dataclasses.replace(base, ema_decay=0.995),
        "all": dataclasses.replace(base, auto_augment="trivialaugment", mixup_alpha=0.2, ema_decay=0.995),
    },
)
