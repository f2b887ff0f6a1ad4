"""The command line: help, inspect, tokenizer train, the manifest key flags of shard / tokenizer
train / bench, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from speechdata.cli import COMMANDS, main
from speechdata.loader import build_dataloader
from speechdata.testing import Corpus, make_corpus, write_manifest
from speechdata.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_corpus(tmp_path_factory.mktemp("cli"), n=30, seed=2, max_duration=8.0)


def io_manifest(corpus: Corpus, path: Path) -> Path:
    """The corpus's lines with their texts under ``input`` / ``output`` (as in NeMo's SFT data)."""
    renamed = {"context": "input", "answer": "output"}
    return write_manifest(path, [{renamed.get(k, k): v for k, v in e.items()} for e in corpus.entries])


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name, module in COMMANDS.items():
        with pytest.raises(SystemExit) as stop:
            main([*name.split(), "--help"])
        assert stop.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: speechdata " + name)
        assert "Example:" in out and "--cache-dir" in out  # what it does, examples, every option
        assert module.startswith("speechdata.commands.")
        if name in ("shard", "inspect", "tokenizer train", "bench"):
            assert "--answer-key" in out and "--context-key" in out
    assert main([]) == 2
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "write manifests into NeMo-compatible tar shards" in out and "tokenizer" in out


def test_python_dash_m_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "speechdata", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("speechdata ")


def test_inspect_reports_and_writes_json_and_png(
    corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    js, png = tmp_path / "s.json", tmp_path / "h.png"
    assert (
        main(["inspect", str(corpus.manifest), "--json", str(js), "--png", str(png), "--num-buckets", "4"])
        == 0
    )
    out = capsys.readouterr().out
    stats = json.loads(js.read_text())
    assert stats["examples"] == len(corpus.entries)
    assert stats["hours"] == pytest.approx(corpus.hours, rel=1e-4)
    assert len(stats["suggested_bins"]) <= 3 and sum(stats["duration_hist"]["counts"]) == len(corpus.entries)
    assert f"examples:  {len(corpus.entries)}" in out and "suggested bucket_duration_bins" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_inspect_counts_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio_filepath": "a.wav", "duration": 2.0, "answer": "x"}\n{oops\n')
    assert main(["inspect", str(m), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["drops"] == {"bad_line": 1}
    assert "bad_line=1" in capsys.readouterr().out


def test_tokenizer_train_keeps_locator_as_one_piece(corpus, tmp_path: Path) -> None:
    out = tmp_path / "tok"
    args = ["tokenizer", "train", str(corpus.manifest), "--out", str(out), "--vocab-size", "150"]
    assert main([*args, "--audio-locator", "|audio|", "--no-byte-fallback"]) == 0
    tok = Tokenizer.load(out / "tokenizer.model")
    locator = tok.piece_to_id("|audio|")
    assert locator is not None and tok.encode("|audio|") in ([locator], [tok.piece_to_id("▁"), locator])
    assert tok.decode(tok.encode(corpus.entries[0]["answer"])) == corpus.entries[0]["answer"]


def test_user_errors_are_one_line_with_exit_code_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(tmp_path / "missing.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("speechdata: error: ") and err.count("\n") == 1 and "missing.jsonl" in err


def test_shard_reads_the_keys_the_loader_reads(corpus, tmp_path: Path, capsys) -> None:
    """A manifest with input/output is sharded with --answer-key/--context-key (it was rejected),
    the entries keep those keys, and a loader with the same keys reads every one of them."""
    m = io_manifest(corpus, corpus.root / "io.jsonl")
    out = tmp_path / "shards"
    assert main(["shard", str(m), "--out", str(out), "--num-shards", "2", "--no-progress"]) == 1
    assert f"{m}:1: no answer ('answer' or 'text')" in capsys.readouterr().err
    keys = ["--answer-key", "output", "--context-key", "input"]
    assert main(["shard", str(m), "--out", str(out), "--num-shards", "2", "--no-progress", *keys]) == 0
    entries = [json.loads(x) for x in (out / "tarred_audio_manifest.json").read_text().splitlines()]
    assert len(entries) == len(corpus.entries)
    assert all("output" in e and "input" in e and "answer" not in e and "context" not in e for e in entries)
    cfg = {
        "manifest_filepath": str(out / "tarred_audio_manifest.json"),
        "is_tarred": True,
        "tarred_audio_filepaths": str(out / "audio__OP_0..1_CL_.tar"),
        "answer_key": "output",
        "context_key": "input",
        "audio_locator": "|audio|",
        "batch_duration": 60.0,
        "drop_last": False,
        "max_duration": None,
    }
    loader = build_dataloader(cfg, corpus.train_tokenizer(out_dir=tmp_path / "tok"))
    answers = sorted(meta["answer"] for batch in loader for meta in batch["metadata"])
    assert answers == sorted(e["answer"] for e in corpus.entries)


def test_tokenizer_train_key_flags(corpus, tmp_path: Path, capsys) -> None:
    m = io_manifest(corpus, tmp_path / "io.jsonl")
    args = ["tokenizer", "train", str(m), "--out", str(tmp_path / "tok"), "--vocab-size", "120"]
    assert main(args) == 1 and "no answer ('answer' or 'text')" in capsys.readouterr().err
    flags = ["--answer-key", "output", "--context-key", "input", "--default-context", "zebra quokka"]
    assert main([*args, *flags, "--no-byte-fallback"]) == 0
    assert f"from {len(corpus.entries)} lines" in capsys.readouterr().out
    tok = Tokenizer.load(tmp_path / "tok" / "tokenizer.model")
    assert tok.decode(tok.encode(corpus.entries[0]["answer"])) == corpus.entries[0]["answer"]
    # the default context is training text (once): its letters are pieces, not unknown
    assert tok.decode(tok.encode("zebra quokka")) == "zebra quokka"


def test_bench_key_flags_override_the_section(corpus, tmp_path: Path) -> None:
    m = io_manifest(corpus, corpus.root / "io_bench.jsonl")  # beside the audio its paths name
    run = ["--batch-duration", "30", "--repeats", "1", "--json", str(tmp_path / "b.json")]
    keys = ["--answer-key", "output", "--context-key", "input"]
    assert main(["bench", str(m), "audio_locator=|audio|", *keys, *run]) == 0
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["peers"]["speechdata"]["runs"][0]["examples"] == len(corpus.entries)
    assert 'answer_key="output"' in data["command"]  # the run's command line reproduces it
    # a config whose section is under model.data (NeMo's place): the flags override that section
    yaml = tmp_path / "c.yaml"
    yaml.write_text(
        f"model:\n  data:\n    train_ds:\n      manifest_filepath: {m}\n      audio_locator: '|audio|'\n"
        "      batch_duration: 30\n      num_workers: 0\n"
    )
    assert main(["bench", str(yaml), *keys, *run]) == 0
    assert (
        json.loads((tmp_path / "b.json").read_text())["command"].count("model.data.train_ds.answer_key") == 1
    )
