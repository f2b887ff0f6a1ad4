"""speechdata inspect: what it drops is named (file:line and reason), --on-error, no readable line
is an error, and the manifest key flags; all through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechdata.cli import main
from speechdata.testing import make_corpus, write_manifest

GOOD = {"audio_filepath": "a.wav", "duration": 2.0, "answer": "hello there"}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_broken_line_is_named_with_its_place_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text(
        json.dumps(GOOD) + "\n{oops\n" + json.dumps({**GOOD, "duration": -1}) + "\n" + json.dumps(GOOD) + "\n"
    )
    code, out, err = run(["inspect", str(m), "--json", str(tmp_path / "s.json")], capsys)
    assert code == 0 and err == ""
    assert f"dropped:   bad_line=2 e.g. {m}:2, {m}:3" in out
    assert f"  {m}:2: not valid JSON" in out  # the first messages follow, one per line
    assert f"  {m}:3: duration must be a finite number > 0" in out
    assert "examples:  2 " in out
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["drops"] == {"bad_line": 2}
    assert stats["drop_places"] == {"bad_line": [f"{m}:2", f"{m}:3"]}
    assert stats["drop_messages"]["bad_line"][0].startswith(f"{m}:2: not valid JSON")


def test_on_error_raise_stops_at_the_first_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "answer": 5}) + "\n{oops\n")
    code, out, err = run(["inspect", str(m), "--on-error", "raise"], capsys)
    assert code == 1 and out == ""
    assert err == f"speechdata: error: {m}:2: answer must be a string, got int\n"
    code, out, _ = run(["inspect", str(m), "--on-error", "skip"], capsys)  # the default, said explicitly
    assert code == 0 and f"bad_line=2 e.g. {m}:2, {m}:3" in out


def test_no_readable_line_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text("{oops\n[1, 2]\n" + json.dumps({"audio_filepath": "a.wav", "duration": 1.0}) + "\n")
    code, out, err = run(["inspect", str(m)], capsys)
    assert code == 1 and out == ""
    assert err == (
        f"speechdata: error: {m}: no readable example: 3 dropped: bad_line=3 e.g. {m}:1, {m}:2, {m}:3\n"
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, _, err = run(["inspect", str(empty)], capsys)
    assert code == 1 and err == f"speechdata: error: {empty}: no readable example: no lines\n"


def test_missing_audio_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = make_corpus(tmp_path / "c", n=3, seed=1, max_duration=2.0, with_duration=False)
    lines = [*corpus.entries, {"audio_filepath": "gone.wav", "answer": "x"}]
    m = write_manifest(corpus.root / "m.jsonl", lines)
    code, out, _ = run(["inspect", str(m)], capsys)
    assert code == 0 and f"missing_audio=1 e.g. {m}:4" in out and "examples:  3 " in out


def test_answer_and_context_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Lines with input/output: unreadable with the default keys, read with the flags (as the
    loader with answer_key/context_key reads them); --default-context fills lines without one."""
    lines = [
        {"audio_filepath": "a.wav", "duration": 1.0, "input": "ab", "output": "xyz"},
        {"audio_filepath": "b.wav", "duration": 2.0, "output": "xyzw"},
    ]
    m = write_manifest(tmp_path / "io.jsonl", lines)
    code, _, err = run(["inspect", str(m)], capsys)
    assert code == 1 and f"{m}: no readable example: 2 dropped: bad_line=2" in err
    code, _, err = run(["inspect", str(m), "--on-error", "raise"], capsys)
    assert code == 1 and err == f"speechdata: error: {m}:1: no answer ('answer' or 'text')\n"

    js = tmp_path / "s.json"
    keys = ["--answer-key", "output", "--context-key", "input"]
    assert main(["inspect", str(m), *keys, "--bins", "1", "--json", str(js)]) == 0
    stats = json.loads(js.read_text())
    assert stats["examples"] == 2 and stats["drops"] == {}
    assert stats["text_hist"]["edges"] == [4.0, 5.0]  # characters of context + answer: 2+3 and 4
    assert (
        main(["inspect", str(m), *keys, "--default-context", "hello", "--bins", "1", "--json", str(js)]) == 0
    )
    assert json.loads(js.read_text())["text_hist"]["edges"] == [5.0, 9.0]  # 2+3 and 5+4
