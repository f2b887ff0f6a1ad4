"""Batch forming: cut a sequence of entries into batches, bucket by bucket (docs/architecture.md,
"Planning and resume").

:func:`form_batches` is the one batch rule, shared by the epoch planner
(:func:`speechdata.sampling.plan.plan_epoch`) and the streaming bucketer
(:func:`speechdata.sampling.stream.bucketed_stream`): fixed sizes per bucket, or dynamic batches
whose padding-aware cost ``n × largest key`` fits ``batch_duration``, along a *soft* duration sort
(every key within ``1 + SOFT_SORT`` of the effective duration). The result is a
:class:`BatchTable` of index arrays, no Python lists.

Example::

    >>> table = form_batches(bucket, 4, eff, batch_duration=600.0, rng=np.random.default_rng(0))
    >>> len(table), table.positions(np.array([0]))
    (12, array([17, 3, 40, ...]))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SOFT_SORT", "BatchTable", "batch_capacity", "batch_cost", "form_batches"]


@dataclass(frozen=True)
class BatchTable:
    """Batches cut from a sequence of entries, as index arrays (no Python lists).

    ``order`` are positions into the input sequence, grouped by bucket. Batch ``j`` is
    ``order[start[j] : start[j] + length[j]]``; batches are sorted by ``bucket``. ``full`` is
    false for a batch that may have room left: with fixed sizes one shorter than its size, with
    dynamic batches the last batch of each bucket.
    """

    order: np.ndarray
    start: np.ndarray
    length: np.ndarray
    bucket: np.ndarray
    full: np.ndarray

    def __len__(self) -> int:
        return int(self.length.size)

    def positions(self, batches: np.ndarray) -> np.ndarray:
        """Input positions of the given batches, concatenated in the given order."""
        return self.order[_gather_ranges(self.start[batches], self.length[batches])]


def _gather_ranges(start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for each ``(s, l)``, vectorised."""
    length = length.astype(np.int64, copy=False)
    total = int(length.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    seg_begin = np.cumsum(length) - length
    return np.repeat(start.astype(np.int64) - seg_begin, length) + np.arange(total, dtype=np.int64)


#: Relative width of the random window in which entries of one bucket are sorted: an entry's sort
#: key is its effective duration times ``1 + SOFT_SORT * u`` (``u`` uniform in [0, 1)). Neighbours
#: in a batch then differ by about this fraction at most, which keeps padding around 1%, while
#: entries within the window still change places (and batch mates) every epoch.
SOFT_SORT = 0.02


def _soft_keys(effective: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Sort keys ``>= effective`` (so a cost bound from the key also bounds the duration)."""
    if rng is None:
        return effective
    return effective * (1.0 + SOFT_SORT * rng.random(effective.size))


def batch_capacity(key: np.ndarray, batch_duration: float, limit: int) -> np.ndarray:
    """Largest batch size whose longest entry has sort key ``key``: ``floor(B / key)``, >= 1."""
    with np.errstate(divide="ignore"):
        n = np.floor(batch_duration / key)
    n = np.where(n * key > batch_duration, n - 1, n)  # guard the rounding of the division
    return np.clip(n, 1, max(1, limit)).astype(np.int64)


def batch_cost(
    effective: np.ndarray,
    tokens: np.ndarray | None,
    batch_duration: float | None,
    batch_tokens: int | None,
) -> tuple[np.ndarray, float]:
    """The cost key of each entry and the budget that dynamic batches fit (``n × largest key <=
    budget``), from the budgets in seconds and in tokens.

    ``batch_duration`` alone: the effective duration and ``batch_duration``; ``batch_tokens``
    alone: the tokens and ``batch_tokens``; both: ``max(effective, tokens × batch_duration /
    batch_tokens)`` and ``batch_duration``, so that a batch within the budget is within both (the
    key of an entry is at least its share of either budget).
    """
    eff = np.asarray(effective, dtype=np.float64)
    if batch_tokens is None:
        if batch_duration is None:
            raise ValueError("batch_cost needs batch_duration or batch_tokens")
        return eff, float(batch_duration)
    if tokens is None:
        raise ValueError("batch_tokens needs each entry's tokens")
    tok = np.asarray(tokens, dtype=np.float64)
    if batch_duration is None:
        return tok, float(batch_tokens)
    return np.maximum(eff, tok * (float(batch_duration) / float(batch_tokens))), float(batch_duration)


def _greedy_starts(cap: np.ndarray, begin: int, end: int) -> list[np.ndarray]:
    """Greedy batch starts on ``[begin, end)`` where ``cap`` is non-increasing: each batch
    ``[s, e)`` is as long as possible with ``e - s <= cap[e - 1]``.

    ``cap`` is constant on runs; inside a run batches are cut every ``cap`` entries (one numpy
    call per run), and only a batch crossing runs is resolved run by run. The loop is over runs,
    whose number is the number of distinct batch sizes in the bucket (a handful to a few hundred).
    """
    seg = cap[begin:end]
    bounds = np.flatnonzero(np.diff(seg)) + 1 + begin
    run_a = np.concatenate(([begin], bounds)).tolist()
    run_b = np.concatenate((bounds, [end])).tolist()
    run_c = cap[np.asarray(run_a, dtype=np.int64)].tolist()
    out: list[np.ndarray] = []
    s, r, n_runs = begin, 0, len(run_a)
    while s < end:
        while run_b[r] <= s:
            r += 1
        b, c = run_b[r], run_c[r]
        k = (b - s) // c
        if k:
            out.append(np.arange(s, s + k * c, c, dtype=np.int64))
            s += k * c
            if s == b:
                continue
        out.append(np.array([s], dtype=np.int64))
        e = b
        for q in range(r + 1, n_runs):
            limit = s + run_c[q]
            if limit <= run_a[q]:
                break
            e = min(run_b[q], limit)
            if e < run_b[q]:
                break
        s = e
    return out


def form_batches(
    bucket: np.ndarray,
    num_buckets: int,
    effective: np.ndarray | None = None,
    *,
    sizes: np.ndarray | None = None,
    batch_duration: float | None = None,
    rng: np.random.Generator | None = None,
) -> BatchTable:
    """Cut a sequence of entries into batches, bucket by bucket. Shared by the epoch planner and
    the streaming bucketer.

    Either ``sizes`` (a fixed batch size per bucket) or ``batch_duration`` (dynamic batches)
    must be given. Within a bucket, entries are ordered by a soft sort key: their
    ``effective`` duration widened by a random factor of at most ``1 + SOFT_SORT`` drawn from
    ``rng`` (``rng=None``: exact duration order, ties in input order). Dynamic batches are cut
    greedily along that order with the padding-aware cost ``n × largest key <= batch_duration``;
    since every key is at least the effective duration, ``n × longest effective duration`` is
    within the budget too, and an entry over ``batch_duration`` forms a batch of one.

    Without ``effective`` (or with one bucket and fixed sizes) the input order is kept within
    each bucket: a single bucket means the caller asked for no duration grouping.
    """
    bucket = np.asarray(bucket)
    m = bucket.size
    dynamic = sizes is None
    if dynamic and (effective is None or batch_duration is None):
        raise ValueError("form_batches needs sizes, or effective durations and batch_duration")
    small = np.uint16 if num_buckets <= np.iinfo(np.uint16).max else np.int64
    # A stable sort of 16-bit keys is a radix sort in numpy: linear time.
    order = np.argsort(bucket.astype(small), kind="stable")
    counts = np.bincount(bucket.astype(np.int64), minlength=num_buckets).astype(np.int64)
    gstart = np.cumsum(counts) - counts
    if effective is not None and (dynamic or num_buckets > 1):
        key = _soft_keys(np.asarray(effective, dtype=np.float64), rng)[order]
        # Random keys have no ties, so an unstable sort is as deterministic as a stable one.
        kind = "stable" if rng is None else "quicksort"
        for g in np.flatnonzero(counts > 1).tolist():
            seg = slice(int(gstart[g]), int(gstart[g] + counts[g]))
            within = np.argsort(key[seg], kind=kind)
            order[seg] = order[seg][within]
            key[seg] = key[seg][within]
    if dynamic:
        assert batch_duration is not None
        cap = batch_capacity(key, batch_duration, m)
        starts: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        for g in np.flatnonzero(counts).tolist():
            starts += _greedy_starts(cap, int(gstart[g]), int(gstart[g] + counts[g]))
        start = np.concatenate(starts)
        length = np.diff(np.append(start, m)).astype(np.int64)
        batch_bucket = np.repeat(np.arange(num_buckets, dtype=np.int64), counts)[start] if m else start
        last = np.ones(start.size, dtype=bool)
        if start.size:
            last[:-1] = batch_bucket[1:] != batch_bucket[:-1]
        return BatchTable(order, start, length, batch_bucket, ~last)
    g_cap = np.asarray(sizes, dtype=np.int64)
    if g_cap.size != num_buckets:
        raise ValueError(f"{g_cap.size} batch sizes for {num_buckets} buckets")
    per_group = -(-counts // g_cap)
    batch_bucket = np.repeat(np.arange(num_buckets, dtype=np.int64), per_group)
    first = np.cumsum(per_group) - per_group
    within = np.arange(batch_bucket.size, dtype=np.int64) - np.repeat(first, per_group)
    b_cap = g_cap[batch_bucket]
    start = gstart[batch_bucket] + within * b_cap
    length = np.minimum(b_cap, gstart[batch_bucket] + counts[batch_bucket] - start)
    return BatchTable(order, start, length, batch_bucket, length == b_cap)
