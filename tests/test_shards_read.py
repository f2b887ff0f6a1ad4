"""Reading tarred datasets: path expansion, NeMo-written tars, pickling, streaming, interop."""

from __future__ import annotations

import io
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
import webdataset
from hypothesis import given
from hypothesis import strategies as st

from speechdata.audio import load_audio
from speechdata.cache import cache_root
from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, DataError
from speechdata.shards import (
    ShardOptions,
    TarredDataset,
    deal_shards,
    entries_by_member,
    expand_tar_paths,
    stream_tarred,
    write_shards,
)
from speechdata.shards.read import shard_ids
from speechdata.testing import make_corpus, write_manifest

N_SHARDS = 5


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("read")
    corpus = make_corpus(root / "corpus", n=26, seed=3, max_duration=3.0, shared_source_fraction=0.3)
    out = root / "shards"
    write_shards([corpus.manifest], out, ShardOptions(num_shards=N_SHARDS, codec="flac", progress=False))
    return corpus, out


def _cfg(manifest, tars, **kw):
    return make_dataset_config(
        {"manifest_filepath": str(manifest), "is_tarred": True, "tarred_audio_filepaths": tars, **kw}
    )


def test_expand_tar_paths():
    assert expand_tar_paths("d/audio_{0..2}.tar") == ["d/audio_0.tar", "d/audio_1.tar", "d/audio_2.tar"]
    assert expand_tar_paths("d/audio__OP_0..1_CL_.tar") == ["d/audio_0.tar", "d/audio_1.tar"]
    assert expand_tar_paths("a_{0..1}.tar, b.tar") == ["a_0.tar", "a_1.tar", "b.tar"]
    assert expand_tar_paths("x_{a,b}.tar") == ["x_a.tar", "x_b.tar"]
    assert expand_tar_paths(["a_{0..1}.tar", "c.tar"]) == ["a_0.tar", "a_1.tar", "c.tar"]
    assert expand_tar_paths([["b1/a_{0..1}.tar"], ["b2/a_0.tar", "b2/a_1.tar"]]) == [
        ["b1/a_0.tar", "b1/a_1.tar"],
        ["b2/a_0.tar", "b2/a_1.tar"],
    ]
    assert expand_tar_paths("pipe:aws s3 cp s3://b/audio_{0..1}.tar -") == [
        "pipe:aws s3 cp s3://b/audio_0.tar -",
        "pipe:aws s3 cp s3://b/audio_1.tar -",
    ]
    with pytest.raises(ConfigError, match="unbalanced"):
        expand_tar_paths("audio_{0..3.tar")


def test_shard_ids_from_names_or_positions():
    assert shard_ids(["d/audio_3.tar", "d/audio_1.tar"]) == [3, 1]
    assert shard_ids(["pipe:cat /x/audio_7.tar", "https://h/audio_2.tar?sig=1"]) == [7, 2]
    assert shard_ids(["a.tar", "b.tar"]) == [0, 1]


def test_reader_by_offset_and_pickle(written):
    _, out = written
    ds = TarredDataset(_cfg(out / "tarred_audio_manifest.json", str(out / "audio_{0..4}.tar")))
    assert ds.seekable and ds.buckets is None
    assert set(ds.index.shard_id.tolist()) == set(range(N_SHARDS))
    rec = ds.index.record(3)
    first = ds.read_audio_bytes(rec)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.read_audio_bytes(clone.index.record(3)) == first
    ds.close()
    assert ds.read_audio_bytes(rec) == first


def test_config_errors(written, tmp_path):
    _, out = written
    with pytest.raises(ConfigError, match="shard not found"):
        TarredDataset(_cfg(out / "tarred_audio_manifest.json", str(out / "audio_{0..9}.tar")))
    with pytest.raises(ConfigError, match="tarred_audio_filepaths"):
        TarredDataset(_cfg(out / "tarred_audio_manifest.json", None))
    ds = TarredDataset(_cfg(out / "tarred_audio_manifest.json", "pipe:cat " + str(out / "audio_{0..4}.tar")))
    assert not ds.seekable
    with pytest.raises(ConfigError, match="stream_tarred"):
        ds.read_audio_bytes(ds.index.record(0))


