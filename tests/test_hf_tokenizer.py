"""Tests of the Hugging Face tokenizer kind (speechdata.text.hf), chat templates
(speechdata.text.chat) and ``speechdata tokenizer train --kind hf``.

transformers is the oracle: the same ``tokenizer.json``, special tokens and chat template given to
``PreTrainedTokenizerFast`` must give the same ids and the same rendered conversations. The
tokenizers are trained here on a few hundred sentences; the templates below are written here and
produce the public ChatML (Qwen-style), Llama-3 and Gemma formats.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import jinja2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from speechdata import build_dataloader
from speechdata.cli import main
from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, DataError
from speechdata.testing import make_corpus
from speechdata.text.chat import ChatTemplate
from speechdata.text.hf import HFTokenizer, train_hf_tokenizer
from speechdata.text.prompt import PromptBuilder
from speechdata.text.tokenizer import (
    Tokenizer,
    cut_tokens,
    find_tokenizer_json,
    load_tokenizer,
    train_tokenizer,
)

LOCATOR = "|audio|"
CHAT_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<pad>",
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
    LOCATOR,
]
WORDS = [
    "hello",
    "world",
    "the",
    "audio",
    "transcribe",
    "speech",
    "café",
    "naïve",
    "数据",
    "don't",
    "42",
    "3.14",
    "Q:",
    "A:",
    "user",
    "model",
]

# ---------------------------------------------------------------------------- templates

# ChatML as the Qwen-2.5 family writes it (a default system turn when none is given). Plain
# {% %} tags on indented lines: the output is right only with trim_blocks and lstrip_blocks.
CHATML = """{% if messages[0]['role'] != 'system' %}
<|im_start|>system
You are a helpful assistant.<|im_end|>
{% endif %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

GEMMA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

#: format -> (template, special tokens of its tokenizer_config.json, takes a system turn)
FORMATS = {
    "chatml": (CHATML, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, True),
    "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, True),
    "gemma": (GEMMA, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}, False),
}

#: one fixed conversation and its text in each public format
FIXED = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]
EXPECTED = {
    "chatml": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
    "<|im_start|>assistant\nworld<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nworld<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": "<bos><start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\nworld<end_of_turn>\n"
    "<start_of_turn>model\n",
}


# ---------------------------------------------------------------------------- tokenizers


def _sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    seps = [" ", " ", " ", ", ", "\n", "  "]
    out = []
    for _ in range(n):
        k = int(rng.integers(3, 12))
        words = rng.choice(WORDS, size=k)
        out.append("".join(str(w) + str(rng.choice(seps)) for w in words).strip())
    return out


def _train(kind: str, out: Path) -> Path:
    """A tokenizer.json of ``kind``: GPT-2-style byte-level BPE, or a SentencePiece-style BPE
    whose Metaspace pre-tokenizer puts '▁' in front of every text section ("always") or of the
    first one only ("first"), or whose Prepend normalizer does ("prepend")."""
    specials = [*CHAT_TOKENS]
    if kind == "bytelevel":
        tok = RustTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=True)  # trims offsets: ids unchanged
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "prepend":  # as Llama-2's conversion: '▁' put in front of every section
        tok = RustTokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        specials.insert(0, "<unk>")
        alphabet = []
    else:
        scheme = kind.split("_")[1]
        tok = RustTokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme)
        tok.decoder = decoders.Metaspace(prepend_scheme=scheme)
        specials.insert(0, "<unk>")
        alphabet = []
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_sentences(400, 1), trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    return out / "tokenizer.json"


