"""Tests of the pre-token cache of byte-level BPE tokenizers (speechdata.text.wordcache).

The oracle is the ``tokenizers`` package itself: for ASCII text (every ASCII character, added
tokens anywhere) an :class:`HFTokenizer` must give the ids, token ends and cuts that the same
``tokenizer.json`` gives through ``tokenizers``, for GPT-2's ``ByteLevel`` regex and for the
``Split`` regexes of the Qwen-2 and Llama-3 tokenizers. Pipelines the cache cannot reproduce get
no cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as RustTokenizer

from speechdata.text import wordcache
from speechdata.text.hf import HFTokenizer, train_hf_tokenizer
from speechdata.text.tokenizer import cut_tokens
from speechdata.text.wordcache import GPT2_PATTERN, word_cache

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|audio|>", "<pad>"]
WORDS = [
    "hello",
    "world",
    "The",
    "cat's",
    "42",
    "3.14",
    "don't",
    "I'M",
    "we'll",
    "transcribe",
    "audio,",
    "speech!",
    "(x)",
    "$5",
    "a_b",
    "--",
]


def _corpus(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    seps = [" ", "  ", "\n", ", ", "\t", ". "]
    return ["".join(str(rng.choice(WORDS)) + str(rng.choice(seps)) for _ in range(8)) for _ in range(n)]


def _split_tokenizer(pattern: str, out: Path) -> HFTokenizer:
    """A byte-level BPE whose pre-tokenizer is ``Split(pattern)`` then ``ByteLevel`` without its
    regex, as the Qwen-2 and Llama-3 tokenizers are."""
    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(300), trainer)
    return HFTokenizer(tok.to_str(), {"eos_token": "<|im_end|>"}, source=str(out))


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HFTokenizer]:
    root = tmp_path_factory.mktemp("wordcache")
    gpt2 = train_hf_tokenizer(_corpus(300), root / "gpt2", 600, ["<|audio|>"], prompt_format="qwen")
    return {
        "gpt2": gpt2,
        "qwen2": _split_tokenizer(QWEN2_PATTERN, root / "qwen2"),
        "llama3": _split_tokenizer(LLAMA3_PATTERN, root / "llama3"),
    }


def _reference(tok: HFTokenizer) -> RustTokenizer:
    """The same tokenizer.json through ``tokenizers`` alone (no post-processor: its offsets)."""
    spec = json.loads(tok.tokenizer_json)
    return RustTokenizer.from_str(json.dumps({**spec, "post_processor": None}))


def _spec(tok: RustTokenizer) -> dict:
    return json.loads(tok.to_str())


ascii_texts = st.lists(
    st.one_of(
        st.text(st.characters(max_codepoint=127), max_size=6),
        st.sampled_from(WORDS + SPECIALS + [" ", "  ", "\n\n", "\r\n", " \t "]),
    ),
    max_size=12,
).map("".join)


def test_the_byte_level_tokenizers_have_a_cache(tokenizers) -> None:
    for name, tok in tokenizers.items():
        ref = _reference(tok)
        assert word_cache(json.loads(tok.tokenizer_json), ref) is not None, name


@settings(max_examples=300, deadline=None)
@given(text=ascii_texts, data=st.data())
def test_ascii_text_equals_tokenizers(tokenizers, text: str, data: st.DataObject) -> None:
    """ids, token ends and cuts of every ASCII text are those of the tokenizers package."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=4)))
    for name, tok in tokenizers.items():
        e = _reference(tok).encode(text, add_special_tokens=False)
        ends = [end for _, end in e.offsets]
        assert tok.encode(text) == e.ids, (name, text)
        assert tok.encode(text, continuation=True) == e.ids, (name, text)
        assert tok.encode_with_offsets(text) == (e.ids, ends), (name, text)
        assert tok.encode_cut(text, cuts) == (e.ids, cut_tokens(ends, cuts)), (name, text, cuts)
        shuffled = cuts[::-1]  # cuts in any order
        assert tok.encode_cut(text, shuffled) == (e.ids, cut_tokens(ends, shuffled)), (name, text)


def test_every_ascii_pair(tokenizers) -> None:
    """Each pair of ASCII characters, between letters and after a space: the regex translation
    agrees with tokenizers character by character."""
    texts = [f"a{chr(i)}{chr(j)}b {chr(j)}{chr(i)}" for i in range(128) for j in range(0, 128, 7)]
    for name, tok in tokenizers.items():
        ref = _reference(tok)
        for text in texts:
            assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids, (name, repr(text))


def test_other_text_goes_to_tokenizers(tokenizers) -> None:
    tok = tokenizers["gpt2"]
    cache = word_cache(json.loads(tok.tokenizer_json), _reference(tok))
    assert cache is not None
    text = "café naïve 数据 <|im_end|> hello"
    assert cache.encode(text) is None
    assert cache.encode_with_ends(text) is None and cache.encode_cut(text, [3]) is None
    e = _reference(tok).encode(text, add_special_tokens=False)
    assert tok.encode(text) == e.ids
    assert tok.encode_cut(text, [3, 6]) == (e.ids, cut_tokens([end for _, end in e.offsets], [3, 6]))


def test_the_cache_is_bounded(tokenizers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wordcache, "CACHE_WORDS", 5)
    tok = tokenizers["qwen2"]
    ref = _reference(tok)
    cache = word_cache(json.loads(tok.tokenizer_json), ref)
    assert cache is not None
    text = " ".join(f"w{i}x" for i in range(40))
    for _ in range(2):
        assert cache.encode(text) == ref.encode(text, add_special_tokens=False).ids
        assert len(cache._ids) <= 5 and cache._ids.keys() == cache._ends.keys()


def _byte_level(**changes: object) -> RustTokenizer:
    tok = RustTokenizer(models.BPE(**changes.pop("model", {})))  # type: ignore[arg-type]
    tok.pre_tokenizer = changes.pop("pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=False))
    if "normalizer" in changes:
        tok.normalizer = changes.pop("normalizer")
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(50), trainer)
    tok.add_special_tokens(changes.pop("added", ["<|a|>"]))  # type: ignore[arg-type]
    return tok


@pytest.mark.parametrize(
    "changes",
    [
        {"normalizer": normalizers.NFC()},
        {"pre_tokenizer": pre_tokenizers.Metaspace()},
        {"pre_tokenizer": pre_tokenizers.ByteLevel(add_prefix_space=True)},
        {"pre_tokenizer": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)},
        {
            "pre_tokenizer": pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(r"\p{Lu}+|\s+|[^\s]+"), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        },
        {"model": {"dropout": 0.5}},
        {"added": [AddedToken("<|a|>", lstrip=True, special=True)]},
        {"added": ["<|a|>", "|>x"]},  # can overlap: "<|a|>x" holds both
    ],
    ids=[
        "normalizer",
        "metaspace",
        "prefix-space",
        "no-regex",
        "unicode-class",
        "dropout",
        "lstrip",
        "overlap",
    ],
)
def test_pipelines_it_cannot_reproduce_get_no_cache(changes: dict) -> None:
    tok = _byte_level(**changes)
    assert word_cache(_spec(tok), tok) is None


def test_the_plain_pipeline_gets_one() -> None:
    tok = _byte_level()
    cache = word_cache(_spec(tok), tok)
    assert cache is not None
    assert cache.encode("x<|a|>y it's") == tok.encode("x<|a|>y it's", add_special_tokens=False).ids
    assert GPT2_PATTERN.startswith("'s|")
