"""speechdata shard: spans checked against the audio at shard time, paths relative to the output
folder, readable Unicode member names; inspect and validate on bucketed datasets (issue 12)."""

from __future__ import annotations

import gzip
import json
import os
import tarfile
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import soundfile as sf
import webdataset
import yaml

from speechdata import build_dataloader
from speechdata.audio import DURATION_TOLERANCE, PcmWav, load_audio
from speechdata.cli import main
from speechdata.config import make_dataset_config
from speechdata.errors import DataError
from speechdata.shards import TarredDataset
from speechdata.testing import make_corpus, write_manifest
from speechdata.text.tokenizer import Tokenizer

LOCATOR = "|audio|"
RATE = 16000


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    corpus = make_corpus(tmp_path_factory.mktemp("tok"), n=12, seed=4, max_duration=2.0)
    return corpus.train_tokenizer(vocab_size=60, locator=LOCATOR)


def _clip(path: Path, seconds: float, seed: int = 0, fmt: str = "WAV") -> Path:
    """``seconds`` of seeded noise as 16-bit ``fmt`` at 16 kHz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = (np.random.default_rng(seed).standard_normal(round(seconds * RATE)) * 0.1).astype(np.float32)
    sf.write(path, x, RATE, format=fmt, subtype="PCM_16")
    return path


def _line(audio: str | list[str], duration: float | list[float], answer: str, **kw: Any) -> dict[str, Any]:
    n = len(audio) if isinstance(audio, list) else 1
    return {
        "audio_filepath": audio,
        "duration": duration,
        "context": f"{LOCATOR} " * n,
        "answer": answer,
        **kw,
    }


def _cfg(manifest: str | Path | list[str], **kw: Any):
    base = {
        "manifest_filepath": manifest if isinstance(manifest, list) else str(manifest),
        "audio_locator": LOCATOR,
        "prompt_template": "Q: {context}\nA: {answer}",
        "micro_batch_size": 2,
        "drop_last": False,
        "min_duration": None,
        "max_duration": None,
        "shuffle": False,
    }
    base.update(kw)
    return make_dataset_config(base)


def _tarred_cfg(folder: Path, **kw: Any):
    n = len(list(folder.glob("audio_*.tar")))
    return _cfg(
        folder / "tarred_audio_manifest.json",
        is_tarred=True,
        tarred_audio_filepaths=str(folder / f"audio__OP_0..{n - 1}_CL_.tar"),
        **kw,
    )


def _answers(loader) -> list[str]:
    return sorted(m["answer"] for b in loader for m in b["metadata"])


def _entries(folder: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in (folder / "tarred_audio_manifest.json").read_bytes().splitlines()]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------- spans against the audio


def test_span_past_the_end_fails_at_shard_time_with_the_loaders_message(
    tmp_path: Path, tokenizer: Tokenizer, capsys: pytest.CaptureFixture[str]
) -> None:
    good, short = _clip(tmp_path / "good.wav", 1.5, 1), _clip(tmp_path / "a.wav", 2.87, 2)
    manifest = write_manifest(
        tmp_path / "train.jsonl",
        [_line(str(good), 1.5, "one"), _line(str(short), 3.5, "two"), _line(str(good), 1.0, "three")],
    )
    out = tmp_path / "out"
    assert main(["shard", str(manifest), "--out", str(out), "--no-progress"]) == 1
    message = (
        f"{manifest}:2: {short}: offset 0.000 s + duration 3.500 s runs past the end of the audio (2.870 s)"
    )
    assert _error_line(capsys) == f"speechdata: error: {message}"
    assert not list(out.glob("audio_*.tar")) and not (out / "tarred_audio_manifest.json").exists()
    # the loader, reading the same manifest, stops at the same line with the same words
    with pytest.raises(DataError) as raised:
        list(build_dataloader(_cfg(manifest), tokenizer))
    assert str(raised.value) == message and raised.value.reason == "decode_error"


def test_tolerance_is_the_loaders(tmp_path: Path, tokenizer: Tokenizer, capsys) -> None:
    short = _clip(tmp_path / "a.flac", 2.87, 3, fmt="FLAC")
    inside, outside = 2.87 + DURATION_TOLERANCE, 2.87 + DURATION_TOLERANCE + 0.01
    ok = write_manifest(tmp_path / "ok.jsonl", [_line(str(short), inside, "in")])
    assert main(["shard", str(ok), "--out", str(tmp_path / "ok"), "--no-progress"]) == 0
    # accepted at shard time, read by the loader and passed by validate
    assert _answers(build_dataloader(_tarred_cfg(tmp_path / "ok"), tokenizer)) == ["in"]
    assert main(["validate", str(tmp_path / "ok"), "--no-progress"]) == 0
    bad = write_manifest(tmp_path / "bad.jsonl", [_line(str(short), outside, "out")])
    capsys.readouterr()
    assert main(["shard", str(bad), "--out", str(tmp_path / "bad"), "--no-progress"]) == 1
    assert _error_line(capsys).endswith(
        f"{short}: offset 0.000 s + duration {outside:.3f} s runs past the end of the audio (2.870 s)"
    )
    with pytest.raises(DataError, match="runs past the end of the audio"):
        list(build_dataloader(_cfg(bad), tokenizer))


def test_offset_counts_and_other_header_faults(tmp_path: Path, capsys) -> None:
    clip = _clip(tmp_path / "c.wav", 2.0, 4)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), RATE)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 8)
    cases = {
        "offset": (_line(str(clip), 1.0, "x", offset=1.5), "offset 1.500 s + duration 1.000 s runs past"),
        "start": (_line(str(clip), 1.0, "x", offset=2.0), "offset 2.000 s is past the end of the audio"),
        "empty": (_line(str(empty), 1.0, "x"), f"{empty}: audio is empty (0 samples)"),
        "junk": (_line(str(junk), 1.0, "x"), f"{junk}: cannot decode audio:"),
    }
    for name, (line, expected) in cases.items():
        m = write_manifest(tmp_path / f"{name}.jsonl", [_line(str(clip), 1.0, "ok"), line])
        assert main(["shard", str(m), "--out", str(tmp_path / name), "--no-progress"]) == 1
        got = _error_line(capsys)
        assert got.startswith(f"speechdata: error: {m}:2: ") and expected in got, got


def test_skip_drops_and_counts_bad_spans(tmp_path: Path, tokenizer: Tokenizer, capsys) -> None:
    good, short = _clip(tmp_path / "good.wav", 1.5, 5), _clip(tmp_path / "a.wav", 2.87, 6)
    lonely = _clip(tmp_path / "lonely.wav", 1.0, 7)
    manifest = write_manifest(
        tmp_path / "train.jsonl",
        [
            _line(good.name, 1.5, "one"),
            _line(short.name, 3.5, "two"),
            # a multi-audio entry whose second clip runs past its file: the whole entry goes, and
            # its first file (used by nothing else) is not stored
            _line([lonely.name, short.name], [1.0, 3.0], "three"),
            _line(short.name, 2.5, "four"),
        ],
    )
    out = tmp_path / "out"
    assert main(["shard", str(manifest), "--out", str(out), "--no-progress", "--on-error", "skip"]) == 0
    assert "2 dropped: decode_error=2" in capsys.readouterr().out
    assert sorted(e["answer"] for e in _entries(out)) == ["four", "one"]
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert meta["speechdata"]["drops"] == {"decode_error": 2} and meta["speechdata"]["members"] == 2
    with tarfile.open(out / "audio_0.tar") as tf:
        assert sorted(tf.getnames()) == ["a.wav", "good.wav"]
    assert main(["validate", str(out), "--no-progress"]) == 0
    assert _answers(build_dataloader(_tarred_cfg(out), tokenizer)) == ["four", "one"]


def test_headers_are_read_once_per_file_and_no_samples_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wav, flac = _clip(tmp_path / "w.wav", 3.0, 8), _clip(tmp_path / "f.flac", 3.0, 9, fmt="FLAC")
    lines = [_line(str(p), 0.5, f"t{k}", offset=0.5 * k) for k in range(5) for p in (wav, flac)]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    opened: list[str] = []
    real_init = sf.SoundFile.__init__
    real_open = PcmWav.open.__func__

    def count_init(self, file, *a, **kw):
        opened.append(str(file))
        return real_init(self, file, *a, **kw)

    def count_open(cls, source):
        found = real_open(cls, source)
        if found is not None:
            opened.append(str(source))
        return found

    def no_decoding(*a, **kw):
        raise AssertionError("shard --codec keep decoded samples")

    monkeypatch.setattr(sf.SoundFile, "__init__", count_init)
    monkeypatch.setattr(PcmWav, "open", classmethod(count_open))
    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    monkeypatch.setattr(PcmWav, "read", no_decoding)
    assert main(["shard", str(manifest), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert sorted(opened) == sorted(os.path.realpath(p) for p in (wav, flac))


# ---------------------------------------------------------- paths relative to the output folder


def test_bucketed_output_is_independent_of_the_working_directory(
    tmp_path: Path, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    work = tmp_path / "work"
    lines = [_line(f"clips/c{k}.wav", 0.5 + 0.25 * k, f"a{k}") for k in range(8)]
    for k in range(8):
        _clip(work / f"clips/c{k}.wav", 0.5 + 0.25 * k, 10 + k)
    write_manifest(work / "train.jsonl", lines)
    monkeypatch.chdir(work)
    args = ["shard", "train.jsonl", "--out", "ds", "--buckets", "2", "--num-shards", "2", "--no-progress"]
    assert main(args) == 0
    top_text = (work / "ds" / "metadata.yaml").read_text()
    top = yaml.safe_load(top_text)
    written = [*top["manifest_filepath"], *(p for group in top["tarred_audio_filepaths"] for p in group)]
    assert written == [
        "bucket1/tarred_audio_manifest.json",
        "bucket2/tarred_audio_manifest.json",
        "bucket1/audio__OP_0..1_CL_.tar",
        "bucket2/audio__OP_0..1_CL_.tar",
    ]
    assert str(work) not in top_text and "ds/" not in top_text
    # moved, and read from another working directory: the paths name the files under the folder
    moved = tmp_path / "elsewhere" / "dataset"
    moved.parent.mkdir()
    (work / "ds").rename(moved)
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    cfg = _cfg(
        [str(moved / p) for p in top["manifest_filepath"]],
        is_tarred=True,
        tarred_audio_filepaths=[[str(moved / p) for p in group] for group in top["tarred_audio_filepaths"]],
    )
    assert _answers(build_dataloader(cfg, tokenizer)) == sorted(f"a{k}" for k in range(8))
    capsys.readouterr()
    assert main(["validate", str(moved), "--no-progress"]) == 0
    assert "8 entries, 0 problems" in capsys.readouterr().out
    assert not list(other.iterdir())  # nothing was written into the working directory


# ------------------------------------------------------------------------------- inspect


def test_inspect_reads_a_bucketed_dataset_folder(tmp_path: Path, capsys) -> None:
    lines = [
        _line(str(_clip(tmp_path / f"c{k}.wav", 0.5 + 0.5 * k, 30 + k)), 0.5 + 0.5 * k, "x") for k in range(6)
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    out = tmp_path / "ds"
    assert main(["shard", str(manifest), "--out", str(out), "--buckets", "3", "--no-progress"]) == 0
    js = tmp_path / "s.json"
    assert main(["inspect", str(out), "--json", str(js)]) == 0
    stats = json.loads(js.read_text())
    assert stats["manifests"] == [str(out / f"bucket{b}" / "tarred_audio_manifest.json") for b in (1, 2, 3)]
    assert stats["examples"] == 6 and stats["drops"] == {}
    assert stats["hours"] == pytest.approx(sum(0.5 + 0.5 * k for k in range(6)) / 3600)
    capsys.readouterr()
    # validate finds the same folders; a folder with no dataset and no manifest is an error for both
    assert main(["validate", str(out), "--no-progress"]) == 0
    assert "6 entries, 0 problems" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["inspect", str(empty)]) == 1 and main(["validate", str(empty)]) == 1


def test_inspect_reads_gzipped_manifests_in_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    clip = _clip(tmp_path / "c.wav", 2.0, 40)
    (folder / "a.json.gz").write_bytes(
        gzip.compress(b"".join(orjson.dumps(_line(str(clip), 1.0, "a")) + b"\n" for _ in range(3)))
    )
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(orjson.dumps(_line(str(clip), 2.0, "b")) + b"\n"))
    write_manifest(folder / "c.jsonl", [_line(str(clip), 0.5, "c")])
    (folder / "notes.txt").write_text("not a manifest")
    js = tmp_path / "s.json"
    assert main(["inspect", str(folder), "--json", str(js)]) == 0
    stats = json.loads(js.read_text())
    assert stats["manifests"] == [str(folder / n) for n in ("a.json.gz", "b.jsonl.gz", "c.jsonl")]
    assert stats["examples"] == 5 and stats["hours"] == pytest.approx(5.5 / 3600)


# ------------------------------------------------------------------------ Unicode member names


def test_unicode_member_names_stay_readable_and_read_back(tmp_path: Path, tokenizer: Tokenizer) -> None:
    nfd = unicodedata.normalize("NFD", "Naïve_日本.wav")  # as macOS writes names: a combining diaeresis
    paths = [
        "données/naïve_日本.wav",
        "données/Naïve_日本.wav",
        "हिन्दी वाक्य.flac",
        "naïve_日本.wav",
        nfd,
        "plain.wav",
    ]
    for k, rel in enumerate(paths):
        _clip(tmp_path / rel, 1.0 + 0.25 * k, 50 + k, fmt="FLAC" if rel.endswith(".flac") else "WAV")
    manifest = write_manifest(
        tmp_path / "m.jsonl", [_line(rel, 1.0 + 0.25 * k, f"u{k}") for k, rel in enumerate(paths)]
    )
    out = tmp_path / "out"
    assert main(["shard", str(manifest), "--out", str(out), "--num-shards", "2", "--no-progress"]) == 0
    names = {e["answer"]: e["audio_filepath"] for e in _entries(out)}
    assert names == {
        "u0": "données_naïve_日本.wav",
        "u1": "données_Naïve_日本_2.wav",  # the same name but for case: numbered
        "u2": "हिन्दी_वाक्य.flac",  # vowel signs and virama (marks) kept, the space replaced
        "u3": "naïve_日本.wav",
        "u4": "Naïve_日本_2.wav",  # NFD normalised to NFC: then the same name as u3 but for case
        "u5": "plain.wav",
    }
    assert all(unicodedata.is_normalized("NFC", n) for n in names.values())
    in_tars: dict[str, bytes] = {}
    for tar in sorted(out.glob("audio_*.tar")):
        with tarfile.open(tar) as tf:
            in_tars.update({m.name: tf.extractfile(m).read() for m in tf.getmembers()})
        for sample in webdataset.WebDataset(str(tar), shardshuffle=False):
            assert (
                sample["__key__"] + "." + next(k for k in sample if not k.startswith("__")) in names.values()
            )
    assert sorted(in_tars) == sorted(names.values())
    for k, rel in enumerate(paths):
        assert in_tars[names[f"u{k}"]] == (tmp_path / rel).read_bytes()
    # the reader finds every member by its Unicode name and decodes the source's samples
    ds = TarredDataset(_tarred_cfg(out))
    for i in range(len(ds.index)):
        rec = ds.index.record(i)
        k = int(rec.answer[1:])
        got = load_audio(ds.read_audio_bytes(rec)[0])
        np.testing.assert_array_equal(got, load_audio(tmp_path / paths[k]))
    assert _answers(build_dataloader(_tarred_cfg(out), tokenizer)) == [f"u{k}" for k in range(6)]
    assert main(["validate", str(out), "--no-progress"]) == 0
