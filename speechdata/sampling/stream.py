"""Buffered shuffling and bucketing for streamed sources (pipes, URLs) that cannot seek.

A stream has no Index to plan over, so batches are formed from a moving window of rows with the
same batch-forming code as the epoch planner (:func:`speechdata.sampling.batching.form_batches`):
fixed per-bucket sizes or dynamic ``batch_duration`` batches, duration buckets, soft sorting
within a bucket. Dealing shards to ranks and workers happens upstream (shard reader).

Example::

    >>> rng = np.random.default_rng([cfg.seed, epoch, rank, worker])
    >>> rows = shuffle_buffer(read_rows(shards), cfg.shuffle_n, rng)
    >>> for batch in bucketed_stream(rows, lambda r: r.duration, cfg, rng, cfg.bucket_buffer_size):
    ...     ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import TypeVar

import numpy as np

from speechdata.config import DatasetConfig
from speechdata.sampling.batching import form_batches
from speechdata.sampling.buckets import (
    assign_buckets,
    bucket_batch_sizes,
    configured_num_buckets,
    effective_duration,
    estimate_bins,
)

__all__ = ["bucketed_stream", "shuffle_buffer"]

T = TypeVar("T")

_DRAWS = 1024


def shuffle_buffer(rows: Iterable[T], n: int, rng: np.random.Generator) -> Iterator[T]:
    """Sample-level shuffle of a stream with a buffer of ``n`` rows (``shuffle_n``).

    The first ``n`` rows fill the buffer; then each incoming row replaces a uniformly chosen
    buffered row, which is yielded. At the end the rest of the buffer comes out in random order.
    ``n <= 1`` passes rows through unchanged. Every row is yielded exactly once.
    """
    if n <= 1:
        yield from rows
        return
    buf: list[T] = []
    draws = np.zeros(0, dtype=np.int64)
    used = 0
    for row in rows:
        if len(buf) < n:
            buf.append(row)
            continue
        if used == draws.size:
            draws, used = rng.integers(0, n, size=_DRAWS), 0
        j = int(draws[used])
        used += 1
        yield buf[j]
        buf[j] = row
    for j in rng.permutation(len(buf)).tolist():
        yield buf[j]


def bucketed_stream(
    rows: Iterable[T],
    duration_of: Callable[[T], float],
    cfg: DatasetConfig,
    rng: np.random.Generator,
    buffer_size: int,
    *,
    bins: Sequence[float] | None = None,
) -> Iterator[list[T]]:
    """Group a stream of rows into batches of similar duration.

    Rows are read ``buffer_size`` at a time. Each round, the new rows plus the rows carried over
    are bucketed and cut into batches exactly as the epoch planner does; batches that are
    complete are yielded (in random order when ``cfg.shuffle``) and each bucket's incomplete
    last batch is carried into the next round. When the stream ends every remaining batch is
    yielded, incomplete ones included, so no row is lost.

    Bins are ``bins`` if given, else ``cfg.bucket_duration_bins``, else estimated from the first
    round's durations (``num_buckets``, or 30 for dynamic batches), else there is one bucket.
    ``duration_of`` gives a row's duration in seconds (the sum over its clips).
    """
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
    edges: np.ndarray | None = None
    if bins is not None:
        edges = np.asarray(bins, dtype=np.float64)
    elif cfg.bucket_duration_bins is not None:
        edges = np.asarray(cfg.bucket_duration_bins, dtype=np.float64)
    dynamic = cfg.batch_duration is not None
    soft = rng if cfg.shuffle else None
    source = iter(rows)
    carried: list[T] = []
    while True:
        fresh = list(islice(source, buffer_size))
        block = carried + fresh
        if not block:
            return
        ended = len(fresh) < buffer_size
        d = np.fromiter((duration_of(r) for r in block), dtype=np.float64, count=len(block))
        if edges is None:
            k = configured_num_buckets(cfg) or 1
            edges = estimate_bins(d, k)
        num_buckets = int(edges.size) + 1
        bucket = assign_buckets(d, edges)
        eff = effective_duration(d, cfg.quadratic_duration)
        if dynamic:
            table = form_batches(bucket, num_buckets, eff, batch_duration=cfg.batch_duration, rng=soft)
        else:
            sizes = bucket_batch_sizes(cfg, num_buckets)
            table = form_batches(bucket, num_buckets, eff, sizes=sizes, rng=soft)
        emit = np.arange(len(table)) if ended else np.flatnonzero(table.full)
        if cfg.shuffle and emit.size > 1:
            emit = emit[rng.permutation(emit.size)]
        for j in emit.tolist():
            yield [block[p] for p in table.positions(np.array([j])).tolist()]
        if ended:
            return
        carry = np.flatnonzero(~table.full)
        carried = [block[p] for p in table.positions(carry).tolist()]
