"""Architecture settings of the bundled tiny SALM / BESTOW models, read from the ``model`` section.

The ``model`` section is NeMo-shaped; the architecture keys are::

    model:
      arch: salm                 # salm | bestow
      freeze_llm: false
      freeze_audio_encoder: false
      freeze_modality_adapter: false
      peft:
        peft_scheme: null        # null | lora
        lora_tuning: {adapter_dim: 8, alpha: 16, adapter_dropout: 0.0}
      llm: {hidden_size: 64, num_layers: 2, num_attention_heads: 4, ffn_hidden_size: 256, ...}
      perception:
        preprocessor: {n_mels: 80, window_size: 0.025, window_stride: 0.01, ...}
        encoder: {d_model: 64, num_layers: 2, num_heads: 4, ffn_dim: 256, ...}
        modality_adapter: {hidden_size: 128, kernel_size: 3, ctc_weight: 0.0}  # ctc: SALM only
        xattn: {num_layers: 1, num_heads: 4, ffn_dim: 256}   # BESTOW only

Every key is checked by the config validator of the dataset sections
(:func:`speechdata.config.check_section`): unknown keys get a "did you mean", wrong types name the
key's full path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from speechdata.config import FeatureConfig, check_choice, check_keys, check_section, coerce
from speechdata.errors import ConfigError

ARCHS = ("salm", "bestow")
PEFT_SCHEMES = (None, "lora", "none")


@dataclass
class EncoderConfig:
    """Audio encoder: 8x conv subsampling (three stride-2 convs), then transformer blocks."""

    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int = 256
    subsampling_channels: int = 32
    dropout: float = 0.1


@dataclass
class AdapterConfig:
    """Modality adapter (conv + MLP on encoder frames) and projection to the LM width.

    ``ctc_weight`` (SALM only; 0: off) adds ``ctc_weight`` times a CTC loss of the audio
    embeddings (a linear head over the vocabulary plus a blank) against each single-audio
    example's answer tokens to the training loss, so that the embeddings the LM reads are
    word-aligned from the start (validation loss stays the LM's cross-entropy).
    """

    hidden_size: int = 128
    kernel_size: int = 3
    dropout: float = 0.0
    ctc_weight: float = 0.0

    def check(self, path: str) -> None:
        """The rules beyond each value's type (:func:`~speechdata.config.check_section` calls it)."""
        if self.ctc_weight < 0:
            raise ConfigError(f"{path}.ctc_weight: must be >= 0; got {self.ctc_weight}")


@dataclass
class LLMConfig:
    """Decoder-only LM (tiny GPT)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_attention_heads: int = 4
    ffn_hidden_size: int = 256
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    share_embeddings_and_output_weights: bool = True


@dataclass
class XAttnConfig:
    """BESTOW's cross-attention front: causal self-attention + cross-attention-to-audio blocks."""

    num_layers: int = 1
    num_heads: int = 4
    ffn_dim: int = 256
    dropout: float = 0.0


@dataclass
class LoraConfig:
    """LoRA on the LM's attention / MLP linears: ``W x + (alpha / rank) * B A dropout(x)``."""

    adapter_dim: int = 8
    alpha: float = 16.0
    adapter_dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    )

    def check(self, path: str) -> None:
        """The rules beyond each value's type (:func:`~speechdata.config.check_section` calls it)."""
        if self.adapter_dim <= 0:
            raise ConfigError(f"{path}.adapter_dim: must be positive; got {self.adapter_dim}")


