"""The options of ``speechdata bench`` and the run they describe; the entry point,
:mod:`speechdata.commands.bench`, adds the shared manifest key flags and calls these.

Example::

    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> run(p.parse_args(["train.jsonl", "--compare", "--repeats", "1"]))
    0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from speechdata.bench.corpus import load_dataset
from speechdata.bench.measure import run_benchmark
from speechdata.bench.report import plot
from speechdata.errors import ConfigError

HELP = "measure the loader against the decode floor and peers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``speechdata bench``."""
    p.add_argument(
        "source", metavar="CONFIG|MANIFEST|DIR", help="a YAML config, a manifest, or a dataset folder"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--section", default="train_ds", help="dataset section of a config (default: train_ds)")
    p.add_argument("--tokenizer", help="SentencePiece model (default: one trained on the manifests' text)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: the config's; 1 for a manifest)")
    p.add_argument("--batch-duration", type=float, help="seconds of audio per batch (padding-aware)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="runs per loader; figures are medians (default 3)")
    p.add_argument("--max-batches", type=int, help="stop each run after this many batches")
    p.add_argument("--compare", action="store_true", help="also run the decode floor, lhotse and webdataset")
    p.add_argument("--device", default="cpu", help="where batches are padded (default cpu)")
    p.add_argument("--json", help="write every figure to this JSON file")
    p.add_argument("--md", help="write the markdown table to this file")
    p.add_argument("--png", help="write a bar chart to this PNG")


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata bench``."""
    cfg, config_tok = load_dataset(args.source, args.overrides, args.section)
    changes: dict[str, Any] = {}
    if args.workers is not None:
        if args.workers < 0:
            raise ConfigError("--workers must be >= 0")
        changes["num_workers"] = args.workers
    if args.batch_duration is not None:
        if args.batch_duration <= 0:
            raise ConfigError("--batch-duration must be positive")
        changes["batch_duration"] = args.batch_duration
    cfg = dataclasses.replace(cfg, **changes)
    command = "speechdata bench " + " ".join(shlex.quote(a) for a in _argv(args))
    result = run_benchmark(
        cfg,
        args.tokenizer or config_tok,
        compare=args.compare,
        repeats=args.repeats,
        epochs=args.epochs,
        device=args.device,
        max_batches=args.max_batches,
        command=command,
        log=lambda line: print(line, file=sys.stderr),
    )
    table = result.markdown()
    print(table)
    if result.peers["speechdata"].drops:
        print("dropped: " + ", ".join(f"{k}={v}" for k, v in result.peers["speechdata"].drops.items()))
    if args.md:
        Path(args.md).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if args.png:
        plot(result, args.png)
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces this run (normalised from the parsed options)."""
    out = [args.source, *args.overrides]
    for name in (
        "section",
        "tokenizer",
        "workers",
        "batch_duration",
        "epochs",
        "repeats",
        "max_batches",
        "device",
    ):
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    if args.compare:
        out.append("--compare")
    for name in ("json", "md", "png"):
        if getattr(args, name):
            out += [f"--{name}", getattr(args, name)]
    return out
