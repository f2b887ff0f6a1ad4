"""One set of rules per concept: manifest lines, manifest keys, the duration filter, bucket bins.

Each rule is one function that every reader uses; these tests hold the readers to it through the
public API: the indexer's fast path against the per-record path (``load_index`` and
``Index.record`` against ``parse_line``), ``speechdata shard`` against the loader's duration
filter, and ``shard --buckets`` against the bins ``inspect`` suggests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import soundfile as sf
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speechdata import build_dataloader
from speechdata.cli import main
from speechdata.config import make_dataset_config
from speechdata.errors import DataError
from speechdata.lines import shard_id_of
from speechdata.manifest import ManifestKeys, load_index, parse_line, unpack_sample_id
from speechdata.sampling import make_buckets
from speechdata.testing import make_corpus

RATE = 8000
#: seconds of the audio file that lines without a duration are measured from
FILE_SECONDS = 2.0

RULES = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same cases every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``a.wav`` (2 s of silence): the audio of every generated line."""
    root = tmp_path_factory.mktemp("rules")
    sf.write(root / "a.wav", np.zeros(int(FILE_SECONDS * RATE), dtype=np.int16), RATE, subtype="PCM_16")
    return root


# ------------------------------------------------------------------------- line generation

_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1.0, max_value=3.0),
    st.integers(min_value=-3, max_value=3),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 0.0, -0.0, 1e7, 9_999_999.5, 1e-300]),
)
_scalars = st.one_of(
    _numbers, st.booleans(), st.none(), st.sampled_from(["1.5", "", "0", "false"]), st.just({"x": 1})
)
#: what a duration / offset / shard id field may hold: numbers, true/false, null, strings, lists
_numeric_field = st.one_of(_numbers, _numbers, _scalars, st.lists(_scalars, max_size=3))
_text = st.one_of(
    st.text(alphabet="ab |", max_size=6), st.none(), st.integers(0, 3), st.booleans(), st.just(["t"])
)
_audio = st.one_of(
    st.sampled_from(["a.wav", "a.wav", "a.wav", "missing.wav", "", 5, None, True]),
    st.lists(st.sampled_from(["a.wav", "a.wav", "", 7]), max_size=3),
)
_WEIRD = {
    "audio_filepath": _audio,
    "audio_filename": _audio,
    "audio_file": _audio,
    "duration": _numeric_field,
    "offset": _numeric_field,
    "answer": _text,
    "output": _text,
    "text": _text,
    "context": _text,
    "input": _text,
    "question": _text,
    "shard_id": _numeric_field,
    "lang": st.sampled_from(["en", 3, None]),
}


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    """One manifest line: a valid line of the common shape (one ``audio_filepath``, a duration,
    texts, maybe an offset) with up to three keys removed or set to something else: a value of the
    wrong type, null, true/false, a string, a list; sometimes not an object at all."""
    obj: dict[str, Any] = {
        "audio_filepath": "a.wav",
        "duration": draw(st.one_of(st.floats(0.01, 30.0), st.integers(1, 30))),
        draw(st.sampled_from(["answer", "output", "text"])): draw(st.text(alphabet="ab ", max_size=5)),
    }
    if draw(st.booleans()):
        obj[draw(st.sampled_from(["context", "input", "question"]))] = draw(
            st.text(alphabet="cd", max_size=4)
        )
    if draw(st.booleans()):
        obj["offset"] = draw(st.one_of(st.floats(0.0, 1.5), st.integers(0, 1)))
    for key in draw(st.lists(st.sampled_from(sorted(_WEIRD)), max_size=3, unique=True)):
        if draw(st.integers(0, 3)) == 0:
            obj.pop(key, None)
        else:
            obj[key] = draw(_WEIRD[key])
    if draw(st.integers(0, 15)) == 0:
        # not an object (a one-line file that is an array of objects is a whole-file error)
        return json.dumps(draw(st.sampled_from([[[obj]], "x", 3, None, [1]]))).encode()
    return json.dumps(obj).encode()


_keys = st.builds(
    ManifestKeys,
    answer_key=st.sampled_from(["answer", "output"]),
    context_key=st.sampled_from(["context", "input"]),
    default_context=st.sampled_from([None, "Transcribe."]),
    require_context=st.booleans(),
)


