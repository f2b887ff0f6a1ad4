"""Conversations: NeMo multimodal conversation and ShareGPT lines, named prompt formats, chat
templates, loss on assistant turns (docs/conversations.md).

The named formats are checked against a reference writer written here from NeMo's templates
(plain f-strings), tokenized the natural way: the whole text encoded, cut only at the audios.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, SpeechDataError
from speechdata.lines import Record, parse_line
from speechdata.manifest import ManifestKeys
from speechdata.testing import make_corpus
from speechdata.text.dialog import ConversationBuilder
from speechdata.text.hf import train_hf_tokenizer
from speechdata.text.prompt import PromptBuilder
from speechdata.text.tokenizer import train_tokenizer

torch.set_num_threads(1)

LOC = "<|audio|>"
SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
    LOC,
]
WORDS = ["hello", "world", "transcribe", "the", "audio", "speech", "café", "don't", "42", "yes", "no"]
SENTENCES = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(i % 6 + 2)) for i in range(300)]

# ---------------------------------------------------------------------------- reference writer

HEADER = "<|start_header_id|>{}<|end_header_id|>\n\n"
#: role -> (text before the message, text after it), as NeMo's formatters write them
REFERENCE: dict[str, dict[str, tuple[str, str]]] = {
    "qwen": {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ("system", "user", "assistant")},
    "llama3": {r: (HEADER.format(r), "<|eot_id|>") for r in ("system", "user", "assistant")},
    "gemma": {
        "user": ("<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n"),
        "assistant": ("", "<end_of_turn>\n"),
    },
    "plain": {"user": ("", ""), "assistant": ("", "")},
}
PREAMBLE = {"llama3": "<|begin_of_text|>"}


def reference(
    fmt: str, messages: list[tuple[str, tuple[str | int, ...]]]
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as text (each audio as LOC) and the character span of each assistant turn."""
    roles = REFERENCE[fmt]
    text = PREAMBLE.get(fmt, "")
    spans = []
    system = ""
    for role, parts in messages:
        content = "".join(p if isinstance(p, str) else LOC for p in parts)
        if role == "system" and role not in roles:
            system = content + "\n\n"
            continue
        if role == "user":
            content, system = system + content, ""
        before, after = roles[role]
        start = len(text)
        text += before + content + after
        if role == "assistant":
            spans.append((start, len(text)))
    return text, spans


def expected_tokens(
    tok: Any, text: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[int], list[int]]:
    """(ids, audio positions, targets) of ``text``: its pieces between the audios encoded as the
    tokenizer encodes them; a token is a target when its last character lies in a span."""
    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    base = 0
    for k, piece in enumerate(text.split(LOC)):
        if k:
            positions.append(len(ids))
        if piece:
            got, ends = tok.encode_with_offsets(piece, continuation=k > 0)
            ids += got
            for end in ends:
                last = base + end - 1
                targets.append(int(any(a <= last < b for a, b in spans)))
        base += len(piece) + len(LOC)
    return ids, positions, targets


# ---------------------------------------------------------------------------- tokenizers


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tok")
    return {
        "hf": train_hf_tokenizer(SENTENCES, root / "hf", 400, SPECIALS),
        "spm": train_tokenizer(SENTENCES, root / "spm", 320, SPECIALS, model_type="bpe"),
    }


def builder(tok: Any, **cfg: Any) -> ConversationBuilder:
    base = {"manifest_filepath": "x.jsonl", "max_seq_length": 100000, "min_seq_length": 0}
    return ConversationBuilder(make_dataset_config({**base, **cfg}), tok)


def record(messages: list[tuple[str, tuple[str | int, ...]]], audios: int) -> Record:
    return Record(
        [f"a{k}.wav" for k in range(audios)],
        [0.0] * audios,
        [1.0] * audios,
        None,
        "",
        {},
        "m.jsonl:1",
        0,
        messages=messages,
    )


