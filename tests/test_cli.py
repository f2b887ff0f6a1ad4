"""The command line: help, inspect, tokenizer train, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from speechdata.cli import COMMANDS, main
from speechdata.testing import make_corpus
from speechdata.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_corpus(tmp_path_factory.mktemp("cli"), n=30, seed=2, max_duration=8.0)


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name in COMMANDS:
        with pytest.raises(SystemExit) as stop:
            main([*name.split(), "--help"])
        assert stop.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: speechdata " + name)
    assert main([]) == 2


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
