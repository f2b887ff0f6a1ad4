"""The text stage: SentencePiece tokenizer and prompt formatting (SPEC §4)."""

from speechdata.text.prompt import Prompt, PromptBuilder
from speechdata.text.tokenizer import Tokenizer, train_tokenizer

__all__ = ["Prompt", "PromptBuilder", "Tokenizer", "train_tokenizer"]
