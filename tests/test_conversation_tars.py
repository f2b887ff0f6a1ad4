"""NeMo's tarred conversations: manifest shard i goes with tar i by position (NeMo's multimodal
conversation reader zips them), conversation lines carry no shard_id and an audio turn's value
is a member name. The test writes such shards with tarfile, names members so that the same name
is in every tar (only the pairing tells them apart), and loads them through build_dataloader,
planned and streamed, against the same conversations read from the audio files."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import torch

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, DataError
from speechdata.lines import ORIGIN_KEY
from speechdata.testing import make_corpus

#: Shards (4: dealt to 1 or 2 stream readers evenly, so a streamed epoch repeats none).
SHARDS = 4


def _turns(e: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    durs = e["duration"] if isinstance(e["duration"], list) else [e["duration"]]
    turns: list[dict[str, Any]] = [{"from": "User", "type": "text", "value": "transcribe"}]
    turns += [
        {"from": "User", "type": "audio", "value": n, "duration": d} for n, d in zip(names, durs, strict=True)
    ]
    return [*turns, {"from": "Assistant", "type": "text", "value": e["answer"]}]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same conversations as a plain manifest (audio files) and as NeMo-style shards:
    ``manifest_{i}.jsonl`` + ``audio_{i}.tar``, members ``{k}_{j}.<ext>`` (k-th line of the
    shard, j-th audio) each followed by a ``.json`` metadata member, as NeMo's writer leaves."""
    root = tmp_path_factory.mktemp("convtars")
    corpus = make_corpus(root / "c", n=16, seed=5, max_duration=3.0, stereo_fraction=0.0)
    plain, shards = [], [[] for _ in range(SHARDS)]
    with ExitStack() as stack:
        tars = [stack.enter_context(tarfile.open(root / f"audio_{i}.tar", "w")) for i in range(SHARDS)]
        for n, e in enumerate(corpus.entries):
            paths = e["audio_filepath"] if isinstance(e["audio_filepath"], list) else [e["audio_filepath"]]
            plain.append({"id": f"c{n}", "conversations": _turns(e, paths)})
            i = n % SHARDS
            names = [f"{len(shards[i])}_{j}{Path(p).suffix}" for j, p in enumerate(paths)]
            for name, p in zip(names, paths, strict=True):
                tars[i].add(corpus.root / p, arcname=name)
                meta = json.dumps({"id": name}).encode()
                info = tarfile.TarInfo(Path(name).stem + ".json")
                info.size = len(meta)
                tars[i].addfile(info, io.BytesIO(meta))
            shards[i].append({"id": f"c{n}", "conversations": _turns(e, names)})
    for i, lines in enumerate(shards):
        (root / f"manifest_{i}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (corpus.root / "plain.jsonl").write_text("".join(json.dumps(x) + "\n" for x in plain))
    tok = corpus.train_tokenizer(vocab_size=80, out_dir=root / "tok")
    return {"root": root, "plain": corpus.root / "plain.jsonl", "n": len(plain), "tok": tok}


COMMON = {"prompt_format": "plain", "max_duration": None, "drop_last": False, "micro_batch_size": 3}


def _examples(section: dict[str, Any], tok: Any) -> dict[str, list[tuple[list[int], list[float]]]]:
    """Per answer: each example's tokens and its clips' sample sums."""
    out: dict[str, list[tuple[list[int], list[float]]]] = {}
    for batch in build_dataloader(make_dataset_config({**COMMON, **section}), tok):
        starts = torch.cumsum(batch["num_audios"], 0) - batch["num_audios"]
        for b, meta in enumerate(batch["metadata"]):
            assert ORIGIN_KEY not in meta  # the origin of a paired line is for messages only
            clips = range(int(starts[b]), int(starts[b] + batch["num_audios"][b]))
            sums = [float(batch["audio_signal"][c, : batch["audio_signal_length"][c]].sum()) for c in clips]
            n = int(batch["tokens_length"][b])
            out.setdefault(str(meta.get("answer")), []).append((batch["tokens"][b, :n].tolist(), sums))
    return out


@pytest.mark.parametrize(("streaming", "workers"), [(False, 0), (False, 2), (True, 0), (True, 2)])
def test_manifest_shards_pair_with_tars_by_position(
    data: dict[str, Any], streaming: bool, workers: int
) -> None:
    root = data["root"]
    want = _examples({"manifest_filepath": str(data["plain"])}, data["tok"])
    got = _examples(
        {
            "manifest_filepath": str(root / "manifest__OP_0..3_CL_.jsonl"),
            "is_tarred": True,
            "tarred_audio_filepaths": str(root / "audio_{0..3}.tar"),
            "streaming": streaming,
            "num_workers": workers,
        },
        data["tok"],
    )
    assert sum(map(len, got.values())) == data["n"] and got.keys() == want.keys()
    for answer, examples in got.items():
        assert sorted(t for t, _ in examples) == sorted(t for t, _ in want[answer])
        flat = sorted(x for _, sums in examples for x in sums)
        assert flat == pytest.approx(sorted(x for _, s in want[answer] for x in s), rel=1e-6, abs=1e-5)


def test_input_cfg_multimodal_conversation_tarred(data: dict[str, Any]) -> None:
    """NeMo 2.x's spelling: an input_cfg source with brace-expanded manifest and tar lists."""
    root = data["root"]
    section = {
        "input_cfg": [
            {
                "type": "multimodal_conversation",
                "manifest_filepath": str(root / "manifest__OP_0..3_CL_.jsonl"),
                "tarred_audio_filepaths": str(root / "audio__OP_0..3_CL_.tar"),
            }
        ]
    }
    got = _examples(section, data["tok"])
    assert sum(map(len, got.values())) == data["n"]


def test_counts_differ_or_member_missing_is_one_line(data: dict[str, Any], tmp_path: Path) -> None:
    root = data["root"]
    two = make_dataset_config(
        {
            **COMMON,
            "manifest_filepath": str(root / "manifest_{0..3}.jsonl"),
            "is_tarred": True,
            "tarred_audio_filepaths": str(root / "audio_{0..2}.tar"),
        }
    )
    with pytest.raises(
        ConfigError,
        match=r"^manifest_filepath .*manifest_\{0\.\.3\}\.jsonl names 4 manifest\(s\) but "
        r"tarred_audio_filepaths names 3 tar\(s\); manifest i is read with tar i",
    ):
        build_dataloader(two, data["tok"])

    # shard 1's manifest names a member that only shard 0's tar has
    lines = (root / "manifest_1.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    audio = next(t for t in first["conversations"] if t["type"] == "audio")
    audio["value"] = "nowhere.wav"
    for i in range(SHARDS):
        text = json.dumps(first) + "\n" if i == 1 else (root / f"manifest_{i}.jsonl").read_text()
        (tmp_path / f"manifest_{i}.jsonl").write_text(text)
    kept = sum(len((root / f"manifest_{i}.jsonl").read_text().splitlines()) for i in (0, 2, 3))
    for streaming in (False, True):  # read by offset, or streamed: the shard's end tells
        section = {
            **COMMON,
            "manifest_filepath": str(tmp_path / "manifest_{0..3}.jsonl"),
            "is_tarred": True,
            "tarred_audio_filepaths": str(root / "audio_{0..3}.tar"),
            "streaming": streaming,
        }
        # the error names the user's manifest shard and line, not the paired manifest's
        want = rf"^{tmp_path}/manifest_1\.jsonl:1: member 'nowhere\.wav' not found in {root}/audio_1\.tar$"
        with pytest.raises(DataError, match=want):
            for _ in build_dataloader(make_dataset_config(section), data["tok"]):
                pass
        skipped = build_dataloader(make_dataset_config({**section, "on_error": "skip"}), data["tok"])
        assert sum(len(b["sample_ids"]) for b in skipped) == kept
        assert skipped.report() == {"missing_audio": 1}


def test_paired_manifest_lines_carry_their_tars_shard_id(tmp_path: Path) -> None:
    """Each line gets the shard id of its tar (the N of audio_N.tar); a line's own shard_id is
    kept; the same manifests paired with other tars are another cache entry."""
    from speechdata.sources.converted import paired_manifest

    for i, lines in enumerate(([{"id": "a"}, {"id": "b", "shard_id": 7}], [{"id": "c"}])):
        (tmp_path / f"m_{i}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    manifests = [str(tmp_path / "m_0.jsonl"), str(tmp_path / "m_1.jsonl")]
    out = paired_manifest(list(zip(manifests, ["t/audio_10.tar", "t/audio_11.tar"], strict=True)))
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {"id": "a", "shard_id": 10, ORIGIN_KEY: f"{manifests[0]}:1"},
        {"id": "b", "shard_id": 7, ORIGIN_KEY: f"{manifests[0]}:2"},
        {"id": "c", "shard_id": 11, ORIGIN_KEY: f"{manifests[1]}:1"},
    ]
    other = paired_manifest(list(zip(manifests, ["t/x_0.tar", "t/x_1.tar"], strict=True)))
    assert other != out and json.loads(other.read_text().splitlines()[0])["shard_id"] == 0


def _edited_shards(data: dict[str, Any], folder: Path, edits: dict[tuple[int, int], str]) -> dict[str, Any]:
    """The shards copied into ``folder`` with line ``k`` of manifest shard ``i`` replaced by
    ``edits[i, k]`` (1-based), as a dataset section."""
    root = data["root"]
    for i in range(SHARDS):
        lines = (root / f"manifest_{i}.jsonl").read_text().splitlines()
        for (shard, k), text in edits.items():
            if shard == i:
                lines[k - 1] = text
        (folder / f"manifest_{i}.jsonl").write_text("".join(x + "\n" for x in lines))
    return {
        **COMMON,
        "manifest_filepath": str(folder / "manifest__OP_0..3_CL_.jsonl"),
        "is_tarred": True,
        "tarred_audio_filepaths": str(root / "audio_{0..3}.tar"),
    }


def _drop_line(loader: Any, caplog: pytest.LogCaptureFixture) -> str:
    """The epoch's drop warning of ``loader`` (after reading the epoch)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="speechdata"):
        for _ in loader:
            pass
    (line,) = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    return line


def test_messages_name_the_manifest_shard_and_line(
    data: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Messages about a paired line name the user's manifest shard and line: a bad turn and a
    line that is not JSON at indexing (raised, and the drop warning with on_error: skip), and
    a too_long_text drop (max_seq_length in the worker, max_tokens in the filters)."""
    lines = (data["root"] / "manifest_3.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    bad["conversations"][0]["type"] = "video"
    section = _edited_shards(data, tmp_path, {(3, 2): json.dumps(bad), (0, 3): "{oops"})
    with pytest.raises(DataError, match=rf"^{tmp_path}/manifest_0\.jsonl:3: not valid JSON"):
        build_dataloader(make_dataset_config(section), data["tok"])
    (tmp_path / "one").mkdir()
    only_turn = _edited_shards(data, tmp_path / "one", {(3, 2): json.dumps(bad)})
    with pytest.raises(DataError, match=rf"^{tmp_path}/one/manifest_3\.jsonl:2: turn 1: 'type' must be"):
        build_dataloader(make_dataset_config(only_turn), data["tok"])
    skipped = build_dataloader(make_dataset_config({**section, "on_error": "skip"}), data["tok"])
    line = _drop_line(skipped, caplog)
    assert f"e.g. {tmp_path}/manifest_0.jsonl:3, {tmp_path}/manifest_3.jsonl:2" in line, line
    assert skipped.report() == {"bad_line": 2}

    # a conversation far longer than the others (shard 2, line 3)
    long = json.loads((data["root"] / "manifest_2.jsonl").read_text().splitlines()[2])
    long["conversations"][-1]["value"] = " ".join(["the cat sat on the mat"] * 40)
    (tmp_path / "long").mkdir()
    section = _edited_shards(data, tmp_path / "long", {(2, 3): json.dumps(long)})
    place = f"{tmp_path}/long/manifest_2.jsonl:3"
    for limits in ({"max_seq_length": 150}, {"max_tokens": 150}):
        loader = build_dataloader(make_dataset_config({**section, **limits}), data["tok"])
        line = _drop_line(loader, caplog)
        assert "too_long_text=1 " in line and f"e.g. {place}" in line, line
        assert loader.report() == {"too_long_text": 1}


def test_paired_shards_on_object_storage(data: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same manifest and tar shards on S3 (moto): each manifest shard downloaded once and
    paired with its tar by position, members found in the remote tars' headers and read by
    range; the same examples as from local disk, messages naming the manifest shard's URL."""
    from servers import s3_serving

    from speechdata.storage import reset_filesystems

    root = data["root"]
    want = _examples({"manifest_filepath": str(data["plain"])}, data["tok"])
    files: dict[str, Path | bytes] = {f"ds/{p.name}": p for p in sorted(root.iterdir()) if p.is_file()}
    section = {
        "manifest_filepath": "s3://convtars/ds/manifest__OP_0..3_CL_.jsonl",
        "is_tarred": True,
        "tarred_audio_filepaths": "s3://convtars/ds/audio_{0..3}.tar",
    }
    with s3_serving("convtars", files) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        reset_filesystems()
        try:
            for workers in (0, 2):
                got = _examples({**section, "num_workers": workers}, data["tok"])
                assert got.keys() == want.keys() and sum(map(len, got.values())) == data["n"]
                for answer, examples in got.items():
                    assert sorted(t for t, _ in examples) == sorted(t for t, _ in want[answer])
                    flat = sorted(x for _, sums in examples for x in sums)
                    assert flat == pytest.approx(
                        sorted(x for _, s in want[answer] for x in s), rel=1e-6, abs=1e-5
                    )
            loader = build_dataloader(make_dataset_config({**COMMON, **section}), data["tok"])
            assert loader.index.where(0) == "s3://convtars/ds/manifest_0.jsonl:1"
        finally:
            reset_filesystems()
