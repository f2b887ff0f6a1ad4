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


def test_tokenizer_gives_2d_bins_that_fit_and_padding_on_both_axes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --tokenizer, the suggested 2D bins hold every example (strict mode) and the padding of
    a planned epoch is reported per axis for 1D and 2D bins; the token counts are the prompt
    builder's (the loader's) counts."""
    import numpy as np

    from speechdata.config import make_dataset_config
    from speechdata.manifest import load_index
    from speechdata.sampling.buckets import assign_buckets_2d
    from speechdata.sampling.plan import plan_epoch
    from speechdata.sampling.tokens import Measures, TokenCounts
    from speechdata.text.dialog import make_prompt_builder
    from speechdata.text.tokenizer import load_tokenizer

    corpus = make_corpus(tmp_path / "c", n=60, seed=5, max_duration=8.0)
    corpus.train_tokenizer(vocab_size=90, out_dir=tmp_path / "tok")
    tok_path = tmp_path / "tok" / "tokenizer.model"
    out = tmp_path / "s.json"
    config = tmp_path / "c.yaml"
    config.write_text('train_ds:\n  audio_locator: "|audio|"\n  manifest_filepath: ignored.jsonl\n')
    args = [
        "inspect",
        str(corpus.manifest),
        "--tokenizer",
        str(tok_path),
        "--num-buckets",
        "3",
        "--config",
        str(config),
    ]
    code, text, err = run(
        [*args, "--num-subbuckets", "2", "--batch-tokens", "400", "--json", str(out)], capsys
    )
    assert code == 0 and err == ""
    assert "suggested 2D bucket_duration_bins ([seconds, output tokens]; " in text
    assert "padding of one epoch planned at batch_tokens 400 (audio seconds / tokens):" in text
    stats = json.loads(out.read_text())
    assert stats["text_unit"] == "tokens" and stats["bins_2d_first"] == "seconds"
    bins = np.asarray(stats["suggested_bins_2d"])
    assert 3 <= len(bins) <= 6 and [tuple(b) for b in bins] == sorted(tuple(b) for b in bins)

    index = load_index(str(corpus.manifest))
    cfg = make_dataset_config({"audio_locator": "|audio|"})
    builder = make_prompt_builder(cfg, load_tokenizer(tok_path))
    prompts = [builder.build_record(index.record(i)) for i in range(len(index))]
    text_tokens = np.array([len(p.input_ids) for p in prompts])
    output = np.array([len(p.input_ids) - p.answer_start for p in prompts])
    assert stats["text_hist"]["counts"] == np.histogram(text_tokens, bins=20)[0].tolist()
    assigned, _ = assign_buckets_2d(index.duration, output, bins, strict=True)
    assert (assigned >= 0).all()

    m = Measures.of(index.duration, TokenCounts(text_tokens, output), cfg)
    plan_cfg = make_dataset_config(
        {"batch_tokens": 400, "bucket_duration_bins": bins.tolist(), "drop_last": False}
    )
    plan = plan_epoch(index, np.ones(len(index), bool), plan_cfg, epoch=0, measures=m)
    useful = slots = 0.0
    for batch in plan:  # the padding definition, batch by batch
        useful += float(text_tokens[batch].sum())
        slots += batch.size * float(text_tokens[batch].max())
    assert stats["padding"]["2d"]["tokens"] == pytest.approx(1 - useful / slots, abs=1e-4)
    assert set(stats["padding"]) == {"1d", "2d"} and all(
        0 <= v < 1 for p in stats["padding"].values() for v in p.values()
    )

    code, _, err = run(["inspect", str(corpus.manifest), "--token-equivalent-duration", "0.08"], capsys)
    assert (
        code == 1 and err == "speechdata: error: --config and --token-equivalent-duration need --tokenizer\n"
    )
