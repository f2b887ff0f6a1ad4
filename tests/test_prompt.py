"""Tests of speechdata.text.prompt: the documented template, special tokens, truncation, locators, loss mask.

The properties of natural tokenization over random texts and templates are in tests/test_natural_tokens.py."""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import pytest
import sentencepiece as spm

from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, DataError
from speechdata.text import Prompt, PromptBuilder, Tokenizer, train_tokenizer

LOC = "|audio|"
QA = "Q: {context}\nA: {answer}"
VOCAB = ["the", "a", "of", "speech", "audio", "what", "is", "said", "speaker", "who", "says", "hello"]
VOCAB += ["world", "yes", "no", "answer", "question"]


@pytest.fixture(scope="session")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    rng = np.random.default_rng(7)
    sentences = [" ".join(rng.choice(VOCAB, size=rng.integers(3, 14))) for _ in range(400)]
    sentences += ["Q: what is said\nA: hello world"] * 5
    out = tmp_path_factory.mktemp("prompt_tok")
    return train_tokenizer(sentences, out, vocab_size=400, user_symbols=[LOC, "<eot>"], seed=3)


def builder(tok: Tokenizer, **cfg: Any) -> PromptBuilder:
    return PromptBuilder(make_dataset_config(cfg), tok)


def check_consistent(p: Prompt) -> None:
    """Invariants of every Prompt, whatever the config."""
    n = len(p.input_ids)
    assert p.context_ids == p.input_ids[: p.answer_start]
    assert p.answer_ids == p.input_ids[p.answer_start :]
    assert len(p.loss_mask) == n
    assert all(0 <= pos <= p.answer_start for pos in p.audio_positions)
    assert p.audio_positions == sorted(p.audio_positions)


# --------------------------------------------------------------------------- the case table

