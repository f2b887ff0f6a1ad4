"""``speechdata inspect MANIFEST...|DIR``: what a dataset holds (:mod:`speechdata.inspect`).

Examples, hours, the lines dropped (by reason, with their first places and messages), duration and
text-length histograms and suggested bucket bins. ``--on-error skip`` (the default) reports bad
lines and goes on; ``--on-error raise`` stops at the first with its one-line error. A dataset with
no readable line is an error (exit 1). ``--png`` draws the duration histogram with the bins
(needs the ``plot`` extra), ``--json`` writes every figure. With ``--tokenizer`` the text is
measured in tokens of the formatted prompt (the prompt settings of ``--config``'s ``train_ds``,
else the defaults), and 2D bins and the padding on both axes at ``--batch-tokens`` are reported.

Example::

    $ speechdata inspect train.jsonl --num-buckets 8 --png hist.png
    $ speechdata inspect train_tarred/          # a tarred dataset, bucketed or not
    $ speechdata inspect manifests/             # every *.json[l][.gz] in the folder
    $ speechdata inspect qa.jsonl --answer-key output --context-key input
    $ speechdata inspect train.jsonl --tokenizer tok/ --config salm.yaml --token-equivalent-duration 0.08
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from speechdata.commands.options import add_key_options, key_values, manifest_keys_from

if TYPE_CHECKING:
    from speechdata.config import DatasetConfig

HELP = "dataset statistics: hours, histograms, suggested bucket bins"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``speechdata inspect``."""
    p.add_argument(
        "paths",
        nargs="+",
        metavar="MANIFEST|DIR",
        help="manifests, or a folder (tarred dataset or manifests); paths or URLs (s3://..., https://...)",
    )
    p.add_argument("--num-buckets", type=int, default=8, help="buckets for the suggested bins (default 8)")
    p.add_argument("--bins", type=int, default=20, help="histogram bars (default 20)")
    p.add_argument(
        "--tokenizer",
        help="tokenizer (SentencePiece model or tokenizer.json): text length in tokens, 2D bins, padding per axis",
    )
    p.add_argument(
        "--config", help="with --tokenizer: the YAML whose train_ds prompt settings format the text"
    )
    p.add_argument(
        "--token-equivalent-duration",
        type=float,
        metavar="SECONDS",
        help="with --tokenizer: seconds per audio token; 2D bins are then over input tokens (use_multimodal_sampling)",
    )
    p.add_argument(
        "--num-subbuckets", type=int, default=4, help="output-token buckets per bucket of 2D bins (default 4)"
    )
    p.add_argument(
        "--batch-tokens", type=int, default=4096, help="token budget of the padding report (default 4096)"
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

    from speechdata.errors import ConfigError, DropCounter
    from speechdata.inspect import (
        check_readable,
        compute_stats,
        plot,
        render,
        resolve_manifests,
        token_measures,
    )
    from speechdata.manifest import load_index

    if min(args.num_buckets, args.bins, args.num_subbuckets, args.batch_tokens) < 1:
        raise ConfigError("--num-buckets, --bins, --num-subbuckets and --batch-tokens must be at least 1")
    manifests, tarred = resolve_manifests(args.paths)
    index = load_index(manifests, manifest_keys_from(args, tarred=tarred), on_error=args.on_error)
    check_readable(index, args.paths)
    measures = keep = None
    if args.tokenizer:
        cfg = _prompt_config(args, tarred)
        drops = DropCounter()
        measures, keep = token_measures(index, args.tokenizer, cfg, drops)
        if drops.total():
            print(f"prompts not built (left out of the token figures): {drops.describe()}")
    elif args.config or args.token_equivalent_duration is not None:
        raise ConfigError("--config and --token-equivalent-duration need --tokenizer")
    stats = compute_stats(
        index,
        num_buckets=args.num_buckets,
        bins=args.bins,
        measures=measures,
        keep=keep,
        num_subbuckets=args.num_subbuckets,
        batch_tokens=args.batch_tokens,
        token_equivalent_duration=args.token_equivalent_duration,
    )
    print(render(stats))
    if args.png:
        plot(stats, index, args.png)
        print(f"wrote {args.png}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(stats), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _prompt_config(args: argparse.Namespace, tarred: bool) -> DatasetConfig:
    """The dataset config that formats the text: ``--config``'s ``train_ds`` (its prompt keys),
    with the key flags and ``--token-equivalent-duration`` on top."""
    from speechdata.config import dataset_config, load_config, make_dataset_config

    values: dict[str, Any] = {}
    if args.config:
        values = dataset_config(load_config(args.config), "train_ds").to_dict()
        for key in (
            "manifest_filepath",
            "tarred_audio_filepaths",
            "input_cfg",
            "concat_sampling_probabilities",
        ):
            values.pop(key, None)
    values.update(key_values(args), is_tarred=tarred)
    if args.token_equivalent_duration is not None:
        values.update(token_equivalent_duration=args.token_equivalent_duration, use_multimodal_sampling=True)
    return make_dataset_config(values, "inspect")
