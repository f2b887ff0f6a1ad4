"""The numbers we publish, tested: the character error rate behind ``val_cer``, the steady-state
rate behind ``speechdata bench`` (against a fake clock), and the results files the docs cite.

Every expected value below is computed by hand in the comment next to it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from speechdata.bench.peers import Meter
from speechdata.train.module import edit_distance, error_sums

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ edit distance


@pytest.mark.parametrize(
    ("hyp", "ref", "want"),
    [
        ("abc", "abc", 0),  # identical
        ("abd", "abc", 1),  # one substitution (last)
        ("xbc", "abc", 1),  # one substitution (first)
        ("abxc", "abc", 1),  # one insertion in the hypothesis
        ("abcx", "abc", 1),  # one insertion at the end
        ("xabc", "abc", 1),  # one insertion at the start
        ("ac", "abc", 1),  # one deletion (middle)
        ("bc", "abc", 1),  # one deletion (first)
        ("ab", "abc", 1),  # one deletion (last)
        ("ba", "ab", 2),  # a transposition is two edits (Levenshtein, not Damerau)
        ("kitten", "sitting", 3),  # k->s, e->i, +g
        ("sunday", "saturday", 3),  # +a, +t, n->r
        ("flaw", "lawn", 2),  # -f, +n
        ("intention", "execution", 5),  # -i, n->e, t->x, +c, n->u
        ("", "abc", 3),  # empty hypothesis: every reference character deleted
        ("abc", "", 3),  # empty reference: every hypothesis character inserted
        ("", "", 0),
        ("naïve", "naive", 1),  # ï is one code point: one substitution
        ("日本語", "日本", 1),  # CJK: one code point per character
        ("😀a", "a", 1),  # an emoji outside the BMP is one code point
        ("e\u0301", "\u00e9", 2),  # decomposed é (e + combining accent) against composed é
        ([5, 7, 9], [5, 9], 1),  # token ids compare by id
        ([1, 2, 3], [4, 5, 6], 3),
    ],
)
def test_edit_distance_hand_computed(hyp, ref, want: int) -> None:
    assert edit_distance(hyp, ref) == want
    assert edit_distance(ref, hyp) == want  # symmetric


def _levenshtein_by_definition(a: str, b: str) -> int:
    """The recursive definition, memoised: an oracle independent of the table implementation."""

    @functools.cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


@given(st.text("abc", max_size=7), st.text("abc", max_size=7))
def test_edit_distance_matches_the_recursive_definition(a: str, b: str) -> None:
    assert edit_distance(a, b) == _levenshtein_by_definition(a, b)


def test_error_sums_add_edits_and_reference_lengths() -> None:
    pairs = [
        ("kitten", "sitting"),  # 3 edits, 7 reference characters
        ("", "ab"),  # 2 deletions, 2
        ("zz", ""),  # empty reference: 2 insertions, 0
        ("same", "same"),  # 0, 4
    ]
    assert error_sums(pairs) == (3 + 2 + 2 + 0, 7 + 2 + 0 + 4)
    # the rate is a quotient of sums (7 / 13), not the mean of per-pair rates
    edits, chars = error_sums(pairs)
    assert edits / chars == pytest.approx(7 / 13)
    assert error_sums([]) == (0, 0)
    assert error_sums([("", "")]) == (0, 0)  # no reference character: the rate is undefined
    assert error_sums(iter([([1, 2], [1, 3])])) == (1, 2)  # any iterable of token-id pairs


# --------------------------------------------------------------------------- steady-state rate


class FakeClock:
    """Returns the given instants, one per call; fails loudly if read more often than planned."""

    def __init__(self, *instants: float) -> None:
        self.instants = list(instants)

    def __call__(self) -> float:
        assert self.instants, "the meter read the clock more often than expected"
        return self.instants.pop(0)


def _three_batches(batched: bool = True):
    # start at t=10; batches arrive at t=12, 13, 16 holding 5, 6, 10 audio s and 2, 3, 5 examples
    meter = Meter("cpu", clock=FakeClock(10.0, 12.0, 13.0, 16.0))
    meter.start()
    meter.batch(5.0, 2, 2, valid=80, cells=100)
    meter.batch(6.0, 3, 3, valid=90, cells=100)
    meter.batch(10.0, 5, 5, valid=150, cells=200)
    assert not meter.clock.instants
    return meter.figures(batched=batched)


def test_steady_state_rate_excludes_the_first_batch() -> None:
    f = _three_batches()
    # what arrived after the first batch (6 + 10 s, 3 + 5 examples) over first -> last (16 - 12 s)
    assert f.audio_s_per_s == pytest.approx(16.0 / 4.0)  # 4.0, not 21 / 6 (whole run) or 21 / 4
    assert f.examples_per_s == pytest.approx(8.0 / 4.0)  # 2.0
    assert f.first_batch_s == pytest.approx(2.0)  # 12 - 10
    assert f.wall_s == pytest.approx(6.0)  # 16 - 10
    assert (f.audio_seconds, f.examples, f.audios, f.batches) == (21.0, 10, 10, 3)
    assert f.padding_fraction == pytest.approx(1.0 - 320 / 400)  # 0.2, over all batches


def test_unbatched_rate_is_the_whole_run() -> None:
    f = _three_batches(batched=False)
    assert f.audio_s_per_s == pytest.approx(21.0 / 6.0)  # everything over start -> last
    assert f.examples_per_s == pytest.approx(10.0 / 6.0)
    assert f.first_batch_s is None


def test_single_batch_rate_is_the_whole_run() -> None:
    meter = Meter("cpu", clock=FakeClock(0.0, 2.0))
    meter.start()
    meter.tensor_batch(torch.tensor([3, 1]), torch.zeros(2, 3), sample_rate=2, examples=1)
    f = meter.figures()
    # 4 valid samples at 2 Hz = 2 audio s in 2 s; padding 1 - 4 / 6
    assert f.audio_seconds == pytest.approx(2.0)
    assert f.audio_s_per_s == pytest.approx(1.0)
    assert f.examples_per_s == pytest.approx(0.5)
    assert f.first_batch_s == pytest.approx(2.0)
    assert f.padding_fraction == pytest.approx(1.0 - 4 / 6)
    assert f.token_padding_fraction is None  # no token rows recorded


def test_token_padding_sums_over_batches() -> None:
    meter = Meter("cpu", clock=FakeClock(0.0, 1.0, 2.0))
    meter.start()
    meter.tensor_batch(torch.tensor([2]), torch.zeros(1, 2), sample_rate=2, examples=1)
    meter.token_rows(torch.tensor([5, 2]), torch.zeros(2, 5))  # 7 of 10 slots
    meter.tensor_batch(torch.tensor([2]), torch.zeros(1, 2), sample_rate=2, examples=1)
    meter.token_rows(torch.tensor([3]), torch.zeros(1, 4))  # 3 of 4
    assert meter.figures().token_padding_fraction == pytest.approx(1.0 - 10 / 14)


def test_batches_at_one_instant_fall_back_to_the_whole_run() -> None:
    meter = Meter("cpu", clock=FakeClock(1.0, 3.0, 3.0))
    meter.start()
    meter.batch(4.0, 1, 1)
    meter.batch(2.0, 1, 1)
    f = meter.figures()
    assert f.audio_s_per_s == pytest.approx(6.0 / 2.0)  # no span after the first batch
    assert f.padding_fraction is None  # no cells recorded


def test_no_batch_is_an_error() -> None:
    meter = Meter("cpu", clock=FakeClock(0.0))
    meter.start()
    with pytest.raises(RuntimeError, match="no batch"):
        meter.figures()


# ------------------------------------------------------------------------------ results files


def test_every_results_file_the_docs_cite_exists() -> None:
    cited: set[str] = set()
    for doc in ("README.md", "docs/benchmarks.md"):
        cited |= set(re.findall(r"benchmarks/results/[\w.*/-]*[\w*]", (REPO / doc).read_text()))
    assert cited, "the docs cite no results file"
    for name in sorted(cited):
        if "*" in name:  # e.g. loader.*: at least one file of that stem
            assert list((REPO / name).parent.glob(Path(name).name)), name
        else:
            assert (REPO / name).is_file(), f"{name} is cited but missing"


def test_the_loader_tables_in_the_docs_are_the_results_file() -> None:
    results = (REPO / "benchmarks/results/loader.md").read_text().splitlines()
    loaders = ("| speechdata |", "| decode floor |", "| lhotse |", "| webdataset |")
    rows = [line for line in results if line.startswith(loaders)]
    assert len(rows) == 8, rows  # four loaders, FLAC and WAV
    docs = (REPO / "docs/benchmarks.md").read_text().splitlines()
    for row in rows:
        assert row in docs, f"docs/benchmarks.md lacks the results row {row!r}"


def test_cer_compares_the_tokens_before_the_first_eos() -> None:
    """A ChatML reference ends ``<|im_end|>\\n`` (EOS, then a newline token); generation stops at
    EOS, so CER compares what comes before it on both sides, pad left out."""
    from types import SimpleNamespace

    from speechdata.train.module import SpeechLMModule

    fake = SimpleNamespace(model=SimpleNamespace(cfg=SimpleNamespace(eos_id=2, pad_id=0)), decode=None)
    assert SpeechLMModule._text(fake, [5, 6, 2, 9, 0, 0]) == [5, 6]  # type: ignore[arg-type]
    assert SpeechLMModule._text(fake, [5, 0, 6]) == [5, 6]  # type: ignore[arg-type]
    assert error_sums(
        [(SpeechLMModule._text(fake, [5, 6, 2]), SpeechLMModule._text(fake, [5, 6, 2, 9]))]
    ) == (0, 2)  # type: ignore[arg-type]
