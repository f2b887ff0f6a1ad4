"""speechdata validate: clean datasets pass; corrupted, missing and orphan members are reported."""

from __future__ import annotations

import io
import shutil
import tarfile

import orjson
import pytest

from speechdata.cli import main as cli_main
from speechdata.shards import ShardOptions, validate, write_shards
from speechdata.testing import make_corpus


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("validate")
    corpus = make_corpus(root / "corpus", n=14, seed=5, max_duration=3.0, formats=("flac",))
    out = root / "shards"
    write_shards([corpus.manifest], out, ShardOptions(num_shards=2, progress=False))
    return out


def _copy(clean, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(clean, dst)
    return dst


def _first_entry(folder):
    return orjson.loads((folder / "tarred_audio_manifest.json").read_bytes().splitlines()[0])


def test_clean_dataset_passes(clean, capsys):
    report = validate(clean, progress=False)
    assert report.ok and report.entries == 14
    assert cli_main(["validate", str(clean), "--no-progress"]) == 0
    assert "0 problems, 0 orphan members" in capsys.readouterr().out


def test_corrupted_member_is_caught(clean, tmp_path, capsys):
    folder = _copy(clean, tmp_path)
    e = _first_entry(folder)
    off = e["tar_offset"] if isinstance(e["tar_offset"], int) else e["tar_offset"][0]
    with open(folder / f"audio_{e['shard_id']}.tar", "r+b") as f:
        f.seek(off)
        f.write(b"\xff" * 64)
    report = validate(folder, progress=False)
    # Every entry that uses the member (a shared source serves several) is reported.
    users = [
        x
        for x in orjson.loads(
            b"[" + b",".join((folder / "tarred_audio_manifest.json").read_bytes().splitlines()) + b"]"
        )
        if x["audio_filepath"] == e["audio_filepath"]
    ]
    assert report.counts() == {"decode": len(users)}
    assert cli_main(["validate", str(folder), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"(decode={len(users)})" in out.splitlines()[-1]


def test_missing_member_and_orphan_are_caught(clean, tmp_path):
    folder = _copy(clean, tmp_path)
    e = _first_entry(folder)
    victim = e["audio_filepath"] if isinstance(e["audio_filepath"], str) else e["audio_filepath"][0]
    tar = folder / f"audio_{e['shard_id']}.tar"
    with tarfile.open(tar) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    with tarfile.open(tar, "w") as dst:
        for m, data in members:
            if m.name != victim:
                dst.addfile(m, io.BytesIO(data))
        extra = tarfile.TarInfo("stray.wav")
        dst.addfile(extra, io.BytesIO(b""))
    report = validate(folder, progress=False)
    kinds = report.counts()
    assert kinds.get("missing", 0) >= 1 and kinds.get("orphan") == 1
    assert any(victim in msg for _, msg in report.problems)


def test_wrong_duration_is_caught(clean, tmp_path):
    folder = _copy(clean, tmp_path)
    path = folder / "tarred_audio_manifest.json"
    lines = path.read_bytes().splitlines()
    e = orjson.loads(lines[0])
    e["duration"] = (e["duration"] if isinstance(e["duration"], float) else e["duration"][0]) + 5.0
    if isinstance(e["audio_filepath"], list):
        e["duration"] = [e["duration"]] * len(e["audio_filepath"])
    path.write_bytes(b"\n".join([orjson.dumps(e), *lines[1:]]) + b"\n")
    assert validate(folder, progress=False).counts() == {"duration": 1}


def test_not_a_dataset(tmp_path):
    assert cli_main(["validate", str(tmp_path)]) == 1


def test_problems_in_line_order_whatever_runs_the_shards(clean, tmp_path):
    """One task per shard (here 2 processes): the report equals the one-process report, problems
    by line across shards, an entry without shard_id looked up in every shard, orphans last."""
    folder = _copy(clean, tmp_path)
    path = folder / "tarred_audio_manifest.json"
    lines = path.read_bytes().splitlines()
    loose = orjson.loads(lines[2])
    loose.pop("shard_id")
    moved = orjson.loads(lines[4])
    moved["shard_id"] = 7  # no such shard
    lines[2], lines[4], lines[6] = orjson.dumps(loose), orjson.dumps(moved), b"{not json"
    path.write_bytes(b"\n".join(lines[:-1]) + b"\n")  # the last entry's members become orphans
    one = validate(folder, progress=False)
    two = validate(folder, progress=False, workers=2)
    assert (two.entries, two.problems) == (one.entries, one.problems)
    kinds = [kind for kind, _ in one.problems]
    k = kinds.index("bad_line")  # line 5's missing members (one per audio), line 7, then orphans
    assert k >= 1 and set(kinds[:k]) == {"missing"} and set(kinds[k + 1 :]) == {"orphan"}
    assert ":5: shard audio_7.tar not found" in one.problems[0][1]


def _rewrite(folder, edit) -> None:
    """Rewrite the dataset's manifest, each entry through ``edit(line number, entry)``."""
    path = folder / "tarred_audio_manifest.json"
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    path.write_bytes(b"".join(orjson.dumps(edit(k, e)) + b"\n" for k, e in enumerate(lines, 1)))


def test_lines_are_read_by_the_loaders_rule(clean, tmp_path, capsys):
    """validate reads each line as the loader does (parse_line): a line the loader refuses is a
    bad_line naming file:line, and --answer-key reads an answer under another key."""
    folder = _copy(clean, tmp_path)

    def edit(k, e):
        e["output"] = e.pop("text", e.pop("answer", None))
        if k == 3:
            e["offset"] = False  # not a number: the loader refuses the line
        return e

    _rewrite(folder, edit)
    report = validate(folder, progress=False)
    assert report.counts() == {"bad_line": 14}
    assert "tarred_audio_manifest.json:1: no answer ('answer' or 'text')" in report.problems[0][1]
    assert cli_main(["validate", str(folder), "--no-progress", "--answer-key", "output"]) == 1
    out = capsys.readouterr().out
    assert "tarred_audio_manifest.json:3: 'offset' must be a number, got False" in out
    assert "1 problem (bad_line=1)" in out
