"""Sequence packing, planned (docs/packing.md): examples into rows of ``packed_sequence_size`` tokens.

With ``packing: true`` the planner's unit is a *row*: several examples whose tokens (text plus
audio tokens, :attr:`Measures.tokens <speechdata.sampling.tokens.Measures.tokens>`) fit
``packed_sequence_size`` and, with ``packed_audio_duration``, whose audio fits that many seconds.
A batch is ``micro_batch_size`` rows. Everything here is a pure function of the epoch's entries and
its generator, so packing is deterministic, resumes by the planner's position and deals the same
number of batches to every rank, like any other plan (:func:`~speechdata.sampling.plan.plan_epoch`).

* :func:`packing_cost` — one integer per example: what it takes of a row, in tokens; with an audio
  budget, ``max(tokens, ceil(seconds × packed_sequence_size / packed_audio_duration))``, so a row
  whose costs sum to at most ``packed_sequence_size`` is within both budgets;
* :func:`pack_rows` — best-fit decreasing: examples by decreasing cost (ties in random order), each
  into the open row it fills best, else a new row;
* :func:`row_table` — rows in a soft order of how full they are, cut ``micro_batch_size`` at a
  time into the planner's :class:`~speechdata.sampling.batching.BatchTable` (whose batches the
  planner shuffles), with each example's row within its batch;
* :class:`RowBatch` — what the sampler yields for a packed batch: the example ids (a ``list``, as
  for any batch) with the row of each.

Example::

    >>> cost = packing_cost(duration, tokens, cfg)
    >>> order, lengths = pack_rows(cost, 512, np.random.default_rng(0))
    >>> lengths[:4]                      # examples per row
    array([3, 5, 4, 6])
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from speechdata.sampling.batching import SOFT_SORT, BatchTable

__all__ = ["RowBatch", "pack_rows", "packing_cost", "row_table"]


class RowBatch(list):  # type: ignore[type-arg]
    """A packed batch as the sampler yields it: the example ids in row order (a plain ``list`` of
    ints for every consumer of batches), and ``rows``, the row of each example within the batch
    (non-decreasing, from 0)."""

    def __init__(self, ids: list[int], rows: list[int]) -> None:
        super().__init__(ids)
        if len(rows) != len(ids):
            raise ValueError(f"RowBatch: {len(rows)} rows for {len(ids)} examples")
        self.rows = rows

    def __reduce__(self) -> tuple[Any, ...]:
        return (RowBatch, (list(self), self.rows))


def packing_cost(
    duration: np.ndarray,
    tokens: np.ndarray,
    packed_sequence_size: int,
    packed_audio_duration: float | None,
) -> np.ndarray:
    """Each example's share of a row in tokens (int64; see the module docstring)."""
    cost = np.asarray(tokens, dtype=np.int64)
    if packed_audio_duration is None:
        return cost.copy()
    seconds = np.asarray(duration, dtype=np.float64)
    # forgive the float32 rounding of the Index's seconds, as the audio tokens do
    share = np.ceil(seconds * (packed_sequence_size / packed_audio_duration) * (1 - 1e-6)).astype(np.int64)
    return np.maximum(cost, share)


def pack_rows(
    cost: np.ndarray, capacity: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit decreasing packing of items of ``cost`` into rows of ``capacity``.

    Items are taken by decreasing cost (equal costs in ``rng``'s random order, or input order
    without ``rng``); each goes into the open row whose room left is the smallest that holds it,
    else it opens a row. An item costing more than ``capacity`` is a row of its own (the filters
    drop such examples before planning). Returns ``order`` (item positions grouped by row, rows in
    the order they were opened, items of a row in the order they were placed) and the items per
    row. Best-fit decreasing uses at most ``11/9 OPT + 1`` rows; on many small items its rows are
    nearly full.
    """
    cost = np.asarray(cost, dtype=np.int64)
    n = cost.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pre = rng.permutation(n) if rng is not None else np.arange(n)
    by_cost = pre[np.argsort(-cost[pre], kind="stable")]
    row_of = np.empty(n, dtype=np.int64)
    room: list[int] = []  # sorted rooms of the open rows that still hold something
    rows_at: dict[int, list[int]] = {}  # room -> rows with that room (last opened last)
    opened = 0
    for i, c in zip(by_cost.tolist(), cost[by_cost].tolist(), strict=True):
        k = bisect.bisect_left(room, c)
        if k < len(room):
            r_room = room[k]
            bucket = rows_at[r_room]
            row = bucket.pop()
            if not bucket:
                del rows_at[r_room]
                room.pop(k)
            left = r_room - c
        else:
            row, left = opened, capacity - c
            opened += 1
        row_of[i] = row
        if left > 0:
            bucket = rows_at.get(left)
            if bucket is None:
                rows_at[left] = [row]
                bisect.insort(room, left)
            else:
                bucket.append(row)
    placed = np.empty(n, dtype=np.int64)
    placed[by_cost] = np.arange(n)
    order = np.lexsort((placed, row_of))
    return order, np.bincount(row_of, minlength=opened).astype(np.int64)


def row_table(
    order: np.ndarray,
    row_lengths: np.ndarray,
    row_cost: np.ndarray,
    rows_per_batch: int,
    rng: np.random.Generator | None,
) -> tuple[BatchTable, np.ndarray]:
    """Rows (``order`` grouped by ``row_lengths``, from :func:`pack_rows`; ``row_cost`` the cost
    each holds) cut every ``rows_per_batch`` rows into batches, rows ordered by a *soft* sort on
    their cost (the cost widened by a random factor of at most ``1 + SOFT_SORT`` from ``rng``,
    exact without ``rng``), so that batch mates are about as full and a batch padded to its
    longest row wastes little; the planner shuffles the batches. Returns the planner's
    :class:`BatchTable` (one bucket; ``full`` false for a batch of fewer rows) and, aligned with
    ``table.order``, each example's row within its batch."""
    r = int(row_lengths.size)
    key = np.asarray(row_cost, dtype=np.float64)
    if rng is not None:
        key = key * (1.0 + SOFT_SORT * rng.random(r))
    perm = np.argsort(-key, kind="stable")
    row_start = np.cumsum(row_lengths) - row_lengths
    lengths = row_lengths[perm]
    total = int(lengths.sum())
    seg = np.cumsum(lengths) - lengths
    within = np.arange(total, dtype=np.int64) - np.repeat(seg, lengths)
    new_order = order[np.repeat(row_start[perm], lengths) + within]
    row_rank = np.repeat(np.arange(r, dtype=np.int64), lengths)
    row_in_batch = row_rank % rows_per_batch
    n_batches = -(-r // rows_per_batch)
    batch_of_row = np.arange(r, dtype=np.int64) // rows_per_batch
    per_batch = np.bincount(batch_of_row, weights=lengths, minlength=n_batches).astype(np.int64)
    rows_in = np.bincount(batch_of_row, minlength=n_batches)
    start = np.cumsum(per_batch) - per_batch
    table = BatchTable(
        new_order,
        start.astype(np.int64),
        per_batch,
        np.zeros(n_batches, dtype=np.int64),
        rows_in == rows_per_batch,
    )
    return table, row_in_batch