KINDS = ("bytelevel", "metaspace_always", "metaspace_first", "prepend")


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {kind: _train(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def pairs(tokenizer_files: dict[str, Path]) -> dict[str, tuple[HFTokenizer, PreTrainedTokenizerFast]]:
    """Each kind as HFTokenizer and as transformers' tokenizer, with no special tokens named."""
    return {
        kind: (HFTokenizer.load(path), PreTrainedTokenizerFast(tokenizer_file=str(path)))
        for kind, path in tokenizer_files.items()
    }


def _folder(tmp: Path, json_file: Path, config: dict) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "tokenizer.json").write_bytes(json_file.read_bytes())
    (tmp / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp


@pytest.fixture(scope="module")
def chat_pairs(
    tokenizer_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[HFTokenizer, PreTrainedTokenizerFast]]:
    """Each chat format: a folder read by load_tokenizer, and transformers given the same file,
    special tokens and template."""
    root = tmp_path_factory.mktemp("chat")
    out = {}
    for name, (template, specials, _) in FORMATS.items():
        path = tokenizer_files["bytelevel"]
        folder = _folder(root / name, path, {**specials, "chat_template": template})
        hf = PreTrainedTokenizerFast(tokenizer_file=str(path), chat_template=template, **specials)
        tok = load_tokenizer(folder)
        assert isinstance(tok, HFTokenizer)
        out[name] = (tok, hf)
    return out


# ---------------------------------------------------------------------------- strategies

_piece = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from([" ", "  ", "\n", "\t", ", ", ". ", " \n "]),
    st.sampled_from(CHAT_TOKENS),
    st.text(alphabet="abcdeé中!? \n", max_size=6),
)
texts = st.lists(_piece, max_size=12).map("".join)
plain_texts = st.lists(
    st.one_of(st.sampled_from(WORDS), st.sampled_from([" ", "  ", "\n", ", "])), max_size=10
).map("".join)


@st.composite
def conversations(draw: st.DrawFn, with_system: bool) -> list[dict[str, str]]:
    messages = []
    if with_system and draw(st.booleans()):
        messages.append({"role": "system", "content": draw(texts)})
    for i in range(draw(st.integers(1, 5))):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": draw(texts)})
    return messages


# ---------------------------------------------------------------------------- ids


@given(text=texts)
def test_ids_equal_transformers(pairs, text: str) -> None:
    for kind, (tok, hf) in pairs.items():
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False), kind
        assert tok.encode_batch([text, text]) == [tok.encode(text)] * 2


@given(text=texts)
def test_byte_level_decodes_back(pairs, text: str) -> None:
    tok, hf = pairs["bytelevel"]
    ids = tok.encode(text)
    assert tok.decode(ids) == text == hf.decode(ids)


@given(before=texts, after=texts, atom=st.sampled_from(CHAT_TOKENS))
def test_continuation_is_the_text_after_a_special_token(pairs, before: str, after: str, atom: str) -> None:
    """encode(a + S + b) == encode(a) + [S] + encode(b, continuation=True), for each kind, and the
    whole string is what transformers gives."""
    for kind, (tok, hf) in pairs.items():
        whole = hf.encode(before + atom + after, add_special_tokens=False)
        pieces = [*tok.encode(before), tok.piece_to_id(atom), *tok.encode(after, continuation=True)]
        assert pieces == whole, kind


def test_continuation_differs_only_where_a_prefix_is_added(pairs) -> None:
    text = "hello world"
    bl, _ = pairs["bytelevel"]
    assert bl.encode(text, continuation=True) == bl.encode(text)
    first, _ = pairs["metaspace_first"]
    assert first.id_to_piece(first.encode(text)[0]) == "▁hello"
    assert first.id_to_piece(first.encode(text, continuation=True)[0]) != "▁hello"
    for kind in ("metaspace_always", "prepend"):  # '▁' after every special token too
        always, _ = pairs[kind]
        assert always.encode(text, continuation=True) == always.encode(text), kind


@given(text=texts, continuation=st.booleans())
def test_offsets_contract(pairs, text: str, continuation: bool) -> None:
    for kind, (tok, _) in pairs.items():
        ids, ends = tok.encode_with_offsets(text, continuation=continuation)
        assert ids == tok.encode(text, continuation=continuation), kind
        assert len(ends) == len(ids)
        assert all(0 <= e <= len(text) for e in ends)
        assert ends == sorted(ends)
        if kind == "bytelevel":  # lossless: the tokens up to each end spell the text up to there
            for i, end in enumerate(ends):
                spelled = tok.decode(ids[: i + 1])
                # (unless the last token holds the first bytes of the next character too)
                if (i + 1 == len(ends) or ends[i + 1] > end) and "\ufffd" not in spelled:
                    assert spelled == text[:end], (text, i)
    tok, _ = pairs["bytelevel"]
    ids, ends = tok.encode_with_offsets("数据 hello")
    assert ends[-1] == 8 and ends[0] in (1, 2)  # the bytes of 数 end where 数 ends