# ------------------------------------------------------------------------------ the oracle


def _per_record(line: bytes, keys: ManifestKeys) -> tuple[str, Any]:
    """What the per-record path makes of a line: ``("ok", (audio, durations, offsets, context,
    answer, shard))`` or ``(reason, message)``. A line without a duration is measured from its
    file (``a.wav`` lasts :data:`FILE_SECONDS`), as the documented rule says."""
    obj = orjson.loads(line)
    try:
        audio, dur, off, context, answer, _ = parse_line(obj, keys)
        shard = shard_id_of(obj)
    except ValueError as e:
        return "bad_line", str(e)
    if dur is None:
        if any(a != "a.wav" for a in audio):
            return "missing_audio", audio
        dur = [FILE_SECONDS - o for o in off]
        if any(d <= 0 for d in dur):
            return "decode_error", off
    return "ok", (audio, dur, off, context, answer, shard)


@RULES
@given(st.lists(lines(), min_size=1, max_size=6), _keys)
def test_fast_path_and_per_record_path_agree(folder: Path, batch: list[bytes], keys: ManifestKeys) -> None:
    """Every line the index accepts reads back (``Index.record``) with the values the per-record
    path gives it; every line one path rejects the other rejects, for the same reason."""
    path = folder / "m.jsonl"
    path.write_bytes(b"\n".join(batch) + b"\n")
    expected = [_per_record(line, keys) for line in batch]
    index = load_index(path, keys, on_error="skip", cache=False)

    rejected: dict[str, int] = {}
    for reason, _ in expected:
        if reason != "ok":
            rejected[reason] = rejected.get(reason, 0) + 1
    assert index.drops.to_dict() == rejected, (batch, expected)
    kept = [k for k, (reason, _) in enumerate(expected) if reason == "ok"]
    assert (index.line_no - 1).tolist() == kept, (batch, expected)

    for row, k in enumerate(kept):
        audio, dur, off, context, answer, shard = expected[k][1]
        rec = index.record(row)
        assert rec.names == audio and rec.audio == [str(folder.resolve() / a) for a in audio]
        assert rec.offset == off and (rec.context, rec.answer) == (context, answer)
        assert rec.duration == pytest.approx(dur, rel=1e-6), batch[k]
        assert index.duration[row] == np.float32(sum(dur)) or index.duration[row] == pytest.approx(
            sum(dur), rel=1e-6
        )
        assert index.min_clip[row] == pytest.approx(min(dur), rel=1e-6)
        assert index.max_clip[row] == pytest.approx(max(dur), rel=1e-6)
        assert index.num_audios[row] == len(audio)
        assert index.text_len[row] == len(answer) + len(context or "")
        assert index.shard_id[row] == shard
        assert rec.shard_id == shard

    first_bad = next((k for k, (reason, _) in enumerate(expected) if reason != "ok"), None)
    if first_bad is None:
        assert len(load_index(path, keys, cache=False)) == len(batch)
    else:
        with pytest.raises(DataError) as caught:
            load_index(path, keys, cache=False)
        assert caught.value.where.startswith(f"{path}:{first_bad + 1}")
        assert caught.value.reason == expected[first_bad][0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"offset": False}, "'offset' must be a number, got False"),
        ({"offset": True}, "'offset' must be a number, got True"),
        ({"duration": True}, "'duration' must be a number, got True"),
        ({"duration": "1.5"}, "'duration' must be a number, got '1.5'"),
        ({"offset": "0"}, "'offset' must be a number, got '0'"),
        ({"shard_id": False}, "shard_id must be an integer >= 0, got False"),
        ({"shard_id": 1.0}, "shard_id must be an integer >= 0, got 1.0"),
    ],
)
def test_true_false_and_strings_are_not_numbers(folder: Path, fields: dict[str, Any], message: str) -> None:
    """``"offset": false`` was indexed (read as 0) and failed at read time: now the line is
    refused when it is indexed, with the message the per-record path gives."""
    line = {"audio_filepath": "a.wav", "duration": 1.0, "answer": "hi", **fields}
    path = folder / "false.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError, match=f"false.jsonl:1: {message}"):
        load_index(path, cache=False)
    assert load_index(path, on_error="skip", cache=False).drops.to_dict() == {"bad_line": 1}


