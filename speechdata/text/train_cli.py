"""The text a tokenizer is trained on, read back from manifests, and the one training entry of
both tokenizer kinds (``speechdata tokenizer train``, whose command is
:mod:`speechdata.commands.tokenizer_train`, and ``speechdata bench``'s default tokenizer).

Example::

    >>> index = load_index("train.jsonl")
    >>> train_tokenizer(tokenizer_texts(index, "Transcribe the audio."), "tok/", 1024)
    >>> train_kind("hf", tokenizer_texts(index), "tok_hf/", 1024, ["|audio|"])
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from tqdm import tqdm

from speechdata.manifest import Index

if TYPE_CHECKING:
    from speechdata.text.hf import AnyTokenizer

#: The tokenizer kinds ``speechdata tokenizer train --kind`` writes: a SentencePiece
#: ``tokenizer.model`` or a Hugging Face byte-level BPE ``tokenizer.json``.
TOKENIZER_KINDS = ("sentencepiece", "hf")


def manifest_texts(index: Index, progress: bool = True) -> Iterator[str]:
    """Every context and answer of an Index, read back from the manifests."""
    for i in tqdm(range(len(index)), desc="reading text", unit="line", disable=not progress):
        rec = index.record(i)
        if rec.context:
            yield rec.context
        yield rec.answer


def tokenizer_texts(index: Index, default_context: str | None = None, progress: bool = True) -> Iterator[str]:
    """The training text of a tokenizer: :func:`manifest_texts`, then ``default_context`` once
    (read the Index without a default context, so that it is not repeated for every line)."""
    yield from manifest_texts(index, progress)
    if default_context:
        yield default_context


def train_kind(
    kind: str,
    texts: Iterable[str],
    out_dir: str | os.PathLike[str],
    vocab_size: int,
    user_symbols: Sequence[str] = (),
    *,
    model_type: str = "unigram",
    seed: int = 0,
    byte_fallback: bool = True,
    prompt_format: str | None = None,
) -> AnyTokenizer:
    """Train a tokenizer of ``kind`` (:data:`TOKENIZER_KINDS`) with ``user_symbols`` (the audio
    locator, ``end_string``) as single tokens: :func:`~speechdata.text.tokenizer.train_tokenizer`
    (``model_type``, ``seed``, ``byte_fallback`` apply to it) or
    :func:`~speechdata.text.hf.train_hf_tokenizer` (byte-level BPE: no model type, no randomness,
    bytes always; ``prompt_format`` adds a format's tokens and chat template)."""
    if kind == "hf":
        from speechdata.text.hf import train_hf_tokenizer

        return train_hf_tokenizer(texts, out_dir, vocab_size, user_symbols, prompt_format=prompt_format)
    if prompt_format is not None:
        from speechdata.errors import ConfigError

        raise ConfigError("--prompt-format: only for --kind hf")
    if kind == "sentencepiece":
        from speechdata.text.tokenizer import train_tokenizer

        return train_tokenizer(
            texts,
            out_dir,
            vocab_size,
            user_symbols=user_symbols,
            model_type=model_type,
            seed=seed,
            byte_fallback=byte_fallback,
        )
    from speechdata.errors import ConfigError

    raise ConfigError(f"tokenizer kind must be one of {', '.join(TOKENIZER_KINDS)}; got {kind!r}")
