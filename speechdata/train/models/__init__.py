"""Tiny SALM / BESTOW speech LMs in plain torch.

``build_model(cfg)`` returns :class:`SALM` or :class:`BESTOW` from a :class:`ModelConfig`
(see :func:`speechdata.train.models.config.model_config` for reading it from a YAML ``model``
section).
"""

from __future__ import annotations

from speechdata.train.models.base import ModelOutput, SpeechLM, masked_cross_entropy
from speechdata.train.models.bestow import BESTOW
from speechdata.train.models.config import ModelConfig, model_config
from speechdata.train.models.lora import LoRALinear, apply_lora
from speechdata.train.models.salm import SALM


def build_model(cfg: ModelConfig) -> SpeechLM:
    """The model named by ``cfg.arch`` (``salm`` or ``bestow``)."""
    return SALM(cfg) if cfg.arch == "salm" else BESTOW(cfg)


__all__ = [
    "BESTOW",
    "SALM",
    "LoRALinear",
    "ModelConfig",
    "ModelOutput",
    "SpeechLM",
    "apply_lora",
    "build_model",
    "masked_cross_entropy",
    "model_config",
]