def test_null_offset_is_zero_and_reads_back(folder: Path) -> None:
    line = {"audio_filepath": "a.wav", "duration": 1, "offset": None, "answer": "hi"}
    path = folder / "null.jsonl"
    path.write_text(json.dumps(line) + "\n")
    index = load_index(path, cache=False)
    rec = index.record(0)
    assert (rec.offset, rec.duration, float(index.duration[0])) == ([0.0], [1.0], 1.0)


# ------------------------------------------------------------------ duration filter and bins


def _clips(folder: Path, durations: list[float]) -> Path:
    """A manifest of one wav clip per duration (the manifest gives the duration as written)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, d in enumerate(durations):
        name = f"c{k}.wav"
        sf.write(
            folder / name,
            np.full(round(d * RATE), 100 * (k + 1), dtype=np.int16),
            RATE,
            subtype="PCM_16",
        )
        lines.append({"audio_filepath": name, "duration": d, "context": "say |audio|", "answer": "a b"})
    path = folder / "m.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    corpus = make_corpus(tmp_path_factory.mktemp("tok"), n=6, seed=2, max_duration=1.0)
    return corpus.train_tokenizer(vocab_size=60, locator="|audio|")


def _shard_entries(folder: Path) -> list[dict[str, Any]]:
    text = (folder / "tarred_audio_manifest.json").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_shard_and_the_loader_keep_the_same_clips_at_the_duration_bounds(
    tmp_path: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clip whose manifest duration equals a bound is kept by ``shard`` and by the loader alike
    (``shard --max-duration 16.7`` used to drop the 16.7 s clip the loader keeps)."""
    durations = [0.3, 0.29, 1.0, 16.7, 16.71]
    manifest = _clips(tmp_path / "clips", durations)
    out = tmp_path / "out"
    bounds = ["--min-duration", "0.3", "--max-duration", "16.7"]
    assert (
        main(["shard", str(manifest), "--out", str(out), *bounds, "--on-error", "skip", "--no-progress"]) == 0
    )
    sharded = sorted(e["duration"] for e in _shard_entries(out))
    assert sharded == [0.3, 1.0, 16.7]
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert meta["speechdata"]["drops"] == {"too_short_audio": 1, "too_long_audio": 1}

    cfg = {
        "manifest_filepath": str(manifest),
        "audio_locator": "|audio|",
        "prompt_template": "{context} {answer}",
        "min_duration": 0.3,
        "max_duration": 16.7,
        "micro_batch_size": 2,
        "drop_last": False,
        "shuffle": False,
    }
    loader = build_dataloader(make_dataset_config(cfg), tokenizer)
    rows = [unpack_sample_id(int(i))[1] - 1 for batch in loader for i in batch["sample_ids"]]
    assert sorted(durations[r] for r in rows) == sharded
    assert loader.report() == {"too_short_audio": 1, "too_long_audio": 1}


def test_shard_inspect_and_the_loader_estimate_the_same_bins(tmp_path: Path) -> None:
    """On the durations 1..8 s, ``shard --buckets 4`` wrote [5, 7, 8] and ``inspect`` suggested
    [4, 6, 7]; the one estimator (equal total duration, nearest cuts) gives [5, 7, 8] to both,
    and to the loader's ``num_buckets: 4``."""
    manifest = _clips(tmp_path / "clips", [float(d) for d in range(1, 9)])
    stats_file = tmp_path / "stats.json"
    assert main(["inspect", str(manifest), "--json", str(stats_file), "--num-buckets", "4"]) == 0
    suggested = json.loads(stats_file.read_text())["suggested_bins"]
    out = tmp_path / "out"
    assert main(["shard", str(manifest), "--out", str(out), "--buckets", "4", "--no-progress"]) == 0
    written = yaml.safe_load((out / "metadata.yaml").read_text())["bucket_duration_bins"]
    loader_bins = make_buckets(load_index(manifest), None, make_dataset_config({"num_buckets": 4})).bins
    assert suggested == written == loader_bins.tolist() == [5.0, 7.0, 8.0]
    totals = [sum(e["duration"] for e in _shard_entries(out / f"bucket{b}")) for b in (1, 2, 3, 4)]
    assert totals == [10.0, 11.0, 7.0, 8.0]
