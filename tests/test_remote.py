"""Object storage: tarred datasets on S3 (moto) and HTTP, read by byte range through a proxy that
injects latency, 503s, resets and truncated bodies (tests/servers.py). Every example arrives
exactly once per epoch and in the same batches as from local disk, resume is exact, failures end
in one line naming URL and member (or counted drops), and nothing hangs (every test has a
deadline through the readers' timeouts)."""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_remote import FAULTS, LOCATOR, epochs, faults, remote_cfg, resumed_ids, sample_ids, through_proxy
from servers import FaultProxy, RangeHTTPServer, s3_serving, s3_upload

from speechdata import build_dataloader
from speechdata.errors import DataError, SpeechDataError
from speechdata.shards.write import ShardOptions, write_shards
from speechdata.storage import (
    RangeReader,
    ReadCache,
    RemoteOptions,
    Span,
    backoff_delay,
    local_copy,
    read_range,
    retryable,
)
from speechdata.storage.retry import ShortRead
from speechdata.testing import Corpus, make_corpus
from speechdata.text.tokenizer import Tokenizer

pytest.importorskip("s3fs")
pytest.importorskip("moto")

N_SHARDS = 3
BUCKET = "speech"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_corpus(
        tmp_path_factory.mktemp("remote"),
        n=24,
        seed=5,
        min_duration=0.3,
        max_duration=1.2,
        multi_audio_fraction=0.2,
    )


@pytest.fixture(scope="module")
def tokenizer(corpus: Corpus) -> Tokenizer:
    return corpus.train_tokenizer(vocab_size=100, locator=LOCATOR)