_text = st.lists(st.one_of(st.sampled_from(WORDS), st.sampled_from([" ", "\n", ", ", "  "])), max_size=5).map(
    "".join
)


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[tuple[str, tuple[str | int, ...]]], int]:
    audios = 0
    messages: list[tuple[str, tuple[str | int, ...]]] = []
    if draw(st.booleans()):
        messages.append(("system", (draw(_text),)))
    for _ in range(draw(st.integers(1, 3))):
        parts: list[str | int] = []
        for _ in range(draw(st.integers(1, 4))):
            if draw(st.booleans()):
                parts.append(audios)
                audios += 1
            else:
                piece = draw(_text)
                if parts and isinstance(parts[-1], str):
                    parts[-1] += piece
                else:
                    parts.append(piece)
        messages.append(("user", tuple(parts)))
        messages.append(("assistant", (draw(_text),)))
    return messages, audios


@settings(max_examples=60, deadline=None)
@given(
    data=conversations(),
    fmt=st.sampled_from(["qwen", "llama3", "gemma", "plain"]),
    kind=st.sampled_from(["hf", "spm"]),
    last=st.booleans(),
)
def test_named_formats_are_natural_and_learn_assistant_turns(
    tokenizers, data, fmt: str, kind: str, last: bool
) -> None:
    messages, audios = data
    tok = tokenizers[kind]
    text, spans = reference(fmt, messages)
    ids, positions, targets = expected_tokens(tok, text, spans[-1:] if last else spans)
    p = builder(tok, prompt_format=fmt, loss_turns="last" if last else "all").build_record(
        record(messages, audios)
    )
    assert p.input_ids == ids
    assert p.audio_positions == positions
    assert p.loss_mask == targets
    # the answer part is the last assistant message's content and what follows it, with at most
    # the spaces before it that share its first token (a token belongs where its last character is)
    want = (
        text[text.rindex(messages[-1][1][0] + REFERENCE[fmt]["assistant"][1]) :]
        if messages[-1][1][0]
        else None
    )
    if want is not None and kind == "hf":
        got = tok.decode(p.answer_ids)
        assert got.endswith(want) and not got[: len(got) - len(want)].strip(" ")


def test_llama2_ids_and_system_prompt(tokenizers) -> None:
    tok = tokenizers["spm"]
    messages = [("user", ("hello",)), ("assistant", ("world",)), ("user", ("yes",)), ("assistant", ("no",))]
    p = builder(tok, prompt_format="llama2", system_prompt="the speech").build_record(record(messages, 0))
    first = tok.encode("[INST] <<SYS>>\nthe speech\n<</SYS>>\n\nhello [/INST]world ")
    second = tok.encode("[INST] yes [/INST]no ")
    assert p.input_ids == [tok.bos_id, *first, tok.eos_id, tok.bos_id, *second, tok.eos_id]
    # loss: each answer with its space and EOS (NeMo's assistant template "|message| </s>")
    mask = p.loss_mask
    answer = tok.encode_with_offsets("[INST] yes [/INST]no ")[1]
    cut = bisect_right(answer, len("[INST] yes [/INST]"))
    assert mask[-1] == 1 and mask[-(len(second) - cut) - 1] == 1 and mask[-(len(second) - cut) - 2] == 0
    assert (
        sum(mask)
        == (
            len(first)
            - bisect_right(
                tok.encode_with_offsets("[INST] <<SYS>>\nthe speech\n<</SYS>>\n\nhello [/INST]world ")[1],
                len("[INST] <<SYS>>\nthe speech\n<</SYS>>\n\nhello [/INST]"),
            )
        )
        + 1
        + (len(second) - cut)
        + 1
    )


