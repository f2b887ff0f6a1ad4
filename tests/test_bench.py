"""``speechdata bench``: the JSON report is complete and self-consistent (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from speechdata import bench, bench_peers
from speechdata.cli import main
from speechdata.errors import SpeechDataError
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


def test_missing_peer_is_reported_as_skipped(
    corpus: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = bench.load_dataset(corpus.manifest, ["audio_locator='|audio|'"])
    clips = bench.corpus_clips(bench.dataset_index(cfg), cfg)
    bench_peers.save_clips(clips, tmp_path / "clips.json")
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


def test_tarred_folder(corpus: Corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("speechdata.shards.read")
    shards = tmp_path / "shards"
    assert main(["shard", str(corpus.manifest), "--out", str(shards), "--num-shards", "2"]) == 0
    args = ["bench", str(shards), "audio_locator='|audio|'", "--batch-duration", "12", "--repeats", "1"]
    assert main([*args, "--json", str(tmp_path / "t.json")]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    run = data["peers"]["speechdata"]["runs"][0]
    assert run["examples"] == len(corpus.entries) and data["corpus"]["examples"] == len(corpus.entries)
    capsys.readouterr()
    assert main([*args, "--compare"]) == 1  # peers need plain files
    assert "--compare needs plain audio files" in capsys.readouterr().err


def test_bucketed_tarred_folder(corpus: Corpus, tmp_path: Path) -> None:
    """A folder written by `shard --buckets` is benchmarked over all its bucket datasets."""
    shards = tmp_path / "buckets"
    assert main(["shard", str(corpus.manifest), "--out", str(shards), "--buckets", "2"]) == 0
    args = ["bench", str(shards), "audio_locator='|audio|'", "--batch-duration", "12", "--repeats", "1"]
    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["peers"]["speechdata"]["runs"][0]["examples"] == len(corpus.entries)
