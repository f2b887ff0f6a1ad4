"""Tests of speechdata.testing: synthetic corpora are deterministic, varied and recoverable."""

from __future__ import annotations

import gzip
import itertools
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import soundfile as sf
import soxr
from hypothesis import given
from hypothesis import strategies as st

from speechdata.errors import ConfigError
from speechdata.synth import synthesize_clip, write_corpus
from speechdata.testing import (
    ALPHABET,
    SECONDS_PER_CHAR,
    TONE_PADDING,
    WORDS,
    Corpus,
    decode_tones,
    librispeech_like_durations,
    make_corpus,
    plan_corpus,
    synthesize_tones,
    write_manifest,
)

RATES = {8000, 16000, 22050, 44100}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def clips(entry: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(path, offset, duration) of every clip of a manifest line."""
    paths, offsets = as_list(entry["audio_filepath"]), as_list(entry["offset"])
    durations = as_list(entry["duration"])
    assert len(paths) == len(offsets) == len(durations)
    return list(zip(paths, offsets, durations, strict=True))


def read_span(root: Path, path: str, offset: float, duration: float) -> tuple[np.ndarray, int]:
    info = sf.info(root / path)
    start = round(offset * info.samplerate)
    frames = round(duration * info.samplerate)
    audio, sr = sf.read(root / path, start=start, frames=frames, dtype="float32")
    assert len(audio) == frames, f"{path}: span [{start}, {start + frames}) beyond {info.frames} frames"
    return audio, sr


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("corpus"), n=200, seed=3)


def test_manifest_matches_entries(corpus: Corpus) -> None:
    lines = [orjson.loads(line) for line in corpus.manifest.read_bytes().splitlines()]
    assert lines == corpus.entries
    assert corpus.manifest.parent == corpus.root
    assert len(lines) == 200
    for e in lines:
        assert list(e)[:2] == ["audio_filepath", "duration"]
        assert e["lang"] == "en" and e["speaker"].startswith("spk")
        assert isinstance(e["answer"], str) and e["answer"]
        for path, _, _ in clips(e):
            assert path.startswith("audio/") and not Path(path).is_absolute()
    total = sum(d for e in lines for _, _, d in clips(e))
    assert corpus.hours == pytest.approx(total / 3600)


def test_duration_spread(corpus: Corpus) -> None:
    d = np.array([dur for e in corpus.entries for _, _, dur in clips(e)])
    assert d.min() >= 0.5 and d.max() <= 30.0
    assert 3.0 < np.median(d) < 10.0
    assert 0.7 < np.mean((d >= 2) & (d <= 15)) < 1.0
    assert d.max() > 15  # a tail of long clips exists


def test_formats_rates_channels_present(corpus: Corpus) -> None:
    seen = Counter()
    for path in {p for e in corpus.entries for p, _, _ in clips(e)}:
        info = sf.info(corpus.root / path)
        assert info.subtype == "PCM_16"
        assert Path(path).suffix == {"WAV": ".wav", "FLAC": ".flac"}[info.format]
        seen[(info.format, info.samplerate, info.channels)] += 1
    assert {k[0] for k in seen} == {"WAV", "FLAC"}
    assert {k[1] for k in seen} == RATES
    assert {k[2] for k in seen} == {1, 2}
    stereo = sum(n for k, n in seen.items() if k[2] == 2) / sum(seen.values())
    assert 0.05 < stereo < 0.2


def test_multi_audio_lines_have_one_locator_per_clip(corpus: Corpus) -> None:
    multi = 0
    for e in corpus.entries:
        k = len(as_list(e["audio_filepath"]))
        assert e["context"].count("|audio|") == k
        if isinstance(e["audio_filepath"], list):
            multi += 1
            assert 2 <= k <= 3
            assert isinstance(e["duration"], list) and isinstance(e["offset"], list)
        else:
            assert not isinstance(e["duration"], list) and not isinstance(e["offset"], list)
    assert multi == 20


def test_shared_sources_are_disjoint_segments(corpus: Corpus) -> None:
    by_file: dict[str, list[tuple[float, float]]] = {}
    for e in corpus.entries:
        for path, offset, duration in clips(e):
            by_file.setdefault(path, []).append((offset, duration))
    shared = {p: spans for p, spans in by_file.items() if len(spans) > 1}
    assert len(shared) >= 3
    for path, spans in shared.items():
        info = sf.info(corpus.root / path)
        spans.sort()
        assert spans[0][0] == 0.0
        for (o1, d1), (o2, _) in itertools.pairwise(spans):
            assert o2 == pytest.approx(o1 + d1)
        assert round((spans[-1][0] + spans[-1][1]) * info.samplerate) == info.frames
    whole = [spans[0] for p, spans in by_file.items() if len(spans) == 1]
    assert all(o == 0.0 for o, _ in whole)


def test_whole_file_durations_match_headers(corpus: Corpus) -> None:
    for e in corpus.entries:
        for path, offset, duration in clips(e):
            info = sf.info(corpus.root / path)
            for seconds in (offset, duration):  # whole samples, whether a reader rounds or truncates
                assert int(seconds * info.samplerate) == round(seconds * info.samplerate)
            if offset == 0 and duration * info.samplerate >= info.frames - 0.5:
                assert info.frames == round(duration * info.samplerate)


def test_tone_duration_follows_text_length(corpus: Corpus) -> None:
    for e in corpus.entries:
        if isinstance(e["audio_filepath"], str):
            expected = 2 * TONE_PADDING + len(e["answer"]) * SECONDS_PER_CHAR
            assert e["duration"] == pytest.approx(expected, abs=1e-4)
            assert set(e["answer"].split()) <= set(WORDS)
            assert "  " not in e["answer"] and e["answer"] == e["answer"].strip()


def test_decode_recovers_answers_from_files(corpus: Corpus) -> None:
    multi = [e for e in corpus.entries if isinstance(e["audio_filepath"], list)][:4]
    offset = [e for e in corpus.entries if isinstance(e["offset"], float) and e["offset"] > 0][:4]
    stereo = []
    for e in corpus.entries:
        if isinstance(e["audio_filepath"], str) and sf.info(corpus.root / e["audio_filepath"]).channels == 2:
            stereo.append(e)
    chosen = [*corpus.entries[:6], *multi, *offset, *stereo[:3]]
    assert len(multi) == 4 and len(offset) == 4 and len(stereo) >= 1
    for e in chosen:
        texts = [decode_tones(*read_span(corpus.root, *clip)) for clip in clips(e)]
        assert " ".join(texts) == e["answer"]


def test_decode_after_resampling_to_16k(corpus: Corpus) -> None:
    singles = [e for e in corpus.entries if isinstance(e["audio_filepath"], str)][:8]
    for e in singles:
        audio, sr = read_span(corpus.root, e["audio_filepath"], e["offset"], e["duration"])
        mono = audio.mean(axis=1) if audio.ndim == 2 else audio
        assert decode_tones(soxr.resample(mono, sr, 16000), 16000) == e["answer"]


def test_byte_identical_for_same_seed(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"n": 30, "max_duration": 6.0, "gzip": True}
    a = make_corpus(tmp_path / "a", seed=7, **kwargs)
    b = make_corpus(tmp_path / "b", seed=7, **kwargs)
    c = make_corpus(tmp_path / "c", seed=8, **kwargs)
    assert a.entries == b.entries
    files_a, files_b = tree_bytes(a.root), tree_bytes(b.root)
    assert files_a == files_b
    assert "manifest.jsonl.gz" in files_a
    assert c.entries != a.entries
    assert tree_bytes(c.root) != files_a


def test_plan_synthesize_write_is_make_corpus(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"n": 14, "seed": 5, "max_duration": 4.0, "multi_audio_fraction": 0.25}
    plan = plan_corpus(**kwargs)
    assert plan == plan_corpus(**kwargs) and plan != plan_corpus(**{**kwargs, "seed": 6})
    assert not any(tmp_path.iterdir())  # planning writes nothing
    written = write_corpus(plan, tmp_path / "w")
    made = make_corpus(tmp_path / "m", **kwargs)
    assert written.entries == made.entries and tree_bytes(written.root) == tree_bytes(made.root)
    # the plan describes what was written: files, clips in order, prompts, texts
    for f in plan.files:
        info = sf.info(written.root / f.path)
        assert (info.format, info.samplerate, info.channels) == (
            f.format.upper(),
            f.sample_rate,
            1 + f.stereo,
        )
    in_file = {key: f for f in plan.files for key in f.clips}
    for example, entry in zip(plan.examples, written.entries, strict=True):
        assert as_list(entry["audio_filepath"]) == [in_file[k].path for k in example.clips]
        assert entry["context"] == example.context
        assert entry["answer"] == " ".join(plan.clips[k].text for k in example.clips)
        for key, (path, offset, duration) in zip(example.clips, clips(entry), strict=True):
            assert duration == pytest.approx(plan.clips[key].target_duration, abs=plan.seconds_per_char)
            # one clip synthesized on its own is the same audio as its span in the file
            alone = synthesize_clip(plan, plan.clips[key], in_file[key].sample_rate)
            audio, _ = read_span(written.root, path, offset, duration)
            left = audio[:, 0] if audio.ndim == 2 else audio
            pcm = np.round(np.clip(alone.audio, -1.0, 32767 / 32768) * 32768) / 32768
            assert len(left) == len(alone.audio) and np.array_equal(left, pcm.astype(np.float32))


def test_gzip_manifest(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, n=8, max_duration=3.0, gzip=True, manifest_name="train.jsonl")
    assert corpus.manifest.name == "train.jsonl.gz"
    lines = gzip.decompress(corpus.manifest.read_bytes()).splitlines()
    assert [orjson.loads(x) for x in lines] == corpus.entries


def test_without_duration(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, n=40, max_duration=5.0, with_duration=False, audio_subdir="wavs")
    for e in corpus.entries:
        assert "duration" not in e
        assert all(o == 0.0 for o in as_list(e["offset"]))
        assert all(p.startswith("wavs/") for p in as_list(e["audio_filepath"]))
    assert len({p for e in corpus.entries for p in as_list(e["audio_filepath"])}) == sum(
        len(as_list(e["audio_filepath"])) for e in corpus.entries
    )
    assert corpus.hours > 0


def test_empty_corpus(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, n=0)
    assert corpus.entries == [] and corpus.hours == 0.0
    assert corpus.manifest.read_bytes() == b""


def test_options_narrow_the_mix(tmp_path: Path) -> None:
    corpus = make_corpus(
        tmp_path,
        n=12,
        formats=("flac",),
        sample_rates=(16000,),
        stereo_fraction=0.0,
        multi_audio_fraction=0.0,
        shared_source_fraction=0.0,
        min_duration=1.0,
        max_duration=2.0,
        locator=None,
    )
    for e in corpus.entries:
        (path, offset, duration), *rest = clips(e)
        assert not rest and offset == 0.0 and 1.0 <= duration <= 2.0
        info = sf.info(corpus.root / path)
        assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)
        assert "|audio|" not in e["context"]


def test_custom_locator_and_rate(tmp_path: Path) -> None:
    corpus = make_corpus(
        tmp_path, n=10, multi_audio_fraction=0.5, locator="<audio>", seconds_per_char=0.05, max_duration=4.0
    )
    assert sum(isinstance(e["audio_filepath"], list) for e in corpus.entries) == 5
    for e in corpus.entries:
        assert e["context"].count("<audio>") == len(as_list(e["audio_filepath"]))
        texts = [decode_tones(*read_span(corpus.root, *c), seconds_per_char=0.05) for c in clips(e)]
        assert " ".join(texts) == e["answer"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": -1},
        {"formats": ("mp3",)},
        {"formats": ()},
        {"sample_rates": (0,)},
        {"sample_rates": (4000,)},
        {"stereo_fraction": 1.5},
        {"min_duration": 5.0, "max_duration": 2.0},
        {"min_duration": 0.0},
        {"seconds_per_char": 0.0},
        {"locator": None},
        {"speech": "festival"},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="make_corpus"):
        make_corpus(tmp_path, **{"n": 4, **kwargs})


def test_missing_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="espeak-ng"):
        make_corpus(tmp_path / "e", n=2, speech="espeak")
    auto = make_corpus(tmp_path / "a", n=3, speech="auto", max_duration=2.0)
    tones = make_corpus(tmp_path / "t", n=3, speech="tones", max_duration=2.0)
    assert tree_bytes(auto.root) == tree_bytes(tones.root)


@given(
    text=st.text(alphabet=ALPHABET, min_size=0, max_size=24),
    rate=st.sampled_from(sorted(RATES)),
    spc=st.sampled_from([0.04, 0.08, 0.12]),
    seed=st.integers(0, 2**32 - 1),
)
def test_tone_roundtrip(text: str, rate: int, spc: float, seed: int) -> None:
    audio = synthesize_tones(text, rate, spc, rng=np.random.default_rng(seed))
    assert audio.dtype == np.float32
    assert len(audio) == round((2 * TONE_PADDING + len(text) * spc) * rate)
    assert decode_tones(audio, rate, spc) == text
    assert decode_tones(np.stack([audio, 0.5 * audio], axis=1), rate, spc) == text


def test_tones_reject_unknown_characters() -> None:
    with pytest.raises(ValueError, match="not in the tone alphabet"):
        synthesize_tones("Hello!", 16000)


def test_librispeech_like_durations() -> None:
    d = librispeech_like_durations(20000, seed=1)
    assert d.dtype == np.float32 and d.shape == (20000,)
    assert d.min() >= 1.0 and d.max() <= 35.0
    assert np.mean((d >= 10) & (d <= 17)) > 0.6
    assert 11.0 < d.mean() < 14.0
    assert np.mean(d < 5) > 0.03 and np.mean(d > 20) > 0.005
    assert np.array_equal(d, librispeech_like_durations(20000, seed=1))
    assert not np.array_equal(d, librispeech_like_durations(20000, seed=2))


def test_write_manifest_roundtrip(tmp_path: Path) -> None:
    entries = [{"audio_filepath": "a.wav", "duration": 1.5, "answer": "héllo"}, {"x": [1, 2]}]
    plain = write_manifest(tmp_path / "sub" / "m.json", entries)
    packed = write_manifest(tmp_path / "m.jsonl.gz", entries)
    assert [orjson.loads(x) for x in plain.read_bytes().splitlines()] == entries
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    assert packed.read_bytes() == write_manifest(tmp_path / "again.jsonl.gz", entries).read_bytes()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_corpus(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"n": 6, "speech": "espeak", "multi_audio_fraction": 0.2, "max_duration": 5.0}
    a = make_corpus(tmp_path / "a", seed=1, **kwargs)
    b = make_corpus(tmp_path / "b", seed=1, **kwargs)
    assert tree_bytes(a.root) == tree_bytes(b.root)
    auto = make_corpus(tmp_path / "auto", seed=1, **{**kwargs, "speech": "auto"})
    assert auto.entries == a.entries
    for e in a.entries:
        assert set(e["answer"].split()) <= set(WORDS)
        assert e["context"].count("|audio|") == len(as_list(e["audio_filepath"]))
        for path, offset, duration in clips(e):
            audio, _ = read_span(a.root, path, offset, duration)
            assert 0.5 <= duration <= 5.0
            assert np.abs(audio).max() > 0.05  # speech, not silence
    assert any(isinstance(e["audio_filepath"], list) for e in a.entries)
