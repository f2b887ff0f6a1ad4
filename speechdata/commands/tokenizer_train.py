"""``speechdata tokenizer train MANIFEST... --out DIR``: a tokenizer from the text of manifests.

The context and answer of every line (keys resolved as the loader resolves them: ``--answer-key``,
``--context-key``), plus ``--default-context`` once, are the training text; the audio locator and
``end_string`` become single tokens, so they are never split.

``--kind sentencepiece`` (the default) writes ``tokenizer.model`` and ``tokenizer.vocab``; ids:
pad=0, unk=1, bos=2, eos=3, then ``<sep>`` and the user pieces. ``--kind hf`` writes a byte-level
BPE ``tokenizer.json`` and ``tokenizer_config.json`` (transformers loads the folder); ids:
``<pad>``=0, ``<s>``=1, ``</s>``=2, ``<sep>``=3, then the audio locator and ``end_string`` as
special added tokens (docs/tokenizers.md).

Example::

    $ speechdata tokenizer train train.jsonl --vocab-size 1024 --audio-locator '|audio|' --out tok/
    $ speechdata tokenizer train train.jsonl --kind hf --audio-locator '|audio|' --out tok_hf/
    $ speechdata tokenizer train conversations.jsonl --kind hf --prompt-format qwen --out tok_qwen/
"""

from __future__ import annotations

import argparse

from speechdata.commands.options import add_key_options, manifest_keys_from

HELP = "train a SentencePiece or Hugging Face (byte-level BPE) tokenizer from manifests' text"

#: Options of the SentencePiece trainer only, as (dest, flag).
_SENTENCEPIECE_ONLY = (
    ("model_type", "--model-type"),
    ("no_byte_fallback", "--no-byte-fallback"),
    ("seed", "--seed"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``speechdata tokenizer train``."""
    from speechdata.text.tokenizer import MODEL_TYPES
    from speechdata.text.train_cli import TOKENIZER_KINDS

    p.add_argument("manifests", nargs="+", metavar="MANIFEST", help="JSONL manifests (.json, .jsonl, .gz)")
    p.add_argument(
        "--out",
        required=True,
        help="folder for tokenizer.model and tokenizer.vocab (--kind hf: tokenizer.json and tokenizer_config.json)",
    )
    p.add_argument(
        "--kind",
        choices=TOKENIZER_KINDS,
        default="sentencepiece",
        help="sentencepiece (default) or hf: a Hugging Face byte-level BPE tokenizer.json",
    )
    p.add_argument(
        "--vocab-size", type=int, default=1024, help="upper bound on the vocabulary (default 1024)"
    )
    p.add_argument("--audio-locator", help="the audio locator string, kept as one token (e.g. '|audio|')")
    p.add_argument("--end-string", help="the end_string, kept as one token")
    p.add_argument(
        "--prompt-format",
        choices=("llama3", "qwen", "gemma"),
        help="--kind hf: add this format's special tokens, make its end-of-turn token the EOS and "
        "write its chat template (docs/conversations.md)",
    )
    sp = p.add_argument_group("sentencepiece only")
    sp.add_argument("--model-type", choices=MODEL_TYPES, help="SentencePiece model type (default unigram)")
    sp.add_argument("--no-byte-fallback", action="store_true", help="no byte pieces (smaller vocabularies)")
    sp.add_argument("--seed", type=int, help="training seed (default 0)")
    add_key_options(p)


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata tokenizer train``."""
    import dataclasses

    from speechdata.errors import ConfigError
    from speechdata.manifest import load_index
    from speechdata.text.train_cli import tokenizer_texts, train_kind

    if args.kind != "sentencepiece":
        given = [flag for dest, flag in _SENTENCEPIECE_ONLY if getattr(args, dest) not in (None, False)]
        if given:
            raise ConfigError(f"{', '.join(given)}: only for --kind sentencepiece, not --kind {args.kind}")
    keys = manifest_keys_from(args)
    # lines without a context are read without the default: it is trained on once, not per line
    index = load_index(args.manifests, dataclasses.replace(keys, default_context=None))
    symbols = [s for s in (args.audio_locator, args.end_string) if s]
    tok = train_kind(
        args.kind,
        tokenizer_texts(index, keys.default_context),
        args.out,
        args.vocab_size,
        symbols,
        model_type=args.model_type or "unigram",
        seed=args.seed or 0,
        byte_fallback=not args.no_byte_fallback,
        prompt_format=args.prompt_format,
    )
    files = "tokenizer.json and tokenizer_config.json" if args.kind == "hf" else "tokenizer.model"
    print(f"wrote {args.out}/{files}: {tok.vocab_size} tokens from {len(index)} lines")
    if index.drops.total():
        print(f"lines not used: {index.drops.describe()}")
    return 0
