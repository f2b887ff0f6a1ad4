"""Nothing dropped silently (docs/errors.md, "Drops"): the epoch's WARNING line with counts and
places, ``drop_last_tail``, the empty-loader error and the small-data warnings, through the public
API (``build_dataloader``, ``speechdata bench``)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from speechdata import build_dataloader
from speechdata.cli import main
from speechdata.errors import EmptyDatasetError
from speechdata.manifest import pack_sample_id
from speechdata.testing import Corpus, make_corpus, write_manifest
from speechdata.text.tokenizer import Tokenizer

LOCATOR = "|audio|"
N = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_corpus(
        tmp_path_factory.mktemp("drops"),
        n=N,
        seed=21,
        formats=("wav",),
        sample_rates=(16000,),
        min_duration=0.5,
        max_duration=4.0,
    )


@pytest.fixture(scope="module")
def tokenizer(corpus: Corpus) -> Tokenizer:
    return corpus.train_tokenizer(vocab_size=80, locator=LOCATOR)


def _cfg(manifest: Path | str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "manifest_filepath": str(manifest),
        "audio_locator": LOCATOR,
        "prompt_template": "Q: {context}\nA: {answer}",
        "micro_batch_size": 4,
        "drop_last": False,
        "min_duration": None,
        "max_duration": None,
        "seed": 5,
    }
    return {**base, **kw}


def _longest_clip(entry: dict[str, Any]) -> float:
    d = entry["duration"]
    return max(d) if isinstance(d, list) else float(d)


def _lines(entries: list[dict[str, Any]], test) -> list[int]:
    """1-based manifest lines of the entries that pass ``test``."""
    return [k + 1 for k, e in enumerate(entries) if test(e)]


def _epoch_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "speechdata" and r.levelno == logging.WARNING and r.getMessage().startswith("epoch ")
    ]


def _bound(entries: list[dict[str, Any]]) -> float:
    """A max_duration between clip lengths that drops about a third of the entries."""
    longest = sorted(_longest_clip(e) for e in entries)
    k = 2 * len(longest) // 3
    return round((longest[k - 1] + longest[k]) / 2, 4)


# ------------------------------------------------------------------------- the epoch line


@pytest.mark.parametrize("workers", [0, 2])
def test_filter_drops_are_logged_once_per_epoch_with_places(
    corpus: Corpus, tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture, workers: int
) -> None:
    bound = _bound(corpus.entries)
    too_long = _lines(corpus.entries, lambda e: _longest_clip(e) > bound)
    assert 0 < len(too_long) < N
    loader = build_dataloader(_cfg(corpus.manifest, max_duration=bound, num_workers=workers), tokenizer)
    caplog.set_level(logging.WARNING, logger="speechdata")
    seen = [[s for b in loader for s in b["sample_ids"].tolist()] for _ in range(2)]
    places = ", ".join(f"{corpus.manifest}:{line}" for line in too_long[:3])
    want = [
        f"epoch {e}: {len(too_long)} dropped: too_long_audio={len(too_long)} (max_duration {bound}) e.g. {places}"
        for e in (0, 1)
    ]
    assert _epoch_lines(caplog) == want
    kept = {pack_sample_id(0, line) for line in range(1, N + 1) if line not in too_long}
    for epoch in seen:
        assert sorted(epoch) == sorted(kept)
    assert loader.report() == {"too_long_audio": len(too_long)}


@pytest.fixture(scope="module")
def shards(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from speechdata.shards.write import ShardOptions, write_shards

    out = tmp_path_factory.mktemp("shards")
    write_shards([corpus.manifest], out, ShardOptions(num_shards=2, progress=False))
    return out


@pytest.mark.parametrize(("streamed", "workers"), [(False, 0), (True, 0), (True, 2)])
def test_tarred_filter_drops_are_logged_and_never_yielded(
    corpus: Corpus,
    tokenizer: Tokenizer,
    shards: Path,
    caplog: pytest.LogCaptureFixture,
    streamed: bool,
    workers: int,
) -> None:
    manifest = shards / "tarred_audio_manifest.json"
    entries = [json.loads(x) for x in manifest.read_text().splitlines()]
    bound = _bound(entries)
    too_long = _lines(entries, lambda e: _longest_clip(e) > bound)
    tars = f"pipe:cat {shards}/audio__OP_0..1_CL_.tar" if streamed else str(shards / "audio_{0..1}.tar")
    cfg = _cfg(
        manifest,
        is_tarred=True,
        tarred_audio_filepaths=tars,
        max_duration=bound,
        num_workers=workers,
        batch_duration=12.0,
        num_buckets=2,
    )
    loader = build_dataloader(cfg, tokenizer)
    assert loader.streaming == streamed
    caplog.set_level(logging.WARNING, logger="speechdata")
    got = {s for b in loader for s in b["sample_ids"].tolist()}
    # a streamed epoch may read a shard twice (repeated, never dropped): compare sets
    assert got == {pack_sample_id(0, line) for line in range(1, N + 1) if line not in too_long}
    places = ", ".join(f"{manifest}:{line}" for line in too_long[:3])
    assert _epoch_lines(caplog) == [
        f"epoch 0: {len(too_long)} dropped: too_long_audio={len(too_long)} (max_duration {bound}) e.g. {places}"
    ]


def test_worker_and_filter_drops_share_one_line(
    corpus: Corpus, tokenizer: Tokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = [dict(e, audio_filepath=e["audio_filepath"]) for e in corpus.entries]
    single = [k for k, e in enumerate(entries) if isinstance(e["audio_filepath"], str)]
    gone = single[1]
    entries[gone] = dict(entries[gone], audio_filepath="audio/gone.wav")
    path = write_manifest(corpus.root / "with_gone.jsonl", entries)
    bound = _bound(corpus.entries)
    too_long = _lines(entries, lambda e: _longest_clip(e) > bound)
    if gone + 1 in too_long:  # keep the missing file among the kept examples
        bound = round(_longest_clip(entries[gone]) + 0.001, 4)
        too_long = _lines(entries, lambda e: _longest_clip(e) > bound)
    cfg = _cfg(path, max_duration=bound, on_error="skip", shuffle=False)
    caplog.set_level(logging.WARNING, logger="speechdata")
    loader = build_dataloader(cfg, tokenizer)
    n = sum(len(b["sample_ids"]) for b in loader)
    assert n + len(too_long) + 1 == N
    places = ", ".join(f"{path}:{line}" for line in too_long[:3])
    (line,) = _epoch_lines(caplog)
    # a worker's drop is placed where its DataError says (the line, then the file it names)
    assert line.startswith(
        f"epoch 0: {len(too_long) + 1} dropped: too_long_audio={len(too_long)} (max_duration {bound}) "
        f"e.g. {places}; missing_audio=1 e.g. {path}:{gone + 1}: audio/gone.wav"
    )
    assert loader.report() == {"too_long_audio": len(too_long), "missing_audio": 1}


def test_an_epoch_stopped_early_still_logs_its_drops(
    corpus: Corpus, tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    bound = _bound(corpus.entries)
    loader = build_dataloader(_cfg(corpus.manifest, max_duration=bound, micro_batch_size=2), tokenizer)
    caplog.set_level(logging.WARNING, logger="speechdata")
    it = iter(loader)
    next(it)
    next(it)
    it.close()
    (line,) = _epoch_lines(caplog)
    assert line.startswith(f"epoch 0 (stopped after 2 of {len(loader)} batches): ")
    assert "too_long_audio=" in line
    # closed after its last batch without asking for more (as a trainer that knows the length
    # does), the epoch is complete: the plain line, and the next iteration is the next epoch
    caplog.clear()
    loader.set_epoch(1)
    it = iter(loader)
    for _ in range(len(loader)):
        next(it)
    it.close()
    (line,) = _epoch_lines(caplog)
    assert line.startswith("epoch 1: ") and "too_long_audio=" in line
    assert loader.epoch == 2 and loader.state_dict()["batch"] == 0


def test_no_line_without_drops(
    corpus: Corpus, tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="speechdata")
    loader = build_dataloader(_cfg(corpus.manifest), tokenizer)
    assert sum(len(b["sample_ids"]) for b in loader) == N
    assert _epoch_lines(caplog) == [] and loader.report() == {}


# ------------------------------------------------------------------------------ drop_last


@pytest.mark.parametrize("mode", ["fixed", "dynamic"])
def test_drop_last_tail_is_counted_on_every_rank(corpus: Corpus, tokenizer: Tokenizer, mode: str) -> None:
    # fixed: 16 examples in batches of 3 leave an incomplete batch; dynamic (seed 5): 13 batches
    # for 2 ranks leave one batch out
    batching = {"micro_batch_size": 3} if mode == "fixed" else {"batch_duration": 6.0, "num_buckets": 2}
    cfg = _cfg(corpus.manifest, drop_last=True, **batching)
    loaders = [build_dataloader(cfg, tokenizer, rank=r, world_size=2) for r in (0, 1)]
    counted = 0
    for _ in range(2):
        yielded = [[s for b in loader for s in b["sample_ids"].tolist()] for loader in loaders]
        assert not set(yielded[0]) & set(yielded[1])
        tails = {loader.report().get("drop_last_tail", 0) for loader in loaders}
        assert len(tails) == 1  # the global plan's count, the same on both ranks
        total = tails.pop()
        tail, counted = total - counted, total  # the report adds up the epochs iterated
        assert tail > 0
        assert len(yielded[0]) + len(yielded[1]) + tail == N


def test_drop_last_tail_places_are_the_examples_left_out(
    corpus: Corpus, tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="speechdata")
    loader = build_dataloader(_cfg(corpus.manifest, drop_last=True, micro_batch_size=5), tokenizer)
    seen = {s for b in loader for s in b["sample_ids"].tolist()}
    assert len(seen) == 15 and loader.report() == {"drop_last_tail": N - 15}
    (line,) = _epoch_lines(caplog)
    left_out = [line_no for line_no in range(1, N + 1) if pack_sample_id(0, line_no) not in seen]
    assert line == f"epoch 0: 1 dropped: drop_last_tail=1 (drop_last) e.g. {corpus.manifest}:{left_out[0]}"


# ------------------------------------------------------------------------- empty loaders


def test_empty_manifest_is_an_error(tokenizer: Tokenizer, tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "train.jsonl", [])
    with pytest.raises(EmptyDatasetError, match=rf"^{re.escape(str(path))}: manifest has no examples$"):
        build_dataloader(_cfg(path), tokenizer)


def test_all_filtered_is_an_error_naming_why(corpus: Corpus, tokenizer: Tokenizer) -> None:
    shortest = min(_longest_clip(e) for e in corpus.entries)
    bound = round(shortest / 2, 3)
    places = ", ".join(f"{corpus.manifest}:{line}" for line in (1, 2, 3))
    want = f"{corpus.manifest}: all {N} examples dropped: too_long_audio={N} (max_duration {bound}) e.g. {places}"
    with pytest.raises(EmptyDatasetError) as err:
        build_dataloader(_cfg(corpus.manifest, max_duration=bound), tokenizer)
    assert str(err.value) == want


def test_all_bad_lines_is_an_error(tokenizer: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("{not json\n[1, 2]\n")
    with pytest.raises(
        EmptyDatasetError, match=r"all 2 examples dropped: bad_line=2 e.g. .*bad\.jsonl:1, .*bad\.jsonl:2$"
    ):
        build_dataloader(_cfg(path, on_error="skip"), tokenizer)


def test_drop_last_leaving_no_batch_is_an_error_but_an_eval_set_is_fine(
    corpus: Corpus, tokenizer: Tokenizer
) -> None:
    with pytest.raises(
        EmptyDatasetError, match=r"epoch 0 has no batch for rank 0 of 1: drop_last left out all 16"
    ):
        build_dataloader(_cfg(corpus.manifest, drop_last=True, micro_batch_size=N + 1), tokenizer)
    # fewer batches than ranks
    with pytest.raises(EmptyDatasetError, match=r"epoch 0 has no batch for rank 1 of 8"):
        build_dataloader(
            _cfg(corpus.manifest, drop_last=True, micro_batch_size=4), tokenizer, rank=1, world_size=8
        )
    # an evaluation section defaults to drop_last: false: one short batch, no error
    section = {k: v for k, v in _cfg(corpus.manifest, micro_batch_size=N + 1).items() if k != "drop_last"}
    val = build_dataloader({"model": {"validation_ds": section}}, tokenizer, name="validation_ds")
    assert [len(b["sample_ids"]) for b in val] == [N]


def test_an_epoch_whose_every_example_fails_is_an_error(
    corpus: Corpus, tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    single = [e for e in corpus.entries if isinstance(e["audio_filepath"], str)][:3]
    entries = [dict(e, audio_filepath=f"audio/gone{k}.wav") for k, e in enumerate(single)]
    path = write_manifest(corpus.root / "all_gone.jsonl", entries)
    loader = build_dataloader(_cfg(path, on_error="skip", micro_batch_size=2), tokenizer)
    caplog.set_level(logging.WARNING, logger="speechdata")
    with pytest.raises(
        EmptyDatasetError,
        match=r"epoch 0 yielded no batch: 3 dropped: missing_audio=3 e\.g\. .*all_gone\.jsonl:1",
    ):
        list(loader)
    assert len(_epoch_lines(caplog)) == 1


# ---------------------------------------------------------------------------- small data


def _small_data_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "speechdata" and "too few for" in r.getMessage()
    ]


def test_too_few_examples_for_the_buckets_warns_once(
    corpus: Corpus, tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="speechdata")
    # dynamic batches estimate 30 buckets: 16 examples cannot fill them
    loader = build_dataloader(_cfg(corpus.manifest, batch_duration=20.0), tokenizer)
    sizes = [len(b["sample_ids"]) for _ in range(2) for b in loader]
    (warning,) = _small_data_warnings(caplog)
    assert warning.startswith(f"{corpus.manifest}: {N} examples are too few for 30 buckets: epoch 0 has ")
    assert "lower num_buckets" in warning
    assert sum(sizes) == 2 * N and sum(sizes) / len(sizes) < 3  # the batches are indeed small
    caplog.clear()
    # one bucket: the same budget makes full batches, no warning
    one = build_dataloader(_cfg(corpus.manifest, batch_duration=20.0, num_buckets=1), tokenizer)
    assert sum(len(b["sample_ids"]) for b in one) == N
    assert _small_data_warnings(caplog) == []


def test_fewer_examples_than_one_batch_warns(
    corpus: Corpus, tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="speechdata")
    build_dataloader(_cfg(corpus.manifest, micro_batch_size=4 * N), tokenizer)
    (warning,) = _small_data_warnings(caplog)
    assert f"{N} examples are too few for a full batch: epoch 0 has 1 batches of {N:.1f} examples" in warning


# --------------------------------------------------------------------------------- bench


@pytest.mark.parametrize(("batch_duration", "small"), [("30", True), ("1", False)])
def test_bench_warns_when_the_corpus_is_too_small_to_measure(
    corpus: Corpus,
    tokenizer: Tokenizer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    batch_duration: str,
    small: bool,
) -> None:
    caplog.set_level(logging.WARNING, logger="speechdata")
    md = tmp_path / "bench.md"
    argv = [
        "bench",
        str(corpus.manifest),
        f"audio_locator='{LOCATOR}'",
        "num_buckets=1",
        "--batch-duration",
        batch_duration,
        "--workers",
        "0",
        "--repeats",
        "1",
        "--tokenizer",
        str(corpus.root / "tok" / "tokenizer.model"),
        "--md",
        str(md),
    ]
    assert main(argv) == 0
    warned = [r.getMessage() for r in caplog.records if "too small to measure" in r.getMessage()]
    if small:
        (line,) = warned
        assert re.match(
            r"bench: the corpus is too small to measure: a run times \d batch\(es\) after the first", line
        )
        assert "at least 10" in line
        assert "Warning: the corpus is too small to measure" in md.read_text()
    else:
        assert warned == [] and "Warning" not in md.read_text()
