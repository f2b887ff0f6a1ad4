"""Token-aware batching (docs/configuration.md, "Tokens and 2D buckets"): 2D bucket assignment
(strict and lenient, as NeMo), budgets in seconds and tokens, the token filters, the token count
pass and its cache, through the planner and through build_dataloader with a NeMo 2.x section."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_sampling import FakeIndex, make_index

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, DropCounter
from speechdata.sampling import plan_epoch
from speechdata.sampling.batching import batch_cost
from speechdata.sampling.buckets import assign_buckets_2d, estimate_bins_2d, make_buckets
from speechdata.sampling.tokens import Measures, TokenCounts, filter_tokens, needs_tokens
from speechdata.testing import make_corpus
from speechdata.text.dialog import make_prompt_builder

LOCATOR = "|audio|"
NEMO_BINS = np.array([[10, 5], [10, 10], [20, 12], [20, 18]], dtype=np.float64)


def _index(d: np.ndarray) -> FakeIndex:
    return make_index(d)


def _cfg(**kw: Any):
    kw.setdefault("min_duration", None)
    kw.setdefault("max_duration", None)
    return make_dataset_config(kw)


def _random_measures(n: int, cfg: Any, seed: int = 0) -> tuple[FakeIndex, Measures]:
    rng = np.random.default_rng(seed)
    d = np.clip(rng.gamma(6.0, 2.0, n), 0.5, 35.0).astype(np.float32)
    output = rng.integers(1, 120, n)
    text = output + rng.integers(5, 40, n)
    counts = TokenCounts(text.astype(np.int32), output.astype(np.int32))
    index = _index(d)
    return index, Measures.of(index.duration, counts, cfg)


def test_2d_assignment_strict_and_lenient_as_nemo() -> None:
    """NeMo's own example: bins (10,5),(10,10),(20,12),(20,18) and an example (8, 11): strict mode
    tries only the buckets of first bound 10 and finds none; lenient takes (20, 12)."""
    first = np.array([8, 8, 8, 15, 20, 25, 10])
    second = np.array([11, 4, 10, 12, 19, 1, 5])
    strict, long_first = assign_buckets_2d(first, second, NEMO_BINS, strict=True)
    lenient, _ = assign_buckets_2d(first, second, NEMO_BINS, strict=False)
    assert strict.tolist() == [-1, 0, 1, 2, -1, -1, 0]
    assert lenient.tolist() == [2, 0, 1, 2, -1, -1, 0]
    assert long_first.tolist() == [False, False, False, False, False, True, False]


def test_estimated_2d_bins_fit_every_example_in_strict_mode() -> None:
    rng = np.random.default_rng(3)
    first = np.round(rng.gamma(6.0, 2.0, 3000), 2)
    second = rng.integers(1, 200, 3000).astype(np.float64)
    bins = estimate_bins_2d(first, second, 6, 4)
    assert bins.shape == (24, 2) and [tuple(b) for b in bins] == sorted({tuple(b) for b in bins})
    assigned, _ = assign_buckets_2d(first, second, bins, strict=True)
    assert (assigned >= 0).all()
    # equal totals: of seconds per first bound, and of output tokens per pair within one
    outer = np.searchsorted(np.unique(bins[:, 0]), bins[assigned, 0])
    totals = np.bincount(outer, weights=first)
    assert totals.max() < 1.2 * totals.min()
    inner = np.bincount(assigned, weights=second).reshape(6, 4)
    assert (inner.max(axis=1) < 1.5 * inner.min(axis=1)).all()
    assert estimate_bins_2d(np.zeros(0), np.zeros(0), 4, 2).shape == (0, 2)


def test_batch_cost_keeps_both_budgets() -> None:
    eff = np.array([10.0, 2.0, 5.0])
    tokens = np.array([100, 400, 50])
    key, budget = batch_cost(eff, tokens, 60.0, 1200)
    assert budget == 60.0 and key.tolist() == [10.0, 20.0, 5.0]  # 400 tokens are 20 s of a 60 s / 1200 budget
    assert batch_cost(eff, tokens, None, 1200)[1] == 1200.0
    assert batch_cost(eff, None, 60.0, None)[0] is not None
    with pytest.raises(ValueError, match="batch_tokens needs each entry's tokens"):
        batch_cost(eff, None, 60.0, 1200)


@pytest.mark.parametrize("budgets", [{"batch_tokens": 3000}, {"batch_tokens": 3000, "batch_duration": 120.0}])
def test_plan_batches_fit_token_and_second_budgets_in_2d_buckets(budgets: dict[str, Any]) -> None:
    """Every planned batch is in one 2D bucket, and n × its largest tokens (and seconds) fits the
    budgets; the misfits of the bins are dropped by the filter, counted by reason."""
    bins = [[10.0, 40.0], [10.0, 120.0], [20.0, 60.0], [20.0, 120.0], [30.0, 120.0]]
    cfg = _cfg(
        bucket_duration_bins=bins, token_equivalent_duration=0.08, shuffle=True, drop_last=False, **budgets
    )
    index, m = _random_measures(5000, cfg)
    keep = np.ones(5000, dtype=bool)
    drops = DropCounter()
    filter_tokens(index, keep, m, cfg, drops)
    first, second = m.axes()
    expect, long_first = assign_buckets_2d(first, second, np.asarray(bins), strict=True)
    assert drops.to_dict() == {
        k: v
        for k, v in {
            "too_long_audio": int(np.count_nonzero((expect < 0) & long_first)),
            "too_long_text": int(np.count_nonzero((expect < 0) & ~long_first)),
        }.items()
        if v
    }
    assert np.array_equal(keep, expect >= 0)
    plan = plan_epoch(index, keep, cfg, epoch=1, measures=m)
    tokens = m.tokens
    seen = []
    for k, batch in enumerate(plan):
        assert len(set(expect[batch].tolist())) == 1 and expect[batch[0]] == plan.bucket[k]
        assert batch.size * tokens[batch].max() <= budgets["batch_tokens"] or batch.size == 1
        if "batch_duration" in budgets:
            assert (
                batch.size * float(index.duration[batch].max()) <= budgets["batch_duration"] + 1e-6
                or batch.size == 1
            )
        seen.append(batch)
    assert sorted(np.concatenate(seen).tolist()) == np.flatnonzero(keep).tolist()
    assert plan.fill > 0.5
    again = plan_epoch(index, keep, cfg, epoch=1, measures=m)
    assert np.array_equal(again.ids, plan.ids)  # deterministic


def test_multimodal_measures_and_1d_token_bins() -> None:
    """use_multimodal_sampling: audio tokens are ceil(seconds / token_equivalent_duration); 1D bins
    are over tokens, 2D first values are input tokens (audio + text before the answer)."""
    cfg = _cfg(token_equivalent_duration=0.5, use_multimodal_sampling=True, bucket_duration_bins=[20.0])
    index = _index(np.array([1.0, 2.2, 10.0]))
    m = Measures.of(index.duration, TokenCounts(np.array([10, 4, 3]), np.array([6, 1, 1])), cfg)
    assert m.audio.tolist() == [2, 5, 20] and m.tokens.tolist() == [12, 9, 23]
    exact = Measures.of(
        np.array([0.08, 0.24, 0.25], np.float32),
        TokenCounts(np.zeros(3), np.zeros(3)),
        _cfg(token_equivalent_duration=0.08),
    )
    assert exact.audio.tolist() == [1, 3, 4]  # float32 seconds count as the manifest's values
    assert m.axes()[0].tolist() == [6.0, 8.0, 22.0] and m.axes()[1].tolist() == [6.0, 1.0, 1.0]
    assert make_buckets(index, None, cfg, measures=m).assignment.tolist() == [0, 0, 1]
    with pytest.raises(ConfigError, match="use_multimodal_sampling: needs each example's token counts"):
        make_buckets(index, None, cfg)
    assert needs_tokens(cfg) and not needs_tokens(_cfg(batch_duration=10.0))
    with pytest.raises(ConfigError, match="batch_tokens: needs each example's token counts"):
        plan_epoch(index, np.ones(3, bool), _cfg(batch_tokens=100), epoch=0)


def test_token_filters_count_with_bounds() -> None:
    cfg = _cfg(min_tokens=10, max_tokens=30, token_equivalent_duration=1.0)
    index = _index(np.array([1.0, 1.0, 5.0, 1.0]))
    m = Measures.of(index.duration, TokenCounts(np.array([5, 20, 28, 29]), np.array([1, 1, 1, 1])), cfg)
    keep = np.ones(4, dtype=bool)
    drops = DropCounter()
    filter_tokens(index, keep, m, cfg, drops)
    assert keep.tolist() == [False, True, False, True]  # 6 < 10; 33 > 30 (28 text + 5 audio)
    assert drops.to_dict() == {"too_short_text": 1, "too_long_text": 1}
    assert drops.notes == {"too_short_text": "min_tokens 10", "too_long_text": "max_tokens 30"}


# ------------------------------------------------------------------------- through the loader


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tok2d")
    a = make_corpus(root / "a", n=40, seed=11, max_duration=6.0)
    b = make_corpus(root / "b", n=24, seed=12, max_duration=6.0)
    tok = a.train_tokenizer(vocab_size=90, locator=LOCATOR)
    return {"a": a, "b": b, "tok": tok}


def _section(corpora: dict[str, Any], **kw: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "input_cfg": [
            {"type": "nemo", "manifest_filepath": str(corpora["a"].manifest), "weight": 0.5},
            {"type": "nemo", "manifest_filepath": str(corpora["b"].manifest), "weight": 0.5},
        ],
        "audio_locator_tag": LOCATOR,
        "default_context": f"{LOCATOR} Transcribe the audio.",
        "token_equivalent_duration": 0.08,
        "batch_tokens": 600,
        "batch_size": None,
        "bucket_duration_bins": [[3.0, 12.0], [3.0, 40.0], [7.0, 20.0], [7.0, 60.0]],
        "min_duration": None,
        "max_duration": None,
        "drop_last": False,
        "seed": 7,
    }
    section.update(kw)
    return section


def test_loader_counts_tokens_with_the_prompt_builder_and_caches_them(
    corpora: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The counts are len(build_record(record).input_ids) and its answer part for every kept row;
    a second loader reads them from the cache; other prompt settings count again."""
    tok = corpora["tok"]
    with caplog.at_level(logging.INFO, logger="speechdata"):
        loader = build_dataloader(_section(corpora), tok)
    assert any("counted the tokens of" in r.getMessage() for r in caplog.records)
    m = loader.measures
    assert m is not None
    builder = make_prompt_builder(loader.cfg, tok)
    for row in range(len(loader.index)):
        prompt = builder.build_record(loader.source.record(row))
        assert m.text[row] == len(prompt.input_ids)
        assert m.output[row] == len(prompt.input_ids) - prompt.answer_start
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="speechdata"):
        again = build_dataloader(_section(corpora), tok)
    assert not any("counted the tokens of" in r.getMessage() for r in caplog.records)
    assert again.measures is not None and np.array_equal(again.measures.text, m.text)
    with caplog.at_level(logging.INFO, logger="speechdata"):
        other = build_dataloader(_section(corpora, end_string=" The end."), tok)
    assert any("counted the tokens of" in r.getMessage() for r in caplog.records)
    assert other.measures is not None and not np.array_equal(other.measures.text, m.text)


