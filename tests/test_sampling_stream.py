"""Streaming buffers: sample-level shuffle and buffered bucketing (docs/architecture.md, "Streaming")."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from speechdata.config import make_dataset_config
from speechdata.sampling import bucketed_stream, effective_duration, shuffle_buffer


def _cfg(**kw):
    kw.setdefault("min_duration", None)
    kw.setdefault("max_duration", None)
    return make_dataset_config(kw)


@given(st.integers(0, 300), st.integers(0, 50), st.integers(0, 99))
def test_shuffle_buffer_yields_a_permutation(n, size, seed):
    out = list(shuffle_buffer(range(n), size, np.random.default_rng(seed)))
    assert sorted(out) == list(range(n))
    again = list(shuffle_buffer(iter(range(n)), size, np.random.default_rng(seed)))
    assert out == again


def test_shuffle_buffer_mixes_within_window():
    out = list(shuffle_buffer(range(5000), 100, np.random.default_rng(1)))
    assert out != list(range(5000))
    assert np.count_nonzero(np.diff(out) > 0) < 4000  # not merely the input order
    assert list(shuffle_buffer(range(10), 1, np.random.default_rng(1))) == list(range(10))


rows_st = st.lists(st.floats(0.3, 50.0), min_size=0, max_size=300)


@given(rows_st, st.sampled_from(["fixed", "bucketed", "dynamic"]), st.integers(1, 120), st.booleans())
def test_bucketed_stream_loses_nothing_and_respects_budget(durs, mode, buffer, shuffle):
    kw = {"shuffle": shuffle}
    if mode == "fixed":
        kw["micro_batch_size"] = 4
    elif mode == "bucketed":
        kw.update(bucketing_batch_size=2, bucket_duration_bins=[5.0, 20.0])
    else:
        kw.update(batch_duration=60.0, num_buckets=4, quadratic_duration=40.0)
    cfg = _cfg(**kw)
    rows = list(enumerate(durs))
    batches = list(bucketed_stream(iter(rows), lambda r: r[1], cfg, np.random.default_rng(0), buffer))
    assert Counter(r for b in batches for r in b) == Counter(rows)
    assert all(batches)
    for b in batches:
        d = np.array([r[1] for r in b])
        if mode == "dynamic":
            assert len(b) == 1 or len(b) * effective_duration(d, 40.0).max() <= 60.0
        elif mode == "bucketed":
            assert len(set(np.searchsorted([5.0, 20.0], d, side="right"))) == 1
            assert len(b) <= 2 * (3 - np.searchsorted([5.0, 20.0], d[0], side="right"))
        else:
            assert len(b) <= 4


def test_bucketed_stream_groups_similar_durations_and_is_lazy():
    rng = np.random.default_rng(3)
    d = np.clip(rng.gamma(6.0, 2.0, 20_000), 1.0, 35.0)
    cfg = _cfg(batch_duration=300.0)
    consumed = []

    def source():
        for i, x in enumerate(d):
            consumed.append(i)
            yield float(x)

    stream = bucketed_stream(source(), float, cfg, np.random.default_rng(0), 2000)
    first = next(stream)
    assert len(consumed) <= 2000  # one buffer read, not the whole stream
    assert max(first) - min(first) < 0.15 * max(first)
    rest = [first, *stream]
    pad = 1 - sum(sum(b) for b in rest) / sum(len(b) * max(b) for b in rest)
    assert pad < 0.05
