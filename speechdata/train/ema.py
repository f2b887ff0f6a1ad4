"""Exponential moving average of the trainable weights, as a Lightning callback (``exp_manager.ema``).

After every ``every_n_steps``-th optimiser step: ``ema = decay * ema + (1 - decay) * weight``
(no bias correction, as NeMo). The averages live on the model's device, or on the CPU with
``cpu_offload``. Unless ``validate_original_weights``, validation runs with the EMA weights
swapped in; the training weights are swapped back when it ends (before any checkpoint is
written). Checkpoints hold the training weights in ``state_dict`` and the averages in this
callback's state, restored on resume.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch


class EMA(pl.Callback):
    """Keeps an EMA of the LightningModule's trainable parameters."""

    def __init__(
        self,
        decay: float = 0.999,
        every_n_steps: int = 1,
        validate_original_weights: bool = False,
        cpu_offload: bool = False,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"exp_manager.ema.decay must be in [0, 1], got {decay}")
        if every_n_steps < 1:
            raise ValueError(f"exp_manager.ema.every_n_steps must be >= 1, got {every_n_steps}")
        self.decay = decay
        self.every_n_steps = every_n_steps
        self.validate_original_weights = validate_original_weights
        self.cpu_offload = cpu_offload
        self.ema: dict[str, torch.Tensor] = {}
        self._swapped = False
        self._last_step = -1
        self._loaded: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _params(pl_module: pl.LightningModule) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    def _init(self, pl_module: pl.LightningModule) -> None:
        device = torch.device("cpu") if self.cpu_offload else None
        params = self._params(pl_module)
        source = self._loaded or {}
        self.ema = {
            n: source.get(n, p.detach()).detach().clone().to(device or p.device) for n, p in params.items()
        }
        self._loaded = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the averages from the current weights (or from the restored checkpoint state)."""
        self._init(pl_module)
        self._last_step = trainer.global_step

    @torch.no_grad()
    def update(self, pl_module: pl.LightningModule) -> None:
        """One EMA step over the trainable parameters."""
        for name, p in self._params(pl_module).items():
            avg = self.ema[name]
            avg.mul_(self.decay).add_(p.detach().to(avg.device, avg.dtype), alpha=1.0 - self.decay)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Update after an optimiser step (not after every accumulated micro-batch)."""
        step = trainer.global_step
        if step != self._last_step:
            self._last_step = step
            if step % self.every_n_steps == 0:
                self.update(pl_module)

    @torch.no_grad()
    def swap(self, pl_module: pl.LightningModule) -> None:
        """Exchange the model's trainable weights and the averages (calling it twice restores both)."""
        for name, p in self._params(pl_module).items():
            tmp = p.detach().clone()
            p.copy_(self.ema[name].to(p.device, p.dtype))
            self.ema[name] = tmp.to(self.ema[name].device)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validate with the averages unless ``validate_original_weights``."""
        if self.ema and not self.validate_original_weights and not trainer.sanity_checking:
            self.swap(pl_module)
            self._swapped = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Swap the training weights back."""
        if self._swapped:
            self.swap(pl_module)
            self._swapped = False

    def state_dict(self) -> dict[str, Any]:
        """Averages and settings, saved in the checkpoint."""
        return {"decay": self.decay, "ema": {k: v.detach().cpu() for k, v in self.ema.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the averages (applied when fitting starts)."""
        self._loaded = dict(state_dict.get("ema", {})) or None
