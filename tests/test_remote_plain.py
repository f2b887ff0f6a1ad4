"""Plain manifests whose clips are object-storage URLs (``s3://``, ``http://``), and manifests that
are URLs themselves, through the public API against the servers of tests/servers.py: each clip
is read whole through the storage layer (read ahead, retried under the proxy's latency, 503s,
resets and truncated bodies), giving the same batches and samples as the files on disk; a
missing object and an object that always fails end in one line naming the manifest line and
the URL, or in counted drops with ``on_error: skip``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers_remote import (
    FAST,
    FAULTS,
    LOCATOR,
    as_list,
    epochs,
    faults,
    remote_cfg,
    resumed_ids,
    sample_ids,
    through_proxy,
    url_manifest,
)
from servers import FaultProxy, RangeHTTPServer, s3_serving, s3_upload

from speechdata import build_dataloader
from speechdata.errors import DataError
from speechdata.storage import WHOLE, RangeReader, RemoteOptions, Span, read_object
from speechdata.synth.corpus import write_manifest
from speechdata.testing import Corpus, make_corpus
from speechdata.text.tokenizer import Tokenizer

pytest.importorskip("s3fs")
pytest.importorskip("moto")

BUCKET = "plain"
N = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    # offsets into shared files and multi-audio lines: one object serves several clips
    return make_corpus(
        tmp_path_factory.mktemp("plain"),
        n=N,
        seed=9,
        min_duration=0.3,
        max_duration=1.2,
        multi_audio_fraction=0.2,
        shared_source_fraction=0.3,
    )


@pytest.fixture(scope="module")
def tokenizer(corpus: Corpus) -> Tokenizer:
    return corpus.train_tokenizer(vocab_size=100, locator=LOCATOR)


def _audio_files(corpus: Corpus) -> list[Path]:
    names = {a for e in corpus.entries for a in as_list(e["audio_filepath"])}
    return [corpus.root / a for a in sorted(names)]


@pytest.fixture(scope="module")
def s3(corpus: Corpus) -> Iterator[tuple[str, FaultProxy]]:
    """moto S3 holding the corpus's audio under ``s3://plain/c/`` and its manifest (relative
    paths) at ``s3://plain/c/manifest.json``, with the fault proxy in front."""
    files: dict[str, Path | bytes] = {f"c/{p.relative_to(corpus.root)}": p for p in _audio_files(corpus)}
    files["c/manifest.json"] = corpus.manifest
    with s3_serving(BUCKET, files) as endpoint, FaultProxy(endpoint, seed=21, **FAULTS) as proxy:
        yield endpoint, proxy


