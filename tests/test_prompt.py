"""Tests of speechdata.text.prompt: the documented template, special tokens, truncation, locators, loss mask."""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given
from hypothesis import strategies as st

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
    ctx, ans = "who", "yes"
    cfg = dict(
        prompt_template="A long fixed instruction text: {context}\nA: {answer}", truncation_field=field
    )
    full = builder(tok, **cfg).build(ctx, ans, 1)
    field_tokens = len(tok.encode(ctx if field == "context" else ans, continuation=True))
    ok = builder(tok, max_seq_length=len(full.input_ids) - field_tokens, **cfg).build(ctx, ans, 1)
    assert ok.truncated == field_tokens
    with pytest.raises(DataError, match="max_seq_length") as err:
        builder(tok, max_seq_length=len(full.input_ids) - field_tokens - 1, **cfg).build(
            ctx, ans, 1, "m.jsonl:7"
        )
    assert err.value.reason == "too_long_text"
    assert str(err.value).startswith("m.jsonl:7: ")


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
    with pytest.raises(DataError, match="0 audio locator"):
        b.build("no locator here", "yes", 1, "m.jsonl:4")
    with pytest.raises(DataError, match="no context") as err:
        b.build(None, "yes", 0, "m.jsonl:5")
    assert err.value.reason == "bad_line"
    with pytest.raises(DataError, match="no audio_locator") as err:
        builder(tok).build("who", "yes", 2, "m.jsonl:6")
    assert err.value.reason == "bad_line"


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


# ------------------------------------------------------------------------------ properties

# Templates whose context part keeps text after the context slot, and whose answer text is never
# the first piece: (template or None for the newline separator, text before the context slot, text
# after it in the context part, text before the answer in the answer part).
TEMPLATES = [
    (QA, "Q: ", "\nA:", " "),
    ("Context: {context} Answer: {answer}", "Context: ", " Answer:", " "),
    (None, "", "", "\n"),
]

_chunk = st.text(alphabet=st.sampled_from(list("whatisd yeo\né東,")), max_size=25)


@st.composite
def examples(draw: st.DrawFn) -> dict[str, Any]:
    template, pre, mid, sep_text = draw(st.sampled_from(TEMPLATES))
    use_locator = draw(st.booleans())
    chunks = draw(st.lists(_chunk, min_size=1, max_size=4 if use_locator else 1))
    cfg: dict[str, Any] = dict(
        prompt_template=template,
        separate_prompt_and_response_with_newline=True,
        add_bos=draw(st.booleans()),
        add_sep=draw(st.booleans()),
        add_eos=draw(st.booleans()),
        end_string=draw(st.sampled_from([None, "<eot>", " END"])),
        truncation_field=draw(st.sampled_from(["context", "answer"])),
        answer_only_loss=draw(st.booleans()),
        audio_locator=LOC if use_locator else None,
    )
    return dict(
        cfg=cfg,
        pre=pre,
        mid=mid,
        sep_text=sep_text,
        chunks=chunks,
        context=LOC.join(chunks),
        answer=draw(_chunk),
        audios=len(chunks) - 1 if use_locator else 1,
        limit=draw(st.integers(4, 70)),
    )


@given(ex=examples())
def test_properties(tok: Tokenizer, ex: dict[str, Any]) -> None:
    cfg = ex["cfg"]
    full = builder(tok, max_seq_length=100_000, **cfg).build(ex["context"], ex["answer"], ex["audios"])
    check_consistent(full)
    specials_after = len(tok.encode(cfg["end_string"], continuation=True)) if cfg["end_string"] else 0
    specials_after += int(cfg["add_eos"])
    bos, sep = int(cfg["add_bos"]), int(cfg["add_sep"])

    # The context part is exactly the template text up to the answer, with the context filled in.
    context_text = ex["pre"] + "".join(ex["chunks"]) + ex["mid"] + ("<sep>" if sep else "")
    assert tok.decode(full.context_ids) == context_text
    answer_text = ex["sep_text"] + ex["answer"] + (cfg["end_string"] or "")
    assert tok.decode(full.input_ids) == context_text + answer_text
    # Audios sit on the boundaries between context chunks.
    assert len(full.audio_positions) == ex["audios"]
    if cfg["audio_locator"]:
        for k, pos in enumerate(full.audio_positions):
            assert tok.decode(full.input_ids[:pos]) == ex["pre"] + "".join(ex["chunks"][: k + 1])
            assert pos >= bos
            if ex["chunks"][k + 1]:
                assert k + 1 == len(full.audio_positions) or pos < full.audio_positions[k + 1]
    # The loss mask covers exactly the answer region (or every predicted token).
    n = len(full.input_ids)
    if cfg["answer_only_loss"]:
        assert full.loss_mask == [0] * full.answer_start + [1] * (n - full.answer_start)
    else:
        assert full.loss_mask == [0] + [1] * (n - 1)

    # Where the truncation field's content ends in the full sequence, and how long it is.
    if cfg["truncation_field"] == "answer":
        end = n - specials_after
        content = len(tok.encode(ex["answer"], continuation=True))
    else:
        end = full.answer_start - sep - len(tok.encode(ex["mid"], continuation=True))
        content = end - bos - len(tok.encode(ex["pre"])) if ex["pre"] else end - bos
    limit = ex["limit"]
    try:
        p = builder(tok, max_seq_length=limit, **cfg).build(ex["context"], ex["answer"], ex["audios"])
    except DataError as e:
        assert e.reason == "too_long_text"
        assert n - limit > content
        return
    check_consistent(p)
    assert len(p.input_ids) <= limit
    t = max(0, n - limit)
    assert p.truncated == t  # no more than needed
    assert t <= content
    # Template text and special tokens survive; the kept content is a token prefix of the content.
    assert p.input_ids == full.input_ids[: end - t] + full.input_ids[end:]
    assert p.audio_positions == [min(pos, end - t) if pos <= end else pos - t for pos in full.audio_positions]
    assert p.answer_start == (full.answer_start if full.answer_start <= end - t else full.answer_start - t)
    assert sum(p.loss_mask) == (len(p.answer_ids) if cfg["answer_only_loss"] else len(p.input_ids) - 1)
