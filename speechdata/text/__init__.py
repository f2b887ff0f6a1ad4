"""The text stage: SentencePiece tokenizer and prompt formatting (docs/configuration.md, docs/differences-from-nemo.md)."""

from speechdata.text.prompt import Prompt, PromptBuilder
from speechdata.text.tokenizer import Tokenizer, train_tokenizer

__all__ = ["Prompt", "PromptBuilder", "Tokenizer", "train_tokenizer"]
