"""``speechdata bench``: the JSON report is complete and self-consistent (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from speechdata import bench
from speechdata.bench import clips as bench_clips
from speechdata.bench import peers as bench_peers
from speechdata.cli import main
from speechdata.errors import DataError, SpeechDataError
from speechdata.testing import Corpus, make_corpus

PEER_FIGURES = ("audio_s_per_s", "examples_per_s", "padding_pct", "first_batch_s", "peak_rss_mb")
#: (the JSON report, the markdown table, the exit code)
Report = tuple[dict[str, Any], str, int]
RUN_FIGURES = (
    "audio_seconds",
    "examples",
    "audios",
    "batches",
    "wall_s",
    "first_batch_s",
    "padding_fraction",
    "cpu_s",
    "child_cpu_s",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    # FLAC and WAV, two sample rates (resampling), stereo, multi-audio and shared-source examples
    return make_corpus(
        tmp_path_factory.mktemp("bench"),
        n=14,
        seed=5,
        formats=("flac", "wav"),
        sample_rates=(16000, 8000),
        multi_audio_fraction=0.2,
        stereo_fraction=0.2,
        shared_source_fraction=0.3,
        max_duration=4.0,
    )


@pytest.fixture(scope="module")
def report(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Report:
    out = tmp_path_factory.mktemp("out")
    rc = main(
        [
            "bench",
            str(corpus.manifest),
            "audio_locator='|audio|'",
            "--batch-duration",
            "12",
            "--compare",
            "--repeats",
            "1",
            "--json",
            str(out / "r.json"),
            "--md",
            str(out / "r.md"),
        ]
    )
    return json.loads((out / "r.json").read_text()), (out / "r.md").read_text(), rc


def test_json_has_every_figure(report: Report) -> None:
    data, md, rc = report
    assert rc == 0
    assert list(data["peers"]) == ["speechdata", "floor", "lhotse", "webdataset"]
    for name, peer in data["peers"].items():
        assert peer["skipped"] is None, (name, peer["skipped"])  # all peers are installed here
        for key in bench.FIGURES:
            assert key in peer["figures"], (name, key)
        for key in ("audio_s_per_s", "examples_per_s", "peak_rss_mb"):
            assert peer["figures"][key] > 0, (name, key)
        assert len(peer["runs"]) == 1
        for key in RUN_FIGURES:
            assert key in peer["runs"][0]
    # the floor decodes clip by clip: no batches, no padding, no first batch
    assert data["peers"]["floor"]["figures"]["padding_pct"] is None
    # token rows: speechdata's only
    assert 0.0 <= data["peers"]["speechdata"]["figures"]["token_padding_pct"] < 100.0
    for name in ("floor", "lhotse", "webdataset"):
        assert data["peers"][name]["figures"]["token_padding_pct"] is None
    assert data["peers"]["floor"]["figures"]["first_batch_s"] is None
    for name in ("speechdata", "lhotse", "webdataset"):
        assert 0.0 <= data["peers"][name]["figures"]["padding_pct"] < 100.0
        assert data["peers"][name]["figures"]["first_batch_s"] > 0
    machine = data["machine"]
    for key in ("cpu_count", "torch", "lhotse", "webdataset", "libsndfile", "python"):
        assert machine[key]
    assert data["command"].startswith("speechdata bench ") and "--compare" in data["command"]
    assert data["settings"]["workers"] == 1 and data["settings"]["batch_duration"] == 12.0
    for label in ("| speechdata |", "| decode floor |", "| lhotse |", "| webdataset |"):
        assert label in md


def test_ratios_are_quotients_of_the_figures(report: Report) -> None:
    peers = report[0]["peers"]
    floor = peers["floor"]["figures"]["audio_s_per_s"]
    lhotse = peers["lhotse"]["figures"]["audio_s_per_s"]
    for name, peer in peers.items():
        f = peer["figures"]
        assert f["ratio_to_floor"] == pytest.approx(f["audio_s_per_s"] / floor, rel=1e-12), name
        assert f["ratio_to_lhotse"] == pytest.approx(f["audio_s_per_s"] / lhotse, rel=1e-12), name
        # one run: the medians are that run's figures
        run = peer["runs"][0]
        assert f["audio_s_per_s"] == run["audio_s_per_s"]
        if run["padding_fraction"] is not None:
            assert f["padding_pct"] == pytest.approx(100 * run["padding_fraction"])


def test_every_peer_accounts_for_the_same_audio(report: Report, corpus: Corpus) -> None:
    peers = report[0]["peers"]
    seconds = sum(
        sum(e["duration"]) if isinstance(e["duration"], list) else e["duration"] for e in corpus.entries
    )
    clips = sum(
        len(e["audio_filepath"]) if isinstance(e["audio_filepath"], list) else 1 for e in corpus.entries
    )
    assert report[0]["corpus"]["audios"] == clips
    for name, peer in peers.items():
        run = peer["runs"][0]
        assert run["examples"] == len(corpus.entries), name
        assert run["audios"] == clips, name
        assert run["audio_seconds"] == pytest.approx(seconds, rel=1e-3), name
        assert run["drops"] == {}


def test_decoder_peer_and_the_per_example_figures(corpus: Corpus) -> None:
    from speechdata.errors import ConfigError

    cfg, _ = bench.load_dataset(corpus.manifest, ["audio_locator='|audio|'", "batch_duration=12"])
    result = bench.run_benchmark(cfg, compare=True, repeats=1, peers=("floor", "decoder"))
    peers = result.peers
    assert list(peers) == ["speechdata", "floor", "decoder"]  # asked for by name only
    sd, floor, dec = (peers[n].runs[0] for n in ("speechdata", "floor", "decoder"))
    assert (dec["examples"], dec["audios"]) == (floor["examples"], floor["audios"])
    assert dec["audio_seconds"] == pytest.approx(floor["audio_seconds"], rel=1e-9)  # the same spans
    f = peers["speechdata"].figures
    per_floor = 1e6 / peers["floor"].figures["examples_per_s"]
    assert f["overhead_us"] == pytest.approx(1e6 / f["examples_per_s"] - per_floor, rel=1e-9)
    # one worker: part of the run's CPU time is the worker's
    assert 0 < sd["child_cpu_s"] < sd["cpu_s"] and floor["child_cpu_s"] == 0
    assert f["cpu_us_per_example"] == pytest.approx(1e6 * sd["cpu_s"] / sd["examples"])
    assert f["worker_cpu_us_per_example"] == pytest.approx(1e6 * sd["child_cpu_s"] / sd["examples"])
    with pytest.raises(ConfigError, match="unknown peer"):
        bench.run_benchmark(cfg, compare=True, peers=("nope",))


def test_missing_peer_is_reported_as_skipped(
    corpus: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = bench.load_dataset(corpus.manifest, ["audio_locator='|audio|'"])
    clips = bench.corpus_clips(bench.dataset_index(cfg), cfg)
    bench_clips.save_clips(clips, tmp_path / "clips.json")
    monkeypatch.setitem(bench_peers.IMPORTS, "lhotse", ("speechdata_no_such_module",))
    out = bench_peers.run_job(bench_peers.Job(peer="lhotse", clips_file=str(tmp_path / "clips.json")))
    assert "skipped" in out and "speechdata_no_such_module" in out["skipped"]
    # the floor itself runs in-process here: every clip decoded once
    floor = bench_peers.run_job(bench_peers.Job(peer="floor", clips_file=str(tmp_path / "clips.json")))
    assert floor["figures"]["audios"] == len(clips)
    peers = {
        "speechdata": bench.PeerResult("speechdata", "speechdata", runs=[floor["figures"]]),
        "floor": bench.PeerResult("floor", "decode floor", runs=[floor["figures"]]),
        "lhotse": bench.PeerResult("lhotse", "lhotse", skipped=out["skipped"]),
    }
    bench.summarize(peers)
    assert peers["speechdata"].figures["ratio_to_floor"] == 1.0
    assert peers["speechdata"].figures["ratio_to_lhotse"] is None
    assert peers["lhotse"].figures == {}


def test_clips_follow_the_loaders_error_policy(tarred: tuple[Corpus, Path], tmp_path: Path) -> None:
    """A clip the loader cannot read drops its example from every peer's clips (on_error: skip),
    or is the loader's one-line error naming the line and the audio (on_error: raise)."""
    corpus, _ = tarred
    entries = [dict(e) for e in corpus.entries]
    entries[3]["audio_filepath"] = str(tmp_path / "gone.wav")
    manifest = tmp_path / "m.jsonl"
    for e in entries:  # relative paths stay relative to the corpus folder
        if not Path(e["audio_filepath"]).is_absolute():
            e["audio_filepath"] = str(corpus.manifest.parent / e["audio_filepath"])
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    cfg, _ = bench.load_dataset(manifest, ["audio_locator='|audio|'", "on_error=skip"])
    clips = bench.corpus_clips(bench.dataset_index(cfg), cfg)
    assert [c.example for c in clips] == list(range(len(entries) - 1))
    assert [c.text for c in clips] == [e["answer"] for k, e in enumerate(entries) if k != 3]
    cfg, _ = bench.load_dataset(manifest, ["audio_locator='|audio|'", "on_error=raise"])
    with pytest.raises(DataError, match=r"m\.jsonl:4: .*gone\.wav: audio file not found"):
        bench.corpus_clips(bench.dataset_index(cfg), cfg)