@pytest.fixture
def via_proxy(s3: tuple[str, FaultProxy], monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    return through_proxy(s3[1], monkeypatch)


@pytest.mark.parametrize("workers", [0, 2])
def test_s3_clips_same_batches_as_local_under_faults(
    corpus: Corpus, tokenizer: Tokenizer, via_proxy: FaultProxy, tmp_path: Path, workers: int
) -> None:
    local = epochs(build_dataloader(remote_cfg(corpus.manifest, workers), tokenizer), 2)
    manifest = url_manifest(corpus.entries, f"s3://{BUCKET}/c", tmp_path / "urls.json")
    remote = epochs(build_dataloader(remote_cfg(manifest, workers), tokenizer), 2)
    assert remote == local  # same batches, same order, same samples
    flat = [i for b in sample_ids(remote)[: len(remote) // 2] for i in b]
    assert len(flat) == len(set(flat)) == N
    assert faults(via_proxy) > 0
    # each object is read whole by one request (a retry aside), at most once per clip and epoch
    objects = len(_audio_files(corpus))
    clips = sum(len(as_list(e["audio_filepath"])) for e in corpus.entries)
    assert 2 * objects <= via_proxy.counts["requests:GET"] - faults(via_proxy) <= 2 * clips
    assert via_proxy.counts["requests:HEAD"] == 0  # no metadata request per object


def test_manifest_on_s3_with_relative_paths_and_exact_resume(
    corpus: Corpus, tokenizer: Tokenizer, via_proxy: FaultProxy
) -> None:
    """A manifest that is itself a URL: relative clip paths resolve against its folder."""
    cfg = remote_cfg(f"s3://{BUCKET}/c/manifest.json")
    reference = epochs(build_dataloader(cfg, tokenizer), 2)
    assert reference == epochs(build_dataloader(remote_cfg(corpus.manifest), tokenizer), 2)
    assert resumed_ids(cfg, tokenizer, after=2, n=2) == sample_ids(reference)


def test_http_missing_and_failing_objects_name_line_and_url_or_count(
    corpus: Corpus, tokenizer: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in {**FAST, "SPEECHDATA_REMOTE_RETRIES": "2"}.items():
        monkeypatch.setenv(k, v)
    failing = sorted(_audio_files(corpus))[0].relative_to(corpus.root)
    uses = sum(str(failing) in as_list(e["audio_filepath"]) for e in corpus.entries)
    with (
        RangeHTTPServer(corpus.root) as server,
        FaultProxy(server.url, seed=5, always_fail=(failing.name,), **FAULTS) as proxy,
    ):
        base = proxy.url
        missing = {"audio_filepath": f"{base}/nope.wav", "duration": 0.5, "answer": "gone", "context": "q"}
        manifest = url_manifest(corpus.entries, base, tmp_path / "http.json", [missing])
        with pytest.raises(DataError) as err:
            epochs(build_dataloader(remote_cfg(manifest), tokenizer), 1)
        msg = str(err.value)
        assert "\n" not in msg
        assert re.fullmatch(
            rf"{re.escape(str(manifest))}:\d+: {re.escape(base)}/"
            rf"(nope\.wav: object not found|{re.escape(str(failing))}: bytes 0-\d+ not read after 3 attempts: .*503.*)",
            msg,
        ), msg
        skipping = build_dataloader(remote_cfg(manifest, on_error="skip"), tokenizer)
        got = [i for b in sample_ids(epochs(skipping, 1)) for i in b]
    report = skipping.report()
    assert report["missing_audio"] == 1
    assert report["read_error"] == uses > 0
    assert len(got) == len(set(got)) == N - uses


def test_url_clip_without_duration_is_a_one_line_error(tmp_path: Path, tokenizer: Tokenizer) -> None:
    manifest = tmp_path / "nodur.json"
    manifest.write_bytes(
        orjson.dumps({"audio_filepath": "s3://b/a.wav", "answer": "x", "context": "q"}) + b"\n"
    )
    with pytest.raises(DataError, match=r"nodur.json:1: s3://b/a.wav: 'duration' is required"):
        build_dataloader(remote_cfg(manifest), tokenizer)


def test_whole_objects_small_in_one_request_large_in_ranges(
    s3: tuple[str, FaultProxy], via_proxy: FaultProxy
) -> None:
    endpoint, _ = s3
    small, large = os.urandom(40_000), os.urandom(200_000)
    s3_upload(endpoint, BUCKET, {"w/small": small, "w/large": large})
    options = RemoteOptions(max_request=64 << 10, backoff=0.01)

    def cost() -> tuple[int, int]:
        return via_proxy.counts["requests:GET"] - faults(via_proxy), via_proxy.counts["requests:HEAD"]

    via_proxy.reset_counts()
    assert read_object(f"s3://{BUCKET}/w/small", options) == small
    assert cost() == (1, 0)  # ends inside the first range: one request, no metadata request
    via_proxy.reset_counts()
    assert read_object(f"s3://{BUCKET}/w/large", options) == large
    assert cost() == (4, 1)  # 64 KiB, then its size, then three more ranges of at most 64 KiB
    # through the range reader: announced, read once for both uses, nothing held afterwards
    reader = RangeReader(options)
    span = Span(f"s3://{BUCKET}/w/large", 0, WHOLE)
    reader.schedule([span, span])
    assert reader.read(span) == large and reader.read(span) == large
    assert reader.requests == 4 and reader.held == 0


def test_long_wav_clips_fetch_only_their_samples(tmp_path: Path, tokenizer: Tokenizer) -> None:
    """Segments of a long 16-bit WAV (offset/duration): after its head and size, each clip is one
    byte range of its own samples, decoded to the same samples as the local file."""
    import soundfile as sf

    rate = 16000
    wave = (np.random.default_rng(3).standard_normal(90 * rate) * 3000).astype(np.int16)
    sf.write(tmp_path / "long.wav", wave, rate, subtype="PCM_16")
    size = (tmp_path / "long.wav").stat().st_size
    segments = [(0.0, 1.5), (5.0, 2.0), (42.25, 1.0), (60.0, 3.0), (73.5, 1.25), (88.0, 2.0), (7.0, 1.0)]
    lines = [
        {"audio_filepath": "long.wav", "offset": o, "duration": d, "answer": f"seg {k}", "context": "q"}
        for k, (o, d) in enumerate(segments)
    ]
    local = epochs(build_dataloader(remote_cfg(write_manifest(tmp_path / "local.json", lines)), tokenizer), 1)
    with RangeHTTPServer(tmp_path) as server, FaultProxy(server.url, latency=0.01) as proxy:
        manifest = url_manifest(lines, proxy.url, tmp_path / "remote.json")
        remote = epochs(build_dataloader(remote_cfg(manifest), tokenizer), 1)
        got = proxy.counts["bytes:GET"]
        heads = proxy.counts["requests:HEAD"]
    assert remote == local
    clip_bytes = sum(round(d * rate) * 2 for _, d in segments)
    assert heads == 1  # the object's size, once
    assert got == (1 << 20) + clip_bytes < size  # its head, then each clip's samples once


def test_reading_ahead_reads_each_line_once(
    corpus: Corpus,
    tokenizer: Tokenizer,
    via_proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The next batch's lines are read (parsed) when its clips are announced, and the batch uses
    those records: every line of a URL manifest is read once per epoch, not twice."""
    from collections import Counter

    from speechdata.manifest import Index

    reads: Counter[int] = Counter()
    real = Index.record
    monkeypatch.setattr(Index, "record", lambda self, i: reads.update([int(i)]) or real(self, i))
    manifest = url_manifest(corpus.entries, f"s3://{BUCKET}/c", tmp_path / "urls.json")
    loader = build_dataloader(remote_cfg(manifest, 0), tokenizer)
    got = sample_ids(epochs(loader, 1))
    assert len(got) > 2  # batches after the first were read ahead
    assert sorted(reads) == list(range(N)) and set(reads.values()) == {1}


def _files(folder: Path) -> dict[str, bytes]:
    """Every file a shard job wrote (its resume markers aside), by path within ``folder``."""
    return {
        str(f.relative_to(folder)): f.read_bytes()
        for f in sorted(folder.rglob("*"))
        if f.is_file() and ".speechdata" not in f.parts
    }


@pytest.mark.parametrize(
    ("codec", "sliced", "workers"), [("keep", False, 2), ("flac", True, 1)], ids=["keep", "flac-sliced"]
)
def test_shard_from_object_storage_writes_what_local_files_give(
    corpus: Corpus, via_proxy: FaultProxy, tmp_path: Path, codec: str, sliced: bool, workers: int
) -> None:
    """``speechdata shard`` of the manifest on S3 (relative clip paths, read through the fault
    proxy) writes the same files, byte for byte, as the same job over the local copy; a rerun
    reuses every shard."""
    from speechdata.shards.write import ShardOptions, write_shards

    def opts() -> ShardOptions:
        return ShardOptions(
            num_shards=3, codec=codec, slice_with_offset=sliced, workers=workers, progress=False
        )

    write_shards([corpus.manifest], tmp_path / "local", opts())
    report = write_shards([f"s3://{BUCKET}/c/manifest.json"], tmp_path / "remote", opts())
    assert report.entries == N and report.shards == 3 and report.reused == 0
    local, remote = _files(tmp_path / "local"), _files(tmp_path / "remote")
    assert sorted(local) == sorted(remote) and any(k.endswith(".tar") for k in local)
    assert local == remote
    assert faults(via_proxy) > 0
    again = write_shards([f"s3://{BUCKET}/c/manifest.json"], tmp_path / "remote", opts())
    assert again.reused == 3 and _files(tmp_path / "remote") == local


def test_shard_of_url_clips_names_missing_objects(
    corpus: Corpus, via_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A local manifest naming clips by URL: each member is named by bucket and key, and the
    shards hold the objects' bytes; a missing object is one error naming the line and the URL, or
    with ``on_error: skip`` a counted drop."""
    from speechdata.shards.tarfmt import scan_members
    from speechdata.shards.write import ShardOptions, write_shards

    missing = {"audio_filepath": f"s3://{BUCKET}/c/nope.wav", "duration": 0.5, "answer": "gone"}
    manifest = url_manifest(corpus.entries, f"s3://{BUCKET}/c", tmp_path / "urls.json", [missing])
    with pytest.raises(DataError, match=rf"urls\.json:{N + 1}: s3://{BUCKET}/c/nope\.wav.*not found"):
        write_shards([manifest], tmp_path / "out", ShardOptions(num_shards=2, progress=False))
    report = write_shards(
        [manifest], tmp_path / "out", ShardOptions(num_shards=2, on_error="skip", progress=False)
    )
    assert report.entries == N and report.drops.counts == {"missing_audio": 1}
    stored = {}
    for tar in sorted((tmp_path / "out").glob("audio_*.tar")):
        data = tar.read_bytes()
        for name, m in scan_members(tar).items():
            stored[name] = data[m.offset : m.offset + m.size]
    assert all(name.startswith(f"{BUCKET}_c_") for name in stored)
    for f in _audio_files(corpus):
        key = f"{BUCKET}_c_" + str(f.relative_to(corpus.root).with_suffix("")).replace("/", "_")
        assert stored[f"{key}{f.suffix}"] == f.read_bytes()


def test_shard_names_a_clip_whose_header_cannot_be_read(
    corpus: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTP, a clip whose size is known but whose every GET fails: libsndfile reads the header
    through a callback that cannot raise, and the failure is still the shard job's error, naming
    the line and the URL (a counted drop with ``on_error: skip``), not a header read from nothing."""
    from speechdata.shards.write import ShardOptions, write_shards

    for k, v in {**FAST, "SPEECHDATA_REMOTE_RETRIES": "2"}.items():
        monkeypatch.setenv(k, v)
    failing = sorted(_audio_files(corpus))[0].relative_to(corpus.root)
    lines = [i + 1 for i, e in enumerate(corpus.entries) if str(failing) in as_list(e["audio_filepath"])]
    with (
        RangeHTTPServer(corpus.root) as server,
        FaultProxy(server.url, seed=5, always_fail=(failing.name,)) as proxy,
    ):
        manifest = url_manifest(corpus.entries, proxy.url, tmp_path / "http.json")
        with pytest.raises(DataError) as err:
            write_shards([manifest], tmp_path / "out", ShardOptions(num_shards=2, progress=False))
        msg = str(err.value)
        assert f"http.json:{lines[0]}: {proxy.url}/{failing}" in msg and "read_error" in repr(
            err.value.reason
        )
        assert "\n" not in msg
        skipped = ShardOptions(num_shards=2, progress=False, on_error="skip")
        report = write_shards([manifest], tmp_path / "out", skipped)
    assert report.drops.counts == {"read_error": len(lines)}
    assert report.entries == N - len(lines)
