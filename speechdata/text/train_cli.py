"""The text a tokenizer is trained on, read back from manifests (``speechdata tokenizer train``
and ``speechdata bench``'s default tokenizer; the command is :mod:`speechdata.commands.tokenizer_train`).

Example::

    >>> index = load_index("train.jsonl")
    >>> train_tokenizer(tokenizer_texts(index, "Transcribe the audio."), "tok/", 1024)
"""

from __future__ import annotations

from collections.abc import Iterator

from tqdm import tqdm

from speechdata.manifest import Index


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