def test_config_input_and_overrides(corpus: Corpus, tmp_path: Path) -> None:
    yaml = tmp_path / "c.yaml"
    yaml.write_text(
        "model:\n  tokenizer:\n    model: tok/tokenizer.model\n  train_ds:\n"
        "    manifest_filepath: ???\n    batch_duration: 30\n    num_workers: 0\n"
    )
    cfg, tok = bench.load_dataset(yaml, [f"model.train_ds.manifest_filepath={corpus.manifest}"])
    assert cfg.manifests == [str(corpus.manifest)] and cfg.batch_duration == 30.0 and cfg.num_workers == 0
    assert tok == "tok/tokenizer.model"
    cfg, tok = bench.load_dataset(corpus.manifest, ["num_buckets=4"])
    assert tok is None and cfg.num_buckets == 4 and cfg.batch_duration == 600.0 and cfg.max_duration is None


def test_bad_input_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SpeechDataError, match="no such file"):
        bench.load_dataset(tmp_path / "nope.jsonl")
    assert main(["bench", str(tmp_path / "nope.jsonl"), "--repeats", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("speechdata: error:") and len(err.strip().splitlines()) == 1


def test_tarred_folder(corpus: Corpus, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    assert main(["shard", str(corpus.manifest), "--out", str(shards), "--num-shards", "2"]) == 0
    args = ["bench", str(shards), "audio_locator='|audio|'", "--batch-duration", "12", "--repeats", "1"]
    assert main([*args, "--json", str(tmp_path / "t.json")]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    run = data["peers"]["speechdata"]["runs"][0]
    assert run["examples"] == len(corpus.entries) and data["corpus"]["examples"] == len(corpus.entries)


@pytest.fixture(scope="module")
def tarred(tmp_path_factory: pytest.TempPathFactory) -> tuple[Corpus, Path]:
    """A single-audio corpus (two formats, two rates, some stereo; no member used twice) and the
    tarred dataset `speechdata shard` writes from it."""
    root = tmp_path_factory.mktemp("tarred")
    c = make_corpus(
        root / "corpus",
        n=12,
        seed=11,
        formats=("flac", "wav"),
        sample_rates=(16000, 8000),
        multi_audio_fraction=0.0,
        stereo_fraction=0.2,
        shared_source_fraction=0.0,
        max_duration=4.0,
    )
    assert main(["shard", str(c.manifest), "--out", str(root / "shards"), "--num-shards", "2"]) == 0
    return c, root / "shards"


@pytest.fixture(scope="module")
def tarred_report(tarred: tuple[Corpus, Path], tmp_path_factory: pytest.TempPathFactory) -> Report:
    out = tmp_path_factory.mktemp("tarred_out")
    args = ["bench", str(tarred[1]), "audio_locator='|audio|'", "--batch-duration", "6", "--repeats", "1"]
    rc = main([*args, "--compare", "--json", str(out / "r.json"), "--md", str(out / "r.md")])
    return json.loads((out / "r.json").read_text()), (out / "r.md").read_text(), rc


def test_compare_on_a_tarred_dataset(tarred_report: Report) -> None:
    """--compare reads the user's tars: the floor and webdataset run on them, lhotse is skipped."""
    data, md, rc = tarred_report
    assert rc == 0
    peers = data["peers"]
    assert list(peers) == ["speechdata", "floor", "lhotse", "webdataset"]
    assert "no reader for NeMo tarred datasets" in peers["lhotse"]["skipped"]
    assert peers["lhotse"]["runs"] == [] and peers["lhotse"]["figures"] == {}
    for name in ("speechdata", "floor", "webdataset"):
        assert peers[name]["skipped"] is None, (name, peers[name]["skipped"])
        assert peers[name]["figures"]["audio_s_per_s"] > 0, name
        f = peers[name]["figures"]
        assert f["ratio_to_floor"] == pytest.approx(
            f["audio_s_per_s"] / peers["floor"]["figures"]["audio_s_per_s"]
        )
        assert f["ratio_to_lhotse"] is None  # lhotse did not run
    assert "| lhotse | skipped: lhotse has no reader for NeMo tarred datasets" in md
    formats = data["corpus"]["formats"]
    assert set(formats) <= {"FLAC", "WAV"} and sum(formats.values()) == 12


def test_every_peer_accounts_for_the_same_audio_of_a_tarred_dataset(
    tarred_report: Report, tarred: tuple[Corpus, Path]
) -> None:
    corpus = tarred[0]
    seconds = sum(e["duration"] for e in corpus.entries)
    summary = tarred_report[0]["corpus"]
    assert summary["examples"] == summary["audios"] == len(corpus.entries)
    assert summary["hours"] * 3600 == pytest.approx(seconds, rel=1e-3)
    for name in ("speechdata", "floor", "webdataset"):
        run = tarred_report[0]["peers"][name]["runs"][0]
        assert run["examples"] == len(corpus.entries), name
        assert run["audios"] == len(corpus.entries), name
        assert run["audio_seconds"] == pytest.approx(seconds, rel=1e-3), name
        assert run["drops"] == {}


def test_tarred_clips_are_the_members_by_offset(tarred: tuple[Corpus, Path], tmp_path: Path) -> None:
    """Each clip of a tarred dataset is its manifest line's member: the tar its shard_id names, the
    member's byte offset and size there; a NeMo-style manifest (no tar_offset/tar_size) is located
    through the tar's member table to the same places."""
    corpus, shards = tarred
    lines = [json.loads(x) for x in (shards / "tarred_audio_manifest.json").read_text().splitlines()]
    cfg, _ = bench.load_dataset(shards, ["audio_locator='|audio|'"])
    clips = bench.corpus_clips(bench.dataset_index(cfg), cfg)
    places = [(c.path, c.member, c.member_offset, c.member_size) for c in clips]
    want = [
        (str(shards / f"audio_{e['shard_id']}.tar"), e["audio_filepath"], e["tar_offset"], e["tar_size"])
        for e in lines
    ]
    assert places == want
    for c, e in zip(clips, corpus.entries, strict=True):
        with open(c.path, "rb") as f:
            f.seek(c.member_offset)
            assert f.read(c.member_size) == (corpus.manifest.parent / e["audio_filepath"]).read_bytes()
        assert c.frames == round(e["duration"] * c.sample_rate) and c.start == 0
    nemo = tmp_path / "nemo"
    nemo.mkdir()
    for tar in shards.glob("audio_*.tar"):
        (nemo / tar.name).symlink_to(tar)
    (nemo / "tarred_audio_manifest.json").write_text(
        "".join(
            json.dumps({k: v for k, v in e.items() if k not in ("tar_offset", "tar_size")}) + "\n"
            for e in lines
        )
    )
    cfg, _ = bench.load_dataset(nemo, ["audio_locator='|audio|'"])
    located = bench.corpus_clips(bench.dataset_index(cfg), cfg)
    assert [(Path(c.path).name, c.member, c.member_offset, c.member_size) for c in located] == [
        (Path(p).name, m, o, s) for p, m, o, s in want
    ]
    # the floor decodes those members by offset: every clip once, all the audio
    bench_clips.save_clips(located, tmp_path / "clips.json")
    floor = bench_peers.run_job(bench_peers.Job(peer="floor", clips_file=str(tmp_path / "clips.json")))
    assert floor["figures"]["audios"] == len(located) == len(corpus.entries)
    assert floor["figures"]["audio_seconds"] == pytest.approx(
        sum(e["duration"] for e in corpus.entries), rel=1e-3
    )


def test_streamed_shards(
    tarred: tuple[Corpus, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Shards behind a pipe: command are benched as the loader streams them (the corpus figures
    from the index); --compare, which reads members by offset, says it needs local shards."""
    corpus, shards = tarred
    yaml = tmp_path / "streamed.yaml"
    yaml.write_text(
        "model:\n  train_ds:\n"
        f"    manifest_filepath: {shards / 'tarred_audio_manifest.json'}\n"
        "    is_tarred: true\n"
        f"    tarred_audio_filepaths: 'pipe:cat {shards}/audio_{{0..1}}.tar'\n"
        "    batch_duration: 6\n    num_workers: 1\n    audio_locator: '|audio|'\n"
    )
    assert main(["bench", str(yaml), "--repeats", "1", "--json", str(tmp_path / "s.json")]) == 0
    data = json.loads((tmp_path / "s.json").read_text())
    seconds = sum(e["duration"] for e in corpus.entries)
    assert data["corpus"]["examples"] == data["corpus"]["audios"] == len(corpus.entries)
    assert data["corpus"]["hours"] * 3600 == pytest.approx(seconds, rel=1e-3)
    run = data["peers"]["speechdata"]["runs"][0]
    assert run["examples"] == len(corpus.entries) and run["audio_seconds"] == pytest.approx(seconds, rel=1e-3)
    capsys.readouterr()
    assert main(["bench", str(yaml), "--repeats", "1", "--compare"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("speechdata: error: --compare reads a tarred dataset's members by byte offset")
    assert last.endswith("its shards must be local files (not pipe: commands or URLs)")


def test_bucketed_tarred_folder(corpus: Corpus, tmp_path: Path) -> None:
    """A folder written by `shard --buckets` is benchmarked over all its bucket datasets."""
    shards = tmp_path / "buckets"
    assert main(["shard", str(corpus.manifest), "--out", str(shards), "--buckets", "2"]) == 0
    args = ["bench", str(shards), "audio_locator='|audio|'", "--batch-duration", "12", "--repeats", "1"]
    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["peers"]["speechdata"]["runs"][0]["examples"] == len(corpus.entries)


def test_bench_names_object_storage_as_out_of_its_scope(capsys: pytest.CaptureFixture[str]) -> None:
    """bench measures local data against the decode floor of the same files: a URL is one clear
    error pointing at the object-storage benchmark (not a mangled path)."""

    assert main(["bench", "s3://bucket/ds/manifest.jsonl"]) == 1
    err = capsys.readouterr().err
    assert "s3://bucket/ds/manifest.jsonl: speechdata bench measures data on local disk" in err
    assert "benchmarks/bench_remote.py" in err
