"""``synced_randomized`` on many ranks (issue #15): each bucket's whole groups of ``world_size``
batches stay as they were; the buckets' leftovers, concatenated in bucket order, make further
groups that span adjacent buckets, so an epoch drops (``drop_last``) or repeats fewer than
``world_size`` batches. A version-1 position left inside an epoch finishes it by the version-1
rule (each bucket's leftovers dropped or padded on their own), exactly as it began."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers_sampling import libri_like, make_index
from hypothesis import given
from hypothesis import strategies as st

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.manifest import pack_sample_id
from speechdata.sampling import BatchSampler, Position, make_buckets, plan_epoch
from speechdata.sampling.plan import _synced_groups, _synced_groups_v1
from speechdata.sampling.position import POSITION_VERSION, EpochDeal
from speechdata.testing import make_corpus

# ---------------------------------------------------------------- the grouping, by a plain loop


def _groups_by_loop(counts: list[int], w: int, drop_last: bool) -> tuple[list[list[int]], list[int]]:
    """The version-2 groups (positions into the bucket-sorted batches) and drops, one at a time."""
    groups: list[list[int]] = []
    leftovers: list[int] = []
    first = 0
    for c in counts:
        own = list(range(first, first + c))
        whole = c - c % w
        groups += [own[i : i + w] for i in range(0, whole, w)]
        leftovers += own[whole:]
        first += c
    mixed = [leftovers[i : i + w] for i in range(0, len(leftovers), w)]
    if mixed and len(mixed[-1]) < w:
        last = mixed.pop()
        if drop_last:
            return groups + mixed, last
        mixed.append([last[i * len(last) // w] for i in range(w)])
    return groups + mixed, []


def _groups_v1_by_loop(counts: list[int], w: int, drop_last: bool) -> tuple[list[list[int]], list[int]]:
    """The version-1 groups: each bucket on its own, its last group dropped or filled from its start."""
    groups: list[list[int]] = []
    dropped: list[int] = []
    first = 0
    for c in counts:
        own = list(range(first, first + c))
        for i in range(0, c, w):
            group = own[i : i + w]
            if len(group) < w and drop_last:
                dropped += group
            elif len(group) < w:
                groups.append([own[j % c] for j in range(i, i + w)])
            else:
                groups.append(group)
        first += c
    return groups, dropped


@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.integers(1, 9), st.booleans())
def test_groups_match_the_rule_written_as_a_loop(counts, w, drop_last):
    bucket = np.repeat(np.arange(len(counts)), counts)
    for fn, ref in ((_synced_groups, _groups_by_loop), (_synced_groups_v1, _groups_v1_by_loop)):
        flat, dropped = fn(bucket, w, drop_last)
        groups, want_dropped = ref(counts, w, drop_last)
        assert flat.reshape(-1, w).tolist() == groups, fn.__name__
        assert dropped.tolist() == want_dropped, fn.__name__
    flat, dropped = _synced_groups(bucket, w, drop_last)
    assert dropped.size < w and flat.size - (bucket.size - dropped.size) < w
    if w == 1:  # one rank: the two rules are the same
        assert np.array_equal(flat, _synced_groups_v1(bucket, w, drop_last)[0])


# ---------------------------------------------------------------------------- whole epochs


def _cfg(drop_last: bool, buckets: int, shuffle: bool = True, seed: int = 4, **kw):
    return make_dataset_config(
        {
            "batch_duration": 60.0,
            "num_buckets": buckets,
            "bucketing_strategy": "synced_randomized",
            "drop_last": drop_last,
            "shuffle": shuffle,
            "seed": seed,
            "min_duration": None,
            "max_duration": None,
            **kw,
        }
    )


CASES = [(w, k) for w in (1, 2, 3, 8, 16) for k in (1, 4, 12)]
#: An epoch a version-1 position left unfinished: dealt by the version-1 rule.
V1 = EpochDeal(rule=1)


@pytest.mark.parametrize(("world", "buckets"), CASES)
@pytest.mark.parametrize("drop_last", [True, False])
def test_every_example_once_over_all_ranks(world, buckets, drop_last):
    n = 1500
    idx = make_index(libri_like(n, seed=world + buckets))
    keep = np.ones(n, bool)
    cfg = _cfg(drop_last, buckets)
    plans = [plan_epoch(idx, keep, cfg, epoch=1, rank=r, world_size=world) for r in range(world)]
    steps = len(plans[0])
    assert all(len(p) == steps for p in plans)
    slots = steps * world
    counts = Counter(np.concatenate([p.ids for p in plans]).tolist())
    if drop_last:
        assert max(counts.values()) == 1, "an example on two ranks or twice"
        assert len(counts) + plans[0].dropped == n
        assert 0 <= plans[0].formed - slots < world, "a whole group or more was dropped"
        assert not set(counts) & set(plans[0].dropped_ids.tolist())
    else:
        assert set(counts) == set(range(n)) and plans[0].dropped == 0
        assert sum(c - 1 for c in counts.values()) == plans[0].repeated
        assert 0 <= slots - plans[0].formed < world, "a whole group or more was repeated"


@pytest.mark.parametrize(("world", "buckets"), [(w, k) for w, k in CASES if w > 1])
@pytest.mark.parametrize("drop_last", [True, False])
def test_mixed_groups_hold_adjacent_buckets(world, buckets, drop_last):
    n = 1500
    idx = make_index(libri_like(n, seed=world * buckets))
    keep = np.ones(n, bool)
    cfg = _cfg(drop_last, buckets)
    assignment = make_buckets(idx, keep, cfg).assignment
    plans = [plan_epoch(idx, keep, cfg, epoch=0, rank=r, world_size=world) for r in range(world)]
    spans = []
    for k in range(len(plans[0])):
        step = [int(p.bucket[k]) for p in plans]
        for p in plans:  # a batch holds examples of its own bucket
            assert np.all(assignment[p.batch(k)] == p.bucket[k])
        assert step == sorted(step), "a group's batches come in bucket order, rank by rank"
        if step[0] != step[-1]:
            spans.append((step[0], step[-1]))
    # the leftovers are cut in bucket order: mixed groups meet at most at their end buckets
    spans.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    assert len(spans) <= buckets - 1


def test_many_ranks_drop_fewer_than_a_group():
    """The case of issue #15 in small: 30 buckets on 64 ranks. Version 1 dropped each bucket's
    last incomplete group; now fewer than 64 batches go."""
    n = 40_000
    idx = make_index(libri_like(n, seed=3))
    keep = np.ones(n, bool)
    cfg = _cfg(True, 30)
    now = plan_epoch(idx, keep, cfg, epoch=0, rank=0, world_size=64)
    before = plan_epoch(idx, keep, cfg, epoch=0, rank=0, world_size=64, deal=V1)
    assert now.formed == before.formed
    assert now.formed - 64 * len(now) < 64
    assert before.formed - 64 * len(before) > 64 * 5  # many buckets' tails
    assert now.dropped < before.dropped / 5


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_one_rank_is_dealt_as_before(shuffle, drop_last):
    idx = make_index(libri_like(3000, seed=8))
    keep = np.ones(3000, bool)
    cfg = _cfg(drop_last, 12, shuffle)
    a = plan_epoch(idx, keep, cfg, epoch=2)
    b = plan_epoch(idx, keep, cfg, epoch=2, deal=V1)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.offsets, b.offsets)
    assert (a.dropped, a.repeated) == (b.dropped, b.repeated)


def test_deterministic_from_seed_and_epoch():
    idx = make_index(libri_like(3000, seed=9))
    keep = np.ones(3000, bool)
    a, b = (plan_epoch(idx, keep, _cfg(True, 12), epoch=1, rank=2, world_size=8) for _ in range(2))
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.dropped_ids, b.dropped_ids)
    c = plan_epoch(idx, keep, _cfg(True, 12), epoch=2, rank=2, world_size=8)
    d = plan_epoch(idx, keep, _cfg(True, 12, seed=5), epoch=1, rank=2, world_size=8)
    assert not np.array_equal(a.ids[: c.ids.size], c.ids[: a.ids.size])
    assert not np.array_equal(a.ids[: d.ids.size], d.ids[: a.ids.size])


@pytest.mark.parametrize("drop_last", [True, False])
def test_elastic_redeal_uses_the_same_rule(drop_last):
    """Stop on 4 ranks, resume on 7: every example once over the epoch, and the re-deal drops or
    repeats fewer than 7 batches."""
    n = 2000
    idx = make_index(libri_like(n, seed=10))
    keep = np.ones(n, bool)
    cfg = _cfg(drop_last, 12)
    first = [plan_epoch(idx, keep, cfg, epoch=0, rank=r, world_size=4) for r in range(4)]
    stop = len(first[0]) // 2
    head = [first[r].batch(k) for r in range(4) for k in range(stop)]
    rest = [
        plan_epoch(idx, keep, cfg, epoch=0, rank=r, world_size=7, deal=EpochDeal(((4, stop),)))
        for r in range(7)
    ]
    assert len({len(p) for p in rest}) == 1 and rest[0].start == stop
    counts = Counter(np.concatenate(head + [p.ids for p in rest]).tolist())
    left = first[0].formed - 4 * stop  # batches not delivered before the resume
    if drop_last:
        assert max(counts.values()) == 1 and len(counts) + rest[0].dropped == n
        assert 0 <= left - 7 * (len(rest[0]) - stop) < 7
    else:
        assert set(counts) == set(range(n))
        assert 0 <= 7 * (len(rest[0]) - stop) - left < 7


# ------------------------------------------------------------------- version-1 positions


def _batches(plan, start: int = 0) -> list[list[int]]:
    return [plan.batch(k).tolist() for k in range(start, len(plan))]


@pytest.mark.parametrize("drop_last", [True, False])
def test_a_version_1_position_finishes_its_epoch_by_the_version_1_rule(drop_last):
    n, world, rank, stop = 3000, 8, 5, 4
    idx = make_index(libri_like(n, seed=11))
    keep = np.ones(n, bool)
    cfg = _cfg(drop_last, 12)
    old = plan_epoch(idx, keep, cfg, epoch=3, rank=rank, world_size=world, deal=V1)
    new = plan_epoch(idx, keep, cfg, epoch=3, rank=rank, world_size=world)
    assert _batches(old, stop) != _batches(new, stop), "the test wants the two rules to differ"
    saved = {"version": 1, "epoch": 3, "batch": stop, "seed": 4, "rank": rank, "world_size": world}
    sampler = BatchSampler(idx, keep, cfg, rank=rank, world_size=world)
    sampler.load_state_dict(saved)
    assert sampler.state_dict() == saved  # still a version-1 epoch, written as one
    it = iter(sampler)
    rest = [next(it)]
    mid = sampler.state_dict()
    assert mid == {**saved, "batch": stop + 1}
    assert Position.from_dict(mid).to_dict() == mid
    rest += list(it)
    assert rest == _batches(old, stop)
    # the next epoch is dealt by the current rule, and its positions say so
    assert sampler.state_dict() == {**saved, "version": POSITION_VERSION, "epoch": 4, "batch": 0}
    nxt = plan_epoch(idx, keep, cfg, epoch=4, rank=rank, world_size=world)
    assert list(sampler) == _batches(nxt)


def test_a_version_1_position_resumes_elastically_by_the_version_1_rule():
    """A version-1 position of 8 ranks resumed on 3: the steps taken on 8 are those of the
    version-1 deal, the rest is re-dealt by the version-1 rule, every example once."""
    n, stop = 3000, 3
    idx = make_index(libri_like(n, seed=12))
    keep = np.ones(n, bool)
    cfg = _cfg(True, 12)
    head = [
        b
        for r in range(8)
        for b in _batches(plan_epoch(idx, keep, cfg, epoch=0, rank=r, world_size=8, deal=V1))[:stop]
    ]
    saved = {"version": 1, "epoch": 0, "batch": stop, "seed": 4, "rank": 0, "world_size": 8}
    rest, dropped = [], set()
    for r in range(3):
        sampler = BatchSampler(idx, keep, cfg, rank=r, world_size=3)
        sampler.load_state_dict(saved)
        assert sampler.state_dict() == {**saved, "rank": r, "world_size": 3, "resized": [[8, stop]]}
        want = plan_epoch(idx, keep, cfg, epoch=0, rank=r, world_size=3, deal=EpochDeal(((8, stop),), rule=1))
        rest += list(sampler)
        assert rest[-len(want) + stop :] == _batches(want, stop)
        dropped = set(want.dropped_ids.tolist())
    counts = Counter(i for b in head + rest for i in b)
    assert max(counts.values()) == 1 and len(counts) + len(dropped) == n


@pytest.mark.parametrize(
    "state",
    [
        {"epoch": 2, "batch": 3},  # the sampler's format before versions
        {"epoch": 2, "batch": 3, "seed": 4, "rank": 1, "world_size": 4},  # the loader's
    ],
)
def test_positions_before_versions_are_version_1(state):
    pos = Position.from_dict(state)
    assert pos.deal == V1 and pos.resized == () and pos.to_dict()["version"] == 1
    # at an epoch's start nothing was dealt yet: the current rule
    assert Position.from_dict({**state, "batch": 0}).deal == EpochDeal()
    # a stream has no deal: its position is read as it is
    assert Position.from_dict({**state, "readers": 2}).deal == EpochDeal()


def test_a_loader_resumes_a_version_1_position_exactly(tmp_path: Path):
    """The loader end to end: a version-1 state of rank 1 of 3 resumes with the version-1 deal of
    its epoch, its states mid-epoch stay version 1, and the next epoch is version 2."""
    corpus = make_corpus(tmp_path / "c", n=60, seed=5, min_duration=0.5, max_duration=3.0)
    tok = corpus.train_tokenizer(vocab_size=80, locator="|audio|")
    cfg = make_dataset_config(
        {
            "manifest_filepath": str(corpus.manifest),
            "audio_locator": "|audio|",
            "prompt_template": "Q: {context}\nA: {answer}",
            "batch_duration": 4.0,
            "num_buckets": 6,
            "bucketing_strategy": "synced_randomized",
            "drop_last": True,
            "min_duration": None,
            "max_duration": None,
            "seed": 7,
        }
    )
    world, rank, stop = 3, 1, 1
    loader = build_dataloader(cfg, tok, rank=rank, world_size=world)
    old = loader.feed.sampler.plan(0, V1)
    new = loader.feed.sampler.plan(0)
    assert len(old) > stop + 1
    assert _batches(old, stop) != _batches(new, stop)[: len(old) - stop], "the rules should differ"
    saved = {"version": 1, "epoch": 0, "batch": stop, "seed": 7, "rank": rank, "world_size": world}
    loader.load_state_dict(saved)
    got, states = [], []
    for b in loader:
        got.append(sorted(b["sample_ids"].tolist()))
        states.append(loader.state_dict())
    want = [sorted(pack_sample_id(0, i + 1) for i in b) for b in _batches(old, stop)]
    assert got == want
    assert states[0] == {**saved, "batch": stop + 1}
    assert states[-1] == {**saved, "version": POSITION_VERSION, "epoch": 1, "batch": 0}
