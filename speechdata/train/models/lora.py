"""LoRA (low-rank adaptation) for the LM's linear layers.

``LoRALinear`` wraps a frozen ``nn.Linear`` ``W`` and adds a trainable low-rank update::

    y = W x + b + (alpha / rank) * B(A(dropout(x)))

``A`` (``rank x in``) starts Kaiming-uniform and ``B`` (``out x rank``) starts at zero, so a freshly
wrapped model computes exactly what it computed before. :func:`apply_lora` replaces the targeted
linears (by attribute name: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, ``fc1``, ``fc2``) in
a module tree and freezes every non-LoRA parameter of that tree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from speechdata.errors import ConfigError


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable rank-``rank`` update scaled by ``alpha / rank``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``W x + b + scaling * B A dropout(x)``."""
        update = nn.functional.linear(nn.functional.linear(self.drop(x), self.lora_a), self.lora_b)
        return self.base(x) + self.scaling * update

    def merged_weight(self) -> torch.Tensor:
        """The equivalent dense weight ``W + scaling * B A`` (for export or checks)."""
        return self.base.weight + self.scaling * (self.lora_b @ self.lora_a)


def apply_lora(
    module: nn.Module, rank: int, alpha: float, dropout: float = 0.0, targets: Sequence[str] = ()
) -> list[str]:
    """Wrap every ``nn.Linear`` child named in ``targets`` with :class:`LoRALinear`.

    Freezes all other parameters of ``module`` and returns the dotted names of the wrapped layers.
    Raises :class:`ConfigError` if no layer matches.
    """
    for p in module.parameters():
        p.requires_grad_(False)
    wrapped: list[str] = []
    target_set = set(targets)
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in target_set and isinstance(child, nn.Linear):
                setattr(parent, child_name, LoRALinear(child, rank, alpha, dropout))
                wrapped.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    if not wrapped:
        raise ConfigError(
            f"model.peft.lora_tuning.target_modules: {sorted(target_set)} match no linear layer of the LM "
            "(choose from q_proj, k_proj, v_proj, out_proj, fc1, fc2)"
        )
    return wrapped


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA parameters (``lora_a``, ``lora_b``) of a module tree."""
    return [p for m in module.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)]