@given(text=texts, continuation=st.booleans(), data=st.data())
def test_encode_cut_is_the_offsets_rule(pairs, text: str, continuation: bool, data: st.DataObject) -> None:
    """encode_cut (tokenizers' char_to_token, with its fallback) gives the cuts of the offsets
    rule, cut_tokens(ends), for every tokenizer kind: Metaspace's prefix token and characters
    split over several byte-level tokens included."""
    if len(text) < 2:
        return
    cuts = sorted(data.draw(st.lists(st.integers(1, len(text) - 1), min_size=1, max_size=4)))
    for kind, (tok, _) in pairs.items():
        ids, ends = tok.encode_with_offsets(text, continuation=continuation)
        assert tok.encode_cut(text, cuts, continuation=continuation) == (ids, cut_tokens(ends, cuts)), kind


def test_special_ids_vocab_and_pickle(pairs, tokenizer_files, tmp_path: Path) -> None:
    path = tokenizer_files["bytelevel"]
    folder = _folder(tmp_path / "t", path, {"bos_token": "<bos>", "eos_token": {"content": "<eos>"}})
    tok = load_tokenizer(folder)
    assert isinstance(tok, HFTokenizer)
    spec = json.loads(path.read_text())
    ids = {t["content"]: t["id"] for t in spec["added_tokens"]}
    assert (tok.bos_id, tok.eos_id) == (ids["<bos>"], ids["<eos>"])
    assert not tok.has_pad and tok.pad_id == tok.eos_id  # no pad token: EOS pads
    assert tok.sep_id is None and tok.unk_id is None
    assert (
        tok.vocab_size
        == max(spec["model"]["vocab"].values()) + 1
        == len(PreTrainedTokenizerFast(tokenizer_file=str(path)))
    )
    assert tok.decode([tok.bos_id, *tok.encode("hello |audio|"), tok.eos_id]) == "hello |audio|"
    assert tok.id_to_piece(tok.piece_to_id("<eos>")) == "<eos>" and tok.piece_to_id("nope!") is None
    with pytest.raises(IndexError):
        tok.id_to_piece(10**6)
    back = pickle.loads(pickle.dumps(tok))
    assert (back.bos_id, back.eos_id, back.pad_id, back.vocab_size) == (
        tok.bos_id,
        tok.eos_id,
        tok.pad_id,
        tok.vocab_size,
    )
    for text in _sentences(20, 5):
        assert back.encode(text, continuation=True) == tok.encode(text, continuation=True)
        assert back.encode_with_offsets(text) == tok.encode_with_offsets(text)
    meta, _ = pairs["metaspace_first"]
    assert meta.unk_id == meta.piece_to_id("<unk>")  # the model's unknown token


# ---------------------------------------------------------------------------- loading


def test_load_picks_the_kind(tokenizer_files, tmp_path: Path) -> None:
    sp_dir = tmp_path / "sp"
    train_tokenizer(_sentences(100, 2), sp_dir, vocab_size=120, byte_fallback=False)
    assert isinstance(load_tokenizer(sp_dir), Tokenizer)
    assert isinstance(load_tokenizer(sp_dir / "tokenizer.model"), Tokenizer)
    assert find_tokenizer_json(sp_dir) is None
    path = tokenizer_files["bytelevel"]
    assert isinstance(load_tokenizer(path), HFTokenizer) and find_tokenizer_json(path) == path
    assert isinstance(load_tokenizer(path.parent), HFTokenizer)
    both = _folder(tmp_path / "both", path, {})
    (both / "tokenizer.model").write_bytes((sp_dir / "tokenizer.model").read_bytes())
    assert isinstance(load_tokenizer(both), HFTokenizer)  # tokenizer.json first, as transformers


