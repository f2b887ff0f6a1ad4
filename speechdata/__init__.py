"""speechdata: audio-text batches for speech-augmented LLM training (NeMo SALM / BESTOW).

The public API::

    from speechdata import build_dataloader, load_config, dataset_config, load_index

    loader = build_dataloader("salm.yaml", tokenizer="tokenizer.model", device="cuda")
    for batch in loader:          # Batch dicts (docs/batch.md), padded on the device
        ...
    state = loader.state_dict()   # exact resume: loader.load_state_dict(state)

Heavy modules are imported on first use, so ``import speechdata`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from speechdata.config import DatasetConfig, FeatureConfig, dataset_config, load_config, load_yaml
from speechdata.errors import ConfigError, DataError, DropCounter, SpeechDataError, WorkerDiedError

__version__ = "0.1.0"

_LAZY = {
    "build_dataloader": "speechdata.loader",
    "SpeechDataLoader": "speechdata.loader",
    "Index": "speechdata.manifest",
    "ManifestKeys": "speechdata.manifest",
    "load_index": "speechdata.manifest",
    "load_audio": "speechdata.audio",
    "Tokenizer": "speechdata.text.tokenizer",
    "train_tokenizer": "speechdata.text.tokenizer",
    "load_tokenizer": "speechdata.text.tokenizer",
    "HFTokenizer": "speechdata.text.hf",
    "PromptBuilder": "speechdata.text.prompt",
    "BatchSampler": "speechdata.sampling.plan",
    "Batch": "speechdata.batch",
    "Position": "speechdata.sampling.position",
    "Source": "speechdata.sources",
    "open_source": "speechdata.sources",
}

__all__ = [
    "ConfigError",
    "DataError",
    "DatasetConfig",
    "DropCounter",
    "FeatureConfig",
    "SpeechDataError",
    "WorkerDiedError",
    "dataset_config",
    "load_config",
    "load_yaml",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'speechdata' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
