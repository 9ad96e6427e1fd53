"""Optimizers, learning-rate schedules and weight initialisations, looked up by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from harness.config import TrainConfig
from harness.registry import Registry

OPTIMIZERS: Registry[Callable[[Iterable[nn.Parameter], TrainConfig], Optimizer]] = Registry("optimizer")
SCHEDULERS: Registry[Callable[[Optimizer, TrainConfig, int], LRScheduler | None]] = Registry("scheduler")
INITS: Registry[Callable[[nn.Module], None]] = Registry("init")

# ------------------------------------------------------------------ optimizers

OPTIMIZERS.add("sgd", lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay))
OPTIMIZERS.add("adam", lambda p, c: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay))
OPTIMIZERS.add("adamw", lambda p, c: torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay))
OPTIMIZERS.add("rmsprop", lambda p, c: torch.optim.RMSprop(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay))
OPTIMIZERS.add("adagrad", lambda p, c: torch.optim.Adagrad(p, lr=c.lr, weight_decay=c.weight_decay))
OPTIMIZERS.add("adadelta", lambda p, c: torch.optim.Adadelta(p, lr=c.lr, weight_decay=c.weight_decay))


def build_optimizer(model: nn.Module, config: TrainConfig) -> Optimizer:
    """The configured optimizer over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS.get(config.optimizer)(params, config)


def prepare_optimizers() -> None:
    """Pay now for what the first torch.optim optimizer imports (torch._dynamo: 1-1.5 s on a
    2-core CPU). `harness run` calls this while its MLflow process is still starting, so the
    import overlaps that wait instead of following it."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


# ------------------------------------------------------------------ schedules (stepped once per epoch)

# `epochs` is the number of epochs the main schedule spans (after warmup).
SCHEDULERS.add("none", lambda opt, c, epochs: None)
SCHEDULERS.add("step", lambda opt, c, epochs: torch.optim.lr_scheduler.StepLR(opt, step_size=c.step_size, gamma=c.gamma))
SCHEDULERS.add(
    "multistep",
    lambda opt, c, epochs: torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[max(m - c.warmup_epochs, 1) for m in c.milestones], gamma=c.gamma
    ),
)
SCHEDULERS.add("cosine", lambda opt, c, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1)))
SCHEDULERS.add("exponential", lambda opt, c, epochs: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=c.gamma))


def build_scheduler(optimizer: Optimizer, config: TrainConfig) -> LRScheduler:
    """Per-epoch schedule: linear warmup over `warmup_epochs`, then the named schedule.

    Always returns a scheduler (a constant one for `none`), so checkpoints have one shape.
    """
    main = SCHEDULERS.get(config.scheduler)(optimizer, config, config.epochs - config.warmup_epochs)
    if main is None:
        main = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if config.warmup_epochs == 0:
        return main
    # Epoch e (0-based) of warmup trains at lr * (e + 1) / (warmup_epochs + 1).
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / (config.warmup_epochs + 1), end_factor=1.0, total_iters=config.warmup_epochs
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[config.warmup_epochs])


# ------------------------------------------------------------------ weight initialisation


def _init_with(conv_linear: Callable[[torch.Tensor], object]) -> Callable[[nn.Module], None]:
    def apply(model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad:
                conv_linear(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    return apply


INITS.add("default", lambda model: None)  # PyTorch's own per-layer defaults
INITS.add("xavier", _init_with(nn.init.xavier_uniform_))
INITS.add("kaiming", _init_with(lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")))