def test_chat_template_sources(tokenizer_files, tmp_path: Path) -> None:
    path = tokenizer_files["bytelevel"]
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "{{ bos_token }}x"}]
    folder = _folder(tmp_path / "a", path, {"chat_template": named})
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}))
    tok = HFTokenizer.load(folder)
    assert tok.render_chat(FIXED) == "<bos>x" and tok.eos_id == tok.piece_to_id("<eos>")
    (folder / "chat_template.jinja").write_text("{{ messages | length }}")  # the file comes first
    assert HFTokenizer.load(folder).render_chat(FIXED) == "2"
    bare = HFTokenizer.load(_folder(tmp_path / "b", path, {}))
    assert bare.chat_template is None
    with pytest.raises(ConfigError, match=r"tokenizer_config.json: the tokenizer has no chat_template"):
        bare.apply_chat_template(FIXED)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{\n  'bos_token': 1\n}", r"tokenizer_config.json:2: tokenizer config is not valid JSON"),
        (
            '{"bos_token": "<nope>"}',
            r"tokenizer_config.json: bos_token '<nope>' is not in the vocabulary of .*tokenizer.json",
        ),
        (
            '{"pad_token": 7}',
            r"tokenizer_config.json: pad_token must be a string or an object with 'content', got 7",
        ),
        (
            '{"chat_template": "{% for m in messages %}"}',
            r"tokenizer_config.json:chat_template:1: chat template syntax error",
        ),
        (
            '{"chat_template": [{"name": "x", "template": "y"}]}',
            r"chat_template has no template named 'default'",
        ),
        ("[]", r"tokenizer_config.json: tokenizer config must be a JSON object, got list"),
    ],
)
def test_bad_config_is_one_line(tokenizer_files, tmp_path: Path, config: str, message: str) -> None:
    folder = _folder(tmp_path / "c", tokenizer_files["bytelevel"], {})
    (folder / "tokenizer_config.json").write_text(config)
    with pytest.raises(ConfigError, match=message) as e:
        load_tokenizer(folder)
    assert "\n" not in str(e.value)


