"""``speechdata tokenizer train``: a SentencePiece tokenizer from the text of manifests.

The context and answer of every line (keys resolved as the loader resolves them) are the training
text; the audio locator and ``end_string`` become single user-defined pieces, so they are never
split. Ids: pad=0, unk=1, bos=2, eos=3, then ``<sep>`` and the user pieces.

Example::

    $ speechdata tokenizer train train.jsonl --vocab-size 1024 --audio-locator '|audio|' --out tok/
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from tqdm import tqdm

from speechdata.manifest import Index, ManifestKeys, load_index
from speechdata.text.tokenizer import MODEL_TYPES, train_tokenizer

HELP = "train a SentencePiece tokenizer from manifests' text"


def manifest_texts(index: Index, progress: bool = True) -> Iterator[str]:
    """Every context and answer of an Index, read back from the manifests."""
    for i in tqdm(range(len(index)), desc="reading text", unit="line", disable=not progress):
        rec = index.record(i)
        if rec.context:
            yield rec.context
        yield rec.answer


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``speechdata tokenizer train``."""
    p.add_argument("manifests", nargs="+", metavar="MANIFEST", help="JSONL manifests (.json, .jsonl, .gz)")
    p.add_argument("--out", required=True, help="folder for tokenizer.model and tokenizer.vocab")
    p.add_argument(
        "--vocab-size", type=int, default=1024, help="upper bound on the vocabulary (default 1024)"
    )
    p.add_argument("--model-type", choices=MODEL_TYPES, default="unigram", help="SentencePiece model type")
    p.add_argument("--audio-locator", help="the audio locator string, kept as one piece (e.g. '|audio|')")
    p.add_argument("--end-string", help="the end_string, kept as one piece")
    p.add_argument(
        "--answer-key", default="answer", help="manifest key of the answer (default: answer, else text)"
    )
    p.add_argument("--context-key", default="context", help="manifest key of the context (default: context)")
    p.add_argument("--no-byte-fallback", action="store_true", help="no byte pieces (smaller vocabularies)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata tokenizer train``."""
    index = load_index(args.manifests, ManifestKeys(answer_key=args.answer_key, context_key=args.context_key))
    symbols = [s for s in (args.audio_locator, args.end_string) if s]
    tok = train_tokenizer(
        manifest_texts(index),
        args.out,
        args.vocab_size,
        user_symbols=symbols,
        model_type=args.model_type,
        seed=args.seed,
        byte_fallback=not args.no_byte_fallback,
    )
    print(f"wrote {args.out}/tokenizer.model: {tok.vocab_size} pieces from {len(index)} lines")
    if index.drops.total():
        print(f"lines not used: {index.drops.summary()}")
    return 0
