"""The fault catalogue (docs/errors.md): one test per bad input, through the public API.

For each data fault: ``on_error: raise`` gives a one-line :class:`DataError` naming the place
(``file:line``, or ``tar:member``) with no chained traceback, and ``on_error: skip`` yields every
other example and counts the bad one under its reason in ``loader.report()``. Config faults always
raise a one-line :class:`ConfigError` naming the key. The CLI prints ``speechdata: error: ...`` as
its only stderr line and exits 1.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import sentencepiece as spm
import soundfile as sf
from helpers_remote import LOCATOR, remote_cfg

from speechdata import build_dataloader, dataset_config, load_config, load_index
from speechdata.cli import main
from speechdata.errors import ConfigError, DataError
from speechdata.manifest import pack_sample_id
from speechdata.shards.validate import validate
from speechdata.shards.write import ShardOptions, write_shards
from speechdata.testing import make_corpus
from speechdata.text.tokenizer import Tokenizer

BAD = 2  # the faulty line of every test manifest (1-based)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_corpus(
        tmp_path_factory.mktemp("faults"),
        n=8,
        seed=3,
        max_duration=3.0,
        multi_audio_fraction=0.0,
        shared_source_fraction=0.0,
    )


@pytest.fixture(scope="module")
def tokenizer(corpus) -> Tokenizer:
    return corpus.train_tokenizer(vocab_size=100, locator=LOCATOR)


@pytest.fixture(scope="module")
def good(corpus) -> list[dict[str, Any]]:
    """The corpus lines with absolute audio paths (usable from any folder)."""
    return [dict(e, audio_filepath=str(corpus.root / e["audio_filepath"])) for e in corpus.entries]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2 s noise clip as WAV and FLAC, an empty WAV, a 0-byte file and truncated copies."""
    d = tmp_path_factory.mktemp("clips")
    x = (np.random.default_rng(0).standard_normal(32000) * 0.1).astype(np.float32)
    out = {"wav": d / "full.wav", "flac": d / "full.flac", "empty": d / "empty.wav", "zero": d / "zero.wav"}
    sf.write(out["wav"], x, 16000)
    sf.write(out["flac"], x, 16000)
    sf.write(out["empty"], np.zeros(0, np.float32), 16000)
    out["zero"].write_bytes(b"")
    for kind in ("wav", "flac"):
        data = out[kind].read_bytes()
        out[f"cut_{kind}"] = d / f"cut.{kind}"
        out[f"cut_{kind}"].write_bytes(data[: len(data) // 2])
    return out


def _cfg(manifest: Path, **kw: Any):
    """The object-storage tests' small-batch config (:func:`helpers_remote.remote_cfg`), in order."""
    return remote_cfg(manifest, shuffle=False, **kw)


def _write(path: Path, lines: Sequence[dict[str, Any] | bytes]) -> Path:
    path.write_bytes(b"".join(x if isinstance(x, bytes) else orjson.dumps(x) + b"\n" for x in lines))
    return path


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert msg and "\n" not in msg and "Traceback" not in msg
    # raised `from None` (or fresh): no chained library traceback behind the message
    assert err.__cause__ is None and (err.__suppress_context__ or err.__context__ is None)
    return msg


def check_fault(
    manifest: Path,
    tokenizer: Tokenizer,
    *,
    reason: str,
    where: str,
    good_lines: Sequence[int],
    dropped: int = 1,
    workers: int = 0,
    **kw: Any,
) -> None:
    """raise: one-line DataError matching ``where``; skip: exactly ``good_lines`` yielded, the rest counted."""
    with pytest.raises(DataError) as info:
        list(build_dataloader(_cfg(manifest, num_workers=workers, **kw), tokenizer))
    msg = _one_line(info.value)
    assert info.value.reason == reason, msg
    assert re.search(where, msg), msg
    loader = build_dataloader(_cfg(manifest, num_workers=workers, on_error="skip", **kw), tokenizer)
    got = sorted(s for b in loader for s in b["sample_ids"].tolist())
    assert got == [pack_sample_id(0, k) for k in good_lines]
    assert loader.report() == {reason: dropped}


# ---------------------------------------------------------------------------- manifest lines

LINE_FAULTS: dict[str, bytes] = {
    "malformed_json": b'{"audio_filepath": "a.wav", "duration": 1.0, "answer": "x"',
    "non_utf8": b'{"audio_filepath": "a\xff.wav", "duration": 1.0, "answer": "caf\xe9"}',
    "duration_string": b'{"audio_filepath": "a.wav", "duration": "1.5", "answer": "x"}',
    "answer_number": b'{"audio_filepath": "a.wav", "duration": 1.0, "answer": 5}',
    "audio_path_number": b'{"audio_filepath": 7, "duration": 1.0, "answer": "x"}',
    "line_is_a_list": b'["a.wav", 1.0, "x"]',
    "no_answer": b'{"audio_filepath": "a.wav", "duration": 1.0}',
    "duration_nan": b'{"audio_filepath": "a.wav", "duration": NaN, "answer": "x"}',
    "duration_negative": b'{"audio_filepath": "a.wav", "duration": -1.0, "answer": "x"}',
    "duration_zero": b'{"audio_filepath": "a.wav", "duration": 0, "answer": "x"}',
    "duration_infinite": b'{"audio_filepath": "a.wav", "duration": 1e999, "answer": "x"}',
    "duration_Infinity": b'{"audio_filepath": "a.wav", "duration": Infinity, "answer": "x"}',
    "offset_negative": b'{"audio_filepath": "a.wav", "duration": 1.0, "offset": -2, "answer": "x"}',
    "duration_list_length": b'{"audio_filepath": ["a.wav"], "duration": [1.0, 2.0], "answer": "x"}',
}


@pytest.mark.parametrize("case", list(LINE_FAULTS))
def test_bad_manifest_line(case: str, tmp_path: Path, good, tokenizer) -> None:
    path = _write(tmp_path / "m.jsonl", [good[0], LINE_FAULTS[case] + b"\n", *good[1:4]])
    check_fault(path, tokenizer, reason="bad_line", where=rf"m\.jsonl:{BAD}: ", good_lines=[1, 3, 4, 5])
    # the index alone reports the same place, and skip mode counts the line there
    with pytest.raises(DataError, match=rf"m\.jsonl:{BAD}: "):
        load_index(path, cache=False)
    index = load_index(path, on_error="skip", cache=False)
    assert len(index) == 4 and index.drops.to_dict() == {"bad_line": 1}


def test_locator_count_mismatch(tmp_path: Path, good, tokenizer) -> None:
    # two locators for one audio (twice) are errors; one audio and no locator is not: it goes first
    lines = [
        good[0],
        dict(good[1], context=f"{LOCATOR} then {LOCATOR}"),
        dict(good[2], context=f"{LOCATOR} {LOCATOR}"),
        dict(good[3], context="no locator here"),
        good[4],
    ]
    path = _write(tmp_path / "m.jsonl", lines)
    check_fault(
        path,
        tokenizer,
        reason="bad_line",
        where=rf"m\.jsonl:{BAD}: context has 2 audio locator\(s\) '\|audio\|' but the example has 1 audio",
        good_lines=[1, 4, 5],
        dropped=2,
    )


# ------------------------------------------------------------------------------- audio files


def _audio_case(tmp_path: Path, good, **entry: Any) -> Path:
    return _write(tmp_path / "m.jsonl", [good[0], dict(good[1], **entry), *good[2:4]])


@pytest.mark.parametrize("workers", [0, 2])
def test_missing_audio_file(tmp_path: Path, good, tokenizer, workers: int) -> None:
    path = _audio_case(tmp_path, good, audio_filepath=str(tmp_path / "gone.wav"))
    check_fault(
        path,
        tokenizer,
        reason="missing_audio",
        where=rf"m\.jsonl:{BAD}: .*gone\.wav: audio file not found",
        good_lines=[1, 3, 4],
        workers=workers,
    )


def test_missing_audio_without_duration_fails_at_indexing(tmp_path: Path, good, tokenizer) -> None:
    entry = {k: v for k, v in good[1].items() if k != "duration"}
    path = _write(tmp_path / "m.jsonl", [good[0], dict(entry, audio_filepath="gone.wav"), *good[2:4]])
    check_fault(
        path, tokenizer, reason="missing_audio", where=rf"m\.jsonl:{BAD}: gone\.wav", good_lines=[1, 3, 4]
    )


def test_zero_length_audio(tmp_path: Path, good, clip, tokenizer) -> None:
    path = _audio_case(tmp_path, good, audio_filepath=str(clip["empty"]), duration=1.0)
    check_fault(
        path, tokenizer, reason="decode_error", where=rf"m\.jsonl:{BAD}: .*empty", good_lines=[1, 3, 4]
    )


def test_zero_length_audio_without_duration(tmp_path: Path, good, clip, tokenizer) -> None:
    entry = {k: v for k, v in good[1].items() if k != "duration"}
    path = _write(tmp_path / "m.jsonl", [good[0], dict(entry, audio_filepath=str(clip["empty"])), *good[2:4]])
    check_fault(
        path,
        tokenizer,
        reason="decode_error",
        where=rf"m\.jsonl:{BAD}: .*empty\.wav: audio is empty",
        good_lines=[1, 3, 4],
    )


def test_zero_byte_file(tmp_path: Path, good, clip, tokenizer) -> None:
    path = _audio_case(tmp_path, good, audio_filepath=str(clip["zero"]), duration=1.0)
    check_fault(
        path,
        tokenizer,
        reason="decode_error",
        where=rf"m\.jsonl:{BAD}: .*zero\.wav: cannot decode audio: Format not recognised",
        good_lines=[1, 3, 4],
    )


@pytest.mark.parametrize("kind", ["wav", "flac"])
def test_truncated_audio_file(tmp_path: Path, good, clip, tokenizer, kind: str) -> None:
    # the manifest says 2 s, the file holds about 1 s (WAV) or breaks off mid-stream (FLAC)
    path = _audio_case(tmp_path, good, audio_filepath=str(clip[f"cut_{kind}"]), duration=2.0)
    check_fault(
        path,
        tokenizer,
        reason="decode_error",
        where=rf"m\.jsonl:{BAD}: .*cut\.{kind}: ",
        good_lines=[1, 3, 4],
    )


@pytest.mark.parametrize(("offset", "what"), [(1.5, "runs past the end"), (3.0, "is past the end")])
def test_offset_plus_duration_past_the_end(
    tmp_path: Path, good, clip, tokenizer, offset: float, what: str
) -> None:
    path = _audio_case(tmp_path, good, audio_filepath=str(clip["wav"]), offset=offset, duration=1.0)
    check_fault(
        path,
        tokenizer,
        reason="decode_error",
        where=rf"m\.jsonl:{BAD}: .*full\.wav: .*{what}",
        good_lines=[1, 3, 4],
    )


def test_offset_past_the_end_without_duration(tmp_path: Path, good, clip, tokenizer) -> None:
    entry = {k: v for k, v in good[1].items() if k != "duration"}
    path = _write(
        tmp_path / "m.jsonl", [good[0], dict(entry, audio_filepath=str(clip["wav"]), offset=5.0), *good[2:4]]
    )
    check_fault(
        path,
        tokenizer,
        reason="decode_error",
        where=rf"m\.jsonl:{BAD}: offset 5\.0 s is past the end",
        good_lines=[1, 3, 4],
    )


# ------------------------------------------------------------------------------- tar shards


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards([corpus.manifest], out, ShardOptions(num_shards=2, progress=False))
    return out


def _tar_case(
    tmp_path: Path, shards: Path, edit: dict[int, dict[str, Any]] | None = None, drop_offsets: bool = False
) -> tuple[Path, list[dict[str, Any]]]:
    """A copy of the shards with manifest entries edited; returns (manifest, original entries)."""
    d = tmp_path / "ds"
    shutil.copytree(shards, d, ignore=shutil.ignore_patterns(".speechdata*"))
    entries = [orjson.loads(x) for x in (d / "tarred_audio_manifest.json").read_bytes().splitlines()]
    lines = []
    for k, e in enumerate(entries):
        e = dict(e)
        if drop_offsets:
            e.pop("tar_offset")
            e.pop("tar_size")
        e.update((edit or {}).get(k, {}))
        lines.append(e)
    return _write(d / "tarred_audio_manifest.json", lines), entries


def _tarred(manifest: Path) -> dict[str, Any]:
    return {"is_tarred": True, "tarred_audio_filepaths": str(manifest.parent / "audio__OP_0..1_CL_.tar")}


def _overwrite(tar: Path, offset: int, data: bytes) -> None:
    with open(tar, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("region", ["data", "audio_header"])
def test_corrupted_tar_member(tmp_path: Path, shards: Path, tokenizer, region: str) -> None:
    manifest, entries = _tar_case(tmp_path, shards)
    e = entries[BAD - 1]
    size = e["tar_size"] if region == "data" else 64
    _overwrite(manifest.parent / f"audio_{e['shard_id']}.tar", e["tar_offset"], b"\x07" * size)
    check_fault(
        manifest,
        tokenizer,
        reason="decode_error",
        where=rf"tarred_audio_manifest\.json:{BAD}: {re.escape(e['audio_filepath'])}: cannot decode audio",
        good_lines=[k for k in range(1, 9) if k != BAD],
        **_tarred(manifest),
    )
    report = validate(manifest.parent, progress=False)
    assert report.counts() == {"decode": 1}
    assert f"audio_{e['shard_id']}.tar:{e['audio_filepath']}: " in report.problems[0][1]


@pytest.mark.parametrize("offsets", [True, False], ids=["with_tar_offset", "nemo_style"])
def test_truncated_tar(tmp_path: Path, shards: Path, tokenizer, offsets: bool) -> None:
    manifest, entries = _tar_case(tmp_path, shards, drop_offsets=not offsets)
    tar = manifest.parent / "audio_0.tar"
    cut = entries[BAD - 1]["tar_offset"] + 100  # inside the 2nd member's data
    tar.write_bytes(tar.read_bytes()[:cut])
    lost = [
        k + 1 for k, e in enumerate(entries) if e["shard_id"] == 0 and e["tar_offset"] + e["tar_size"] > cut
    ]
    assert BAD in lost
    reason = "decode_error" if offsets else "missing_audio"
    where = rf"audio_0\.tar:{re.escape(entries[BAD - 1]['audio_filepath'])}: member bytes .* past the end"
    if not offsets:  # NeMo's layout: the member is looked up by name in a header scan of the tar
        where = rf"tarred_audio_manifest\.json:{BAD}: member .* not found in .*audio_0\.tar"
    check_fault(
        manifest,
        tokenizer,
        reason=reason,
        where=where,
        good_lines=[k for k in range(1, 9) if k not in lost],
        dropped=len(lost),
        **_tarred(manifest),
    )


def test_member_missing_from_its_shard(tmp_path: Path, shards: Path, tokenizer) -> None:
    manifest, _ = _tar_case(tmp_path, shards, {BAD - 1: {"audio_filepath": "nothere.wav"}}, drop_offsets=True)
    check_fault(
        manifest,
        tokenizer,
        reason="missing_audio",
        where=rf"tarred_audio_manifest\.json:{BAD}: member 'nothere\.wav' not found",
        good_lines=[k for k in range(1, 9) if k != BAD],
        **_tarred(manifest),
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_entry_names_a_shard_that_does_not_exist(
    tmp_path: Path, shards: Path, tokenizer, workers: int
) -> None:
    manifest, _ = _tar_case(tmp_path, shards, {BAD - 1: {"shard_id": 99}})
    check_fault(
        manifest,
        tokenizer,
        reason="missing_audio",
        where=rf"tarred_audio_manifest\.json:{BAD}: shard_id 99 names no shard",
        good_lines=[k for k in range(1, 9) if k != BAD],
        workers=workers,
        **_tarred(manifest),
    )
    assert validate(manifest.parent, progress=False).counts() == {"missing": 1, "orphan": 1}


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../x.wav"])
def test_member_name_escaping_the_tar(tmp_path: Path, shards: Path, tokenizer, name: str) -> None:
    manifest, _ = _tar_case(tmp_path, shards, {BAD - 1: {"audio_filepath": name}}, drop_offsets=True)
    check_fault(
        manifest,
        tokenizer,
        reason="missing_audio",
        where=rf"tarred_audio_manifest\.json:{BAD}: member {re.escape(repr(name))} not found",
        good_lines=[k for k in range(1, 9) if k != BAD],
        **_tarred(manifest),
    )


@pytest.mark.parametrize(
    ("edit", "reason", "what"),
    [
        ({"tar_offset": -5}, "bad_line", "tar_offset/tar_size must be integers"),
        ({"tar_size": "big"}, "bad_line", "tar_offset/tar_size must be integers"),
        ({"tar_size": 10**12}, "decode_error", "past the end of the tar"),
        ({"shard_id": "one"}, "bad_line", "shard_id must be an integer"),
    ],
)
def test_bad_tar_offsets(tmp_path: Path, shards: Path, tokenizer, edit, reason: str, what: str) -> None:
    manifest, _ = _tar_case(tmp_path, shards, {BAD - 1: edit})
    check_fault(
        manifest,
        tokenizer,
        reason=reason,
        where=what,
        good_lines=[k for k in range(1, 9) if k != BAD],
        **_tarred(manifest),
    )


# ---------------------------------------------------------------------------------- config


def _config_error(fn: Any, pattern: str) -> None:
    with pytest.raises(ConfigError) as info:
        fn()
    assert re.search(pattern, _one_line(info.value)), str(info.value)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_unknown_config_key(tmp_path: Path, corpus, tokenizer, on_error: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model:\n  train_ds:\n    manifest_filepath: {corpus.manifest}\n    on_error: {on_error}\n"
        "    max_duraton: 20\n"
    )
    pattern = r"model\.train_ds\.max_duraton: unknown key \(did you mean 'max_duration'\?\)"
    _config_error(lambda: dataset_config(load_config(cfg)), pattern)
    _config_error(lambda: build_dataloader(cfg, tokenizer), pattern)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_required_value_left_unset(tmp_path: Path, tokenizer, on_error: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  train_ds:\n    manifest_filepath: ???\n    on_error: {on_error}\n")
    pattern = r"model\.train_ds\.manifest_filepath: required value is missing \(still '\?\?\?'\)"
    _config_error(lambda: build_dataloader(cfg, tokenizer), pattern)
    _config_error(
        lambda: build_dataloader(cfg, tokenizer, overrides=["model.train_ds.shuffle=false"]), pattern
    )


def test_wrong_config_value_type(tmp_path: Path, corpus, tokenizer) -> None:
    cfg = {"manifest_filepath": str(corpus.manifest), "micro_batch_size": "four"}
    _config_error(
        lambda: build_dataloader(cfg, tokenizer), r"train_ds\.micro_batch_size: expected int, got 'four'"
    )


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_add_bos_with_a_tokenizer_without_bos(tmp_path: Path, corpus, on_error: str) -> None:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([e["answer"] for e in corpus.entries] * 4),
        model_writer=model,
        vocab_size=40,
        hard_vocab_limit=False,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    tok = Tokenizer(model.getvalue(), "nobos.model")
    assert tok.bos_id is None
    cfg = {"manifest_filepath": str(corpus.manifest), "add_bos": True, "on_error": on_error}
    _config_error(lambda: build_dataloader(cfg, tok), r"add_bos is true but the tokenizer has no BOS token")
    # without add_bos the same tokenizer works: the error is about the setting, not the model
    assert build_dataloader({**cfg, "add_bos": False}, tok) is not None


# --------------------------------------------------------------------------------------- CLI


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _cli_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("speechdata: error: "), err
    return lines[0]


def test_cli_shard_bad_line_raise_and_skip(tmp_path: Path, good, capsys) -> None:
    path = _write(tmp_path / "m.jsonl", [good[0], LINE_FAULTS["malformed_json"] + b"\n", *good[1:4]])
    rc, _, err = _cli(["shard", str(path), "--out", str(tmp_path / "o1"), "--no-progress"], capsys)
    assert rc == 1
    assert re.search(rf"m\.jsonl:{BAD}: not valid JSON", _cli_error(err))
    rc, out, err = _cli(
        ["shard", str(path), "--out", str(tmp_path / "o2"), "--no-progress", "--on-error", "skip"], capsys
    )
    assert rc == 0 and not err.strip()
    assert "4 entries" in out and "bad_line=1" in out
    assert len((tmp_path / "o2" / "tarred_audio_manifest.json").read_bytes().splitlines()) == 4


def test_cli_shard_missing_audio(tmp_path: Path, good, capsys) -> None:
    path = _write(tmp_path / "m.jsonl", [good[0], dict(good[1], audio_filepath=str(tmp_path / "gone.wav"))])
    rc, _, err = _cli(["shard", str(path), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert rc == 1
    assert re.search(rf"m\.jsonl:{BAD}: audio file not found: .*gone\.wav", _cli_error(err))


def test_cli_validate_reports_a_corrupted_member(tmp_path: Path, shards: Path, capsys) -> None:
    manifest, entries = _tar_case(tmp_path, shards)
    e = entries[0]
    _overwrite(manifest.parent / f"audio_{e['shard_id']}.tar", e["tar_offset"], b"\x00" * 64)
    rc, out, err = _cli(["validate", str(manifest.parent), "--no-progress"], capsys)
    assert rc == 1 and not err.strip()
    lines = out.strip().splitlines()
    assert len(lines) == 2 and f"audio_{e['shard_id']}.tar:{e['audio_filepath']}: " in lines[0]
    assert "1 problem (decode=1)" in lines[1]


@pytest.mark.parametrize(
    ("yaml_text", "pattern"),
    [
        ("model:\n  train_ds:\n    manifest_filepath: m.jsonl\n    shufle: true\n", r"shufle: unknown key"),
        (
            "model:\n  train_ds:\n    manifest_filepath: ???\n",
            r"manifest_filepath: required value is missing",
        ),
        (
            "model:\n  train_ds:\n    shuffle: true\n    shuffle: false\n",
            r"c\.yaml:4: duplicate key 'shuffle'",
        ),
        ("model:\n  train_ds: [unclosed\n", r"c\.yaml:\d+: YAML error"),
    ],
    ids=["unknown_key", "required", "duplicate", "syntax"],
)
def test_cli_config_errors(tmp_path: Path, capsys, yaml_text: str, pattern: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    rc, _, err = _cli(["bench", str(cfg)], capsys)
    assert rc == 1
    assert re.search(pattern, _cli_error(err))