def test_bad_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing/tokenizer.json: tokenizer.json not found"):
        load_tokenizer(tmp_path / "missing" / "tokenizer.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n"model": ')
    with pytest.raises(ConfigError, match=r"bad.json:2: not valid JSON"):
        load_tokenizer(bad)
    bad.write_text('{"model": {"type": "Nothing"}}')
    with pytest.raises(ConfigError, match=r"bad.json: not a Hugging Face tokenizer.json"):
        load_tokenizer(bad)


# ---------------------------------------------------------------------------- chat templates


@pytest.mark.parametrize("name", list(FORMATS))
def test_templates_give_the_public_formats(chat_pairs, name: str) -> None:
    tok, hf = chat_pairs[name]
    assert tok.render_chat(FIXED, add_generation_prompt=True) == EXPECTED[name]
    assert hf.apply_chat_template(FIXED, tokenize=False, add_generation_prompt=True) == EXPECTED[name]


@pytest.mark.parametrize("name", list(FORMATS))
@given(data=st.data(), generation=st.booleans())
def test_chat_equals_transformers(chat_pairs, name: str, data: st.DataObject, generation: bool) -> None:
    tok, hf = chat_pairs[name]
    messages = data.draw(conversations(FORMATS[name][2]))
    text = tok.render_chat(messages, add_generation_prompt=generation)
    assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    want = hf.apply_chat_template(messages, add_generation_prompt=generation, return_dict=True)["input_ids"]
    assert tok.apply_chat_template(messages, add_generation_prompt=generation) == want


def test_template_errors(chat_pairs) -> None:
    tok, hf = chat_pairs["gemma"]
    system = [{"role": "system", "content": "be brief"}, *FIXED]
    with pytest.raises(DataError, match=r"^conv.jsonl:4: chat template: System role not supported$") as e:
        tok.render_chat(system, where="conv.jsonl:4")
    assert e.value.reason == "bad_line"
    with pytest.raises(jinja2.TemplateError, match="System role not supported"):
        hf.apply_chat_template(system, tokenize=False)
    with pytest.raises(DataError, match=r"roles must alternate"):
        tok.render_chat([*FIXED, {"role": "assistant", "content": "again"}])
    with pytest.raises(DataError, match=r"at least one message"):
        tok.render_chat([])
    with pytest.raises(DataError, match=r"message 0 must be a dict, got str"):
        tok.render_chat(["hello"])  # type: ignore[list-item]


# A template using every part of the environment transformers sets up.
FEATURES = """{% set ns = namespace(count=0, last='') %}
{% for message in messages %}
    {% if message.role == 'stop' %}{% break %}{% endif %}
    {% if message.role == 'skip' %}{% continue %}{% endif %}
    {% set ns.count = ns.count + 1 %}
    {% generation %}[{{ message.role }}]{% endgeneration %} {{ message.content }}
    {% if message.reasoning_content is defined %}<think>{{ message.reasoning_content }}|{{ message.thinking }}</think>{% endif %}
    {% if message.extra is defined %}{{ message.extra | tojson }} {{ message.extra | tojson(indent=2, sort_keys=true) }}{% endif %}
    {% if message.note is defined %}NOTE{% endif %}
{% endfor %}
{{ ns.count }} {{ dict(a=1, b=[1, 2]) | tojson }} {{ tools | tojson }} {{ bos_token }}{{ custom | default('-') }}
"""


def test_environment_equals_transformers(tokenizer_files) -> None:
    path = tokenizer_files["bytelevel"]
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path), chat_template=FEATURES, bos_token="<bos>")
    template = ChatTemplate(FEATURES, {"bos_token": "<bos>"})
    messages = [
        {
            "role": "user",
            "content": "héllo <b>",
            "note": None,
            "extra": {"z": "é", "a": [1, 2.5, None, True]},
        },
        {"role": "skip", "content": "x"},
        {"role": "assistant", "content": "ok", "reasoning": "because"},
        {"role": "stop", "content": "y"},
        {"role": "user", "content": "never"},
    ]
    for kwargs in ({}, {"custom": "C", "tools": [{"name": "f"}]}):
        want = hf.apply_chat_template(messages, tokenize=False, **kwargs)
        assert template.render(messages, **kwargs) == want
        assert "NOTE" not in want and '"é"' in want and "&lt;" not in want  # None keys dropped, no escaping


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages.append(1) }}",
        "{{ ''.__class__.__mro__ }}",
        "{% set ns = namespace() %}{% set ns._x = 1 %}",
    ],
)
def test_the_sandbox_refuses(template: str) -> None:
    with pytest.raises(ConfigError, match=r"^chat_template: chat template does something unsafe"):
        ChatTemplate(template).render(FIXED)


def test_chat_template_pickles(chat_pairs) -> None:
    tok, _ = chat_pairs["llama3"]
    back = pickle.loads(pickle.dumps(tok))
    assert back.chat_template == LLAMA3
    assert back.apply_chat_template(FIXED) == tok.apply_chat_template(FIXED)


# ---------------------------------------------------------------------------- the loader


@given(
    context=st.lists(st.one_of(plain_texts, st.just(LOCATOR)), min_size=1, max_size=4).map("".join),
    answer=plain_texts,
)
def test_prompt_ids_are_the_encoding_of_the_formatted_text(pairs, context: str, answer: str) -> None:
    """With the locator a special token, the builder's ids are the tokenizer's encoding of the
    whole formatted text, the locators taken out where the audios go (a test of the builder and
    the tokenizer together; tests/test_natural_tokens.py has the builder's own properties)."""
    for kind in ("bytelevel", "metaspace_first"):
        tok, _ = pairs[kind]
        cfg = {"prompt_template": "Q: {context}\nA: {answer}", "audio_locator": LOCATOR}
        cfg.update(add_bos=False, add_sep=False, add_eos=False)
        text = f"Q: {context}\nA: {answer}"
        loc = tok.piece_to_id(LOCATOR)
        ids = tok.encode(text)
        positions = [k - n for n, k in enumerate(i for i, x in enumerate(ids) if x == loc)]
        want = [x for x in ids if x != loc]
        audios = context.count(LOCATOR)
        p = PromptBuilder(make_dataset_config(cfg), tok).build(context, answer, audios, "m.jsonl:1")
        assert p.input_ids == want, kind
        assert p.audio_positions == positions


