"""``speechdata inspect MANIFEST...|DIR``: what a dataset holds (:mod:`speechdata.inspect`).

Examples, hours, the lines dropped (by reason, with their first places and messages), duration and
text-length histograms and suggested bucket bins. ``--on-error skip`` (the default) reports bad
lines and goes on; ``--on-error raise`` stops at the first with its one-line error. A dataset with
no readable line is an error (exit 1). ``--png`` draws the duration histogram with the bins
(needs the ``plot`` extra), ``--json`` writes every figure.

Example::

    $ speechdata inspect train.jsonl --num-buckets 8 --png hist.png
    $ speechdata inspect train_tarred/          # a tarred dataset, bucketed or not
    $ speechdata inspect manifests/             # every *.json[l][.gz] in the folder
    $ speechdata inspect qa.jsonl --answer-key output --context-key input
"""

from __future__ import annotations

import argparse

from speechdata.commands.options import add_key_options, manifest_keys_from

HELP = "dataset statistics: hours, histograms, suggested bucket bins"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``speechdata inspect``."""
    p.add_argument(
        "paths",
        nargs="+",
        metavar="MANIFEST|DIR",
        help="manifests, or a folder (tarred dataset or manifests)",
    )
    p.add_argument("--num-buckets", type=int, default=8, help="buckets for the suggested bins (default 8)")
    p.add_argument("--bins", type=int, default=20, help="histogram bars (default 20)")
    p.add_argument(
        "--tokenizer", help="SentencePiece model: report text length in tokens instead of characters"
    )
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="skip",
        help="bad lines: count and report them (skip, the default) or stop at the first (raise)",
    )
    p.add_argument("--png", help="write the duration histogram with the bins to this PNG")
    p.add_argument("--json", help="write every figure to this JSON file")
    add_key_options(p)


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata inspect``."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from speechdata.errors import ConfigError
    from speechdata.inspect import (
        check_readable,
        compute_stats,
        plot,
        render,
        resolve_manifests,
        token_lengths,
    )
    from speechdata.manifest import load_index

    if args.num_buckets < 1 or args.bins < 1:
        raise ConfigError("--num-buckets and --bins must be at least 1")
    manifests, tarred = resolve_manifests(args.paths)
    index = load_index(manifests, manifest_keys_from(args, tarred=tarred), on_error=args.on_error)
    check_readable(index, args.paths)
    lengths = token_lengths(index, args.tokenizer) if args.tokenizer else None
    stats = compute_stats(index, num_buckets=args.num_buckets, bins=args.bins, token_lengths=lengths)
    print(render(stats))
    if args.png:
        plot(stats, index, args.png)
        print(f"wrote {args.png}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(stats), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
