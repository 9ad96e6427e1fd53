"""Optimizers, learning-rate schedules and weight initialisations, looked up by name.

Importing this module does not import PyTorch (config checks look names up here): every entry
imports torch when it is called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import TYPE_CHECKING

from harness.registry import Registry

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

    from harness.config import TrainConfig

OPTIMIZERS: Registry[Callable[[Iterable[nn.Parameter], TrainConfig], Optimizer]] = Registry("optimizer")
# (optimizer, config, epochs after warmup, optimizer steps per epoch) -> schedule
SCHEDULERS: Registry[Callable[[Optimizer, TrainConfig, int, int], LRScheduler | None]] = Registry("scheduler")
INITS: Registry[Callable[[nn.Module], None]] = Registry("init")


def _torch() -> ModuleType:
    """PyTorch, imported on first use rather than when this module is."""
    import torch
    import torch.optim.lr_scheduler  # noqa: F401 - `torch.optim.lr_scheduler` below

    return torch


# ------------------------------------------------------------------ optimizers

OPTIMIZERS.add("sgd", lambda p, c: _torch().optim.SGD(p, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                                                      weight_decay=c.weight_decay))
OPTIMIZERS.add("adam", lambda p, c: _torch().optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay))
OPTIMIZERS.add("adamw", lambda p, c: _torch().optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay))
OPTIMIZERS.add("rmsprop", lambda p, c: _torch().optim.RMSprop(p, lr=c.lr, momentum=c.momentum,
                                                              weight_decay=c.weight_decay))
OPTIMIZERS.add("adagrad", lambda p, c: _torch().optim.Adagrad(p, lr=c.lr, weight_decay=c.weight_decay))
OPTIMIZERS.add("adadelta", lambda p, c: _torch().optim.Adadelta(p, lr=c.lr, weight_decay=c.weight_decay))


def build_optimizer(model: nn.Module, config: TrainConfig) -> Optimizer:
    """The configured optimizer over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS.get(config.optimizer)(params, config)


# ------------------------------------------------------------------ schedules (stepped once per epoch)

# `epochs` is the number of epochs the main schedule spans (after warmup).
SCHEDULERS.add("none", lambda opt, c, epochs, steps: None)
SCHEDULERS.add("step", lambda opt, c, epochs, steps: _torch().optim.lr_scheduler.StepLR(
    opt, step_size=c.step_size, gamma=c.gamma))
SCHEDULERS.add(
    "multistep",
    lambda opt, c, epochs, steps: _torch().optim.lr_scheduler.MultiStepLR(
        opt, milestones=[max(m - c.warmup_epochs, 1) for m in c.milestones], gamma=c.gamma
    ),
)
SCHEDULERS.add("cosine", lambda opt, c, epochs, steps: _torch().optim.lr_scheduler.CosineAnnealingLR(
    opt, T_max=max(epochs, 1), eta_min=min(c.min_lr, c.lr)))


def _one_cycle(opt: Optimizer, c: TrainConfig, epochs: int, steps: int) -> LRScheduler:
    """One-cycle (Smith & Topin): stepped after every optimizer step, not every epoch (`PER_STEP`).
    Its rising phase is the warmup (the last warmup step trains at the peak, `lr`): warmup_epochs
    of the epochs when given, else 30% (PyTorch's default). Momentum is not cycled: the config's
    `momentum` (and Adam's betas) stay what they say."""
    total = max(c.epochs * steps, 2)
    pct_start = c.warmup_epochs / c.epochs if c.warmup_epochs else 0.3
    if c.warmup_epochs * steps == 1:
        # torch's rise ends at step pct_start * total - 1, so a one-step warmup would rise over 0 steps
        # and divide by zero: end it just before step 0, which then trains at the peak as it should.
        pct_start = (1 - 1e-6) / total
    return _torch().optim.lr_scheduler.OneCycleLR(opt, max_lr=c.lr, total_steps=total, pct_start=pct_start,
                                                  # config.momentum (a tuned field) keeps its meaning;
                                                  # adagrad/adadelta have no momentum to cycle
                                                  cycle_momentum=False)


SCHEDULERS.add("onecycle", _one_cycle)
PER_STEP = ("onecycle",)
SCHEDULERS.add("exponential", lambda opt, c, epochs, steps: _torch().optim.lr_scheduler.ExponentialLR(
    opt, gamma=c.gamma))


def build_scheduler(optimizer: Optimizer, config: TrainConfig, steps_per_epoch: int = 1) -> LRScheduler:
    """Per-epoch schedule: linear warmup over `warmup_epochs`, then the named schedule; or, for
    `onecycle` (in `PER_STEP`), one per-step schedule over `epochs * steps_per_epoch` optimizer
    steps whose rising phase is the warmup.

    Always returns a scheduler (a constant one for `none`), so checkpoints have one shape.
    """
    lr_scheduler = _torch().optim.lr_scheduler
    main = SCHEDULERS.get(config.scheduler)(optimizer, config, config.epochs - config.warmup_epochs, steps_per_epoch)
    if main is None:
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if config.warmup_epochs == 0 or config.scheduler in PER_STEP:
        return main
    # Epoch e (0-based) of warmup trains at lr * (e + 1) / (warmup_epochs + 1).
    warmup = lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / (config.warmup_epochs + 1), end_factor=1.0, total_iters=config.warmup_epochs
    )
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[config.warmup_epochs])


# ------------------------------------------------------------------ weight initialisation


def _init_with(init_name: str, **kwargs: object) -> Callable[[nn.Module], None]:
    """An init applying `torch.nn.init.<init_name>(weight, **kwargs)` to every trainable conv / linear
    weight and zeroing its bias (named, not passed, so that torch is imported only when it runs)."""

    def apply(model: nn.Module) -> None:
        torch_nn = _torch().nn
        conv_linear = getattr(torch_nn.init, init_name)
        for m in model.modules():
            if isinstance(m, (torch_nn.Conv2d, torch_nn.Linear)) and m.weight.requires_grad:
                conv_linear(m.weight, **kwargs)
                if m.bias is not None:
                    torch_nn.init.zeros_(m.bias)

    return apply


INITS.add("default", lambda model: None)  # PyTorch's own per-layer defaults
INITS.add("xavier", _init_with("xavier_uniform_"))
INITS.add("kaiming", _init_with("kaiming_normal_", mode="fan_out", nonlinearity="relu"))