def _nemo_style(tmp_path: Path, corpus) -> tuple[Path, list[dict]]:
    """Two tars laid out like NeMo's convert_to_tarred_audio_dataset.py: flattened basenames, one
    copy per shard, repeats named ``-subN`` in the manifest, no byte offsets."""
    singles = [e for e in corpus.entries if isinstance(e["audio_filepath"], str)]
    entries = []
    for shard, part in enumerate((singles[: len(singles) // 2], singles[len(singles) // 2 :])):
        count: Counter[str] = Counter()
        with tarfile.open(tmp_path / f"audio_{shard}.tar", "w") as tf:
            for e in part:
                base, ext = e["audio_filepath"].rsplit(".", 1)
                squashed = base.replace("/", "_") + "." + ext
                if count[squashed] == 0:
                    tf.add(corpus.root / e["audio_filepath"], arcname=squashed)
                    name = squashed
                else:
                    name = f"{base.replace('/', '_')}-sub{count[squashed]}.{ext}"
                count[squashed] += 1
                entries.append(
                    {**e, "audio_filepath": name, "shard_id": shard, "_source": e["audio_filepath"]}
                )
    write_manifest(tmp_path / "tarred_audio_manifest.json", entries)
    return tmp_path / "tarred_audio_manifest.json", entries


def test_reads_tars_written_by_nemo_script(written, tmp_path):
    corpus, _ = written
    manifest, entries = _nemo_style(tmp_path, corpus)
    assert any("-sub" in e["audio_filepath"] for e in entries)
    ds = TarredDataset(_cfg(manifest, str(tmp_path / "audio__OP_0..1_CL_.tar")))
    for i in range(len(ds.index)):
        rec = ds.index.record(i)
        (data,) = ds.read_audio_bytes(rec)
        assert data == (corpus.root / rec.extra["_source"]).read_bytes()
    caches = list((cache_root() / "tar_members").glob("*.members.*.json"))
    assert len(caches) == 2  # in the cache folder (conftest: one per test), none beside the tars
    assert not (tmp_path / ".speechdata_cache").exists()
    # The cached table is used, and invalidated when the tar changes.
    again = TarredDataset(_cfg(manifest, str(tmp_path / "audio__OP_0..1_CL_.tar")))
    assert again.read_audio_bytes(again.index.record(0)) == ds.read_audio_bytes(ds.index.record(0))
    with tarfile.open(tmp_path / "audio_0.tar", "w") as tf:
        tf.addfile(tarfile.TarInfo("other.wav"), io.BytesIO(b""))
    fresh = TarredDataset(_cfg(manifest, str(tmp_path / "audio__OP_0..1_CL_.tar")))
    with pytest.raises(DataError, match="not found in"):
        fresh.read_audio_bytes(fresh.index.record(0))
    # Streaming resolves the -subN names too.
    got = {
        (e["audio_filepath"], e["shard_id"]): data
        for e, (data,) in stream_tarred(
            _cfg(manifest, "x", shuffle=False),
            [f"pipe:cat {tmp_path}/audio_1.tar"],
            entries_by_member(str(manifest)),
        )
    }
    want = [e for e in entries if e["shard_id"] == 1]
    assert len(got) == len(want)
    for e in want:
        assert got[(e["audio_filepath"], 1)] == (corpus.root / e["_source"]).read_bytes()


@given(st.integers(1, 23), st.integers(1, 4), st.integers(1, 3), st.integers(0, 5), st.booleans())
def test_deal_shards_even_and_complete(n, world, workers, epoch, shuffle):
    dealt = [
        deal_shards(
            n,
            epoch=epoch,
            seed=1,
            rank=r,
            world_size=world,
            worker_id=w,
            num_workers=workers,
            shuffle=shuffle,
        )
        for r in range(world)
        for w in range(workers)
    ]
    assert len({len(d) for d in dealt}) == 1
    flat = [s for d in dealt for s in d]
    assert set(flat) == set(range(n))
    assert len(flat) - n < world * workers


def test_streaming_pipe_every_entry_once_matching_offsets(written):
    corpus, out = written
    manifest = out / "tarred_audio_manifest.json"
    urls = [f"pipe:cat {out}/audio_{i}.tar" for i in range(N_SHARDS)]
    cfg = _cfg(manifest, "unused", shuffle=True, shuffle_n=8, seed=4)
    by_member = entries_by_member(str(manifest))
    ds = TarredDataset(_cfg(manifest, str(out / "audio_{0..4}.tar")))
    by_answer = {
        ds.index.record(i).answer: ds.read_audio_bytes(ds.index.record(i)) for i in range(len(ds.index))
    }
    per_reader = []
    for rank in range(2):
        for worker in range(2):
            got = list(
                stream_tarred(
                    cfg, urls, by_member, epoch=1, rank=rank, world_size=2, worker_id=worker, num_workers=2
                )
            )
            per_reader.append(got)
    # 5 shards over 4 readers: 8 slots, every shard read at least once.
    answers = Counter(e["answer"] for got in per_reader for e, _ in got)
    assert set(answers) == set(by_answer)
    for got in per_reader:
        for entry, data in got:
            assert data == by_answer[entry["answer"]]
    single = list(stream_tarred(cfg, urls, by_member, epoch=1))
    assert Counter(e["answer"] for e, _ in single) == Counter(e["answer"] for e in corpus.entries)
    assert [e["answer"] for e, _ in single] != [
        e["answer"] for e, _ in stream_tarred(cfg, urls, by_member, epoch=2)
    ]


def test_plain_webdataset_reads_our_shards(written):
    _, out = written
    lines = [orjson.loads(x) for x in (out / "tarred_audio_manifest.json").read_bytes().splitlines()]
    ds = TarredDataset(_cfg(out / "tarred_audio_manifest.json", str(out / "audio_{0..4}.tar")))
    member_bytes = {}
    for i in range(len(ds.index)):
        rec = ds.index.record(i)
        for name, data in zip(rec.audio, ds.read_audio_bytes(rec), strict=True):
            member_bytes[(rec.shard_id, name)] = data
    urls = [str(out / f"audio_{i}.tar") for i in range(N_SHARDS)]
    samples = list(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == len(member_bytes)
    for s in samples:
        shard = int(Path(s["__url__"]).stem.split("_")[1])
        (ext,) = [k for k in s if not k.startswith("__")]
        assert s[ext] == member_bytes[(shard, f"{s['__key__']}.{ext}")]
    assert {
        n
        for e in lines
        for n in ([e["audio_filepath"]] if isinstance(e["audio_filepath"], str) else e["audio_filepath"])
    } == {n for _, n in member_bytes}


def test_lhotse_decodes_the_same_audio(written):
    from lhotse import Recording

    _, out = written
    ds = TarredDataset(_cfg(out / "tarred_audio_manifest.json", str(out / "audio_{0..4}.tar")))
    manifest = entries_by_member(str(out / "tarred_audio_manifest.json"))
    checked = 0
    # Read the tars front to back the way NeMo's lhotse adapter does, decode with lhotse.
    for shard in range(N_SHARDS):
        with tarfile.open(out / f"audio_{shard}.tar", "r|") as tf:
            for m in tf:
                data = tf.extractfile(m).read()
                for entry in manifest[m.name]:
                    if not isinstance(entry["audio_filepath"], str) or entry["shard_id"] != shard:
                        continue
                    rec = Recording.from_bytes(data, recording_id=m.name)
                    off, dur = entry.get("offset", 0.0), entry["duration"]
                    theirs = rec.load_audio(offset=off, duration=dur).mean(axis=0)
                    ours = load_audio(data, offset=off, duration=dur)
                    n = min(len(theirs), len(ours))
                    assert abs(len(theirs) - len(ours)) <= 1
                    np.testing.assert_allclose(theirs[:n], ours[:n], atol=1e-6)
                    checked += 1
    assert checked == sum(1 for i in range(len(ds.index)) if ds.index.num_audios[i] == 1)
