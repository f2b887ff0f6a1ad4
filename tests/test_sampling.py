"""Sampling: filters, buckets, the epoch planner and the resumable BatchSampler (docs/configuration.md, docs/architecture.md)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from helpers_sampling import libri_like, make_index
from hypothesis import given, settings
from hypothesis import strategies as st

from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, DropCounter
from speechdata.sampling import (
    BatchSampler,
    Position,
    effective_duration,
    estimate_bins,
    filter_mask,
    make_buckets,
    plan_epoch,
)
from speechdata.sampling.position import POSITION_VERSION


def cfg_of(**kw):
    kw.setdefault("min_duration", None)
    kw.setdefault("max_duration", None)
    return make_dataset_config(kw)


def all_ranks(index, keep, cfg, world, epoch=0):
    return [plan_epoch(index, keep, cfg, epoch=epoch, rank=r, world_size=world) for r in range(world)]


# ----------------------------------------------------------------------------------- filters


def test_filter_counts_each_drop_once_by_reason():
    idx = make_index([0.05, 1.0, 30.0, 5.0, 0.01])
    drops = DropCounter()
    keep = filter_mask(idx, cfg_of(min_duration=0.1, max_duration=24.0), drops)
    assert keep.tolist() == [False, True, False, True, False]
    assert drops.to_dict() == {"too_short_audio": 2, "too_long_audio": 1}


def test_filter_multi_audio_every_clip_must_pass():
    idx = make_index([10.0, 10.0, 10.0])
    idx.min_clip = np.array([5.0, 0.05, 2.0], np.float32)
    idx.max_clip = np.array([5.0, 9.95, 20.0], np.float32)
    drops = DropCounter()
    keep = filter_mask(idx, cfg_of(min_duration=0.1, max_duration=15.0), drops)
    assert keep.tolist() == [True, False, False]
    assert drops.to_dict() == {"too_short_audio": 1, "too_long_audio": 1}


def test_filter_bounds_inclusive_in_float32():
    idx = make_index([16.7, 0.1, 16.71])
    keep = filter_mask(idx, cfg_of(min_duration=0.1, max_duration=16.7), DropCounter())
    assert keep.tolist() == [True, True, False]


def test_filter_min_seq_length_and_null_bounds():
    idx = make_index([1.0, 2.0, 3.0])
    drops = DropCounter()
    keep = filter_mask(idx, cfg_of(min_seq_length=5), drops, token_lengths=np.array([4, 5, 9]))
    assert keep.tolist() == [False, True, True]
    assert drops.to_dict() == {"too_short_text": 1}
    with pytest.raises(ValueError):
        filter_mask(idx, cfg_of(), drops, token_lengths=np.array([1, 2]))


# ----------------------------------------------------------------------------------- buckets


def test_estimated_bins_split_total_duration_evenly():
    d = libri_like(20_000)
    bins = estimate_bins(d, 10)
    assert bins.size == 9 and np.all(np.diff(bins) >= 0)
    b = np.searchsorted(bins, d, side="right")
    totals = np.bincount(b, weights=d, minlength=10)
    assert np.allclose(totals, d.sum() / 10, atol=d.max() * 2)


def test_bucket_sizes_linear_scaling_and_list():
    idx = make_index(libri_like(1000))
    keep = np.ones(1000, bool)
    lin = make_buckets(idx, keep, cfg_of(bucketing_batch_size=4, num_buckets=3))
    assert lin.num_buckets == 3 and lin.sizes.tolist() == [12, 8, 4]  # 1 = longest gets b
    lst = make_buckets(idx, keep, cfg_of(bucketing_batch_size=[9, 5, 2]))
    assert lst.num_buckets == 3 and lst.sizes.tolist() == [9, 5, 2]
    with pytest.raises(ConfigError, match="bucketing_batch_size"):
        make_buckets(idx, keep, cfg_of(bucketing_batch_size=[1, 2], num_buckets=3))
    with pytest.raises(ConfigError, match="batch_duration"):
        make_buckets(idx, keep, cfg_of(bucketing_batch_size=2, batch_duration=100.0))


def test_explicit_bins_and_prebucketed_column():
    idx = make_index([1.0, 5.0, 10.0, 20.0])
    b = make_buckets(idx, None, cfg_of(bucket_duration_bins=[5.0, 15.0]))
    assert b.num_buckets == 3 and b.assignment.tolist() == [0, 1, 1, 2]
    col = np.array([1, 0, 1, 0])
    pre = make_buckets(idx, None, cfg_of(bucket_duration_bins=[5.0]), bucket_column=col)
    assert pre.pre_bucketed and pre.assignment.tolist() == col.tolist() and pre.bins is None
    plan = plan_epoch(idx, np.ones(4, bool), cfg_of(micro_batch_size=2, shuffle=False), epoch=0, buckets=col)
    assert [sorted(x.tolist()) for x in plan] == [[1, 3], [0, 2]]


def test_no_bucketing_with_plain_fixed_batches_keeps_index_order():
    idx = make_index(libri_like(10))
    plan = plan_epoch(
        idx, np.ones(10, bool), cfg_of(micro_batch_size=3, shuffle=False, drop_last=False), epoch=4
    )
    assert [x.tolist() for x in plan] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_effective_duration_quadratic():
    assert effective_duration(np.array([10.0]), 20.0).tolist() == [15.0]
    assert effective_duration(np.array([10.0]), None).tolist() == [10.0]


# ------------------------------------------------------------------------------ plan invariants

modes = st.sampled_from(["fixed", "bucketed", "dynamic", "quadratic"])
strategies = st.sampled_from(["fully_randomized", "synced_randomized", "fixed_order"])


def _cfg_for(mode, strategy, drop_last, shuffle, seed, **extra):
    kw = dict(bucketing_strategy=strategy, drop_last=drop_last, shuffle=shuffle, seed=seed, **extra)
    if mode == "fixed":
        kw["micro_batch_size"] = 3
    elif mode == "bucketed":
        kw.update(bucketing_batch_size=2, num_buckets=4)
    else:
        kw.update(batch_duration=60.0, num_buckets=5)
        if mode == "quadratic":
            kw["quadratic_duration"] = 30.0
    return cfg_of(**kw)


durations_st = st.lists(st.floats(0.2, 80.0), min_size=0, max_size=150)


@given(durations_st, modes, strategies, st.integers(1, 4), st.booleans(), st.integers(0, 2**31), st.data())
def test_every_kept_example_once_equal_ranks(durs, mode, strategy, world, shuffle, seed, data):
    n = len(durs)
    idx = make_index(durs)
    keep = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    epoch = data.draw(st.integers(0, 5))
    cfg = _cfg_for(mode, strategy, False, shuffle, seed)
    plans = all_ranks(idx, keep, cfg, world, epoch)
    assert len({len(p) for p in plans}) == 1
    ids = np.concatenate([p.ids for p in plans]) if plans[0].ids.size else np.zeros(0, int)
    counts = Counter(ids.tolist())
    assert set(counts) == set(np.flatnonzero(keep).tolist())
    assert sum(c - 1 for c in counts.values()) == plans[0].repeated
    assert plans[0].dropped == 0
    assert all(len(b) > 0 for p in plans for b in p)


@given(durations_st, modes, strategies, st.integers(1, 4), st.booleans(), st.integers(0, 2**31))
def test_drop_last_never_repeats_and_counts_drops(durs, mode, strategy, world, shuffle, seed):
    idx = make_index(durs)
    keep = np.ones(len(durs), bool)
    cfg = _cfg_for(mode, strategy, True, shuffle, seed)
    plans = all_ranks(idx, keep, cfg, world)
    assert len({len(p) for p in plans}) == 1
    ids = np.concatenate([p.ids for p in plans])
    assert np.unique(ids).size == ids.size
    assert ids.size + plans[0].dropped == len(durs)
    assert plans[0].repeated == 0
    if mode in ("fixed", "bucketed"):  # incomplete batches are dropped too
        sizes = make_buckets(idx, keep, cfg).sizes
        for p in plans:
            assert all(len(b) == sizes[k] for b, k in zip(p, p.bucket, strict=True))


@given(durations_st, st.sampled_from(["dynamic", "quadratic"]), strategies, st.integers(1, 3), st.booleans())
def test_dynamic_batches_within_budget(durs, mode, strategy, world, shuffle):
    idx = make_index(durs)
    cfg = _cfg_for(mode, strategy, False, shuffle, 7)
    eff = effective_duration(idx.duration, cfg.quadratic_duration)
    for p in all_ranks(idx, np.ones(len(durs), bool), cfg, world):
        for b in p:
            assert len(b) == 1 or len(b) * eff[b].max() <= cfg.batch_duration


@given(
    st.lists(st.floats(0.5, 30.0), min_size=1, max_size=150),
    st.sampled_from(["dynamic", "bucketed"]),
    st.integers(1, 4),
    st.booleans(),
    st.booleans(),
)
def test_synced_randomized_same_bucket_each_step(durs, mode, world, drop_last, shuffle):
    """All ranks hold one bucket at every step, except the steps made of the buckets'
    leftovers (tests/test_synced_tails.py): their buckets rise rank by rank, and each such step
    spans at least one boundary between the buckets in use, so there are fewer of them."""
    idx = make_index(durs)
    keep = np.ones(len(durs), bool)
    cfg = _cfg_for(mode, "synced_randomized", drop_last, shuffle, 3)
    buckets = make_buckets(idx, keep, cfg)
    plans = all_ranks(idx, keep, cfg, world)
    mixed = 0
    for k in range(len(plans[0])):
        step = [int(p.bucket[k]) for p in plans]
        assert step == sorted(step)
        mixed += step[0] != step[-1]
        for p in plans:
            assert np.all(buckets.assignment[p.batch(k)] == p.bucket[k])
    assert mixed < max(1, np.unique(buckets.assignment).size)


def test_fixed_order_and_no_shuffle():
    idx = make_index(libri_like(500))
    keep = np.ones(500, bool)
    cfg = cfg_of(batch_duration=100.0, num_buckets=6, bucketing_strategy="fixed_order", drop_last=False)
    p = plan_epoch(idx, keep, cfg, epoch=0)
    assert np.all(np.diff(p.bucket) >= 0)
    frozen = cfg_of(batch_duration=100.0, num_buckets=6, shuffle=False, drop_last=False)
    a, b = (plan_epoch(idx, keep, frozen, epoch=e) for e in (0, 1))
    assert np.array_equal(a.ids, b.ids) and np.all(np.diff(a.bucket) >= 0)


def test_determinism_and_epochs_differ():
    idx = make_index(libri_like(3000))
    keep = np.ones(3000, bool)
    cfg = cfg_of(batch_duration=200.0, seed=11)
    a = plan_epoch(idx, keep, cfg, epoch=2, rank=1, world_size=2)
    b = plan_epoch(idx, keep, cfg, epoch=2, rank=1, world_size=2)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.offsets, b.offsets)
    c = plan_epoch(idx, keep, cfg, epoch=3, rank=1, world_size=2)
    assert not np.array_equal(a.ids[: c.ids.size], c.ids[: a.ids.size])
    d = plan_epoch(idx, keep, cfg_of(batch_duration=200.0, seed=12), epoch=2, rank=1, world_size=2)
    assert not np.array_equal(a.ids[: d.ids.size], d.ids[: a.ids.size])
    # batch composition changes between epochs too, not only the order of batches
    sets_a = {frozenset(x.tolist()) for x in a}
    sets_c = {frozenset(x.tolist()) for x in c}
    assert len(sets_a & sets_c) < len(sets_a) // 2


def test_dynamic_padding_is_small_on_librispeech_like_durations():
    d = libri_like(50_000, seed=5)
    idx = make_index(d)
    cfg = cfg_of(batch_duration=600.0)
    plan = plan_epoch(idx, np.ones(d.size, bool), cfg, epoch=0)
    dd = idx.duration.astype(np.float64)
    lengths = np.diff(plan.offsets)
    longest = np.maximum.reduceat(dd[plan.ids], plan.offsets[:-1])
    padding = 1 - dd[plan.ids].sum() / (lengths * longest).sum()
    assert padding < 0.03
    assert (lengths * longest).mean() > 0.9 * 600


# --------------------------------------------------------------------------------- mixing


@given(st.lists(st.integers(5, 400), min_size=2, max_size=4), st.integers(0, 1000), st.data())
def test_mixing_weights_honoured_within_one_percent(sizes, seed, data):
    raw = data.draw(st.lists(st.integers(1, 10), min_size=len(sizes), max_size=len(sizes)))
    w = np.asarray(raw, float) / sum(raw)
    ds = np.repeat(np.arange(len(sizes)), sizes)
    idx = make_index(libri_like(ds.size, seed), ds)
    probs = [float(x) for x in w[:-1]] + [float(1 - w[:-1].sum())]
    cfg = cfg_of(concat_sampling_probabilities=probs, micro_batch_size=4, drop_last=False, seed=seed)
    plan = plan_epoch(idx, np.ones(ds.size, bool), cfg, epoch=1)
    assert plan.ids.size == ds.size  # the epoch has as many entries as kept examples
    share = np.bincount(ds[plan.ids], minlength=len(sizes)) / plan.ids.size
    assert np.all(np.abs(share - w) <= 0.01 + 1.0 / ds.size)
    # a dataset is never repeated before all of it was used
    for i, n in enumerate(sizes):
        got = Counter(plan.ids[ds[plan.ids] == i].tolist())
        if got:
            assert max(got.values()) - min(got.values()) <= 1 and (len(got) == n or max(got.values()) == 1)


def test_mixing_temperature_round_robin_and_errors():
    ds = np.repeat([0, 1], [900, 100])
    idx = make_index(libri_like(1000), ds)
    keep = np.ones(1000, bool)
    share = lambda cfg: np.bincount(ds[plan_epoch(idx, keep, cfg, epoch=0).ids], minlength=2) / 1000  # noqa: E731
    rr = cfg_of(concat_sampling_technique="round-robin", micro_batch_size=1)
    assert share(rr).tolist() == [0.5, 0.5]
    temp = cfg_of(
        concat_sampling_technique="temperature", concat_sampling_temperature=2.0, micro_batch_size=1
    )
    w = np.sqrt([900, 100]) / np.sqrt([900, 100]).sum()
    assert np.allclose(share(temp), w, atol=0.002)
    natural = cfg_of(micro_batch_size=1)
    assert share(natural).tolist() == [0.9, 0.1]
    frozen = cfg_of(concat_sampling_technique="round-robin", micro_batch_size=1, shuffle=False)
    first = ds[plan_epoch(idx, keep, frozen, epoch=0).ids[:6]]
    assert first.tolist() == [0, 1, 0, 1, 0, 1]
    with pytest.raises(ConfigError, match="2 manifests"):
        plan_epoch(idx, keep, cfg_of(concat_sampling_probabilities=[1.0]), epoch=0)
    with pytest.raises(ConfigError, match="sum to 1"):
        plan_epoch(idx, keep, cfg_of(concat_sampling_probabilities=[0.5, 0.2]), epoch=0)
    only0 = ds == 0
    with pytest.raises(ConfigError, match="no examples"):
        plan_epoch(idx, only0, cfg_of(concat_sampling_probabilities=[0.5, 0.5]), epoch=0)


# ------------------------------------------------------------------------------ the sampler


def _sampler(world=1, rank=0, **kw):
    idx = make_index(libri_like(400, seed=2), np.arange(400) % 2)
    kw.setdefault("batch_duration", 120.0)
    return BatchSampler(idx, np.ones(400, bool), cfg_of(**kw), rank=rank, world_size=world)


def _run(sampler, n):
    out = []
    it = iter(sampler)
    while len(out) < n:
        try:
            out.append(next(it))
        except StopIteration:
            it = iter(sampler)
    return out


@settings(max_examples=25)
@given(st.integers(0, 120), st.sampled_from(["fully_randomized", "synced_randomized"]), st.integers(1, 3))
def test_resume_equivalence_across_epochs(stop, strategy, world):
    ref = _sampler(world, world - 1, bucketing_strategy=strategy, concat_sampling_probabilities=[0.3, 0.7])
    full = _run(ref, 150)
    first = _sampler(world, world - 1, bucketing_strategy=strategy, concat_sampling_probabilities=[0.3, 0.7])
    head = _run(first, stop)
    state = first.state_dict()
    second = _sampler(world, world - 1, bucketing_strategy=strategy, concat_sampling_probabilities=[0.3, 0.7])
    second.load_state_dict(state)
    second.set_epoch(state["epoch"])  # a trainer calling set_epoch after resuming keeps the position
    assert head + _run(second, 150 - stop) == full


def test_sampler_len_epochs_and_position():
    s = _sampler(world=2, rank=0)
    n = len(s)
    assert n == len(list(s)) and s.epoch == 1
    run = {"seed": s.cfg.seed, "rank": 0, "world_size": 2}
    assert s.position(0, n) == Position(1, 0, **run)
    assert s.position(0, 3) == Position(0, 3, **run)
    s.set_epoch(5)
    assert s.state_dict() == {"version": POSITION_VERSION, "epoch": 5, "batch": 0, **run}
    assert all(isinstance(i, int) for i in next(iter(s)))
    with pytest.raises(ConfigError, match="past the end"):
        s.load_state_dict({"epoch": 0, "batch": n + 1})
    with pytest.raises(ConfigError, match="sampler state"):
        s.load_state_dict({"epoch": 0})


def test_sampler_defaults_to_single_process_without_distributed():
    idx = make_index(libri_like(20))
    s = BatchSampler(idx, np.ones(20, bool), cfg_of(micro_batch_size=4))
    assert (s.rank, s.world_size) == (0, 1)
    with pytest.raises(ValueError, match="rank"):
        BatchSampler(idx, np.ones(20, bool), cfg_of(), rank=2, world_size=2)


def test_negative_seed_is_a_config_error():
    idx = make_index([1.0, 2.0])
    with pytest.raises(ConfigError, match="seed"):
        plan_epoch(idx, np.ones(2, bool), cfg_of(seed=-1), epoch=0)