def test_hf_tokenizer_in_dataloader_workers(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c", n=24, seed=4, max_duration=4.0)
    texts = [str(e[k]) for e in corpus.entries for k in ("answer", "context") if e.get(k)]
    tok = train_hf_tokenizer(texts, tmp_path / "tok", 400, [LOCATOR])
    cfg = make_dataset_config(
        {
            "manifest_filepath": str(corpus.manifest),
            "audio_locator": LOCATOR,
            "prompt_template": "Q: {context}\nA: {answer}",
            "add_bos": True,
            "add_eos": True,
            "micro_batch_size": 4,
            "num_workers": 2,
            "max_duration": None,
            "drop_last": False,
            "seed": 1,
        }
    )
    loader = build_dataloader(cfg, tmp_path / "tok")  # the folder's tokenizer.json, by path
    assert isinstance(loader.tokenizer, HFTokenizer)
    batch = next(iter(loader))
    builder = PromptBuilder(cfg, pickle.loads(pickle.dumps(tok)))
    assert len(batch["metadata"]) == 4
    for b, sid in enumerate(batch["sample_ids"].tolist()):
        entry = corpus.entries[(sid & 0xFFFFFFFF) - 1]
        paths = entry["audio_filepath"]
        want = builder.build(
            entry.get("context"), entry["answer"], len(paths) if isinstance(paths, list) else 1
        )
        n_ctx, n_ans = int(batch["context_lengths"][b]), int(batch["answer_lengths"][b])
        assert batch["contexts"][b, :n_ctx].tolist() == want.context_ids
        assert batch["answers"][b, :n_ans].tolist() == want.answer_ids
        assert want.input_ids[0] == tok.bos_id and want.input_ids[-1] == tok.eos_id
        assert entry["answer"] in tok.decode(want.answer_ids)


# ---------------------------------------------------------------------------- the command


def test_tokenizer_train_kind_hf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = make_corpus(tmp_path / "c", n=40, seed=5, max_duration=4.0)
    args = ["tokenizer", "train", str(corpus.manifest), "--kind", "hf", "--vocab-size", "400"]
    out = tmp_path / "tok"
    assert main([*args, "--out", str(out), "--audio-locator", LOCATOR, "--end-string", "<eot>"]) == 0
    assert f"from {len(corpus.entries)} lines" in capsys.readouterr().out
    spec = json.loads((out / "tokenizer.json").read_text())
    added = {t["content"]: t for t in spec["added_tokens"]}
    assert [added[t]["id"] for t in ("<pad>", "<s>", "</s>", "<sep>", LOCATOR, "<eot>")] == [0, 1, 2, 3, 4, 5]
    assert added[LOCATOR]["special"] and added["<eot>"]["special"]
    tok = load_tokenizer(out)
    assert isinstance(tok, HFTokenizer)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id) == (0, 1, 2, 3) and tok.has_pad
    hf = AutoTokenizer.from_pretrained(str(out))  # transformers reads the folder as written
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == ("<s>", "</s>", "<pad>")
    for entry in corpus.entries[:10]:
        text = f"{entry.get('context', '')} {entry['answer']}"
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False)
        assert LOCATOR not in text or tok.encode(text).count(4) == text.count(LOCATOR)
        assert tok.decode(tok.encode(text)) == text
    again = tmp_path / "again"
    assert main([*args, "--out", str(again), "--audio-locator", LOCATOR, "--end-string", "<eot>"]) == 0
    assert (again / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()  # deterministic
    capsys.readouterr()
    assert main([*args, "--out", str(again), "--model-type", "bpe", "--seed", "3"]) == 1
    err = capsys.readouterr().err
    assert err == "speechdata: error: --model-type, --seed: only for --kind sentencepiece, not --kind hf\n"
