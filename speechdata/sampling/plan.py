"""The epoch planner (docs/architecture.md, "Planning and resume"): (Index columns, config, seed,
epoch, rank, world) -> batches of ids.

Planning is pure and vectorised (numpy): the same inputs give the same plan on any machine, and
an epoch of a million examples is planned in a fraction of a second. One epoch is built in four
steps, all driven by one generator ``numpy.random.default_rng([seed, epoch])`` that every rank
seeds identically:

1. **Mixing** (several manifests, see :func:`epoch_entries`). Without weights the epoch is the
   kept examples, each once. With weights ``w`` (``concat_sampling_probabilities``, or
   ``temperature``: ``w_i ∝ n_i ** (1 / T)``, or ``round-robin``: equal) the epoch still has
   ``N`` entries (``N`` = kept examples over all datasets); dataset ``i`` contributes exactly
   ``c_i`` of them, ``c_i`` being ``w_i * N`` rounded by largest remainder (so ``sum c_i = N``
   and ``|c_i / N - w_i| <= 1 / N``). A dataset is drawn without replacement from a fresh
   permutation; a dataset with fewer than ``c_i`` examples is re-cycled with another fresh
   permutation each time it runs out (up-sampling), one with more gives a fresh random subset
   each epoch (down-sampling).
2. **Bucketing and batch forming** (:func:`form_batches`). Entries are shuffled (``shuffle``)
   and grouped by bucket. Within a bucket they are ordered by a *soft* sort key, the effective
   duration (``d + d**2 / quadratic_duration``) times a random factor in ``[1, 1 + SOFT_SORT)``
   (2%): batch mates have nearly equal durations, so padding stays around 1%, yet entries within
   that window trade places every epoch. With ``batch_duration`` each bucket is cut greedily
   along that order into the longest batches whose padding-aware cost ``n × largest key`` fits
   the budget; every key is at least its effective duration, so ``n × longest effective
   duration <= batch_duration`` holds for every batch, and an entry longer than the budget is a
   batch of one. With fixed sizes a bucket is cut every ``size`` entries (one bucket and fixed
   sizes: no duration sorting at all, the shuffled or index order is kept).
3. **Ordering** (``bucketing_strategy``): ``fully_randomized`` puts all batches in one random
   order; ``synced_randomized`` groups each bucket's batches ``world_size`` at a time, so at
   such a step all ranks hold a batch of the same bucket; the leftovers of all buckets (fewer
   than ``world_size`` each), concatenated in bucket order, are cut into further groups of
   ``world_size``, each spanning adjacent buckets (near-equal shapes; rank ``r`` holds the
   ``r``-th, in bucket order); then all groups are shuffled together (:func:`_synced_groups`).
   ``fixed_order`` keeps buckets in increasing duration. ``shuffle: false`` disables every
   random step (index order within buckets, buckets in order, a bucket's whole groups before the
   groups of leftovers); strategies then only differ in how ranks are dealt.
4. **Dealing to ranks**. Step ``k`` of rank ``r`` is slot ``k * world_size + r`` of the ordered
   list, so every rank has the same number of batches and no batch (hence, without mixing
   repeats, no example) is on two ranks. When the batches do not divide evenly, ``drop_last``
   drops the tail, otherwise batches are repeated to fill the last step (the first ones; under
   ``synced_randomized`` those of the last, incomplete group of leftovers); either way fewer
   than ``world_size`` batches. Both are counted in :class:`Plan` (``dropped``, ``repeated``,
   in examples over all ranks). A position of version 1 inside an epoch finishes it by version
   1's ``synced_randomized`` rule, in which each bucket's leftovers were dropped or filled on
   their own (:func:`_synced_groups_v1`; :mod:`~speechdata.sampling.position`). With fixed
   batch sizes ``drop_last`` also drops the incomplete last batch of each bucket (PyTorch/NeMo
   meaning of the key). The ids ``drop_last`` left out are ``Plan.dropped_ids``: the same on
   every rank, since they come from the global plan (the loader counts them as
   ``drop_last_tail``).

**Elastic resume** (``resized``: the epoch ran its first steps on other world sizes). Steps 1–3
do not depend on the world size; dealing does (``synced_randomized`` groups ``world_size``
batches, the tail depends on it). So an epoch resumed at step ``b`` on ``world_size`` ranks
after running on ``W`` ranks replays the ``W``-deal (same generator, so the same slots), takes
its first ``b * W`` slots as delivered, and deals the batches not delivered yet — including the
ones the ``W``-deal's ``drop_last`` would have left out — again by the same rule (:func:`_deal`)
to ``world_size`` ranks, with a generator seeded by ``(seed, epoch, earlier deals)``: every new
rank computes the same deal, and has the same number of steps. Steps count over the whole
epoch, so the new plan's steps are ``b, b + 1, ...`` (:attr:`Plan.start`). A second resize
repeats this on the re-dealt remainder. Over the epoch every batch is delivered once, or
repeated to even out the last step (``drop_last: false``), or dropped by the last deal.

Example::

    >>> plan = plan_epoch(index, keep, cfg, epoch=3, rank=1, world_size=8)
    >>> len(plan), plan.batch(0)
    (1250, array([ 40213, 99120, ...]))
    >>> sampler = BatchSampler(index, keep, cfg)        # rank/world from torch.distributed
    >>> loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, ...)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from speechdata.config import DatasetConfig, check_concat_sampling
from speechdata.errors import ConfigError
from speechdata.sampling.batching import (
    BatchTable,
    _gather_ranges,
    batch_capacity,
    batch_cost,
    form_batches,
)
from speechdata.sampling.buckets import Buckets, effective_duration, make_buckets
from speechdata.sampling.filters import IndexColumns, num_datasets
from speechdata.sampling.packing import RowBatch, pack_rows, packing_cost, row_table
from speechdata.sampling.position import FRESH_DEAL, EpochDeal, Position, Resized, resolve_rank_world
from speechdata.sampling.tokens import Measures

__all__ = [
    "MIN_FILL",
    "BatchSampler",
    "Plan",
    "epoch_entries",
    "epoch_rng",
    "mixing_weights",
    "plan_epoch",
]


# ------------------------------------------------------------------------------------ mixing


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator that drives every random choice of one epoch (same on every rank)."""
    if seed < 0:
        raise ConfigError(f"seed: must be >= 0; got {seed}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return np.random.default_rng([int(seed), int(epoch)])


def mixing_weights(counts: np.ndarray, cfg: DatasetConfig) -> np.ndarray | None:
    """Per-dataset weights (summing to 1) for an epoch, or ``None`` for natural proportions.

    ``counts`` are the kept examples per dataset. ``concat_sampling_probabilities`` applies with
    technique ``random``; ``temperature`` gives ``w_i ∝ n_i ** (1 / T)``; ``round-robin`` gives
    equal weights to the datasets that have examples.
    """
    counts = np.asarray(counts, dtype=np.float64)
    probs = cfg.concat_sampling_probabilities
    technique = cfg.concat_sampling_technique
    check_concat_sampling(cfg, int(counts.size))  # the data-free rules, as when the config was read
    if probs is not None:
        w = np.asarray(probs, dtype=np.float64)
        empty = np.flatnonzero((w > 0) & (counts == 0))
        if empty.size:
            raise ConfigError(
                f"concat_sampling_probabilities: manifest #{int(empty[0])} has weight {w[empty[0]]:g} "
                f"but no examples left after filtering"
            )
        return w / w.sum()
    if technique == "temperature":
        t = cfg.concat_sampling_temperature
        if t == 1.0:
            return None
        w = counts ** (1.0 / t)
    elif technique == "round-robin":
        w = (counts > 0).astype(np.float64)
    else:
        return None
    total = w.sum()
    return w / total if total > 0 else None


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts proportional to ``weights`` that sum exactly to ``total``."""
    raw = weights * total
    base = np.floor(raw).astype(np.int64)
    short = total - int(base.sum())
    if short > 0:
        frac = raw - base
        base[np.argsort(-frac, kind="stable")[:short]] += 1
    return base


def epoch_entries(
    index: IndexColumns, keep_mask: np.ndarray, cfg: DatasetConfig, rng: np.random.Generator
) -> np.ndarray:
    """The example ids (int64, repeats allowed when up-sampling) that make up one epoch.

    See the module docstring (step 1) for the exact definition. Ids come grouped by dataset;
    with ``round-robin`` and no shuffling they are interleaved one per dataset in turn.
    """
    ids = np.flatnonzero(keep_mask).astype(np.int64)
    n_ds = num_datasets(index)
    if n_ds <= 1 or ids.size == 0:
        return ids
    ds = np.asarray(index.dataset)[ids].astype(np.int64)
    counts = np.bincount(ds, minlength=n_ds)
    w = mixing_weights(counts, cfg)
    if w is None:
        return ids
    target = _largest_remainder(w, ids.size)
    by_ds = ids[np.argsort(ds, kind="stable")]
    first = np.cumsum(counts) - counts
    parts: list[np.ndarray] = []
    for i in np.flatnonzero(target):
        c, n = int(target[i]), int(counts[i])
        own = by_ds[first[i] : first[i] + n]
        if not cfg.shuffle:
            pick = np.arange(c) % n
        elif c <= n:
            pick = rng.permutation(n)[:c]
        else:
            reps = -(-c // n)
            pick = np.argsort(rng.random((reps, n)), axis=1).ravel()[:c]
        parts.append(own[pick])
    entries = np.concatenate(parts)
    if cfg.concat_sampling_technique == "round-robin" and not cfg.shuffle:
        turn = np.concatenate([np.arange(p.size) for p in parts])
        src = np.repeat(np.arange(len(parts)), [p.size for p in parts])
        entries = entries[np.lexsort((src, turn))]
    return entries


# ------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Plan:
    """One rank's batches for one epoch, stored flat: batch ``k`` is
    ``ids[offsets[k]:offsets[k + 1]]`` and comes from bucket ``bucket[k]``.

    ``repeated`` / ``dropped`` count examples (over all ranks) that were repeated to even out the
    ranks or dropped by ``drop_last`` (incomplete batches and the uneven tail); ``dropped_ids``
    are the dropped examples' ids (``dropped`` of them, the same on every rank). ``formed`` is
    the number of batches cut for the epoch over all ranks, before ``drop_last`` and dealing, and
    ``fill`` their mean fullness: a batch's examples over the examples a full batch of its kind
    holds (its bucket's size, or ``floor(batch_duration / its longest effective duration)``).

    With ``packing`` a batch is rows of examples (docs/packing.md): ``rows`` holds, aligned with
    ``ids``, each example's row within its batch (non-decreasing within a batch, from 0); ``fill``
    is then the mean of rows / ``micro_batch_size``. Without packing ``rows`` is empty.

    An epoch re-dealt after an elastic resume (``resized``, see the module docstring) holds the
    steps from ``start`` on: ``len()`` counts the whole epoch, ``batch(k)`` exists for
    ``start <= k < len()``, and ``ids``/``offsets``/``bucket`` describe steps ``start, ...``.
    """

    ids: np.ndarray
    offsets: np.ndarray
    bucket: np.ndarray
    repeated: int
    dropped: int
    epoch: int
    rank: int
    world_size: int
    dropped_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    formed: int = 0
    fill: float = 1.0
    start: int = 0
    resized: Resized = ()
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def packed(self) -> bool:
        """Whether the batches are rows of packed examples."""
        return self.rows.size > 0

    def __len__(self) -> int:
        return self.start + int(self.offsets.size - 1)

    @property
    def num_batches_per_rank(self) -> int:
        """Batches of this epoch on every rank."""
        return len(self)

    def batch(self, k: int) -> np.ndarray:
        """Example ids of batch ``k`` (int64)."""
        if not self.start <= k < len(self):
            if 0 <= k < self.start:
                raise IndexError(
                    f"batch {k} of epoch {self.epoch} was dealt to {self._dealt_on(k)} ranks before the "
                    f"resume on {self.world_size}"
                )
            raise IndexError(f"batch {k} out of range for a plan of {len(self)} batches")
        j = k - self.start
        return self.ids[self.offsets[j] : self.offsets[j + 1]]

    def batch_rows(self, k: int) -> np.ndarray:
        """The row within batch ``k`` of each of its examples (a packed plan; int64)."""
        self.batch(k)  # the range check
        j = k - self.start
        return self.rows[self.offsets[j] : self.offsets[j + 1]]

    def row_padding(self, values: np.ndarray) -> float:
        """Padding fraction of a packed plan's rows along one axis: each batch's rows padded to
        its longest row, ``values`` (one per Index row, e.g. tokens) summed per row."""
        if self.ids.size == 0:
            return 0.0
        v = np.asarray(values, dtype=np.float64)[self.ids]
        sizes = np.diff(self.offsets)
        batch_of = np.repeat(np.arange(sizes.size), sizes)
        # rows are numbered per batch: give each (batch, row) one global number
        first = np.ones(self.ids.size, dtype=bool)
        first[1:] = (batch_of[1:] != batch_of[:-1]) | (self.rows[1:] != self.rows[:-1])
        row_id = np.cumsum(first) - 1
        row_sum = np.bincount(row_id, weights=v)
        row_batch = batch_of[first]
        longest = np.zeros(sizes.size)
        np.maximum.at(longest, row_batch, row_sum)
        slots = float(longest[row_batch].sum())
        return 1.0 - float(v.sum()) / slots if slots > 0 else 0.0

    def _dealt_on(self, k: int) -> int:
        """The world size that step ``k`` (< ``start``) ran on."""
        return next(w for w, reached in self.resized if k < reached)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.batch(k) for k in range(self.start, len(self)))

    def padding(self, values: np.ndarray) -> float:
        """Padding fraction of this plan's batches along one axis: ``1 - sum(v) / sum(n × max v)``
        over the batches, ``values`` (one per Index row: seconds, tokens, ...) padded to the
        largest of each batch (0.0 without batches)."""
        if self.ids.size == 0:
            return 0.0
        v = np.asarray(values, dtype=np.float64)[self.ids]
        starts = self.offsets[:-1]
        longest = np.maximum.reduceat(v, starts)
        slots = float((np.diff(self.offsets) * longest).sum())
        return 1.0 - float(v.sum()) / slots if slots > 0 else 0.0

    @property
    def batches(self) -> list[np.ndarray]:
        """All batches (from ``start`` on) as a list of int64 arrays."""
        return np.split(self.ids, self.offsets[1:-1]) if self.offsets.size > 1 else []


def _deal(
    table: BatchTable,
    selected: np.ndarray,
    cfg: DatasetConfig,
    world_size: int,
    rng: np.random.Generator,
    v1: bool = False,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Order the selected batches by strategy and make their number a multiple of ``world_size``.

    Returns the slots (batch ids; slot ``k * world_size + r`` is rank ``r``'s step ``k``), the
    number of repeated examples and the batches ``drop_last`` dropped. ``v1``: group
    ``synced_randomized``'s leftovers by the version-1 rule (:func:`_synced_groups_v1`).
    """
    none = np.zeros(0, dtype=np.int64)
    t = selected.size
    if t == 0:
        return selected, 0, none
    w = world_size
    lengths = table.length
    if cfg.bucketing_strategy == "synced_randomized":
        groups = _synced_groups_v1 if v1 else _synced_groups
        flat, dropped = groups(table.bucket[selected], w, cfg.drop_last)
        # every batch not dropped is in flat at least once
        repeated = int(
            lengths[selected[flat]].sum() - lengths[selected].sum() + lengths[selected[dropped]].sum()
        )
        rows = selected[flat].reshape(-1, w)
        if cfg.shuffle and rows.shape[0] > 1:
            rows = rows[rng.permutation(rows.shape[0])]
        return rows.ravel(), repeated, selected[dropped]
    if cfg.bucketing_strategy == "fully_randomized" and cfg.shuffle:
        order = selected[rng.permutation(t)]
    else:
        order = selected
    rest = t % w
    if rest == 0:
        return order, 0, none
    if cfg.drop_last:
        keep = t - rest
        return order[:keep], 0, order[keep:]
    slots = np.resize(order, t + w - rest)
    return slots, int(lengths[slots[t:]].sum()), none


def _synced_groups(bucket: np.ndarray, w: int, drop_last: bool) -> tuple[np.ndarray, np.ndarray]:
    """``synced_randomized``'s groups of ``w`` batches, before shuffling: positions into the
    batches (whose ``bucket`` is non-decreasing), ``w`` per group, and the positions dropped.

    Each bucket's first ``w * (count // w)`` batches make whole groups of that bucket; the
    leftovers of all buckets (fewer than ``w`` each), concatenated in bucket order, are cut into
    further groups of ``w``, each spanning adjacent buckets. Only the last ``len(leftovers) % w``
    batches remain: ``drop_last`` drops them, otherwise they fill one last group, each repeated
    in place as evenly as possible (the group stays in bucket order). So fewer than ``w`` batches
    are dropped, or repeated, per deal.
    """
    t = bucket.size
    counts = np.bincount(bucket).astype(np.int64)
    starts = np.cumsum(counts) - counts
    within = np.arange(t, dtype=np.int64) - np.repeat(starts, counts)
    whole = within < np.repeat((counts // w) * w, counts)
    leftovers = np.flatnonzero(~whole)
    rest = leftovers.size % w
    if rest and drop_last:
        return np.concatenate((np.flatnonzero(whole), leftovers[:-rest])), leftovers[-rest:]
    if rest:  # the last group: its batches repeated evenly, kept in bucket order
        leftovers = np.concatenate((leftovers[:-rest], leftovers[-rest:][np.arange(w) * rest // w]))
    return np.concatenate((np.flatnonzero(whole), leftovers)), np.zeros(0, dtype=np.int64)


def _synced_groups_v1(bucket: np.ndarray, w: int, drop_last: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_synced_groups` by the version-1 rule, kept to finish an epoch that a version-1
    position left unfinished (:attr:`EpochDeal.rule <speechdata.sampling.position.EpochDeal>` 1): every group holds
    one bucket's batches, so each bucket's last ``count % w`` are dropped (``drop_last``) or its
    last group is filled with its first batches."""
    t = bucket.size
    counts = np.bincount(bucket).astype(np.int64)
    starts = np.cumsum(counts) - counts
    per = (counts // w) * w if drop_last else -(-counts // w) * w
    within = np.arange(int(per.sum()), dtype=np.int64) - np.repeat(np.cumsum(per) - per, per)
    cnt = np.repeat(counts, per)
    pos = np.repeat(starts, per) + within % np.maximum(cnt, 1)
    rank_of = np.arange(t, dtype=np.int64) - np.repeat(starts, counts)
    return pos, np.flatnonzero(rank_of >= np.repeat(per, counts))


def _redeal(
    table: BatchTable,
    selected: np.ndarray,
    cfg: DatasetConfig,
    world_size: int,
    rng: np.random.Generator,
    resized: Resized,
    epoch: int,
    v1: bool = False,
) -> tuple[np.ndarray, int, np.ndarray]:
    """The last deal of an epoch whose first steps ran on other world sizes (``resized``, see the
    module docstring; every deal by the version-1 rule when ``v1``): its slots, the examples
    repeated over the whole epoch and the batches the last deal drops."""
    remaining, parts, reached = selected, [], 0
    for hop, (w, step) in enumerate(resized):
        slots = _deal(
            table, remaining, cfg, w, rng if hop == 0 else _deal_rng(cfg.seed, epoch, resized[:hop]), v1
        )[0]
        take = (step - reached) * w
        if take > slots.size:
            raise ConfigError(
                f"batch {step} is past the end of epoch {epoch} on {w} ranks ({reached + slots.size // w} batches)"
            )
        parts.append(slots[:take])
        remaining = np.setdiff1d(remaining, slots[:take])  # sorted, as selected is: grouped by bucket
        reached = step
    slots, _, tail = _deal(table, remaining, cfg, world_size, _deal_rng(cfg.seed, epoch, resized), v1)
    dealt = np.concatenate([*parts, slots])
    lengths = table.length
    repeated = int(lengths[dealt].sum() - lengths[np.unique(dealt)].sum())
    return slots, repeated, tail


def _deal_rng(seed: int, epoch: int, resized: Resized) -> np.random.Generator:
    """The generator of a deal after the earlier deals ``resized`` (the same on every rank)."""
    return np.random.default_rng([int(seed), int(epoch), *(int(v) for deal in resized for v in deal)])


def plan_epoch(
    index: IndexColumns,
    keep_mask: np.ndarray,
    cfg: DatasetConfig,
    *,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    buckets: Buckets | np.ndarray | None = None,
    deal: EpochDeal = FRESH_DEAL,
    measures: Measures | None = None,
) -> Plan:
    """Plan this rank's batches of example ids for ``epoch`` (see the module docstring).

    ``keep_mask`` is the boolean filter mask (:func:`~speechdata.sampling.filters.filter_mask`).
    ``buckets`` is a precomputed :class:`Buckets` (saves estimating bins every epoch), or a
    per-row bucket column of a pre-bucketed dataset, or ``None`` to derive buckets from ``cfg``.
    ``deal`` (:class:`~speechdata.sampling.position.EpochDeal`) holds the epoch's earlier deals
    after an elastic resume (``(world_size, step reached)`` pairs, :attr:`Position.resized
    <speechdata.sampling.position.Position.resized>`): the plan then holds the steps from the last
    one reached on, the rest of the epoch dealt to ``world_size`` ranks (a :class:`ConfigError`
    when a step lies past the end of its deal); and its rule: 1 deals the epoch by the version-1
    rule (a version-1 position's unfinished epoch).
    ``measures`` are the token counts per row (:class:`~speechdata.sampling.tokens.Measures`),
    needed by ``batch_tokens``, 2D bins, ``use_multimodal_sampling`` and ``packing`` (then each
    batch is ``micro_batch_size`` rows of examples packed by :mod:`~speechdata.sampling.packing`).
    """
    resolve_rank_world(rank, world_size)  # checks the pair
    keep = np.asarray(keep_mask, dtype=bool)
    duration = np.asarray(index.duration)
    if keep.shape != duration.shape:
        raise ValueError(f"keep_mask has shape {keep.shape}, index has {duration.shape[0]} rows")
    if cfg.packing and measures is None:
        raise ConfigError("packing: needs each example's token counts (a seekable source read by the loader)")
    if not isinstance(buckets, Buckets):
        buckets = make_buckets(index, keep, cfg, bucket_column=buckets, measures=measures)
    if cfg.batch_tokens is not None and measures is None:
        raise ConfigError(
            "batch_tokens: needs each example's token counts (a seekable source read by the loader)"
        )
    rng = epoch_rng(cfg.seed, epoch)
    entries = epoch_entries(index, keep, cfg, rng)
    if cfg.shuffle and entries.size > 1:
        entries = entries[rng.permutation(entries.size)]
    soft = rng if cfg.shuffle else None
    budget: float | None = None
    row_label: np.ndarray | None = None
    if cfg.packing:
        assert measures is not None and cfg.packed_sequence_size is not None
        size = cfg.packed_sequence_size
        cost = packing_cost(duration[entries], measures.tokens[entries], size, cfg.packed_audio_duration)
        order, row_lengths = pack_rows(cost, size, soft)
        row_cost = np.add.reduceat(cost[order], np.cumsum(row_lengths) - row_lengths) if order.size else order
        table, row_label = row_table(order, row_lengths, row_cost, cfg.micro_batch_size, soft)
        key = cost.astype(np.float64)
    elif buckets.sizes is None:
        bucket = buckets.assignment[entries]
        eff = effective_duration(duration[entries], cfg.quadratic_duration)
        tokens = None if measures is None else measures.tokens[entries]
        key, budget = batch_cost(eff, tokens, cfg.batch_duration, cfg.batch_tokens)
        table = form_batches(bucket, buckets.num_buckets, key, batch_duration=budget, rng=soft)
    else:
        bucket = buckets.assignment[entries]
        eff = effective_duration(duration[entries], cfg.quadratic_duration)
        key = measures.length[entries] if measures is not None and measures.multimodal else eff
        table = form_batches(bucket, buckets.num_buckets, key, sizes=buckets.sizes, rng=soft)
    # with fixed sizes (or rows), drop_last leaves out each bucket's incomplete batch
    cut = cfg.drop_last and (buckets.sizes is not None or cfg.packing)
    selected = np.flatnonzero(table.full) if cut else np.arange(len(table), dtype=np.int64)
    incomplete = np.flatnonzero(~table.full) if cut else np.zeros(0, dtype=np.int64)
    v1, deals = deal.rule == 1, deal.resized
    if deals:
        slots, repeated, tail = _redeal(table, selected, cfg, world_size, rng, deals, epoch, v1)
    else:
        slots, repeated, tail = _deal(table, selected, cfg, world_size, rng, v1)
    dropped_ids = entries[table.positions(np.concatenate((incomplete, tail)))]
    mine = slots[rank::world_size]
    where = _gather_ranges(table.start[mine], table.length[mine])
    ids = entries[table.order[where]]
    offsets = np.zeros(mine.size + 1, dtype=np.int64)
    np.cumsum(table.length[mine], out=offsets[1:])
    return Plan(
        ids=ids,
        offsets=offsets,
        bucket=table.bucket[mine],
        repeated=repeated,
        dropped=int(dropped_ids.size),
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        dropped_ids=dropped_ids,
        formed=len(table),
        fill=_mean_fill(table, key, buckets.sizes, budget, cfg.micro_batch_size, row_label),
        start=deals[-1][1] if deals else 0,
        resized=tuple(deals),
        rows=row_label[where] if row_label is not None else np.zeros(0, dtype=np.int64),
    )


def _mean_fill(
    table: BatchTable,
    effective: np.ndarray,
    sizes: np.ndarray | None,
    batch_duration: float | None,
    rows_per_batch: int | None = None,
    row_label: np.ndarray | None = None,
) -> float:
    """Mean over the formed batches of (examples / examples a full batch of that kind holds), or
    of (rows / ``rows_per_batch``) for packed batches (``row_label``: each example's row within its
    batch, aligned with ``table.order``)."""
    if len(table) == 0:
        return 1.0
    if rows_per_batch is not None and row_label is not None:
        rows = np.maximum.reduceat(row_label, table.start) + 1
        return float(np.mean(rows / rows_per_batch))
    if sizes is not None:
        capacity = sizes[table.bucket]
    else:
        assert batch_duration is not None
        longest = np.maximum.reduceat(effective[table.order], table.start)
        capacity = batch_capacity(longest, batch_duration, int(table.order.size))
    return float(np.mean(np.minimum(table.length / capacity, 1.0)))


#: Mean batch fullness (:attr:`Plan.fill`) under which the loader warns that the data is too
#: small for its buckets: below one half, most batches are a bucket's leftovers, not full batches.
MIN_FILL = 0.5


# ----------------------------------------------------------------------------------- sampler


class BatchSampler:
    """Stateful, resumable batch sampler over an Index; use it as a DataLoader ``batch_sampler``.

    Iterating yields this rank's batches (lists of example ids) from the current position to the
    end of the epoch, then moves to the next epoch. ``len()`` is the number of batches per rank
    in the current epoch. The position is a :class:`~speechdata.sampling.position.Position`
    (epoch, next batch, seed, rank, world size): :meth:`state_dict` returns its dict form,
    :meth:`load_state_dict` restores it (the next iteration starts at batch ``k`` of epoch ``e``,
    by slicing that epoch's plan). Since a DataLoader prefetches, a loader that knows how many
    batches it *consumed* takes its position from :meth:`position` instead.

    ``rank`` / ``world_size`` default to torch.distributed's when a process group is
    initialised, else 0 / 1. ``measures`` (token counts per row,
    :class:`~speechdata.sampling.tokens.Measures`) are needed by ``batch_tokens``, 2D bins and
    ``use_multimodal_sampling``. The plan of an epoch depends only on (cfg, seed, epoch, rank,
    world size), so ranks agree without communicating and DataLoader workers, which receive
    batches from the main process, never duplicate work. A position saved on another world size
    resumes elastically: the rest of its epoch is dealt again to this sampler's ranks
    (:meth:`Position.deal_for <speechdata.sampling.position.Position.deal_for>`).

    Example::

        >>> sampler = BatchSampler(index, keep, cfg)
        >>> sampler.set_epoch(2)
        >>> loader = DataLoader(ds, batch_sampler=sampler, num_workers=4, collate_fn=...)
        >>> sampler.load_state_dict({"epoch": 2, "batch": 117})   # resume mid-epoch
    """

    def __init__(
        self,
        index: IndexColumns,
        keep_mask: np.ndarray,
        cfg: DatasetConfig,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        buckets: Buckets | np.ndarray | None = None,
        measures: Measures | None = None,
    ) -> None:
        self.rank, self.world_size = resolve_rank_world(rank, world_size)
        self.index = index
        self.keep_mask = np.asarray(keep_mask, dtype=bool)
        self.cfg = cfg
        self.measures = measures
        if not isinstance(buckets, Buckets):
            buckets = make_buckets(index, self.keep_mask, cfg, bucket_column=buckets, measures=measures)
        self.buckets = buckets
        self._epoch = 0
        self._batch = 0
        self._deal = FRESH_DEAL  # how the current epoch is dealt (earlier deals: elastic resume)
        self._plans: dict[tuple[int, EpochDeal], Plan] = {}

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from."""
        return self._epoch

    def plan(self, epoch: int, deal: EpochDeal = FRESH_DEAL) -> Plan:
        """This rank's plan for ``epoch`` dealt as ``deal`` (see :func:`plan_epoch`; the two most
        recent plans are cached)."""
        key = (epoch, EpochDeal(tuple(deal.resized), deal.rule))
        plan = self._plans.get(key)
        if plan is None:
            plan = plan_epoch(
                self.index,
                self.keep_mask,
                self.cfg,
                epoch=epoch,
                rank=self.rank,
                world_size=self.world_size,
                buckets=self.buckets,
                deal=key[1],
                measures=self.measures,
            )
            if len(self._plans) >= 2:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = plan
        return plan

    def small_data_warning(self, epoch: int = 0) -> str | None:
        """A one-line warning when ``epoch``'s batches are on average less than :data:`MIN_FILL`
        full (:attr:`Plan.fill`) because there are too few examples for the buckets (or for one
        batch), else ``None``. Computed from the global plan: the same on every rank."""
        plan = self.plan(epoch)
        if plan.formed == 0 or plan.fill >= MIN_FILL:
            return None
        k = self.buckets.num_buckets
        kept = int(np.count_nonzero(self.keep_mask))
        need, fix = (
            (f"{k} buckets", "lower num_buckets (or use fewer bucket_duration_bins), or give more data")
            if k > 1
            else ("a full batch", "lower micro_batch_size / batch_duration, or give more data")
        )
        return (
            f"{kept} examples are too few for {need}: epoch {epoch} has {plan.formed} batches of "
            f"{kept / plan.formed:.1f} examples on average, {100 * plan.fill:.0f}% as many as full "
            f"batches would hold; {fix}"
        )

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch; a call with the current epoch keeps the position
        (so a trainer calling ``set_epoch`` after a resume does not lose it)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self._epoch:
            self._epoch, self._batch, self._deal = int(epoch), 0, FRESH_DEAL

    def __len__(self) -> int:
        return len(self.plan(self._epoch, self._deal))

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.plan(self._epoch, self._deal)
        while self._batch < len(plan):
            k = self._batch
            self._batch = k + 1
            if plan.packed:
                yield RowBatch(plan.batch(k).tolist(), plan.batch_rows(k).tolist())
            else:
                yield plan.batch(k).tolist()
        self._epoch, self._batch, self._deal = self._epoch + 1, 0, FRESH_DEAL

    def state_dict(self) -> dict[str, Any]:
        """The sampler's own position (next batch to yield) in the dict form of
        :class:`~speechdata.sampling.position.Position`."""
        return self.position(self._epoch, self._batch).to_dict()

    def position(self, epoch: int, consumed_batches: int) -> Position:
        """The position after ``consumed_batches`` batches of ``epoch`` were consumed (with the
        current epoch's earlier deals, after an elastic resume); a finished epoch rolls over to
        batch 0 of ``epoch + 1``."""
        deal = self._deal if epoch == self._epoch else FRESH_DEAL
        return Position.after(
            epoch,
            consumed_batches,
            len(self.plan(epoch, deal)),
            seed=self.cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
            deal=deal,
        )

    def seek(self, pos: Position, what: str = "sampler state") -> None:
        """Continue at ``pos`` (checked against this sampler's seed, and rank on the same world
        size, and against the length of its epoch); a position of another world size continues
        with the rest of its epoch dealt to this sampler's ranks."""
        pos.check(seed=self.cfg.seed, rank=self.rank, world_size=self.world_size, what=what)
        deal = pos.deal_for(self.world_size)
        try:
            n = len(self.plan(pos.epoch, deal))
        except ConfigError as e:  # an earlier deal that does not reach its step
            raise ConfigError(f"{what}: {e}") from None
        if pos.batch > n:
            raise ConfigError(f"{what}: batch {pos.batch} is past the end of epoch {pos.epoch} ({n} batches)")
        self._epoch, self._batch, self._deal = pos.epoch, pos.batch, deal

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (any format :meth:`Position.from_dict` reads)."""
        self.seek(Position.from_dict(state, "sampler state"))