def test_loader_batches_fit_the_token_budget_and_resume(corpora: dict[str, Any]) -> None:
    """A NeMo 2.x section with 2D bins and batch_tokens: every batch fits the budget by the
    counted tokens, every kept example comes once per epoch, and a saved position resumes."""
    tok = corpora["tok"]
    loader = build_dataloader(_section(corpora), tok)
    m = loader.measures
    assert m is not None and loader.sampler is not None
    kept = int(np.count_nonzero(loader.keep))
    assert kept + sum(loader.filter_drops.to_dict().values()) == len(loader.index)
    batches = [b["sample_ids"].tolist() for b in loader]
    plan = loader.sampler.plan(0)
    assert len(batches) == len(plan) > 2
    for batch, ids in zip(plan, batches, strict=True):
        assert batch.size * m.tokens[batch].max() <= 600 or batch.size == 1
        assert loader.index.sample_ids(batch).tolist() == ids
    resumed = build_dataloader(_section(corpora), tok)
    resumed.load_state_dict({"epoch": 0, "batch": 2})
    assert [b["sample_ids"].tolist() for b in resumed] == batches[2:]


def test_token_keys_refuse_a_streamed_dataset(tmp_path: Path) -> None:
    cfg = make_dataset_config({"manifest_filepath": "x.jsonl", "batch_tokens": 100})
    assert needs_tokens(cfg)
    from speechdata.loader import SpeechDataLoader

    class Streamed:
        seekable = False

    loader = object.__new__(SpeechDataLoader)
    loader.cfg, loader.source = cfg, Streamed()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="need token counts per example, which a streamed dataset"):
        loader._measure_tokens(cache=False)
