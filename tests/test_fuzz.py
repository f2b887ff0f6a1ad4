"""Fuzzing (docs/errors.md) of the three parsers of untrusted input: manifests, tars, prompt text.

Invariant: whatever the input, only :class:`SpeechDataError` subclasses escape (never KeyError,
IndexError, struct.error, UnicodeDecodeError, OSError...), every message is one line, and in
``skip`` mode every manifest line is either indexed or counted. CI runs a few hundred cases
(``SPEECHDATA_FUZZ_EXAMPLES`` per property, default 80); ``benchmarks/fuzz.py`` runs the same
properties with 10,000 cases each (and the byte-level targets under atheris when it is installed).

The ``check_*`` functions are the fuzz targets: each takes the raw input and raises
``AssertionError`` (or lets a non-speechdata exception escape) on a violation.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speechdata.audio import load_audio
from speechdata.config import make_dataset_config
from speechdata.errors import DataError, SpeechDataError
from speechdata.manifest import load_index
from speechdata.shards.read import TarredDataset, member_table
from speechdata.text.prompt import PromptBuilder
from speechdata.text.tokenizer import Tokenizer, train_tokenizer

LOCATOR = "|audio|"
EXAMPLES = int(os.environ.get("SPEECHDATA_FUZZ_EXAMPLES", "80"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=os.environ.get("SPEECHDATA_FUZZ_RANDOM") is None,  # CI: the same cases every run
)


@functools.cache
def workdir() -> Path:
    """One scratch folder per process (fuzz targets run thousands of times; no pytest fixtures)."""
    return Path(tempfile.mkdtemp(prefix="speechdata_fuzz_"))


def _one_line(err: SpeechDataError) -> None:
    msg = str(err)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)


# ---------------------------------------------------------------------------------- manifests


def _manifest(data: bytes) -> Path:
    path = workdir() / f"m{os.getpid()}.jsonl"
    path.write_bytes(data)
    return path


def check_manifest_bytes(data: bytes) -> None:
    """``load_index`` on arbitrary bytes: an Index or a one-line SpeechDataError; skip mode counts
    every non-blank line as indexed or dropped, and every indexed row reads back."""
    path = _manifest(data)
    try:
        load_index(path, cache=False)
    except SpeechDataError as e:
        _one_line(e)
    try:
        index = load_index(path, on_error="skip", cache=False)
    except SpeechDataError as e:  # the one whole-file mistake: a JSON array instead of JSON Lines
        assert "expected JSON Lines" in str(e) and isinstance(orjson.loads(data), list), str(e)
        _one_line(e)
        return
    bom = b"\xef\xbb\xbf"  # skipped at the start of the file (docs/errors.md)
    body = data[len(bom) :] if data.startswith(bom) else data
    lines = sum(1 for line in body.split(b"\n") if line.strip())
    assert len(index) + index.drops.total() == lines, (len(index), index.drops, lines)
    for msgs in index.drops.examples.values():
        for msg in msgs:
            assert "\n" not in msg
    for i in range(len(index)):
        try:
            rec = index.record(i)
        except SpeechDataError as e:
            _one_line(e)
            continue
        assert rec.audio and len(rec.audio) == len(rec.offset) == len(rec.duration)
        assert all(np.isfinite(rec.duration)) and min(rec.duration) > 0
    index.close()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_KEYS = (
    "audio_filepath",
    "audio_filename",
    "duration",
    "offset",
    "answer",
    "text",
    "context",
    "question",
    "shard_id",
)
_values = {
    "audio_filepath": st.text(max_size=10) | st.lists(st.text(max_size=6), max_size=3) | _json,
    "duration": st.floats(allow_nan=False) | st.lists(st.floats(allow_nan=False), max_size=3) | _json,
    "offset": st.floats(allow_nan=False) | st.integers() | _json,
    "shard_id": st.integers() | _json,
}
_line = st.fixed_dictionaries(
    {},
    optional={k: _values.get(k, st.text(max_size=20) | _json) for k in _KEYS},
)


@FUZZ
@given(st.binary(max_size=300))
def test_manifest_reader_on_arbitrary_bytes(data: bytes) -> None:
    check_manifest_bytes(data)


@FUZZ
@given(st.lists(_line | _json, min_size=1, max_size=5))
def test_manifest_reader_on_arbitrary_json_values(lines: list[Any]) -> None:
    # stdlib json: it also writes integers beyond 64 bits, which orjson's reader must handle
    check_manifest_bytes("".join(json.dumps(x) + "\n" for x in lines).encode())


@FUZZ
@given(
    st.lists(
        st.sampled_from(
            [
                b"{",
                b"}",
                b'"duration":',
                b'"audio_filepath":',
                b'"a.wav"',
                b"1e999",
                b"-0",
                b",",
                b"[",
                b"]",
                b"\xff",
                b"\x00",
                b"\n",
                b" ",
                b'"answer":"x"',
            ]
        ),
        max_size=30,
    )
)
def test_manifest_reader_on_json_like_tokens(tokens: list[bytes]) -> None:
    check_manifest_bytes(b"".join(tokens))


# ----------------------------------------------------------------------------------------- tars


@functools.cache
def _wav() -> bytes:
    buf = io.BytesIO()
    x = (np.sin(np.arange(1600) * 0.05) * 0.3).astype(np.float32)
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@functools.cache
def valid_tar() -> tuple[bytes, tuple[tuple[str, int, int], ...]]:
    """A small tar of three WAV members and ``(name, data offset, size)`` of each."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for k in range(3):
            data = _wav()[: len(_wav()) - 200 * k]
            info = tarfile.TarInfo(f"clip_{k}.wav")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        members = tuple((m.name, m.offset_data, m.size) for m in tf.getmembers())
    return raw, members


