"""A very small SALM/BESTOW model config for tests (fast on one CPU thread)."""

from __future__ import annotations

from typing import Any

from speechdata.config import FeatureConfig
from speechdata.train.models import ModelConfig
from speechdata.train.models.config import AdapterConfig, EncoderConfig, LLMConfig, XAttnConfig
from speechdata.train.synthetic import SyntheticSpec

#: The synthetic batches' spec of the model tests (a 24-token vocabulary).
SYNTH = SyntheticSpec(vocab_size=24, num_classes=4, max_audios=3, min_seconds=0.1, max_seconds=0.3)


def tiny_config(
    arch: str, ids: Any, *, llm_layers: int = 2, ctc_weight: float = 0.0, **kw: Any
) -> ModelConfig:
    """A tiny ``arch`` model (no dropout) whose vocabulary and special ids are those of ``ids`` (a
    tokenizer or a :class:`~speechdata.train.synthetic.SyntheticSpec`: ``vocab_size``,
    ``pad_id``, ``eos_id``, ``bos_id``); ``kw`` replaces any other field."""
    base: dict[str, Any] = {
        "vocab_size": ids.vocab_size,
        "pad_id": ids.pad_id,
        "eos_id": ids.eos_id,
        "bos_id": ids.bos_id,
        "arch": arch,
        "features": FeatureConfig(n_mels=16),
        "encoder": EncoderConfig(
            d_model=32, num_layers=1, num_heads=2, ffn_dim=64, subsampling_channels=8, dropout=0.0
        ),
        "adapter": AdapterConfig(hidden_size=32, ctc_weight=ctc_weight),
        "llm": LLMConfig(hidden_size=32, num_layers=llm_layers, num_attention_heads=2, ffn_hidden_size=64),
        "xattn": XAttnConfig(num_layers=1, num_heads=2, ffn_dim=64),
    }
    base.update(kw)
    return ModelConfig(**base)