def test_format_needs_its_special_tokens(tmp_path: Path) -> None:
    plain_tok = train_tokenizer(SENTENCES, tmp_path / "plain", 300, model_type="bpe")
    with pytest.raises(ConfigError, match=r"prompt_format qwen: the tokenizer has no token '<\|im_start\|>'"):
        builder(plain_tok, prompt_format="qwen")
    with pytest.raises(
        ConfigError, match="chat_template needs a Hugging Face tokenizer with a chat template"
    ):
        builder(plain_tok, prompt_format="chat_template")
    with pytest.raises(ConfigError, match=r"prompt_format .* or prompt_template .*, not both"):
        builder(plain_tok, prompt_format="plain", prompt_template="Q: {context}\nA: {answer}")
    builder(plain_tok, prompt_format="llama2")  # BOS/EOS ids only


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim"
    " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _chat_pair(tokenizers, folder: Path, template: str) -> tuple[Any, PreTrainedTokenizerFast]:
    """Our tokenizer with ``template`` as its chat template, and transformers' (the oracle)."""
    src = Path(tokenizers["hf"].source)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_bytes(src.read_bytes())
    specials = {"eos_token": "<|im_end|>", "pad_token": "<pad>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({**specials, "chat_template": template}))
    from speechdata.text.tokenizer import load_tokenizer

    oracle = PreTrainedTokenizerFast(tokenizer_file=str(src), chat_template=template, **specials)
    return load_tokenizer(folder), oracle


@pytest.fixture(scope="module")
def chat(tokenizers, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, PreTrainedTokenizerFast]:
    return _chat_pair(tokenizers, tmp_path_factory.mktemp("chat"), CHATML)


def _check_against_oracle(
    p: Any, tok: Any, oracle: PreTrainedTokenizerFast, messages: list, audios: int
) -> None:
    """``p`` (a built prompt) is the oracle's text, tokenized the natural way, with each assistant
    turn (what the template adds for it: render(messages[:k+1]) minus render(messages[:k])) a target."""
    rendered = [
        {"role": r, "content": "".join(x if isinstance(x, str) else LOC for x in parts)}
        for r, parts in messages
    ]
    text = oracle.apply_chat_template(rendered, tokenize=False)
    spans = []
    for k, m in enumerate(rendered):
        if m["role"] == "assistant":
            before = oracle.apply_chat_template(rendered[:k], tokenize=False) if k else ""
            spans.append((len(before), len(oracle.apply_chat_template(rendered[: k + 1], tokenize=False))))
    ids, positions, targets = expected_tokens(tok, text, spans)
    assert p.input_ids == ids
    assert p.audio_positions == positions
    assert p.loss_mask == targets
    if not audios:
        assert p.input_ids == oracle.apply_chat_template(rendered, tokenize=True, return_dict=False)


@settings(max_examples=30, deadline=None)
@given(data=conversations())
def test_chat_template_equals_transformers(chat, data) -> None:
    tok, oracle = chat
    messages, audios = data
    p = builder(tok, prompt_format="chat_template", audio_locator=LOC).build_record(record(messages, audios))
    _check_against_oracle(p, tok, oracle, messages, audios)


#: A template whose text depends on the contents (a flag in the header of a message that says
#: "stop"), which a probe conversation of stand-in contents cannot show.
FLAGGED = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] }}{% if 'stop' in message['content'] %}"
    "{{ ' [flag]' }}{% endif %}{{ '\\n' + message['content'] | trim + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize("template", [CHATML, FLAGGED], ids=["chatml", "content-dependent"])
def test_chat_template_renders_once_per_conversation_and_stays_exact(
    tokenizers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str
) -> None:
    """One builder, many conversations of the same roles: each is rendered once (its turns are
    located on a probe conversation of those roles), except one whose text the probe cannot
    predict (a content the template trims or tests), which is located render by render. Every
    prompt equals the oracle's either way."""
    from speechdata.text.chat import ChatTemplate

    tok, oracle = _chat_pair(tokenizers, tmp_path / "tok", template)
    renders = []
    real = ChatTemplate.render
    monkeypatch.setattr(
        ChatTemplate, "render", lambda self, *a, **k: renders.append(1) or real(self, *a, **k)
    )
    b = builder(tok, prompt_format="chat_template", audio_locator=LOC)
    plain = [
        [("user", (f"{w} please", 0)), ("assistant", (f"{w} {v}",)), ("user", (w,)), ("assistant", (v,))]
        for w, v in zip(WORDS[:6], WORDS[5:], strict=True)
    ]
    for messages in plain:
        _check_against_oracle(b.build_record(record(messages, 1)), tok, oracle, messages, 1)
    by_prefix = 1 + 3 + 2  # the text; turn 1: before, header, prefix; turn 2: before, header
    assert len(renders) == len(plain) + by_prefix  # each conversation once, and the probe
    renders.clear()
    odd = [
        ("user", (0, " stop here ")),
        ("assistant", (" ends with space ",)),
        ("user", ("x",)),
        ("assistant", ("y",)),
    ]
    _check_against_oracle(b.build_record(record(odd, 1)), tok, oracle, odd, 1)
    assert len(renders) == by_prefix


# ---------------------------------------------------------------------------- lines


