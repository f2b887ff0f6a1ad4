"""The corpus of benchmarks/learning_check_speech.py: espeak-ng clips as conversations, a shuffled
control, text-only conversations, held-out sentences never seen in training, a ChatML tokenizer."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learning_check_speech.py"
_spec = importlib.util.spec_from_file_location("learning_check_speech", SCRIPT)
assert _spec is not None and _spec.loader is not None
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def _lines(path: str) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_corpus_is_conversations_with_a_control_text_only_data_and_unseen_held_out_sentences(
    tmp_path: Path,
) -> None:
    # clips of at most 0.4 s hold one or two short words, so many held-out sentences were seen
    data = check.build_corpus(
        tmp_path, 24, 16, seed=5, n_text=6, min_duration=0.1, max_duration=0.4, vocab_size=400
    )
    train, shuffled, text, val = (_lines(data[k]) for k in ("train", "shuffled", "text", "val"))
    assert len(train) == len(shuffled) == data["train_examples"] == 24
    assert len(text) == data["text_examples"] == 6

    answers = []
    for line, control in zip(train, shuffled, strict=True):
        roles = [(t["from"], t["type"]) for t in line["conversations"]]
        assert roles == [("User", "text"), ("User", "audio"), ("Assistant", "text")]
        audio = line["conversations"][1]
        assert (Path(data["train"]).parent / audio["value"]).is_file() and audio["duration"] > 0
        assert control["conversations"][:2] == line["conversations"][:2]  # same instruction and audio
        answers.append(line["conversations"][2]["value"])
    control_answers = [c["conversations"][2]["value"] for c in shuffled]
    assert Counter(control_answers) == Counter(answers) and control_answers != answers

    for line in text:
        turns = line["conversations"]
        assert all("type" not in t or t["type"] == "text" for t in turns)
        assert turns[0]["value"] == check.REPEAT.format(turns[1]["value"])

    seen = set(answers) | {t["conversations"][1]["value"] for t in text}
    held_out = [v["conversations"][2]["value"] for v in val]
    assert held_out and not seen & set(held_out)
    assert data["val_dropped_as_seen"] > 0
    assert len(val) + data["val_dropped_as_seen"] == data["val_synthesised"] == 16

    config = json.loads((Path(data["tokenizer"]) / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(data["tokenizer"]) / "tokenizer.json"))
    for special in ("<|im_start|>", "<|im_end|>", check.LOCATOR):
        assert len(tok.encode(special).ids) == 1, special
