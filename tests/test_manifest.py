"""Manifest -> Index (docs/configuration.md, docs/errors.md): key resolution, lazy records, cache, errors, fuzzing."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from speechdata.errors import DataError, SpeechDataError
from speechdata.manifest import ManifestKeys, load_index, unpack_sample_id
from speechdata.testing import make_corpus, write_manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), n=40, seed=3, max_duration=8.0)


def test_index_columns_match_the_manifest(corpus) -> None:
    index = load_index(corpus.manifest, cache=False)
    assert len(index) == len(corpus.entries)
    for i, entry in enumerate(corpus.entries):
        durs = entry["duration"] if isinstance(entry["duration"], list) else [entry["duration"]]
        assert index.duration[i] == pytest.approx(sum(durs), rel=1e-6)
        assert index.max_clip[i] == pytest.approx(max(durs), rel=1e-6)
        assert index.num_audios[i] == len(durs)
        rec = index.record(i)
        assert rec.answer == entry["answer"] and rec.context == entry["context"]
        paths = (
            entry["audio_filepath"]
            if isinstance(entry["audio_filepath"], list)
            else [entry["audio_filepath"]]
        )
        assert rec.audio == [str(corpus.root.resolve() / p) for p in paths]
        assert all(os.path.isfile(p) for p in rec.audio)
        assert rec.extra["lang"] == entry["lang"] and "answer" not in rec.extra
        assert unpack_sample_id(rec.sample_id) == (0, i + 1)
    assert index.nbytes / len(index) <= 64


def test_missing_durations_are_measured_from_headers(tmp_path: Path) -> None:
    c = make_corpus(tmp_path, n=12, seed=5, with_duration=False, max_duration=6.0)
    assert all("duration" not in e for e in c.entries)
    index = load_index(c.manifest)
    for i in range(len(index)):
        rec = index.record(i)
        import soundfile as sf

        true = sum(sf.info(p).duration - o for p, o in zip(rec.audio, rec.offset, strict=True))
        assert index.duration[i] == pytest.approx(true, rel=1e-5)
        assert sum(rec.duration) == pytest.approx(true, rel=1e-5)


def test_aliases_fallbacks_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    lines = [
        {"audio_filename": "sub/a.wav", "duration": 1.0, "text": "hello", "question": "what?"},
        {"audio_file": "/abs/b.wav", "duration": 2.0, "answer": "yes", "text": "ignored", "offset": 0.5},
        {
            "audio_filepath": ["x.wav", "y.wav"],
            "duration": [1.0, 3.0],
            "offset": [0, 1],
            "answer": "z",
            "ctx": "c",
        },
    ]
    path = write_manifest(tmp_path / "m.jsonl", lines)
    index = load_index(path, ManifestKeys(context_key="ctx", default_context="Transcribe."))
    r0, r1, r2 = (index.record(i) for i in range(3))
    assert (r0.answer, r0.context, r0.audio) == ("hello", "what?", [str(tmp_path.resolve() / "sub/a.wav")])
    assert (r1.answer, r1.context, r1.audio, r1.offset) == ("yes", "Transcribe.", ["/abs/b.wav"], [0.5])
    assert (r2.context, r2.offset, r2.duration) == ("c", [0.0, 1.0], [1.0, 3.0])
    assert index.min_clip[2] == 1.0 and index.max_clip[2] == 3.0 and index.duration[2] == 4.0


def test_gzip_blank_lines_crlf_and_several_manifests(tmp_path: Path) -> None:
    body = b'{"audio_filepath": "a.wav", "duration": 1.5, "answer": "one"}\r\n\n  \n'
    body += b'{"audio_filepath": "b.wav", "duration": 2.5, "answer": "two"}'
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(body))
    write_manifest(tmp_path / "b.json", [{"audio_filepath": "c.wav", "duration": 3.0, "answer": "three"}])
    index = load_index(f"{tmp_path / 'a.jsonl.gz'},{tmp_path / 'b.json'}")
    assert len(index) == 3 and index.num_datasets == 2
    assert [index.record(i).answer for i in range(3)] == ["one", "two", "three"]
    assert list(index.line_no) == [1, 4, 1] and list(index.dataset) == [0, 0, 1]
    assert index.where(1).endswith("a.jsonl.gz:4")


def test_cache_is_used_and_invalidated(tmp_path: Path) -> None:
    lines = [{"audio_filepath": f"{i}.wav", "duration": 1.0 + i, "answer": "x"} for i in range(5)]
    path = write_manifest(tmp_path / "m.jsonl", lines)
    first = load_index(path, cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache" / "index").glob("*.npz"))
    assert len(cached) == 1
    assert not (tmp_path / ".speechdata_cache").exists()  # nothing is written beside the data
    again = load_index(path, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.duration, again.duration)
    write_manifest(path, [*lines, {"audio_filepath": "z.wav", "duration": 9.0, "answer": "y"}])
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock resolution
    assert len(load_index(path, cache_dir=tmp_path / "cache")) == 6


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"duration": 1, "answer": "a"}', "no audio path"),
        (b'{"audio_filepath": 3, "duration": 1, "answer": "a"}', "audio path must be"),
        (b'{"audio_filepath": "a.wav", "duration": "1", "answer": "a"}', "'duration' must be a number"),
        (
            b'{"audio_filepath": "a.wav", "duration": -1, "answer": "a"}',
            "duration must be a finite number > 0",
        ),
        (b'{"audio_filepath": "a.wav", "duration": NaN, "answer": "a"}', "not valid JSON"),
        (b'{"audio_filepath": "a.wav", "duration": 1e999, "answer": "a"}', "infinity"),
        (b'{"audio_filepath": "a.wav", "duration": 1}', "no answer"),
        (b'{"audio_filepath": "a.wav", "duration": 1, "answer": 5}', "answer must be a string"),
        (
            b'{"audio_filepath": ["a", "b"], "duration": [1], "answer": "x"}',
            "'duration' has 1 values but the line has 2",
        ),
        (b'\xff\xfe{"a": 1}', "not valid JSON"),
        (b'{"audio_filepath": "missing.wav", "answer": "x"}', "audio file not found"),
    ],
)
def test_bad_lines_raise_one_line_errors_or_are_counted(tmp_path: Path, line: bytes, message: str) -> None:
    good = b'{"audio_filepath": "a.wav", "duration": 1.0, "answer": "ok"}\n'
    path = tmp_path / "m.jsonl"
    path.write_bytes(good + line + b"\n" + good)
    with pytest.raises(DataError) as err:
        load_index(path, cache=False)
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)
    assert "\n" not in str(err.value)
    index = load_index(path, on_error="skip", cache=False)
    assert len(index) == 2 and index.drops.total() == 1
    assert list(index.line_no) == [1, 3]


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpeechDataError, match="manifest not found"):
        load_index(tmp_path / "nope.jsonl")


def test_large_manifest_parallel_parse_matches_serial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import speechdata.manifest as manifest

    rng = np.random.default_rng(0)
    lines = [
        {"audio_filepath": f"a{i}.wav", "duration": float(d), "answer": "w" * int(k)}
        for i, (d, k) in enumerate(zip(rng.uniform(0.5, 20, 3000), rng.integers(1, 50, 3000), strict=True))
    ]
    lines[100] = {"bad": True}
    path = write_manifest(tmp_path / "m.jsonl", lines)
    serial = load_index(path, on_error="skip", cache=False)
    monkeypatch.setattr(manifest, "PARALLEL_LINES", 100)
    parallel = load_index(path, on_error="skip", cache=False)
    for col in ("duration", "line_no", "line_offset", "line_length", "text_len"):
        np.testing.assert_array_equal(getattr(serial, col), getattr(parallel, col))
    assert parallel.drops.to_dict() == {"bad_line": 1} == serial.drops.to_dict()
    with pytest.raises(DataError, match=r"m\.jsonl:101: no audio path"):
        load_index(path, cache=False)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from(
    ["audio_filepath", "audio_file", "duration", "offset", "answer", "text", "context", "shard_id"]
)


@given(
    st.lists(st.one_of(st.binary(max_size=40), st.dictionaries(_keys, _json_values, max_size=6)), max_size=12)
)
def test_fuzz_every_line_is_indexed_or_reported(
    tmp_path_factory: pytest.TempPathFactory, lines: list
) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    raw = [ln if isinstance(ln, bytes) else json.dumps(ln).encode() for ln in lines]
    raw = [r.replace(b"\n", b" ") for r in raw]
    path = tmp / "m.jsonl"
    path.write_bytes(b"\n".join(raw) + b"\n")
    try:
        index = load_index(path, on_error="skip", cache=False)
    except SpeechDataError as e:  # only a whole-file problem may raise here
        assert "expected JSON Lines" in str(e) and isinstance(json.loads(b"\n".join(raw)), list), str(e)
        return
    # a UTF-8 byte order mark that starts the file is skipped (docs/errors.md)
    lines_read = [raw[0].removeprefix(b"\xef\xbb\xbf"), *raw[1:]] if raw else []
    nonblank = sum(1 for r in lines_read if r.strip())
    assert len(index) + index.drops.total() == nonblank
    for i in range(len(index)):
        rec = index.record(i)
        assert isinstance(rec.answer, str) and rec.audio
    try:
        load_index(path, cache=False)
    except DataError as e:
        assert "\n" not in str(e) and str(e).startswith(f"{path}:")
        assert e.reason in ("bad_line", "missing_audio", "decode_error")


def test_index_pickles_without_file_handles(corpus) -> None:
    import pickle

    index = load_index(corpus.manifest)
    index.record(0)
    clone = pickle.loads(pickle.dumps(index))
    assert clone.record(3).answer == index.record(3).answer
    assert json.loads(clone.line(0))["answer"] == corpus.entries[0]["answer"]