def test_conversation_lines_parse_and_merge_turns() -> None:
    keys = ManifestKeys()
    nemo = {
        "id": "c1",
        "conversations": [
            {"from": "User", "type": "text", "value": "Transcribe"},
            {"from": "User", "type": "audio", "value": "a.wav", "duration": 1.5, "offset": 0.25},
            {"from": "Assistant", "type": "text", "value": "hello"},
            {"from": "User", "type": "audio", "value": "b.wav", "duration": 2},
            {"from": "Assistant", "type": "text", "value": "world"},
        ],
    }
    line = parse_line(nemo, keys)
    assert line.audio == ["a.wav", "b.wav"] and line.duration == [1.5, 2.0] and line.offset == [0.25, 0.0]
    assert line.messages == [
        ("user", ("Transcribe ", 0)),
        ("assistant", ("hello",)),
        ("user", (1,)),
        ("assistant", ("world",)),
    ]
    assert line.answer == "world" and line.context == "Transcribe \nhello\n"
    share = {
        "sound": "a.wav",
        "conversations": [
            {"from": "human", "value": "<sound>\nWhat is said?"},
            {"from": "gpt", "value": "hi"},
        ],
    }
    line = parse_line(share, keys)
    assert line.audio == ["a.wav"] and line.duration is None
    assert line.messages == [("user", (0, " What is said?")), ("assistant", ("hi",))]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            {
                "conversations": [
                    {"from": "User", "type": "audio", "value": "a.wav"},
                    {"from": "Assistant", "type": "text", "value": "x"},
                ]
            },
            "turn 1: audio turn 'a.wav' has no 'duration'",
        ),
        (
            {"conversations": [{"from": "User", "type": "audio", "value": "a.wav", "duration": 1}]},
            "the conversation has no assistant turn",
        ),
        (
            {
                "conversations": [
                    {"from": "Assistant", "type": "text", "value": "x"},
                    {"from": "User", "type": "audio", "value": "a.wav", "duration": 1},
                ]
            },
            "must start with a user turn",
        ),
        (
            {
                "conversations": [
                    {"from": "User", "type": "audio", "value": "a.wav", "duration": 1},
                    {"from": "System", "type": "text", "value": "s"},
                    {"from": "Assistant", "type": "text", "value": "x"},
                ]
            },
            "message 2: a system turn may only come first",
        ),
        (
            {"conversations": [{"from": "Robot", "type": "text", "value": "x"}]},
            "turn 1: 'from' must be one of User, Assistant, System",
        ),
        (
            {"conversations": [{"from": "User", "type": "video", "value": "x"}]},
            "turn 1: 'type' must be 'text' or 'audio'",
        ),
        (
            {
                "sound": "a.wav",
                "conversations": [
                    {"from": "human", "value": "<sound> <speech>"},
                    {"from": "gpt", "value": "x"},
                ],
            },
            "turn 1: more audio placeholders than the 1 audio",
        ),
        (
            {
                "sound": ["a.wav", "b.wav"],
                "conversations": [{"from": "human", "value": "<sound>"}, {"from": "gpt", "value": "x"}],
            },
            "1 audio placeholder(s) (<sound> or <speech>) but 2 audio(s) in 'sound'",
        ),
    ],
)
def test_bad_conversations_are_named(line: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        parse_line(line, ManifestKeys())


# ---------------------------------------------------------------------------- the loader


def _conversation_manifest(tmp_path: Path) -> tuple[Path, list[dict]]:
    corpus = make_corpus(tmp_path / "c", n=12, seed=3, max_duration=3.0)
    lines = []
    for k, e in enumerate(corpus.entries):
        paths = e["audio_filepath"] if isinstance(e["audio_filepath"], list) else [e["audio_filepath"]]
        durs = e["duration"] if isinstance(e["duration"], list) else [e["duration"]]
        if k % 3 == 0:  # ShareGPT
            lines.append(
                {
                    "sound": paths[0],
                    "duration": durs[0],
                    "conversations": [
                        {"from": "human", "value": "<sound> transcribe"},
                        {"from": "gpt", "value": e["answer"]},
                    ],
                }
            )
        elif k % 3 == 1:  # NeMo multimodal conversation, two user turns
            turns = [{"from": "User", "type": "text", "value": "transcribe"}]
            turns += [
                {"from": "User", "type": "audio", "value": p, "duration": d}
                for p, d in zip(paths, durs, strict=True)
            ]
            turns += [
                {"from": "Assistant", "type": "text", "value": e["answer"]},
                {"from": "User", "type": "text", "value": "again"},
                {"from": "Assistant", "type": "text", "value": "yes"},
            ]
            lines.append({"id": f"c{k}", "conversations": turns})
        else:  # a plain ASR line mixed in
            lines.append({"audio_filepath": paths[0], "duration": durs[0], "text": e["answer"]})
    path = corpus.root / "conv.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path, lines


def test_loader_reads_conversations_with_a_chat_format(tmp_path: Path, tokenizers) -> None:
    path, lines = _conversation_manifest(tmp_path)
    tok_dir = Path(tokenizers["hf"].source).parent
    cfg = make_dataset_config(
        {
            "manifest_filepath": str(path),
            "prompt_format": "qwen",
            "system_prompt": "be brief",
            "micro_batch_size": 3,
            "shuffle": False,
            "drop_last": False,
            "max_duration": None,
            "num_workers": 2,
        }
    )
    loader = build_dataloader(cfg, tok_dir)
    tok = loader.tokenizer
    seen = 0
    for batch in loader:
        for b, sid in enumerate(batch["sample_ids"].tolist()):
            line = lines[(sid & 0xFFFFFFFF) - 1]
            n = int(batch["tokens_length"][b]) + 1
            ids = torch.cat([batch["tokens"][b, :1], batch["labels"][b, : n - 1]]).tolist()
            text = tok.decode(ids)
            assert text.startswith("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n")
            answer = line.get("text") or next(
                t["value"] for t in line["conversations"] if t["from"] in ("gpt", "Assistant")
            )
            assert f"<|im_start|>assistant\n{answer}<|im_end|>\n" in text
            # targets: exactly the assistant turns
            mask = batch["loss_mask"][b, : n - 1].bool()
            learnt = tok.decode(batch["labels"][b, : n - 1][mask].tolist())
            turns = text.count("<|im_start|>assistant\n")
            assert learnt.count("<|im_start|>assistant\n") == turns and "user" not in learnt
            seen += 1
    assert seen == len(lines)


def test_bad_conversation_line_named_by_file_line_and_turn(tmp_path: Path, tokenizers) -> None:
    path, lines = _conversation_manifest(tmp_path)
    bad = {
        "conversations": [
            {"from": "User", "type": "audio", "value": "x.wav"},
            {"from": "Assistant", "type": "text", "value": "y"},
        ]
    }
    path.write_text(path.read_text() + json.dumps(bad) + "\n")
    tok_dir = Path(tokenizers["hf"].source).parent
    base = {"manifest_filepath": str(path), "prompt_format": "qwen", "max_duration": None, "drop_last": False}
    with pytest.raises(
        SpeechDataError, match=rf"conv.jsonl:{len(lines) + 1}: .*turn 1: audio turn 'x.wav' has no 'duration'"
    ):
        build_dataloader(make_dataset_config(base), tok_dir)
    loader = build_dataloader(make_dataset_config({**base, "on_error": "skip"}), tok_dir)
    assert loader.index.drops.counts.get("bad_line") == 1


def test_conversation_without_prompt_format_is_one_clear_error(tmp_path: Path, tokenizers) -> None:
    path, _ = _conversation_manifest(tmp_path)
    cfg = make_dataset_config({"manifest_filepath": str(path), "max_duration": None, "audio_locator": LOC})
    rec = build_dataloader(cfg, Path(tokenizers["hf"].source).parent).index.record(1)
    with pytest.raises(ConfigError, match=r"conv.jsonl:2: a conversation line needs prompt_format"):
        PromptBuilder(cfg, tokenizers["hf"]).build_record(rec)


@pytest.mark.parametrize("fmt", ["qwen", "llama3", "gemma"])
def test_tokenizer_trained_for_a_format_writes_it_as_the_named_format(tmp_path: Path, fmt: str) -> None:
    """``tokenizer train --kind hf --prompt-format F``: the chat template it writes gives the
    named format's text and ids; its EOS is the format's end of turn."""
    from speechdata.cli import main

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(json.dumps({"audio_filepath": "a.wav", "duration": 1, "text": t}) + "\n" for t in SENTENCES)
    )
    main(
        [
            "tokenizer",
            "train",
            str(manifest),
            "--kind",
            "hf",
            "--prompt-format",
            fmt,
            "--vocab-size",
            "400",
            "--out",
            str(tmp_path / "tok"),
        ]
    )
    from speechdata.text.tokenizer import load_tokenizer

    tok = load_tokenizer(tmp_path / "tok")
    end = {"qwen": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>"}[fmt]
    assert tok.eos_id == tok.piece_to_id(end)
    messages = [
        ("system", ("be brief",)),
        ("user", (0, " transcribe")),
        ("assistant", ("hello world",)),
        ("user", ("again",)),
        ("assistant", ("yes",)),
    ]
    named = builder(tok, prompt_format=fmt).build_record(record(messages, 1))
    chat = builder(tok, prompt_format="chat_template", audio_locator=LOC).build_record(record(messages, 1))
    assert named.input_ids == chat.input_ids and named.audio_positions == chat.audio_positions
    assert named.answer_start == chat.answer_start
    assert tok.decode(chat.answer_ids).startswith("yes")


@pytest.mark.parametrize("config", ["salm_tiny.yaml", "bestow_tiny.yaml"])
def test_trainer_learns_from_conversations_with_an_hf_tokenizer(tmp_path: Path, config: str) -> None:
    """``speechdata train`` (SALM, BESTOW) on a manifest of NeMo conversations, ShareGPT lines and ASR
    lines, with a byte-level BPE tokenizer trained for ``qwen``: it trains with a finite loss and
    validation generates and scores (the learning check on speech is benchmarks/learning_check.py)."""
    import warnings

    from speechdata.cli import main
    from speechdata.config import load_config
    from speechdata.testing import TINY_MODEL
    from speechdata.train.run import train

    path, _ = _conversation_manifest(tmp_path)
    tok_dir = tmp_path / "tok"
    main(
        [
            "tokenizer",
            "train",
            str(path),
            "--kind",
            "hf",
            "--prompt-format",
            "qwen",
            "--audio-locator",
            "|audio|",
            "--vocab-size",
            "400",
            "--out",
            str(tok_dir),
        ]
    )
    configs = Path(__file__).resolve().parent.parent / "configs"
    args = [
        f"model.train_ds.manifest_filepath={path}",
        f"model.validation_ds.manifest_filepath={path}",
        "model.train_ds.prompt_template=null",
        "model.train_ds.prompt_format=qwen",
        "model.validation_ds.prompt_format=qwen",
        "model.train_ds.max_duration=null",
        f"model.tokenizer.model={tok_dir}",
        f"exp_manager.exp_dir={tmp_path / 'exp'}",
        "trainer.max_steps=12",
        "trainer.val_check_interval=12",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "model.train_ds.num_workers=0",
        "model.micro_batch_size=4",
        "model.global_batch_size=4",
        "model.validation_ds.tokens_to_generate=4",
        "optim.sched.max_steps=50",
        *TINY_MODEL,
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(load_config(configs / config, args))
    assert result.global_step == 12
    assert torch.isfinite(torch.tensor(result.metrics["reduced_train_loss"]))
    assert result.metrics["val_cer"] >= 0.0


def test_text_only_conversations_mix_in_by_weight_and_batch_by_tokens(tmp_path: Path, tokenizers) -> None:
    """Text-only conversations (no audio turn) mixed with audio conversations through NeMo 2.x
    ``input_cfg`` weights: they pass the duration filters, a seconds-only budget refuses them
    (one line), a token budget batches them, and a batch of text alone trains the models."""
    from helpers_models import tiny_config

    from speechdata.train.models import build_model

    path, _ = _conversation_manifest(tmp_path)
    text = tmp_path / "text.jsonl"
    text.write_text(
        "".join(
            json.dumps(
                {"conversations": [{"from": "human", "value": f"say {w}"}, {"from": "gpt", "value": w}]}
            )
            + "\n"
            for w in WORDS * 3
        )
    )
    tok_dir = Path(tokenizers["hf"].source).parent
    base = {
        "input_cfg": [
            {"type": "multimodal_conversation", "manifest_filepath": str(path), "weight": 0.75},
            {"type": "multimodal_conversation", "manifest_filepath": str(text), "weight": 0.25},
        ],
        "prompt_format": "qwen",
        "min_duration": 0.1,
        "max_duration": 20.0,
        "batch_duration": 8.0,
        "seed": 1,
    }
    with pytest.raises(
        ConfigError, match=r"33 text-only examples .*text.jsonl:1\) weigh 0 s in batch_duration"
    ):
        build_dataloader(make_dataset_config(base), tok_dir)
    loader = build_dataloader(make_dataset_config({**base, "batch_tokens": 300}), tok_dir)
    seen = {0: 0, 1: 0}
    all_text = None
    for batch in loader:
        assert (
            int((batch["tokens_length"] + 1).max()) * len(batch["tokens_length"]) <= 300
            or len(batch["tokens_length"]) == 1
        )
        for sid, n in zip(batch["sample_ids"].tolist(), batch["num_audios"].tolist(), strict=True):
            seen[sid >> 32] += 1
            assert (n == 0) == (sid >> 32 == 1)
        if int(batch["num_audios"].sum()) == 0:
            all_text = batch
    assert seen[0] and seen[1] and loader.index.drops.total() == 0
    assert all_text is not None
    for arch in ("salm", "bestow"):
        torch.manual_seed(0)
        tok = loader.tokenizer
        model = build_model(tiny_config(arch, tok, llm_layers=1))
        loss, count = model.loss(all_text)
        assert torch.isfinite(loss) and float(count) == float(all_text["loss_mask"].sum()) > 0
        loss.backward()


@pytest.mark.parametrize("streaming", [False, True])
def test_conversations_shard_and_load_tarred(tmp_path: Path, tokenizers, streaming: bool) -> None:
    """``speechdata shard`` writes conversation lines (NeMo, ShareGPT, text-only) with their audios
    renamed to members; the tarred loader (by offset or streamed) gives the same examples, the
    same tokens and audio, as the loader on the original manifest."""
    from speechdata.cli import main

    path, lines = _conversation_manifest(tmp_path)
    text = {"conversations": [{"from": "human", "value": "say yes"}, {"from": "gpt", "value": "yes"}]}
    path.write_text(path.read_text() + json.dumps(text) + "\n")
    assert main(["shard", str(path), "--out", str(tmp_path / "shards"), "--shard-size", "5"]) == 0
    assert main(["validate", str(tmp_path / "shards")]) == 0  # every member checked, none orphan
    manifest = tmp_path / "shards" / "tarred_audio_manifest.json"
    shard_lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert all("conversations" in x for x in shard_lines if "audio_filepath" not in x)
    tok_dir = Path(tokenizers["hf"].source).parent
    common = {"prompt_format": "qwen", "max_duration": None, "drop_last": False, "micro_batch_size": 3}

    def examples(cfg: dict) -> dict[int, tuple[list[int], list[float]]]:
        out = {}
        for batch in build_dataloader(make_dataset_config({**common, **cfg}), tok_dir):
            starts = torch.cumsum(batch["num_audios"], 0) - batch["num_audios"]
            for b, meta in enumerate(batch["metadata"]):
                n = int(batch["tokens_length"][b])
                clips = range(int(starts[b]), int(starts[b] + batch["num_audios"][b]))
                sums = [
                    float(batch["audio_signal"][c, : batch["audio_signal_length"][c]].sum()) for c in clips
                ]
                key = json.dumps(meta.get("answer"))  # the same answer text in both manifests
                out.setdefault(key, []).append((batch["tokens"][b, :n].tolist(), sums))
        return out

    original = examples({"manifest_filepath": str(path)})
    tars = sorted(str(p) for p in (tmp_path / "shards").glob("audio_*.tar"))
    tarred = examples(
        {
            "manifest_filepath": str(manifest),
            "is_tarred": True,
            "tarred_audio_filepaths": tars,
            "streaming": streaming,
        }
    )
    assert sum(map(len, tarred.values())) == len(lines) + 1
    for key, got in tarred.items():
        want = original[key]
        assert sorted(t for t, _ in got) == sorted(t for t, _ in want)
        flat = sorted(x for _, sums in got for x in sums)
        assert flat == pytest.approx(sorted(x for _, sums in want for x in sums), rel=1e-5, abs=1e-4)
