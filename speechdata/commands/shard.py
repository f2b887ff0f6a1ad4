"""``speechdata shard MANIFEST...``: write manifests into NeMo-compatible tar shards
(:mod:`speechdata.shards.write`; the format is in docs/shards.md).

The output folder holds ``audio_{i}.tar``, ``sharded_manifests/``, ``tarred_audio_manifest.json``
and ``metadata.yaml`` (with ``--buckets``/``--bucket-bins``: one such folder per bucket). Every
entry keeps its manifest keys (``--answer-key``/``--context-key`` say which hold the texts, as in
the loader's config) and gains ``shard_id``, ``tar_offset`` and ``tar_size``. Each clip's span is
checked against its audio header first; writing is atomic per shard, a rerun after a crash
finishes the job, and the same inputs give byte-identical tars.

Example::

    $ speechdata shard train.jsonl --num-shards 8 --codec flac --shuffle --seed 1 --workers 2
    speechdata shard: 12000 entries, 20.12 h in 8 shards (0 reused), 1.21 GB -> train_tarred; none dropped
    $ speechdata shard qa.jsonl --answer-key output --context-key input --out qa_tarred/
    $ speechdata shard train.jsonl --out /shared/train_tarred --executor ray://head:10001
    $ speechdata shard s3://corpus/train.jsonl --num-shards 64   # -> s3://corpus/train_tarred

Manifests and clips may be on object storage: each clip's header is read by range requests when
the job is planned, and its bytes once when its shard is written (docs/object-storage.md).
"""

from __future__ import annotations

import argparse

from speechdata.commands.options import add_key_options, manifest_keys_from

HELP = "write manifests into NeMo-compatible tar shards"


def _bins(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated seconds like 2,5,10, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``speechdata shard``."""
    from speechdata.shards.codec import CODECS

    parser.add_argument(
        "manifests",
        nargs="+",
        metavar="MANIFEST",
        help="NeMo JSONL manifest(s): paths or object-storage URLs (s3://, gs://, https://, ...); the "
        "clips they name may be URLs too",
    )
    parser.add_argument(
        "--out",
        help="output folder (default: <manifest stem>_tarred beside the first manifest, a URL when "
        "the manifest is one), or an "
        "object-storage URL (s3://bucket/path, ...): written to a local staging folder in the cache "
        "folder, then uploaded object by object, the manifests and metadata last",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--num-shards", type=int, help="number of tar shards (per bucket)")
    size.add_argument("--shard-size", type=int, help="entries per shard")
    parser.add_argument("--shuffle", action="store_true", help="shuffle entries before sharding")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default 0)")
    parser.add_argument(
        "--sort-in-shards", action="store_true", help="sort entries by duration inside each shard"
    )
    parser.add_argument("--min-duration", type=float, help="drop entries with a clip shorter than this (s)")
    parser.add_argument("--max-duration", type=float, help="drop entries with a clip longer than this (s)")
    buckets = parser.add_mutually_exclusive_group()
    buckets.add_argument(
        "--buckets", type=int, help="K duration buckets of equal total duration (bucket1..bucketK)"
    )
    buckets.add_argument(
        "--bucket-bins", type=_bins, help="explicit bucket boundaries in seconds, e.g. 2,5,10"
    )
    parser.add_argument(
        "--codec", choices=CODECS, default="keep", help="keep the source bytes or re-encode (default keep)"
    )
    parser.add_argument("--sample-rate", type=int, help="resample to this rate (needs a re-encoding codec)")
    parser.add_argument(
        "--slice-with-offset",
        action="store_true",
        help="store only [offset, offset+duration] of each source (re-encoded) and set offset 0",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local processes checking the audio headers and (with --executor local) writing shards (default 1)",
    )
    parser.add_argument(
        "--executor",
        default="local",
        metavar="local|ray|ray://ADDRESS",
        help="where the shards are written: local processes (--workers), or one Ray task per shard "
        "on the cluster ray.init() finds (ray: RAY_ADDRESS, or the one ray start started here) or on "
        "ray://ADDRESS; the output is byte-identical (default local)",
    )
    parser.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="bad lines / missing audio: stop or count and skip",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # the entries are copied as they are (every key kept): the context is not needed, so no default
    add_key_options(parser, default_context=False)


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata shard``; prints the closing summary line."""
    from speechdata.shards.plan import ShardOptions
    from speechdata.shards.write import write_shards

    opts = ShardOptions(
        num_shards=args.num_shards,
        shard_size=args.shard_size,
        shuffle=args.shuffle,
        seed=args.seed,
        sort_in_shards=args.sort_in_shards,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        buckets=args.buckets,
        bucket_bins=args.bucket_bins,
        codec=args.codec,
        sample_rate=args.sample_rate,
        slice_with_offset=args.slice_with_offset,
        workers=args.workers,
        on_error=args.on_error,
        progress=not args.no_progress,
        executor=args.executor,
    )
    report = write_shards(args.manifests, args.out, opts, keys=manifest_keys_from(args))
    print(report.summary())
    return 0
