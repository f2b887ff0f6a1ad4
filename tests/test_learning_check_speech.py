"""The corpus of benchmarks/learning_check_speech.py: espeak-ng clips as conversations, a shuffled
control, text-only conversations, held-out sentences never seen in training, a ChatML tokenizer;
and the auxiliary CTC loss of SALM its config uses (``modality_adapter.ctc_weight``)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_scripts import load_benchmark

check = load_benchmark("learning_check_speech")

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def _lines(path: str) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


@needs_espeak
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


def test_ctc_targets_are_the_answers_of_single_audio_examples_without_eos_and_padding() -> None:
    from speechdata.train.models.salm import ctc_targets

    pad, eos = 0, 2
    batch = {
        "num_audios": torch.tensor([1, 0, 2, 1]),  # example 1 text-only, example 2 two audios
        "answers": torch.tensor([[5, 6, eos, 9], [7, eos, pad, pad], [8, 8, eos, pad], [9, 5, 5, eos]]),
        "answer_lengths": torch.tensor([3, 2, 3, 4]),  # example 0: the 9 after its EOS is not its own
    }
    rows, targets, lengths = ctc_targets(batch, eos, pad)
    assert rows.tolist() == [0, 3]  # audio rows: example 0's first, example 3's is row 3 (1 + 0 + 2)
    assert lengths.tolist() == [2, 3]
    assert targets.tolist() == [[5, 6, pad, pad], [9, 5, 5, pad]]


def _salm(ctc_weight: float) -> tuple[Any, Any]:
    from helpers_models import tiny_config

    from speechdata.train.models import build_model
    from speechdata.train.synthetic import SyntheticSpec

    spec = SyntheticSpec(vocab_size=24, num_classes=4, max_audios=2, min_seconds=0.2, max_seconds=0.4)
    torch.manual_seed(0)
    return build_model(tiny_config("salm", spec, llm_layers=1, ctc_weight=ctc_weight)), spec


def test_ctc_weight_adds_a_ctc_loss_in_training_only_and_zero_keeps_the_model_as_it_was() -> None:
    from speechdata.train.synthetic import synthetic_batch

    plain, spec = _salm(0.0)
    assert plain.ctc_head is None and not any("ctc" in k for k in plain.state_dict())
    model, _ = _salm(0.5)
    batch = synthetic_batch(spec, 6, seed=1)
    assert int((batch["num_audios"] == 1).sum()) > 0
    model.eval()
    lm_loss, count = model.loss(batch)  # validation: the LM's cross-entropy alone
    model.train()
    with_ctc, count2 = model.loss(batch)
    assert float(count2) == float(count)
    assert float(with_ctc.detach()) > float(lm_loss.detach()) + 0.1  # no dropout: the LM part is the same
    with_ctc.backward()
    assert model.ctc_head is not None and model.ctc_head.weight.grad is not None
    assert float(model.ctc_head.weight.grad.abs().sum()) > 0


def test_ctc_weight_is_checked() -> None:
    from speechdata.errors import ConfigError
    from speechdata.train.models import model_config

    ids = {"vocab_size": 30, "pad_id": 0, "eos_id": 1}
    cfg = model_config({"arch": "salm", "perception": {"modality_adapter": {"ctc_weight": 0.3}}}, **ids)
    assert cfg.adapter.ctc_weight == 0.3
    with pytest.raises(ConfigError, match="ctc_weight: only arch salm"):
        model_config({"arch": "bestow", "perception": {"modality_adapter": {"ctc_weight": 0.3}}}, **ids)
    with pytest.raises(ConfigError, match="ctc_weight: must be >= 0"):
        model_config({"arch": "salm", "perception": {"modality_adapter": {"ctc_weight": -1}}}, **ids)