@pytest.fixture(scope="module")
def shards(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards([corpus.manifest], out, ShardOptions(num_shards=N_SHARDS, codec="flac", progress=False))
    return out


def _files(shards: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(shards.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def s3(shards: Path) -> Iterator[tuple[str, FaultProxy]]:
    """moto S3 holding the shards under ``s3://speech/ds/``, and the fault proxy in front of it."""
    files: dict[str, Path | bytes] = {f"ds/{k}": p for k, p in _files(shards).items()}
    with s3_serving(BUCKET, files) as endpoint, FaultProxy(endpoint, seed=11, **FAULTS) as proxy:
        yield endpoint, proxy


@pytest.fixture(scope="module")
def http(shards: Path) -> Iterator[FaultProxy]:
    """The shards folder over HTTP (Range honoured), behind the fault proxy."""
    with RangeHTTPServer(shards.parent) as server, FaultProxy(server.url, seed=12, **FAULTS) as proxy:
        yield proxy


@pytest.fixture
def via_proxy(s3: tuple[str, FaultProxy], monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """Clients in this test (and its DataLoader workers) reach S3 through the proxy."""
    return through_proxy(s3[1], monkeypatch)


def _cfg(manifest: str, tars: str, workers: int, **kw: Any) -> Any:
    return remote_cfg(manifest, workers, is_tarred=True, tarred_audio_filepaths=tars, **kw)


def _local(shards: Path, workers: int, **kw: Any) -> Any:
    return _cfg(str(shards / "tarred_audio_manifest.json"), str(shards / "audio_{0..2}.tar"), workers, **kw)


def _remote(base: str, workers: int, **kw: Any) -> Any:
    return _cfg(f"{base}/tarred_audio_manifest.json", f"{base}/audio_{{0..2}}.tar", workers, **kw)


@pytest.mark.parametrize("workers", [0, 2])
def test_s3_by_range_same_batches_as_local_under_faults(
    shards: Path, tokenizer: Tokenizer, via_proxy: FaultProxy, workers: int
) -> None:
    local = epochs(build_dataloader(_local(shards, workers), tokenizer), 2)
    loader = build_dataloader(_remote(f"s3://{BUCKET}/ds", workers), tokenizer)
    assert not loader.streaming  # random access stays the default on object storage
    remote = epochs(loader, 2)
    assert remote == local  # same batches, same order, same audio samples
    ids = sample_ids(remote)
    per_epoch = len(ids) // 2
    for epoch in (ids[:per_epoch], ids[per_epoch:]):
        flat = [i for b in epoch for i in b]
        assert len(flat) == len(set(flat)) == 24  # every example exactly once per epoch
    assert ids[:per_epoch] != ids[per_epoch:]  # and reshuffled
    assert faults(via_proxy) > 0
    # members read through presigned URLs (speechdata.storage.presign), faults and all
    assert via_proxy.counts["signed:GET"] > 0


def test_s3_presigned_refused_reads_through_s3fs(
    shards: Path,
    tokenizer: Tokenizer,
    s3: tuple[str, FaultProxy],
    monkeypatch: pytest.MonkeyPatch,
    caplog: Any,
) -> None:
    """A store that refuses presigned GETs (403): one warning, the ranges read through s3fs, the
    same batches; no signature in any message. ``presign: 0`` never signs."""
    endpoint, _ = s3
    local = epochs(build_dataloader(_local(shards, 0), tokenizer), 1)
    with FaultProxy(endpoint, seed=5, refuse_signed=True) as proxy:
        through_proxy(proxy, monkeypatch)
        with caplog.at_level("WARNING", logger="speechdata"):
            assert epochs(build_dataloader(_remote(f"s3://{BUCKET}/ds", 0), tokenizer), 1) == local
        refusals = [r.getMessage() for r in caplog.records if "refused a presigned GET" in r.getMessage()]
        assert len(refusals) == 1 and "HTTP 403" in refusals[0]
        assert not any("Signature" in r.getMessage() or "X-Amz" in r.getMessage() for r in caplog.records)
        assert 1 <= proxy.counts["signed:GET"] <= 16  # at most the requests in flight when refused
        through_proxy(proxy, monkeypatch, SPEECHDATA_REMOTE_PRESIGN="0")
        cfg = _remote(f"s3://{BUCKET}/ds", 0)
        assert epochs(build_dataloader(cfg, tokenizer), 1) == local
        assert proxy.counts["signed:GET"] == 0 and proxy.counts["requests:GET"] > 0


def test_messages_never_hold_a_query_string() -> None:
    from speechdata.storage.presign import scrub

    text = "403, message='Forbidden', url='http://127.0.0.1:9/speech/ds/a.tar?X-Amz-Signature=abc&X-Amz-Credential=AK'"
    assert scrub(text) == "403, message='Forbidden', url='http://127.0.0.1:9/speech/ds/a.tar?...'"


def test_s3_resume_is_exact(shards: Path, tokenizer: Tokenizer, via_proxy: FaultProxy) -> None:
    cfg = _remote(f"s3://{BUCKET}/ds", 0)
    reference = sample_ids(epochs(build_dataloader(cfg, tokenizer), 2))
    assert resumed_ids(cfg, tokenizer, after=3, n=2) == reference


def test_http_by_range_and_streamed(shards: Path, tokenizer: Tokenizer, http: FaultProxy) -> None:
    base = f"{http.url}/{shards.name}"
    local = epochs(build_dataloader(_local(shards, 0), tokenizer), 1)
    assert epochs(build_dataloader(_remote(base, 0), tokenizer), 1) == local
    # streaming stays available: whole objects front to back, every example once
    streamed = build_dataloader(_remote(base, 0, streaming=True, shuffle_n=4), tokenizer)
    assert streamed.streaming
    got = sample_ids(epochs(streamed, 1))
    assert sorted(i for b in got for i in b) == sorted(i for b in sample_ids(local) for i in b)


def test_last_retry_names_url_and_member_or_counts_drops(
    shards: Path, tokenizer: Tokenizer, shards_s3_failing: FaultProxy
) -> None:
    cfg = _remote(f"s3://{BUCKET}/ds", 0)
    with pytest.raises(DataError) as err:
        epochs(build_dataloader(cfg, tokenizer), 1)
    msg = str(err.value)
    assert "\n" not in msg and f"s3://{BUCKET}/ds/audio_1.tar:" in msg
    assert "after 3 attempts" in msg and "503" in msg
    assert "Signature" not in msg and "X-Amz" not in msg  # the presigned URL stays out of it
    skipping = build_dataloader(_remote(f"s3://{BUCKET}/ds", 0, on_error="skip"), tokenizer)
    got = [i for b in sample_ids(epochs(skipping, 1)) for i in b]
    in_shard_1 = int((skipping.source.index.shard_id == 1).sum())  # type: ignore[attr-defined]
    assert in_shard_1 > 0
    assert skipping.report()["read_error"] == in_shard_1
    assert len(got) == 24 - in_shard_1


@pytest.fixture
def shards_s3_failing(s3: tuple[str, FaultProxy], monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A second proxy on the same S3 that answers 503 to every read of audio_1.tar."""
    endpoint, _ = s3
    with FaultProxy(endpoint, seed=3, always_fail=("audio_1.tar",)) as proxy:
        yield through_proxy(proxy, monkeypatch, SPEECHDATA_REMOTE_RETRIES="2")


def test_nemo_layout_without_offsets_scans_remote_headers(
    tmp_path: Path, tokenizer: Tokenizer, s3: tuple[str, FaultProxy], via_proxy: FaultProxy
) -> None:
    """A tar without ``tar_offset``/``tar_size`` in its entries: the remote tar's headers are read
    once, the member table cached by URL and version; members are then read by range."""
    endpoint, _ = s3
    members = {f"m{k}.bin": os.urandom(700 + 300 * k) for k in range(6)}
    tar = tmp_path / "nemo_0.tar"
    with tarfile.open(tar, "w") as tf:
        for name, data in members.items():
            (tmp_path / name).write_bytes(data)
            tf.add(tmp_path / name, arcname=name)
    s3_upload(endpoint, BUCKET, {"nemo/nemo_0.tar": tar})
    from speechdata.shards.read import remote_member_table

    table = remote_member_table(f"s3://{BUCKET}/nemo/nemo_0.tar")
    assert set(table) == set(members)
    with tarfile.open(tar) as tf:
        for m in tf:
            assert (table[m.name].offset, table[m.name].size) == (m.offset_data, m.size)
    via_proxy.reset_counts()
    assert remote_member_table(f"s3://{BUCKET}/nemo/nemo_0.tar") == table  # cached: one HEAD
    assert via_proxy.counts["requests:GET"] == 0
    reader = RangeReader(RemoteOptions.from_env())
    spans = [Span(f"s3://{BUCKET}/nemo/nemo_0.tar", m.offset, m.size, name) for name, m in table.items()]
    reader.schedule(spans)
    assert {s.name: reader.read(s) for s in spans} == members


def test_range_reader_bounds_in_flight_and_bytes_and_coalesces(
    s3: tuple[str, FaultProxy], via_proxy: FaultProxy
) -> None:
    endpoint, _ = s3
    blob = os.urandom(400_000)
    s3_upload(endpoint, BUCKET, {"blob": blob})
    url = f"s3://{BUCKET}/blob"
    far = [Span(url, k * 20_000, 4_000, f"far{k}") for k in range(20)]  # 16 KB apart
    # not coalesced (gap 0), at most 3 in flight, at most 10 KB held
    reader = RangeReader(RemoteOptions(in_flight=3, max_bytes=10_000, coalesce=0, backoff=0.01))
    reader.schedule(far)
    peak = 0
    for s in far:
        assert reader.read(s) == blob[s.offset : s.offset + s.size]
        peak = max(peak, reader.held)
        assert reader.held <= 10_000
    assert reader.requests == 20 and 1 < via_proxy.max_in_flight <= 3
    assert reader.held == 0
    # coalesced: neighbours 16 KB apart with a 64 KiB gap allowed -> one request up to max_request
    via_proxy.reset_counts()
    reader = RangeReader(RemoteOptions(max_request=100_000, backoff=0.01))
    reader.schedule(far)
    assert [reader.read(s) for s in far] == [blob[s.offset : s.offset + s.size] for s in far]
    assert reader.requests == 4  # 100 KB requests over the 384 KB span
    # a span skipped (its example dropped) is forgotten when a later one is read
    reader = RangeReader(RemoteOptions(coalesce=0, backoff=0.01))
    reader.schedule(far[:3])
    reader.read(far[2])
    assert reader.held == 0


def test_retry_rules_and_seeded_backoff() -> None:
    o = RemoteOptions(backoff=0.1, retries=5)
    delays = [backoff_delay(o, 7, "s3://b/k", 512, k) for k in range(8)]
    assert delays == [backoff_delay(o, 7, "s3://b/k", 512, k) for k in range(8)]  # seeded
    assert delays != [backoff_delay(o, 8, "s3://b/k", 512, k) for k in range(8)]
    for k, d in enumerate(delays):
        cap = min(o.max_backoff, o.backoff * 2**k)
        assert 0.5 * cap <= d <= cap
    assert (
        retryable(ShortRead("1 of 2 bytes"))
        and retryable(TimeoutError())
        and retryable(ConnectionResetError())
    )
    assert not retryable(FileNotFoundError()) and not retryable(PermissionError())

    class Status(Exception):
        def __init__(self, status: int) -> None:
            self.status = status

    assert retryable(Status(503)) and retryable(Status(429)) and retryable(Status(500))
    assert not retryable(Status(403)) and not retryable(Status(404)) and not retryable(Status(416))


def test_missing_object_and_timeout_do_not_hang(
    s3: tuple[str, FaultProxy], monkeypatch: pytest.MonkeyPatch, via_proxy: FaultProxy
) -> None:
    with pytest.raises(DataError, match=f"s3://{BUCKET}/nope.tar:x.flac: object not found"):
        read_range(f"s3://{BUCKET}/nope.tar", 0, 10, RemoteOptions(), where=f"s3://{BUCKET}/nope.tar:x.flac")
    with pytest.raises(SpeechDataError, match="manifest not found"):
        local_copy(f"s3://{BUCKET}/nope.json")
    endpoint, _ = s3
    with FaultProxy(endpoint, latency=3.0) as slow:
        through_proxy(slow, monkeypatch)
        t = time.monotonic()
        with pytest.raises(DataError, match="not read after 2 attempts"):
            read_range(
                f"s3://{BUCKET}/ds/audio_0.tar", 0, 10, RemoteOptions(timeout=0.3, retries=1, backoff=0.01)
            )
        assert time.monotonic() - t < 3.0


def test_read_cache_serves_second_epoch_and_stays_bounded(
    shards: Path, tokenizer: Tokenizer, via_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPEECHDATA_REMOTE_CACHE_BYTES", str(50 << 20))
    cfg = _remote(f"s3://{BUCKET}/ds", 0)
    first = build_dataloader(cfg, tokenizer)
    epochs(first, 1)
    gets = via_proxy.counts["requests:GET"]
    assert gets > 0
    via_proxy.reset_counts()
    again = build_dataloader(cfg, tokenizer)
    assert sample_ids(epochs(again, 1)) == sample_ids(
        epochs(build_dataloader(_local(shards, 0), tokenizer), 1)
    )
    assert via_proxy.counts["requests:GET"] == 0, (
        via_proxy.requests
    )  # every member from the cache (HEADs only)
    # the bound: a cache of 10 KB keeps at most 10 KB, least recently used out first
    cache = ReadCache(10_000, cache_dir=None)
    for k in range(10):
        cache.put(f"key{k}", bytes(3_000))
        time.sleep(0.01)
    assert cache.size() <= 10_000
    assert cache.get("key9") is not None and cache.get("key0") is None


def test_options_from_env_are_checked() -> None:
    assert RemoteOptions.from_env({"SPEECHDATA_REMOTE_IN_FLIGHT": "4"}).in_flight == 4
    with pytest.raises(SpeechDataError, match="SPEECHDATA_REMOTE_IN_FLIGHT: must be >= 1"):
        RemoteOptions.from_env({"SPEECHDATA_REMOTE_IN_FLIGHT": "0"})
    with pytest.raises(SpeechDataError, match="SPEECHDATA_REMOTE_BACKOFF: must be a number"):
        RemoteOptions.from_env({"SPEECHDATA_REMOTE_BACKOFF": "soon"})


def test_range_reader_reads_ahead_across_batches(s3: tuple[str, FaultProxy], via_proxy: FaultProxy) -> None:
    """Ranges announced ahead (the next batch) are fetched while the current batch is read; the
    next batch's own announcement confirms them (each use counted once: nothing stays held), and
    ranges announced ahead but never read are forgotten at the next batch that comes instead."""
    endpoint, _ = s3
    blob = os.urandom(200_000)
    s3_upload(endpoint, BUCKET, {"blob2": blob})
    url = f"s3://{BUCKET}/blob2"
    spans = [Span(url, k * 10_000, 3_000, f"m{k}") for k in range(20)]
    a, b, c, d = spans[:5], spans[5:10], spans[10:15], spans[15:]
    reader = RangeReader(RemoteOptions(coalesce=0, backoff=0.01))
    reader.schedule(a)
    reader.schedule(b[:1] + b, ahead=True)  # b[0] used twice in the next batch
    assert [reader.read(s) for s in a] == [blob[s.offset : s.offset + s.size] for s in a]
    deadline = time.monotonic() + 10
    while reader.requests < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reader.requests == 10  # b went out without being asked for
    reader.schedule(b[:1] + b)  # the batch itself: confirms the uses announced ahead
    for s in b[:1] + b:
        assert reader.read(s) == blob[s.offset : s.offset + s.size]
    assert reader.requests == 10 and reader.held == 0
    reader.schedule(c, ahead=True)  # announced, but another batch comes instead
    reader.schedule(d)
    assert [reader.read(s) for s in d] == [blob[s.offset : s.offset + s.size] for s in d]
    assert reader.held == 0  # c forgotten, not pinned


def test_loader_requests_next_batch_before_it_is_asked_for(
    shards: Path, tokenizer: Tokenizer, http: FaultProxy
) -> None:
    """While batch k is handed out, the members of batch k + 1 are already requested: the
    planned feed tells the reader its next batch (no drain at batch boundaries)."""
    base = f"{http.url}/{shards.name}"
    reference = build_dataloader(_local(shards, 0), tokenizer)
    batches = [
        [
            (o, n)
            for m in b["metadata"]
            for o, n in zip(
                *(v if isinstance(v, list) else [v] for v in (m["tar_offset"], m["tar_size"])), strict=True
            )
        ]
        for b in reference
    ]
    assert len(batches) >= 3
    loader = build_dataloader(_remote(base, 0, remote={"coalesce": 0}), tokenizer)
    http.reset_counts()
    it = iter(loader)
    next(it)
    deadline = time.monotonic() + 10
    wanted = {f"bytes={o}-{o + n - 1}" for o, n in batches[1]}
    while time.monotonic() < deadline:
        with http.lock:
            asked = {rng for method, _, rng in http.requests if method == "GET"}
        if wanted <= asked:
            break
        time.sleep(0.02)
    assert wanted <= asked  # batch 1's members, before next() asked for batch 1
    rest = [b["sample_ids"].tolist() for b in it]
    assert len(rest) == len(batches) - 1


def test_presigned_urls_are_signed_once_and_again_at_half_life(monkeypatch: pytest.MonkeyPatch) -> None:
    from servers import fake_aws_env

    from speechdata.storage import RemoteOptions, filesystem, reset_filesystems
    from speechdata.storage import presign as presign_mod

    for k, v in fake_aws_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # signing needs no server
    reset_filesystems()
    options = RemoteOptions(presign=100)
    fs, _ = filesystem("s3://speech/ds/a.tar")
    signed: list[str] = []
    real = fs.sign
    monkeypatch.setattr(fs, "sign", lambda path, expiration: signed.append(path) or real(path, expiration))
    clock = [1000.0]
    monkeypatch.setattr(presign_mod.time, "monotonic", lambda: clock[0])
    first = presign_mod.signed_url("s3://speech/ds/a.tar", options)
    assert (
        first is not None
        and first.startswith("http://127.0.0.1:9/speech/ds/a.tar?")
        and "X-Amz-Signature=" in first
    )
    assert presign_mod.signed_url("s3://speech/ds/a.tar", options) == first
    clock[0] += 49
    presign_mod.signed_url("s3://speech/ds/a.tar", options)
    assert signed == ["speech/ds/a.tar"]  # within half the validity: signed once
    clock[0] += 2
    presign_mod.signed_url("s3://speech/ds/a.tar", options)
    assert len(signed) == 2  # past half of it: signed again
    assert presign_mod.signed_url("s3://speech/ds/a.tar", RemoteOptions(presign=0)) is None
    assert presign_mod.signed_url("http://127.0.0.1:9/a.tar", options) is None
    reset_filesystems()


def test_inspect_reads_what_the_loader_reads_on_s3(
    shards: Path, via_proxy: FaultProxy, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``speechdata inspect`` takes the URLs the loader takes: a tarred dataset folder on S3 (its
    manifest found by listing) and a manifest URL give the figures of the same local dataset."""
    import json

    from speechdata.cli import main

    figures = []
    for k, arg in enumerate(
        [str(shards), f"s3://{BUCKET}/ds", f"s3://{BUCKET}/ds/tarred_audio_manifest.json"]
    ):
        assert main(["inspect", arg, "--json", str(tmp_path / f"{k}.json")]) == 0
        found = json.loads((tmp_path / f"{k}.json").read_text())
        found.pop("manifests")  # the paths as given
        figures.append(found)
    capsys.readouterr()
    assert figures[0]["examples"] == 24 and figures[1] == figures[0] == figures[2]
    assert main(["inspect", f"s3://{BUCKET}/nowhere"]) == 1
    assert "s3://speech/nowhere: no manifest there" in capsys.readouterr().err


def test_validate_checks_a_dataset_on_s3_as_on_disk(
    shards: Path, s3: tuple[str, FaultProxy], via_proxy: FaultProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    """``speechdata validate s3://...``: the same entries and verdict as the local folder; a tar
    cut short on S3 is reported by its URL (its headers read from the store, not a cache)."""
    from speechdata.cli import main
    from speechdata.shards.validate import validate

    endpoint, _ = s3
    # a prefix of its own: other tests of this module add objects to the bucket
    s3_upload(endpoint, BUCKET, {f"val/{k}": p for k, p in _files(shards).items()})
    local = validate(shards, progress=False)
    remote = validate(f"s3://{BUCKET}/val", progress=False)
    assert local.ok and remote.ok and remote.entries == local.entries == 24, remote.problems[:3]
    files: dict[str, Path | bytes] = {f"cut/{k}": p for k, p in _files(shards).items()}
    tar = shards / "audio_1.tar"
    files["cut/audio_1.tar"] = tar.read_bytes()[: tar.stat().st_size // 2]
    s3_upload(endpoint, BUCKET, files)
    assert main(["validate", f"s3://{BUCKET}/cut", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"s3://{BUCKET}/cut/audio_1.tar" in out and "problem" in out
