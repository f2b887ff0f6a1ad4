"""Sequence packing (docs/packing.md): the planned rows, the packed batch and the trainer on it."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, DropCounter
from speechdata.sampling.packing import RowBatch, pack_rows, packing_cost
from speechdata.sampling.plan import BatchSampler, plan_epoch
from speechdata.sampling.tokens import Measures, TokenCounts, filter_tokens


@dataclass
class FakeIndex:
    duration: np.ndarray
    min_clip: np.ndarray
    max_clip: np.ndarray
    num_audios: np.ndarray
    dataset: np.ndarray
    num_datasets: int = 1


def _index(d: np.ndarray) -> FakeIndex:
    d = d.astype(np.float32)
    n = d.size
    return FakeIndex(d, d, d, np.ones(n, np.uint8), np.zeros(n, np.uint16))


def _cfg(**kw: Any) -> Any:
    base = {
        "manifest_filepath": "x.jsonl",
        "packing": True,
        "packed_sequence_size": 256,
        "micro_batch_size": 3,
        "token_equivalent_duration": 0.08,
        "seed": 5,
    }
    base.update(kw)
    return make_dataset_config(base)


def _data(n: int, cfg: Any, seed: int = 0) -> tuple[FakeIndex, Measures]:
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.3, 6.0, n)
    text = rng.integers(8, 60, n)
    counts = TokenCounts(text.astype(np.int32), (text // 3).astype(np.int32))
    index = _index(d)
    return index, Measures.of(index.duration, counts, cfg)


# ------------------------------------------------------------------------------------ planner


def test_best_fit_decreasing_fills_rows_within_capacity() -> None:
    rng = np.random.default_rng(0)
    cost = rng.integers(5, 300, 5000)
    order, lengths = pack_rows(cost, 512, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(5000))
    sums = np.add.reduceat(cost[order], np.cumsum(lengths) - lengths)
    assert sums.max() <= 512
    assert 1 - cost.sum() / (lengths.size * 512) < 0.01  # nearly full rows
    again = pack_rows(cost, 512, np.random.default_rng(1))
    assert np.array_equal(order, again[0]) and np.array_equal(lengths, again[1])
    # a lone item over the capacity is a row of its own
    order, lengths = pack_rows(np.array([600, 100, 100]), 512, None)
    assert lengths.tolist() == [1, 2]


def test_audio_budget_joins_the_token_cost() -> None:
    cost = packing_cost(np.array([1.0, 10.0]), np.array([50, 50]), 100, 5.0)
    assert cost.tolist() == [50, 200]  # 10 s of a 5 s row is two rows' worth
    assert packing_cost(np.array([10.0]), np.array([50]), 100, None).tolist() == [50]


@pytest.mark.parametrize("audio_budget", [None, 8.0])
def test_packed_plan_rows_fit_budgets_and_cover_the_epoch(audio_budget: float | None) -> None:
    cfg = _cfg(packed_audio_duration=audio_budget, drop_last=False)
    index, m = _data(600, cfg)
    keep = np.ones(600, bool)
    filter_tokens(index, keep, m, cfg, DropCounter())
    plan = plan_epoch(index, keep, cfg, epoch=0, measures=m)
    assert plan.packed
    seen = []
    for k in range(len(plan)):
        ids, rows = plan.batch(k), plan.batch_rows(k)
        assert np.all(np.diff(rows) >= 0) and rows[0] == 0 and rows[-1] < cfg.micro_batch_size
        for r in np.unique(rows):
            members = ids[rows == r]
            assert m.tokens[members].sum() <= cfg.packed_sequence_size
            if audio_budget is not None:
                assert m.duration[members].sum() <= audio_budget + 1e-6
        seen += ids.tolist()
    assert sorted(seen) == np.flatnonzero(keep).tolist()  # every kept example once
    # rows are nearly full: tokens over rows x capacity
    total_rows = sum(int(plan.batch_rows(k)[-1]) + 1 for k in range(len(plan)))
    fill = m.tokens[keep].sum() / (total_rows * cfg.packed_sequence_size)
    assert fill > (0.9 if audio_budget is None else 0.5)


def test_packed_plan_is_deterministic_per_epoch_and_equal_across_ranks() -> None:
    cfg = _cfg()
    index, m = _data(500, cfg)
    keep = np.ones(500, bool)
    a = plan_epoch(index, keep, cfg, epoch=1, measures=m)
    b = plan_epoch(index, keep, cfg, epoch=1, measures=m)
    c = plan_epoch(index, keep, cfg, epoch=2, measures=m)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.rows, b.rows)
    assert not np.array_equal(a.ids, c.ids)
    ranks = [plan_epoch(index, keep, cfg, epoch=0, rank=r, world_size=3, measures=m) for r in range(3)]
    assert len({len(p) for p in ranks}) == 1
    ids = np.concatenate([p.ids for p in ranks])
    assert np.unique(ids).size == ids.size  # no example on two ranks


def test_sampler_yields_row_batches_and_resumes_exactly() -> None:
    cfg = _cfg()
    index, m = _data(400, cfg)
    keep = np.ones(400, bool)
    full = BatchSampler(index, keep, cfg, rank=0, world_size=1, measures=m)
    batches = list(full)
    assert all(isinstance(b, RowBatch) for b in batches)
    clone = pickle.loads(pickle.dumps(batches[0]))  # as a DataLoader hands it to a worker
    assert list(clone) == list(batches[0]) and clone.rows == batches[0].rows
    resumed = BatchSampler(index, keep, cfg, rank=0, world_size=1, measures=m)
    resumed.load_state_dict({"epoch": 0, "batch": 4})
    rest = list(resumed)
    assert [list(b) for b in rest] == [list(b) for b in batches[4:]]
    assert [b.rows for b in rest] == [b.rows for b in batches[4:]]


def test_examples_longer_than_a_row_are_counted_drops() -> None:
    cfg = _cfg(packed_sequence_size=40, packed_audio_duration=2.0, token_equivalent_duration=None)
    index = _index(np.array([0.5, 1.0, 3.0]))
    m = Measures.of(index.duration, TokenCounts(np.array([10, 45, 10]), np.array([2, 2, 2])), cfg)
    keep = np.ones(3, bool)
    drops = DropCounter()
    filter_tokens(index, keep, m, cfg, drops)
    assert keep.tolist() == [True, False, False]
    assert drops.to_dict() == {"too_long_text": 1, "too_long_audio": 1}


def test_packing_config_errors() -> None:
    with pytest.raises(ConfigError, match="packing: needs packed_sequence_size"):
        make_dataset_config({"manifest_filepath": "x", "packing": True})
    with pytest.raises(ConfigError, match="packing and batch_duration are both set"):
        _cfg(batch_duration=30.0)
    with pytest.raises(ConfigError, match="packed_sequence_size: is set but packing is false"):
        make_dataset_config({"manifest_filepath": "x", "packed_sequence_size": 10})
    with pytest.raises(ConfigError, match="packed_audio_duration: must be positive"):
        _cfg(packed_audio_duration=0)
