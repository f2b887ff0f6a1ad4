"""``speechdata tokenizer train MANIFEST... --out DIR``: a SentencePiece tokenizer from the text of
manifests.

The context and answer of every line (keys resolved as the loader resolves them: ``--answer-key``,
``--context-key``), plus ``--default-context`` once, are the training text; the audio locator and
``end_string`` become single user-defined pieces, so they are never split. Ids: pad=0, unk=1,
bos=2, eos=3, then ``<sep>`` and the user pieces.

Example::

    $ speechdata tokenizer train train.jsonl --vocab-size 1024 --audio-locator '|audio|' --out tok/
"""

from __future__ import annotations

import argparse

from speechdata.commands.options import add_key_options, manifest_keys_from

HELP = "train a SentencePiece tokenizer from manifests' text"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``speechdata tokenizer train``."""
    from speechdata.text.tokenizer import MODEL_TYPES

    p.add_argument("manifests", nargs="+", metavar="MANIFEST", help="JSONL manifests (.json, .jsonl, .gz)")
    p.add_argument("--out", required=True, help="folder for tokenizer.model and tokenizer.vocab")
    p.add_argument(
        "--vocab-size", type=int, default=1024, help="upper bound on the vocabulary (default 1024)"
    )
    p.add_argument("--model-type", choices=MODEL_TYPES, default="unigram", help="SentencePiece model type")
    p.add_argument("--audio-locator", help="the audio locator string, kept as one piece (e.g. '|audio|')")
    p.add_argument("--end-string", help="the end_string, kept as one piece")
    p.add_argument("--no-byte-fallback", action="store_true", help="no byte pieces (smaller vocabularies)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    add_key_options(p)


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata tokenizer train``."""
    import dataclasses

    from speechdata.manifest import load_index
    from speechdata.text.tokenizer import train_tokenizer
    from speechdata.text.train_cli import tokenizer_texts

    keys = manifest_keys_from(args)
    # lines without a context are read without the default: it is trained on once, not per line
    index = load_index(args.manifests, dataclasses.replace(keys, default_context=None))
    symbols = [s for s in (args.audio_locator, args.end_string) if s]
    tok = train_tokenizer(
        tokenizer_texts(index, keys.default_context),
        args.out,
        args.vocab_size,
        user_symbols=symbols,
        model_type=args.model_type,
        seed=args.seed,
        byte_fallback=not args.no_byte_fallback,
    )
    print(f"wrote {args.out}/tokenizer.model: {tok.vocab_size} pieces from {len(index)} lines")
    if index.drops.total():
        print(f"lines not used: {index.drops.describe()}")
    return 0
