"""``speechdata validate DIR``: every entry of a tarred dataset against its tars
(:mod:`speechdata.shards.validate`). Exit status 0 only when nothing is wrong.

Example::

    $ speechdata validate shards/
    shards/audio_3.tar:audio_000123.flac: cannot decode audio: ...
    speechdata validate: 1200 entries, 1 problem (decode=1), 0 orphan members
    $ speechdata validate /shared/train_tarred --executor ray
"""

from __future__ import annotations

import argparse

from speechdata.commands.options import add_key_options, manifest_keys_from

HELP = "check every entry of a tarred dataset against its tars"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``speechdata validate``."""
    parser.add_argument(
        "dir",
        metavar="DIR",
        help="tarred dataset folder (or a folder of bucket*/ datasets); a URL (s3://bucket/ds) is read from object storage",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes checking shards in parallel (default 1)"
    )
    parser.add_argument(
        "--executor",
        default="local",
        metavar="local|ray|ray://ADDRESS",
        help="where the shards are checked: local processes (--workers), or one Ray task per shard "
        "(ray, or ray://ADDRESS); the report is the same (default local)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_key_options(parser, default_context=False)


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata validate``: print every problem, then the summary; 1 if anything is wrong."""
    from speechdata.shards.validate import validate

    report = validate(
        args.dir,
        progress=not args.no_progress,
        workers=args.workers,
        executor=args.executor,
        keys=manifest_keys_from(args, tarred=True),
    )
    for _kind, message in report.problems:
        print(message)
    print(report.summary())
    return 0 if report.ok else 1
