"""Optimisers and learning-rate schedules from the ``optim`` section (NeMo's names and formulas).

Optimisers: ``fused_adam`` (NeMo/apex FusedAdam, whose default is AdamW mode) -> ``torch.optim.AdamW``
with ``fused=True`` when the parameters are on CUDA (except with gradient clipping under mixed
precision, which Lightning refuses for fused optimisers: then the default multi-tensor kernel);
``adamw``; ``adam``; ``sgd``.

Schedules (stepped once per optimiser step), as in ``nemo.core.optim.lr_scheduler``:

* ``WarmupPolicy``: ``lr = base * (step + 1) / (warmup + 1)`` while ``step < warmup``, then ``base``;
  after ``max_steps``, ``min_lr``.
* ``CosineAnnealing``: the same warmup, then
  ``lr = min_lr + (base - min_lr) * 0.5 * (1 + cos(pi * (step - warmup) / (max_steps - warmup)))``,
  held at ``min_lr`` after ``max_steps``. ``constant_steps`` holds ``min_lr`` for that many final steps.

``warmup_steps`` or ``warmup_ratio * max_steps`` (not both) sets the warmup length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from speechdata.config import check_choice, check_keys
from speechdata.errors import ConfigError

OPTIMIZERS = ("fused_adam", "adamw", "adam", "sgd")
SCHEDULERS = ("WarmupPolicy", "CosineAnnealing")
_OPTIM_KEYS = ("name", "lr", "eps", "betas", "weight_decay", "momentum", "sched")
_SCHED_KEYS = ("name", "warmup_steps", "warmup_ratio", "min_lr", "max_steps", "constant_steps", "last_epoch")


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    cfg: Mapping[str, Any],
    path: str = "optim",
    allow_fused: bool = True,
) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg["name"]`` over ``params`` (only those with ``requires_grad``).

    Adam(W) is fused when every parameter is on CUDA and ``allow_fused`` (Lightning cannot clip
    gradients of a fused optimiser under mixed precision; the caller then passes ``False``).
    """
    check_keys(cfg, _OPTIM_KEYS, path)
    name = cfg.get("name", "fused_adam")
    check_choice(name, OPTIMIZERS, f"{path}.name")
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ConfigError(f"{path}: no trainable parameters (is everything frozen?)")
    if "lr" not in cfg:
        raise ConfigError(f"{path}.lr: required")
    lr = float(cfg["lr"])
    wd = float(cfg.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=float(cfg.get("momentum", 0.0)), weight_decay=wd)
    betas = tuple(float(b) for b in cfg.get("betas", (0.9, 0.999)))
    if len(betas) != 2:
        raise ConfigError(f"{path}.betas: expected two numbers, got {list(betas)}")
    kwargs: dict[str, Any] = {
        "lr": lr,
        "betas": betas,
        "eps": float(cfg.get("eps", 1e-8)),
        "weight_decay": wd,
    }
    if allow_fused and all(p.is_cuda for p in trainable):
        kwargs["fused"] = True
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(trainable, **kwargs)


def warmup_steps_from(cfg: Mapping[str, Any], max_steps: int, path: str = "optim.sched") -> int:
    """``warmup_steps``, or ``round(warmup_ratio * max_steps)``; error if both are given."""
    steps, ratio = cfg.get("warmup_steps"), cfg.get("warmup_ratio")
    if steps is not None and ratio is not None:
        raise ConfigError(f"{path}: give warmup_steps or warmup_ratio, not both")
    if ratio is not None:
        if not 0.0 <= float(ratio) <= 1.0:
            raise ConfigError(f"{path}.warmup_ratio: must be in [0, 1]; got {ratio}")
        if max_steps <= 0:
            raise ConfigError(f"{path}.warmup_ratio: needs a known max_steps (set trainer.max_steps)")
        return int(float(ratio) * max_steps)
    steps = int(steps or 0)
    if steps < 0:
        raise ConfigError(f"{path}.warmup_steps: must be >= 0; got {steps}")
    return steps


class WarmupPolicy(LRScheduler):
    """Linear warmup to the base LR, then constant (``min_lr`` after ``max_steps``)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 0,
        max_steps: int = 0,
        min_lr: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def _warmup_factor(self, step: int) -> float:
        return (step + 1) / (self.warmup_steps + 1)

    def lr_at(self, base_lr: float, step: int) -> float:
        """The learning rate at optimiser step ``step`` (0-based) for a base LR."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return base_lr * self._warmup_factor(step)
        if self.max_steps > 0 and step > self.max_steps:
            return self.min_lr
        return base_lr

    def get_lr(self) -> list[float]:
        """Learning rates of every param group at the current step."""
        return [self.lr_at(base, self.last_epoch) for base in self.base_lrs]


class CosineAnnealing(WarmupPolicy):
    """Linear warmup, then cosine decay from the base LR to ``min_lr`` at ``max_steps``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 0,
        max_steps: int = 0,
        min_lr: float = 0.0,
        constant_steps: int = 0,
        last_epoch: int = -1,
    ) -> None:
        if max_steps <= 0:
            raise ConfigError("optim.sched: CosineAnnealing needs max_steps > 0 (set trainer.max_steps)")
        self.constant_steps = constant_steps
        super().__init__(optimizer, warmup_steps, max_steps, min_lr, last_epoch)

    def lr_at(self, base_lr: float, step: int) -> float:
        """The learning rate at optimiser step ``step`` (0-based) for a base LR."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return base_lr * self._warmup_factor(step)
        decay_steps = self.max_steps - self.constant_steps - self.warmup_steps
        if step >= self.max_steps - self.constant_steps or decay_steps <= 0:
            return self.min_lr
        progress = (step - self.warmup_steps) / decay_steps
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any] | None, max_steps: int, path: str = "optim.sched"
) -> LRScheduler | None:
    """The schedule named by ``cfg["name"]``; ``max_steps`` comes from the trainer unless given."""
    if not cfg:
        return None
    check_keys(cfg, _SCHED_KEYS, path)
    name = cfg.get("name")
    check_choice(name, SCHEDULERS, f"{path}.name")
    max_steps = int(cfg.get("max_steps") or max_steps)
    warmup = warmup_steps_from(cfg, max_steps, path)
    min_lr = float(cfg.get("min_lr", 0.0))
    if name == "WarmupPolicy":
        return WarmupPolicy(optimizer, warmup, max_steps, min_lr)
    return CosineAnnealing(optimizer, warmup, max_steps, min_lr, int(cfg.get("constant_steps", 0)))
