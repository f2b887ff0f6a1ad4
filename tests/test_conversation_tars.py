"""NeMo's tarred conversations: manifest shard i goes with tar i by position (NeMo's multimodal
conversation reader zips them), conversation lines carry no shard_id and an audio turn's value
is a member name. The test writes such shards with tarfile, names members so that the same name
is in every tar (only the pairing tells them apart), and loads them through build_dataloader,
planned and streamed, against the same conversations read from the audio files."""

from __future__ import annotations

import io
import json
import tarfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import torch

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, DataError
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
        with pytest.raises(DataError, match=rf"member 'nowhere\.wav' not found in {root}/audio_1\.tar$"):
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
        {"id": "a", "shard_id": 10},
        {"id": "b", "shard_id": 7},
        {"id": "c", "shard_id": 11},
    ]
    other = paired_manifest(list(zip(manifests, ["t/x_0.tar", "t/x_1.tar"], strict=True)))
    assert other != out and json.loads(other.read_text().splitlines()[0])["shard_id"] == 0