# Each case: config, context, answer, number of audios, then what the result must decode to:
# the context part (``context_ids``), the answer part, and the text before each audio.
CASES: list[dict[str, Any]] = [
    dict(id="defaults", cfg={}, ctx="what is said", ans="hello", ctx_text="what is said", ans_text=" hello"),
    dict(
        id="newline_separator",
        cfg=dict(separate_prompt_and_response_with_newline=True),
        ctx="what is said",
        ans="hello",
        ctx_text="what is said",
        ans_text="\nhello",
    ),
    dict(id="template", cfg=dict(prompt_template=QA), ctx="who says", ans="yes", ctx_text="Q: who says\nA:"),
    dict(
        id="legacy_slots",
        cfg=dict(prompt_template="Q: {input}\\nA: {output}"),
        ctx="who says",
        ans="yes",
        ctx_text="Q: who says\nA:",
    ),
    dict(
        id="custom_keys",
        cfg=dict(prompt_template="[{question}] {text}", context_key="question", answer_key="text"),
        ctx="who",
        ans="yes",
        ctx_text="[who]",
    ),
    dict(
        id="trailing_spaces_move_to_answer",
        cfg=dict(prompt_template="{context} {answer}"),
        ctx="who says  ",
        ans="yes",
        ctx_text="who says",
        ans_text="   yes",
    ),
    dict(
        id="template_without_context_slot",
        cfg=dict(prompt_template="Transcribe: {answer}"),
        ctx=None,
        ans="hello",
        ctx_text="Transcribe:",
    ),
    dict(
        id="default_context",
        cfg=dict(prompt_template=QA, default_context="what is said"),
        ctx=None,
        ans="yes",
        ctx_text="Q: what is said\nA:",
    ),
    dict(
        id="no_template_no_context", cfg={}, ctx=None, ans="hello world", ctx_text="", ans_text="hello world"
    ),
    dict(
        id="literal_braces",
        cfg=dict(prompt_template="{{json}} {context}: {answer}"),
        ctx="who",
        ans="yes",
        ctx_text="{json} who:",
    ),
    dict(
        id="content_is_not_a_template",
        cfg=dict(prompt_template=QA),
        ctx="say {answer}",
        ans="{context}",
        ctx_text="Q: say {answer}\nA:",
    ),
    dict(id="bos", cfg=dict(prompt_template=QA, add_bos=True), ctx="who", ans="yes", ctx_text="Q: who\nA:"),
    dict(
        id="sep", cfg=dict(prompt_template=QA, add_sep=True), ctx="who", ans="yes", ctx_text="Q: who\nA:<sep>"
    ),
    dict(
        id="no_eos", cfg=dict(prompt_template=QA, add_eos=False), ctx="who", ans="yes", ctx_text="Q: who\nA:"
    ),
    dict(
        id="bos_sep_eos",
        cfg=dict(prompt_template=QA, add_bos=True, add_sep=True, add_eos=True),
        ctx="who",
        ans="yes",
        ctx_text="Q: who\nA:<sep>",
    ),
    dict(
        id="end_string_single_piece",
        cfg=dict(prompt_template=QA, end_string="<eot>"),
        ctx="who",
        ans="yes",
        ctx_text="Q: who\nA:",
        ans_text=" yes<eot>",
    ),
    dict(
        id="end_string_multi_token_with_all_specials",
        cfg=dict(prompt_template=QA, end_string=" END.", add_bos=True, add_sep=True),
        ctx="who",
        ans="yes",
        ctx_text="Q: who\nA:<sep>",
        ans_text=" yes END.",
    ),
    dict(
        id="locator_start",
        cfg=dict(prompt_template=QA, audio_locator=LOC),
        ctx=LOC + " what is said",
        ans="hello",
        ctx_text="Q:  what is said\nA:",
        before=["Q: "],
    ),
    dict(
        id="locator_middle",
        cfg=dict(prompt_template=QA, audio_locator=LOC),
        ctx="what is" + LOC + "said",
        ans="hello",
        ctx_text="Q: what issaid\nA:",
        before=["Q: what is"],
    ),
    dict(
        id="locator_end",
        cfg=dict(prompt_template=QA, audio_locator=LOC),
        ctx="what is said " + LOC,
        ans="hello",
        ctx_text="Q: what is said \nA:",
        before=["Q: what is said "],
    ),
    dict(
        id="two_locators_with_bos",
        cfg=dict(prompt_template=QA, audio_locator=LOC, add_bos=True),
        ctx=LOC + " then " + LOC + " who",
        ans="hello",
        audios=2,
        ctx_text="Q:  then  who\nA:",
        before=["Q: ", "Q:  then "],
    ),
    dict(
        id="adjacent_locators",
        cfg=dict(audio_locator=LOC, add_bos=True),
        ctx="a" + LOC + LOC + "b",
        ans="yes",
        audios=2,
        ctx_text="ab",
        before=["a", "a"],
    ),
    dict(
        id="locator_in_template",
        cfg=dict(prompt_template="Audio: |audio| {context}\nA: {answer}", audio_locator=LOC),
        ctx="who",
        ans="yes",
        ctx_text="Audio:  who\nA:",
        before=["Audio: "],
    ),
    dict(
        id="text_only_example",
        cfg=dict(prompt_template=QA),
        ctx="who",
        ans="yes",
        audios=0,
        ctx_text="Q: who\nA:",
        before=[],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case_table(tok: Tokenizer, case: dict[str, Any]) -> None:
    cfg = case["cfg"]
    b = builder(tok, **cfg)
    audios = case.get("audios", 1)
    p = b.build(case["ctx"], case["ans"], audios, where="m.jsonl:1")
    check_consistent(p)
    ans_text = case.get("ans_text", " " + case["ans"])
    assert tok.decode(p.context_ids) == case["ctx_text"]
    assert tok.decode(p.input_ids) == case["ctx_text"] + ans_text
    ids = p.input_ids
    assert (ids[0] == tok.bos_id) == cfg.get("add_bos", False)
    assert (ids[-1] == tok.eos_id) == cfg.get("add_eos", True)
    assert tok.bos_id not in ids[1:]
    assert tok.eos_id not in ids[:-1]
    if cfg.get("add_sep"):
        assert ids[p.answer_start - 1] == tok.sep_id
        assert ids.count(tok.sep_id) == 1
    else:
        assert tok.sep_id not in ids
    # answer_only_loss (the default): exactly the answer part, end_string and EOS included.
    assert p.loss_mask == [0] * p.answer_start + [1] * (len(ids) - p.answer_start)
    if "before" in case:
        assert len(p.audio_positions) == len(case["before"])
        for pos, text in zip(p.audio_positions, case["before"], strict=True):
            assert tok.decode(ids[:pos]) == text
            assert pos >= int(cfg.get("add_bos", False))
    else:
        assert p.audio_positions == [0]
    assert p.truncated == 0


def test_bos_position_of_first_audio(tok: Tokenizer) -> None:
    p = builder(tok, audio_locator=LOC, add_bos=True).build(LOC + "who", "yes", 1)
    assert p.audio_positions == [1]
    p = builder(tok, add_bos=True).build("who", "yes", 1)
    assert p.audio_positions == [0]


def test_loss_on_every_token(tok: Tokenizer) -> None:
    p = builder(tok, prompt_template=QA, answer_only_loss=False, add_bos=True).build("who", "yes", 1)
    assert p.loss_mask == [0] + [1] * (len(p.input_ids) - 1)


# ------------------------------------------------------------------------------ truncation


def test_truncates_context_only(tok: Tokenizer) -> None:
    ctx = "what is said by the speaker of the audio"
    full = builder(tok, prompt_template=QA, add_bos=True).build(ctx, "yes", 1)
    limit = len(full.input_ids) - 3
    p = builder(tok, prompt_template=QA, add_bos=True, max_seq_length=limit).build(ctx, "yes", 1)
    assert len(p.input_ids) == limit
    assert p.truncated == 3
    assert p.answer_ids == full.answer_ids
    text = tok.decode(p.context_ids)
    assert text.startswith("Q: ") and text.endswith("\nA:")
    assert ctx.startswith(text[3:-3])
    assert len(text) < len(tok.decode(full.context_ids))


def test_truncates_answer_only(tok: Tokenizer) -> None:
    ans = "hello world the speaker says yes"
    cfg = dict(prompt_template=QA, end_string="<eot>", truncation_field="answer")
    full = builder(tok, **cfg).build("who", ans, 1)
    limit = len(full.input_ids) - 4
    p = builder(tok, max_seq_length=limit, **cfg).build("who", ans, 1)
    assert len(p.input_ids) == limit
    assert p.context_ids == full.context_ids
    assert p.input_ids[-2:] == [tok.piece_to_id("<eot>"), tok.eos_id]
    kept = tok.decode(p.input_ids)[len("Q: who\nA:") :]
    assert kept.endswith("<eot>")
    assert (" " + ans).startswith(kept[: -len("<eot>")])


def test_truncation_keeps_locators_and_clamps_positions(tok: Tokenizer) -> None:
    ctx = "what" + LOC + "is said by the speaker"
    cfg = dict(prompt_template=QA, audio_locator=LOC, add_bos=True)
    full = builder(tok, **cfg).build(ctx, "yes", 1)
    after = full.input_ids.index(tok.encode("\nA:", continuation=True)[0], full.audio_positions[0])
    cut = after - full.audio_positions[0] + 1  # everything after the locator, and one token before it
    p = builder(tok, max_seq_length=len(full.input_ids) - cut, **cfg).build(ctx, "yes", 1)
    assert p.truncated == cut
    assert p.audio_positions == [full.audio_positions[0] - 1]
    assert tok.decode(p.context_ids).endswith("\nA:")


@pytest.mark.parametrize("field", ["context", "answer"])
def test_field_too_short_is_dropped(tok: Tokenizer, field: str) -> None:
    ctx, ans = "who says", "hello yes"
    cfg = dict(
        prompt_template="A long fixed instruction text: {context}\nA: {answer}", truncation_field=field
    )
    full = builder(tok, **cfg).build(ctx, ans, 1)
    # the field's tokens are those that end inside it (docs/differences-from-nemo.md)
    text = f"A long fixed instruction text: {ctx}\nA: {ans}"
    start = text.index(ctx) if field == "context" else text.rindex(ans)
    end = start + len(ctx if field == "context" else ans)
    ends = tok.encode_with_offsets(text)[1]
    field_tokens = sum(start < e <= end for e in ends)
    assert field_tokens > 0
    ok = builder(tok, max_seq_length=len(full.input_ids) - field_tokens, **cfg).build(ctx, ans, 1)
    assert ok.truncated == field_tokens
    with pytest.raises(DataError, match="max_seq_length") as err:
        builder(tok, max_seq_length=len(full.input_ids) - field_tokens - 1, **cfg).build(
            ctx, ans, 1, "m.jsonl:7"
        )
    assert err.value.reason == "too_long_text"
    assert str(err.value).startswith("m.jsonl:7: ")
    assert f"has only {field_tokens} tokens to remove" in str(err.value)


def test_truncation_keeps_characters_whole(tok: Tokenizer) -> None:
    # "ж" is not in the model: two byte pieces each; cutting one token would leave half of one
    cfg = dict(prompt_template=QA, truncation_field="answer")
    full = builder(tok, **cfg).build("who", "yes жжж", 1)
    assert [tok.id_to_piece(i) for i in full.input_ids[-3:-1]] == ["<0xD0>", "<0xB6>"]
    p = builder(tok, max_seq_length=len(full.input_ids) - 1, **cfg).build("who", "yes жжж", 1)
    assert p.truncated == 2
    assert p.input_ids == full.input_ids[:-3] + full.input_ids[-1:]
    assert tok.decode(p.input_ids) == "Q: who\nA: yes жж"


def test_min_seq_length(tok: Tokenizer) -> None:
    n = len(builder(tok).build("who", "yes", 1).input_ids)
    assert len(builder(tok, min_seq_length=n).build("who", "yes", 1).input_ids) == n
    with pytest.raises(DataError) as err:
        builder(tok, min_seq_length=n + 1).build("who", "yes", 1, "m.jsonl:2")
    assert err.value.reason == "too_short_text"
    assert "min_seq_length" in str(err.value)


# -------------------------------------------------------------------------------- errors


def test_data_errors(tok: Tokenizer) -> None:
    b = builder(tok, prompt_template=QA, audio_locator=LOC)
    with pytest.raises(
        DataError, match=r"m\.jsonl:3: context has 1 audio locator\(s\) .* 2 audio\(s\)"
    ) as err:
        b.build("a" + LOC + "b", "yes", 2, "m.jsonl:3")
    assert err.value.reason == "bad_line"
    with pytest.raises(DataError, match=r"0 audio locator.* 2 audio"):
        b.build("no locator here", "yes", 2, "m.jsonl:4")  # several audios need locators
    with pytest.raises(DataError, match=r"1 audio locator.* 0 audio"):
        b.build("a" + LOC, "yes", 0, "m.jsonl:4")
    with pytest.raises(DataError, match="no context") as err:
        b.build(None, "yes", 0, "m.jsonl:5")
    assert err.value.reason == "bad_line"
    with pytest.raises(DataError, match="no audio_locator") as err:
        builder(tok).build("who", "yes", 2, "m.jsonl:6")
    assert err.value.reason == "bad_line"


def test_single_audio_without_locator_goes_first(tok: Tokenizer) -> None:
    # with audio_locator set, as without it (and as in NeMo): position 0, before BOS
    b = builder(tok, prompt_template=QA, audio_locator=LOC, add_bos=True)
    p = b.build("no locator here", "yes", 1, "m.jsonl:4")
    assert p.audio_positions == [0]
    assert p == builder(tok, prompt_template=QA, add_bos=True).build("no locator here", "yes", 1)
    assert b.build("no locator here", "yes", 0).audio_positions == []


def test_the_whole_text_is_encoded_at_once(tok: Tokenizer) -> None:
    p = builder(tok, prompt_template=QA, add_bos=True, end_string="<eot>").build("who says", "hello world", 1)
    assert p.input_ids == [tok.bos_id, *tok.encode("Q: who says\nA: hello world<eot>"), tok.eos_id]
    # cut only at the locator: the text after it continues the sequence
    p = builder(tok, prompt_template=QA, audio_locator=LOC).build("who" + LOC + " says", "yes", 1)
    assert p.input_ids == [*tok.encode("Q: who"), *tok.encode(" says\nA: yes", continuation=True), tok.eos_id]
    assert p.audio_positions == [len(tok.encode("Q: who"))]


@pytest.fixture(scope="module")
def bare_tok() -> Tokenizer:
    """A model with no BOS and no <sep> piece."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(VOCAB * 10),
        model_writer=buf,
        vocab_size=60,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
        bos_id=-1,
    )
    return Tokenizer(buf.getvalue(), "bare.model")


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (dict(prompt_template="{answer} after {context}"), "must end the template"),
        (dict(prompt_template="Q: {context} A: {answer}\n"), "must end the template"),
        (dict(prompt_template="Q: {context}"), "no answer slot"),
        (dict(prompt_template="Q: {question} A: {answer}"), r"unknown slot \{question\}"),
        (dict(prompt_template="{context} {context} {answer}"), "only once"),
        (dict(prompt_template="{context!r} {answer}"), "format spec"),
        (dict(prompt_template="{context} {answer"), "prompt_template"),
        (dict(min_seq_length=10, max_seq_length=5), "min_seq_length"),
    ],
)
def test_config_errors(tok: Tokenizer, cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        builder(tok, **cfg)


@pytest.mark.parametrize(("key", "name"), [("add_bos", "BOS"), ("add_sep", "<sep>")])
def test_missing_special_token_is_config_error(bare_tok: Tokenizer, key: str, name: str) -> None:
    with pytest.raises(ConfigError, match=f"{key} is true but the tokenizer has no {name} token"):
        builder(bare_tok, **{key: True})
    p = builder(bare_tok).build("what", "yes", 1)
    assert None not in p.input_ids


def test_builder_pickles(tok: Tokenizer) -> None:
    b = builder(tok, prompt_template=QA, audio_locator=LOC, add_bos=True)
    c = pickle.loads(pickle.dumps(b))
    assert c.build("a" + LOC, "b", 1) == b.build("a" + LOC, "b", 1)