def check_tar_bytes(data: bytes) -> None:
    """Member table, reads by name and by offset, and decoding of a (corrupted) tar: only
    SpeechDataErrors, one line each."""
    d = workdir() / f"tar{os.getpid()}"
    d.mkdir(exist_ok=True)
    tar = d / "audio_0.tar"
    tar.write_bytes(data)
    try:
        table = member_table(tar, cache_dir=d)
    except SpeechDataError as e:
        _one_line(e)
        table = {}
    for m in table.values():
        assert m.offset >= 0 and m.offset + m.size <= len(data)
    _, members = valid_tar()
    entries = []
    for k, (name, offset, size) in enumerate(members):
        entries.append({"audio_filepath": name, "duration": 0.1, "answer": "a", "shard_id": 0})
        entries.append({**entries[-1], "tar_offset": offset, "tar_size": size, "answer": f"{k}"})
    manifest = d / "tarred_audio_manifest.json"
    manifest.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    cfg = make_dataset_config(
        {"manifest_filepath": str(manifest), "is_tarred": True, "tarred_audio_filepaths": str(tar)}
    )
    ds = TarredDataset(cfg, cache_dir=d)
    for i in range(len(ds.index)):
        rec = ds.index.record(i)
        try:
            for blob in ds.read_audio_bytes(rec):
                x = load_audio(blob, duration=0.1, sample_rate=8000, where=rec.where)
                assert x.dtype == np.float32 and np.isfinite(x).all()
        except SpeechDataError as e:
            _one_line(e)
    ds.close()
    ds.index.close()


def corrupt(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """``data`` with byte ``pos % len`` set to ``value`` for each edit, then cut at ``cut % len``."""
    buf = bytearray(data)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    if cut is not None:
        del buf[cut % (len(buf) + 1) :]
    return bytes(buf)


@FUZZ
@given(st.binary(max_size=2048))
def test_tar_reader_on_arbitrary_bytes(data: bytes) -> None:
    check_tar_bytes(data)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12),
    st.none() | st.integers(0, 1 << 20),
)
def test_tar_reader_on_corrupted_tars(edits: list[tuple[int, int]], cut: int | None) -> None:
    check_tar_bytes(corrupt(valid_tar()[0], edits, cut))


@FUZZ
@given(st.integers(0, 3), st.integers(0, 511), st.binary(min_size=1, max_size=8))
def test_tar_reader_on_corrupted_headers(member: int, at: int, junk: bytes) -> None:
    raw, members = valid_tar()
    header = members[min(member, 2)][1] - 512 if member < 3 else len(raw) - 1024
    check_tar_bytes(corrupt(raw, [(header + at + k, b) for k, b in enumerate(junk)], None))


# -------------------------------------------------------------------------------- prompt text


@functools.cache
def tokenizer() -> Tokenizer:
    texts = ["hello world", "what is said in the audio", "transcribe this", "a b c d e f"] * 3
    return train_tokenizer(texts, workdir() / "tok", vocab_size=300, user_symbols=[LOCATOR, "<end>"])


_CONFIGS: dict[str, dict[str, Any]] = {
    "template": {"prompt_template": "Q: {context}\nA: {answer}", "audio_locator": LOCATOR},
    "legacy_answer_truncation": {
        "prompt_template": "[INST] {input} [/INST] {output}",
        "truncation_field": "answer",
        "max_seq_length": 24,
        "add_bos": True,
        "end_string": "<end>",
    },
    "no_template": {"separate_prompt_and_response_with_newline": True, "max_seq_length": 16, "add_sep": True},
    "locator_all_loss": {
        "audio_locator": LOCATOR,
        "answer_only_loss": False,
        "max_seq_length": 20,
        "min_seq_length": 4,
        "default_context": f"{LOCATOR} say",
    },
}


@functools.cache
def builder(name: str) -> PromptBuilder:
    return PromptBuilder(make_dataset_config({"manifest_filepath": "x", **_CONFIGS[name]}), tokenizer())


def check_prompt(name: str, context: str | None, answer: str, num_audios: int) -> None:
    """``PromptBuilder.build`` on any text: a consistent Prompt within max_seq_length, or a one-line DataError."""
    b = builder(name)
    try:
        p = b.build(context, answer, num_audios, "fuzz.jsonl:1")
    except DataError as e:
        _one_line(e)
        assert e.reason in ("bad_line", "too_long_text", "too_short_text")
        return
    n = len(p.input_ids)
    assert b.cfg.min_seq_length <= n <= b.cfg.max_seq_length
    assert p.input_ids == p.context_ids + p.answer_ids and len(p.loss_mask) == n
    assert p.answer_start == len(p.context_ids)
    assert len(p.audio_positions) == (num_audios if b.cfg.audio_locator else min(num_audios, 1))
    assert all(0 <= q <= p.answer_start for q in p.audio_positions)
    assert p.audio_positions == sorted(p.audio_positions)
    assert all(0 <= t < tokenizer().vocab_size for t in p.input_ids)


_piece = st.text(st.characters(codec="utf-8"), max_size=8) | st.sampled_from(
    [LOCATOR, "|", "audio", "\n", "\r", "\t", "\x00", "\u2028", " ", "  ", "<end>", "<sep>", "{context}"]
)
_text = st.lists(_piece, max_size=8).map("".join)


@FUZZ
@given(st.sampled_from(sorted(_CONFIGS)), st.none() | _text, _text, st.integers(0, 3))
def test_prompt_builder_on_arbitrary_text(
    name: str, context: str | None, answer: str, num_audios: int
) -> None:
    check_prompt(name, context, answer, num_audios)
