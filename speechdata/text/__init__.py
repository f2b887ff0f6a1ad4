"""The text stage: tokenizers of two kinds (SentencePiece, Hugging Face ``tokenizer.json``), chat
templates, and prompt formatting (docs/tokenizers.md, docs/configuration.md,
docs/differences-from-nemo.md). The Hugging Face kind is imported on first use."""

from __future__ import annotations

import importlib
from typing import Any

from speechdata.text.prompt import Prompt, PromptBuilder
from speechdata.text.tokenizer import TextTokenizer, Tokenizer, load_tokenizer, train_tokenizer

_LAZY = {
    "HFTokenizer": "speechdata.text.hf",
    "train_hf_tokenizer": "speechdata.text.hf",
    "ChatTemplate": "speechdata.text.chat",
}

__all__ = [
    "Prompt",
    "PromptBuilder",
    "TextTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "train_tokenizer",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'speechdata.text' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
