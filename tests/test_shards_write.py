"""speechdata shard: layout, exactness of the audio, shard sizes, dedup, names, buckets, resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
import soundfile as sf
import yaml
from hypothesis import given
from hypothesis import strategies as st

from speechdata.audio import audio_info, load_audio
from speechdata.cli import main as cli_main
from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError
from speechdata.shards import ShardOptions, TarredDataset, write_shards
from speechdata.shards import plan as shard_plan
from speechdata.shards.plan import RealPaths, assign_groups, member_stem
from speechdata.testing import make_corpus, write_manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_corpus(
        tmp_path_factory.mktemp("corpus"), n=31, seed=7, max_duration=4.0, shared_source_fraction=0.4
    )


def _opts(**kw) -> ShardOptions:
    kw.setdefault("progress", False)
    return ShardOptions(**kw)


def _entries(folder: Path) -> list[dict]:
    return [orjson.loads(x) for x in (folder / "tarred_audio_manifest.json").read_bytes().splitlines()]


def _open(folder: Path) -> TarredDataset:
    n = len(list(folder.glob("audio_*.tar")))
    cfg = make_dataset_config(
        {
            "manifest_filepath": str(folder / "tarred_audio_manifest.json"),
            "is_tarred": True,
            "tarred_audio_filepaths": str(folder / f"audio__OP_0..{n - 1}_CL_.tar"),
        }
    )
    return TarredDataset(cfg)


def _tar_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("audio_*.tar"))}


@pytest.mark.parametrize(
    "codec,sliced", [("keep", False), ("wav", False), ("flac", False), ("flac", True), ("keep", True)]
)
def test_roundtrip_every_entry_once_bit_identical(corpus, tmp_path, codec, sliced):
    out = tmp_path / "out"
    report = write_shards(
        [corpus.manifest],
        out,
        _opts(num_shards=3, codec=codec, slice_with_offset=sliced, shuffle=True, seed=2),
    )
    assert report.entries == len(corpus.entries) and report.drops.total() == 0
    ds = _open(out)
    assert ds.seekable and ds.buckets is None and len(ds.index) == len(corpus.entries)
    seen = Counter()
    for i in range(len(ds.index)):
        rec = ds.index.record(i)
        src = corpus.entries[[e["answer"] for e in corpus.entries].index(rec.answer)]
        seen[rec.answer] += 1
        paths = src["audio_filepath"] if isinstance(src["audio_filepath"], list) else [src["audio_filepath"]]
        offs = src["offset"] if isinstance(src["offset"], list) else [src["offset"]]
        durs = src["duration"] if isinstance(src["duration"], list) else [src["duration"]]
        members = ds.read_audio_bytes(rec)
        assert len(members) == len(paths)
        for data, path, off, dur, roff in zip(members, paths, offs, durs, rec.offset, strict=True):
            want = load_audio(corpus.root / path, offset=off, duration=dur)
            got = load_audio(data, offset=roff, duration=dur)
            assert roff == (0.0 if sliced else off)
            np.testing.assert_array_equal(got, want)
    assert seen == Counter(e["answer"] for e in corpus.entries)


def test_entries_keep_keys_and_get_shard_fields(corpus, tmp_path):
    out = tmp_path / "out"
    write_shards([corpus.manifest], out, _opts(num_shards=2))
    lines = _entries(out)
    for e in lines:
        assert {
            "answer",
            "context",
            "lang",
            "speaker",
            "duration",
            "shard_id",
            "tar_offset",
            "tar_size",
        } <= set(e)
        names = e["audio_filepath"] if isinstance(e["audio_filepath"], list) else [e["audio_filepath"]]
        sizes = e["tar_size"] if isinstance(e["tar_size"], list) else [e["tar_size"]]
        offs = e["tar_offset"] if isinstance(e["tar_offset"], list) else [e["tar_offset"]]
        with tarfile.open(out / f"audio_{e['shard_id']}.tar") as tf:
            for name, off, size in zip(names, offs, sizes, strict=True):
                m = tf.getmember(name)
                assert (m.offset_data, m.size) == (off, size)
                assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
    per_shard = b"".join((out / "sharded_manifests" / f"manifest_{i}.json").read_bytes() for i in range(2))
    assert per_shard == (out / "tarred_audio_manifest.json").read_bytes()
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert meta["dataset_config"]["num_shards"] == 2
    assert meta["speechdata"]["entries"] == len(corpus.entries)


@pytest.mark.parametrize("num_shards", [1, 4, 7])
def test_shard_sizes_differ_by_at_most_one(corpus, tmp_path, num_shards):
    out = tmp_path / "out"
    write_shards([corpus.manifest], out, _opts(num_shards=num_shards, shuffle=True))
    counts = Counter(e["shard_id"] for e in _entries(out))
    assert sorted(counts) == list(range(num_shards))
    assert sum(counts.values()) == len(corpus.entries)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_shard_size_option_and_default_out_dir(corpus, tmp_path):
    manifest = tmp_path / "train.jsonl"
    manifest.write_bytes(corpus.manifest.read_bytes().replace(b'"audio/', f'"{corpus.root}/audio/'.encode()))
    report = write_shards([manifest], None, _opts(shard_size=10))
    assert report.out_dir == tmp_path / "train_tarred"
    assert report.shards == 4  # ceil(31 / 10)


def test_shared_source_stored_once_per_shard(corpus, tmp_path):
    out = tmp_path / "out"
    write_shards([corpus.manifest], out, _opts(num_shards=3, shuffle=True, seed=5))
    by_source: dict[str, set[int]] = {}
    for src in corpus.entries:
        for p in (
            src["audio_filepath"] if isinstance(src["audio_filepath"], list) else [src["audio_filepath"]]
        ):
            by_source.setdefault(p, set())
    lines = _entries(out)
    shared = Counter(e["audio_filepath"] for e in lines if isinstance(e["audio_filepath"], str))
    assert any(n > 1 for n in shared.values()), "corpus should have shared sources"
    for name, n in shared.items():
        if n > 1:
            places = {(e["shard_id"], e["tar_offset"]) for e in lines if e["audio_filepath"] == name}
            assert len(places) == 1, f"{name} stored more than once or split: {places}"
    for shard in range(3):
        with tarfile.open(out / f"audio_{shard}.tar") as tf:
            names = tf.getnames()
        assert len(names) == len(set(names))
        keys = [n.split(".")[0] for n in names]
        assert len(keys) == len(set(keys))


def test_determinism_and_workers(corpus, tmp_path):
    opts = {"num_shards": 3, "shuffle": True, "seed": 11, "codec": "flac", "sort_in_shards": True}
    a = write_shards([corpus.manifest], tmp_path / "a", _opts(**opts))
    b = write_shards([corpus.manifest], tmp_path / "b", _opts(workers=2, **opts))
    assert a.bytes == b.bytes
    assert _tar_bytes(tmp_path / "a") == _tar_bytes(tmp_path / "b")
    assert (tmp_path / "a" / "tarred_audio_manifest.json").read_bytes() == (
        tmp_path / "b" / "tarred_audio_manifest.json"
    ).read_bytes()
    lines = _entries(tmp_path / "a")
    for shard in range(3):
        durs = [
            sum(e["duration"]) if isinstance(e["duration"], list) else e["duration"]
            for e in lines
            if e["shard_id"] == shard
        ]
        assert durs == sorted(durs)
    c = write_shards([corpus.manifest], tmp_path / "c", _opts(**{**opts, "seed": 12}))
    assert c.entries == a.entries and _tar_bytes(tmp_path / "c") != _tar_bytes(tmp_path / "a")


def test_unsafe_and_colliding_names(tmp_path):
    rng = np.random.default_rng(0)
    paths = ["../up/a.b.wav", "sub/a.wav", "sub_a.flac", "weird dir/-x#$y.wav", "deep/../../z.wav"]
    inner = tmp_path / "m" / "n"
    for rel in paths:
        p = (inner / rel).resolve()
        p.parent.mkdir(parents=True, exist_ok=True)
        fmt = "FLAC" if rel.endswith(".flac") else "WAV"
        sf.write(p, (rng.standard_normal(8000) * 0.1).astype(np.float32), 8000, format=fmt, subtype="PCM_16")
    manifest = write_manifest(
        inner / "m.jsonl",
        [{"audio_filepath": p, "duration": 1.0, "text": f"t{i}"} for i, p in enumerate(paths)],
    )
    out = tmp_path / "out"
    write_shards([manifest], out, _opts(num_shards=1))
    names = [e["audio_filepath"] for e in _entries(out)]
    assert len({n.split(".")[0].lower() for n in names}) == len(names)
    for n in names:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*\.[a-z0-9]+", n), n
    with tarfile.open(out / "audio_0.tar") as tf:
        assert sorted(tf.getnames()) == sorted(names)
    again = tmp_path / "again"
    write_shards([manifest], again, _opts(num_shards=1))
    assert [e["audio_filepath"] for e in _entries(again)] == names


def test_duration_filters_counted(corpus, tmp_path):
    durs = [(e["duration"] if isinstance(e["duration"], list) else [e["duration"]]) for e in corpus.entries]
    lo, hi = 1.0, 3.0
    short = sum(1 for d in durs if min(d) < lo)
    long_ = sum(1 for d in durs if min(d) >= lo and max(d) > hi)
    report = write_shards([corpus.manifest], tmp_path / "o", _opts(min_duration=lo, max_duration=hi))
    assert report.drops.to_dict() == {
        k: v for k, v in {"too_short_audio": short, "too_long_audio": long_}.items() if v
    }
    assert report.entries == len(corpus.entries) - short - long_
    meta = yaml.safe_load((tmp_path / "o" / "metadata.yaml").read_text())
    assert meta["speechdata"]["drops"] == report.drops.to_dict()


def test_buckets_equal_duration_and_bins(corpus, tmp_path):
    out = tmp_path / "b"
    report = write_shards([corpus.manifest], out, _opts(buckets=2, num_shards=2))
    assert [p.name for p in report.datasets] == ["bucket1", "bucket2"]
    totals = []
    for folder in report.datasets:
        lines = _entries(folder)
        totals.append(
            [sum(e["duration"]) if isinstance(e["duration"], list) else e["duration"] for e in lines]
        )
        assert len(list(folder.glob("audio_*.tar"))) == 2
    assert max(totals[0]) <= min(totals[1])
    assert sum(len(t) for t in totals) == len(corpus.entries)
    assert abs(sum(totals[0]) - sum(totals[1])) <= max(max(t) for t in totals) + 1e-6
    top = yaml.safe_load((out / "metadata.yaml").read_text())

    def under_out(value):  # metadata.yaml names paths relative to the dataset folder
        return [under_out(v) for v in value] if isinstance(value, list) else str(out / value)

    cfg = make_dataset_config(
        {
            "manifest_filepath": under_out(top["manifest_filepath"]),
            "is_tarred": True,
            "tarred_audio_filepaths": under_out(top["tarred_audio_filepaths"]),
        }
    )
    ds = TarredDataset(cfg)
    assert ds.buckets is not None and Counter(ds.buckets.tolist()) == {0: len(totals[0]), 1: len(totals[1])}
    rec = ds.index.record(int(np.flatnonzero(ds.buckets == 1)[0]))
    assert len(ds.read_audio_bytes(rec)[0]) > 0
    bins = write_shards([corpus.manifest], tmp_path / "bins", _opts(bucket_bins=[2.0, 3.0]))
    assert [p.name for p in bins.datasets] == ["bucket1", "bucket2", "bucket3"]
    with pytest.raises(ConfigError, match="bucket3"):
        write_shards([corpus.manifest], tmp_path / "empty", _opts(bucket_bins=[2.0, 1000.0]))


def test_resume_after_lost_marker_and_tmp_leftover(corpus, tmp_path):
    clean = tmp_path / "clean"
    write_shards([corpus.manifest], clean, _opts(num_shards=3, codec="flac"))
    out = tmp_path / "out"
    write_shards([corpus.manifest], out, _opts(num_shards=3, codec="flac"))
    st0 = (out / "audio_0.tar").stat()
    # A crash while shard 1 was being written: its marker and the final manifests are gone, a
    # half-written .tmp is left behind.
    (out / ".speechdata" / "audio_1.done").unlink()
    (out / "audio_1.tar").unlink()
    (out / "audio_1.tar.tmp").write_bytes(b"half a tar")
    (out / "tarred_audio_manifest.json").unlink()
    (out / "metadata.yaml").unlink()
    report = write_shards([corpus.manifest], out, _opts(num_shards=3, codec="flac"))
    assert report.reused == 2
    assert (out / "audio_0.tar").stat().st_ino == st0.st_ino
    assert (out / "audio_0.tar").stat().st_mtime_ns == st0.st_mtime_ns
    assert not (out / "audio_1.tar.tmp").exists()
    assert _tar_bytes(out) == _tar_bytes(clean)
    assert (out / "tarred_audio_manifest.json").read_bytes() == (
        clean / "tarred_audio_manifest.json"
    ).read_bytes()
    # Other options: nothing is reused.
    assert write_shards([corpus.manifest], out, _opts(num_shards=3, codec="wav")).reused == 0


def test_killed_cli_run_completes_with_same_bytes(corpus, tmp_path):
    args = [
        str(corpus.manifest),
        "--num-shards",
        "8",
        "--codec",
        "flac",
        "--sample-rate",
        "48000",
        "--no-progress",
    ]
    clean = tmp_path / "clean"
    assert cli_main(["shard", *args, "--out", str(clean)]) == 0
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "speechdata", "shard", *args, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (out / "audio_0.tar").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    print("left by the killed run:", sorted(p.name for p in out.rglob("*") if p.is_file()))
    assert cli_main(["shard", *args, "--out", str(out)]) == 0
    assert _tar_bytes(out) == _tar_bytes(clean)
    assert (out / "tarred_audio_manifest.json").read_bytes() == (
        clean / "tarred_audio_manifest.json"
    ).read_bytes()


def test_cli_errors_and_summary(corpus, tmp_path, capsys):
    assert (
        cli_main(["shard", str(corpus.manifest), "--out", str(tmp_path / "x"), "--sample-rate", "16000"]) == 1
    )
    assert "--sample-rate" in capsys.readouterr().err
    assert cli_main(["shard", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "y")]) == 1
    assert "manifest not found" in capsys.readouterr().err
    assert cli_main(["shard", str(corpus.manifest), "--out", str(tmp_path / "z"), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"speechdata shard: {len(corpus.entries)} entries") and "none dropped" in line


def test_missing_audio_raise_or_skip(corpus, tmp_path):
    lines = [dict(e) for e in corpus.entries[:5]]
    lines[2] = {**lines[2], "audio_filepath": "audio/does_not_exist.wav", "offset": 0.0, "duration": 1.0}
    lines = [
        {**e, "audio_filepath": str(corpus.root / e["audio_filepath"])}
        if isinstance(e["audio_filepath"], str)
        else e
        for e in lines
        if isinstance(e["audio_filepath"], str)
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    with pytest.raises(Exception, match=r"m\.jsonl:3"):
        write_shards([manifest], tmp_path / "o1", _opts())
    report = write_shards([manifest], tmp_path / "o2", _opts(on_error="skip"))
    assert report.drops.to_dict() == {"missing_audio": 1} and report.entries == len(lines) - 1


@given(st.lists(st.integers(1, 5), min_size=1, max_size=40), st.integers(1, 9))
def test_assign_groups_fills_exact_capacities(sizes, k):
    groups, start = [], 0
    for n in sizes:
        groups.append(list(range(start, start + n)))
        start += n
    k = min(k, start)
    caps = [start // k + (1 if i < start % k else 0) for i in range(k)]
    shards = assign_groups(groups, caps)
    assert [len(s) for s in shards] == caps
    assert sorted(i for s in shards for i in s) == list(range(start))


@given(st.integers(1, 30), st.integers(1, 6))
def test_pairs_are_never_split_when_shards_are_even(pairs, k):
    k = min(k, pairs)
    groups = [[2 * i, 2 * i + 1] for i in range(pairs)]
    caps = [2 * (pairs // k + (1 if i < pairs % k else 0)) for i in range(k)]
    where = {i: s for s, members in enumerate(assign_groups(groups, caps)) for i in members}
    assert all(where[2 * i] == where[2 * i + 1] for i in range(pairs))


@given(st.text(max_size=60))
def test_member_stem_is_always_safe(path):
    stem = member_stem(path)
    assert stem and not stem.startswith("-") and "." not in stem and len(stem.encode()) <= 120
    assert all(c in "_-" or unicodedata.category(c)[0] in "LMN" for c in stem), stem
    if path.isascii():
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", stem)


def test_opus_is_deterministic(corpus, tmp_path):
    small = write_manifest(
        tmp_path / "small.jsonl",
        [
            {**e, "audio_filepath": str(corpus.root / e["audio_filepath"])}
            for e in corpus.entries
            if isinstance(e["audio_filepath"], str)
        ][:4],
    )
    a = write_shards([small], tmp_path / "a", _opts(num_shards=2, codec="opus", slice_with_offset=True))
    write_shards([small], tmp_path / "b", _opts(num_shards=2, codec="opus", slice_with_offset=True))
    assert a.entries == 4 and _tar_bytes(tmp_path / "a") == _tar_bytes(tmp_path / "b")
    ds = _open(tmp_path / "a")
    rec = ds.index.record(0)
    info = audio_info(ds.read_audio_bytes(rec)[0])
    assert info.format == "OGG" and abs(info.duration - rec.duration[0]) < 0.05


def test_real_paths_equal_os_realpath(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.wav").write_bytes(b"x")
    (tmp_path / "link_dir").symlink_to(tmp_path / "d")
    (tmp_path / "d" / "b.wav").symlink_to(tmp_path / "d" / "a.wav")
    (tmp_path / "d" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    real = RealPaths()
    for p in [
        "d/a.wav",
        "link_dir/a.wav",
        "link_dir/b.wav",
        "d/gone.wav",
        "link_dir/../d/a.wav",
        "d/missing.wav",
        "link_dir/./b.wav",
    ]:
        for _ in range(2):  # the second call comes from the folder cache
            assert real(str(tmp_path / p)) == os.path.realpath(tmp_path / p), p


def test_rows_read_by_several_processes_as_by_one(corpus, tmp_path, monkeypatch):
    """With --workers 2 the rows are read and checked in chunks by two processes: the same
    entries, member names, drops (in the same order) and bytes as with one process."""
    monkeypatch.setattr(shard_plan, "_MIN_CHUNK", 3)
    lines = [
        {**e, "audio_filepath": str(corpus.root / e["audio_filepath"])}
        for e in corpus.entries
        if isinstance(e["audio_filepath"], str)
    ]
    for k in (2, 9, 17):  # missing audio in different chunks
        lines[k] = {**lines[k], "audio_filepath": f"/nonexistent/{k}.wav", "offset": 0.0, "duration": 1.0}
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    reports = []
    for w in (1, 2):
        reports.append(
            write_shards([manifest], tmp_path / f"o{w}", _opts(workers=w, on_error="skip", max_duration=3.0))
        )
        with pytest.raises(Exception, match=r"m\.jsonl:3: audio file not found") as err:
            write_shards([manifest], tmp_path / f"e{w}", _opts(workers=w))
        assert str(err.value).count("\n") == 0
    a, b = reports
    assert a.drops.counts["missing_audio"] == 3 and a.drops.counts["too_long_audio"] > 0
    assert (a.drops.counts, a.drops.places, a.drops.examples) == (
        b.drops.counts,
        b.drops.places,
        b.drops.examples,
    )
    assert _tar_bytes(tmp_path / "o1") == _tar_bytes(tmp_path / "o2")
    for name in ("tarred_audio_manifest.json", "metadata.yaml"):
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes()