@dataclass
class ModelConfig:
    """Everything needed to build a model; the token ids come from the tokenizer."""

    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int | None = None
    arch: str = "salm"
    sample_rate: int = 16000
    features: FeatureConfig = field(default_factory=FeatureConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    xattn: XAttnConfig = field(default_factory=XAttnConfig)
    lora: LoraConfig | None = None
    freeze_llm: bool = False
    freeze_audio_encoder: bool = False
    freeze_modality_adapter: bool = False


#: ``model`` keys that are not architecture (read elsewhere, accepted here).
OTHER_MODEL_KEYS = (
    "seed",
    "micro_batch_size",
    "global_batch_size",
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "resume_from_checkpoint",
    "tokenizer",
    "train_ds",
    "data",  # NeMo SpeechLLM configs keep train_ds / validation_ds under model.data
    "validation_ds",
    "test_ds",
    "optim",
    "precision",
)
_ARCH_KEYS = (
    "arch",
    "freeze_llm",
    "freeze_audio_encoder",
    "freeze_modality_adapter",
    "peft",
    "llm",
    "perception",
)
_PERCEPTION_KEYS = ("preprocessor", "encoder", "modality_adapter", "xattn")


def _plain(node: Any, path: str) -> Any:
    if isinstance(node, DictConfig):
        for key in node:
            if OmegaConf.is_missing(node, key):
                raise ConfigError(f"{path}.{key}: required value is missing (still '???')")
        return OmegaConf.to_container(node, resolve=True)
    return node


def model_config(
    model: DictConfig | Mapping[str, Any],
    *,
    vocab_size: int,
    pad_id: int,
    eos_id: int,
    bos_id: int | None = None,
    sample_rate: int = 16000,
    path: str = "model",
) -> ModelConfig:
    """Validate the architecture keys of a ``model`` section into a :class:`ModelConfig`."""
    check_keys(model, _ARCH_KEYS + OTHER_MODEL_KEYS, path)
    get = model.get
    arch = _plain(get("arch", "salm"), f"{path}.arch")
    check_choice(arch, ARCHS, f"{path}.arch")
    perception = _plain(get("perception"), f"{path}.perception") or {}
    if not isinstance(perception, Mapping):
        raise ConfigError(f"{path}.perception: expected a mapping")
    check_keys(perception, _PERCEPTION_KEYS, f"{path}.perception")
    pre = dict(perception.get("preprocessor") or {})
    pre_rate = pre.pop("sample_rate", None)
    if pre_rate is not None and int(pre_rate) != sample_rate:
        raise ConfigError(
            f"{path}.perception.preprocessor.sample_rate: {pre_rate} differs from the dataset's "
            f"sample_rate {sample_rate} (the loader resamples to the dataset's rate)"
        )
    features = check_section(pre, FeatureConfig, f"{path}.perception.preprocessor")
    adapter = check_section(
        perception.get("modality_adapter"), AdapterConfig, f"{path}.perception.modality_adapter"
    )
    if adapter.ctc_weight and arch != "salm":
        raise ConfigError(f"{path}.perception.modality_adapter.ctc_weight: only arch salm has a CTC head")
    flags = {}
    for key in ("freeze_llm", "freeze_audio_encoder", "freeze_modality_adapter"):
        flags[key] = coerce(_plain(get(key, False), f"{path}.{key}"), bool, f"{path}.{key}")
    return ModelConfig(
        vocab_size=vocab_size,
        pad_id=pad_id,
        eos_id=eos_id,
        bos_id=bos_id,
        arch=arch,
        sample_rate=sample_rate,
        features=features,
        encoder=check_section(perception.get("encoder"), EncoderConfig, f"{path}.perception.encoder"),
        adapter=adapter,
        llm=check_section(_plain(get("llm"), f"{path}.llm"), LLMConfig, f"{path}.llm"),
        xattn=check_section(perception.get("xattn"), XAttnConfig, f"{path}.perception.xattn"),
        lora=_lora(_plain(get("peft"), f"{path}.peft"), f"{path}.peft"),
        **flags,
    )


def _lora(peft: Any, path: str) -> LoraConfig | None:
    if peft is None:
        return None
    if not isinstance(peft, Mapping):
        raise ConfigError(f"{path}: expected a mapping with peft_scheme and lora_tuning")
    check_keys(peft, ("peft_scheme", "lora_tuning", "restore_from_path"), path)
    scheme = peft.get("peft_scheme")
    if scheme not in PEFT_SCHEMES:
        raise ConfigError(f"{path}.peft_scheme: must be null or 'lora'; got {scheme!r}")
    if peft.get("restore_from_path"):
        raise ConfigError(
            f"{path}.restore_from_path: restoring PEFT weights is not supported by the tiny trainer"
        )
    if scheme in (None, "none"):
        return None
    return check_section(peft.get("lora_tuning"), LoraConfig, f"{path}.lora_tuning")
