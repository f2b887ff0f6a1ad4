"""Natural tokenization (docs/differences-from-nemo.md, "Natural tokenization"): a formatted example's
ids are the tokenizer's own encoding of the whole formatted text, cut only at BOS/SEP/EOS and at
audio locators; the answer boundary, truncation cuts and audio positions follow the tokens'
character offsets (``encode_with_offsets``), a token belonging to the part of the text that holds
its last character.

Every tokenizer kind in :data:`KINDS` (SentencePiece and Hugging Face) runs every property (a new
kind is one more entry)."""

from __future__ import annotations

import io
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given
from hypothesis import strategies as st

from speechdata.config import make_dataset_config
from speechdata.errors import DataError
from speechdata.text import PromptBuilder, Tokenizer, train_tokenizer
from speechdata.text.tokenizer import TextTokenizer

LOC = "|audio|"
END = "<eot>"
# Text the properties draw from: letters, spaces (also runs of them), punctuation, tabs, newlines,
# accented letters, CJK and an emoji (several bytes each, so byte pieces split them).
ALPHABET = [*"abcdeghiklmnorstuy AQT:.,?!'-\nàéß東語😀", "  ", "\t"]


@dataclass
class Kind:
    """A tokenizer under test. ``spell(ids)`` is the exact text the tokens stand for (with the
    dummy-prefix space of a plain encode, as ``dummy``), or ``None`` for a tokenizer whose
    normalizer changes the text (only its offsets are checked, against its own)."""

    tok: TextTokenizer
    spell: Callable[[Sequence[int]], str] | None
    dummy: str
    offsets: Callable[[str], list[tuple[int, int]]] | None  # the library's own (begin, end), plain encode


def _corpus(seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(ALPHABET[:30], size=rng.integers(1, 7))) for _ in range(300)]
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 12))) for _ in range(400)]
    # every character at least once (no unknown piece for the property texts), and the templates
    fixed = ["Q: what is said\nA: hello", "Transcribe: Audio: then [x]  END!"]
    return [*lines, "".join(ALPHABET), *fixed * 5]


def _sp_kind(tok: Tokenizer, lossless: bool) -> Kind:
    sp = spm.SentencePieceProcessor(model_proto=tok.model_bytes)

    def spell(ids: Sequence[int]) -> str:
        out = bytearray()
        for i in ids:
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):
                out.append(int(piece[3:5], 16))
            elif not sp.is_control(i):
                out += piece.replace("▁", " ").encode()
        return out.decode("utf-8", "replace")

    def offsets(text: str) -> list[tuple[int, int]]:
        return [tuple(o) for o in sp.encode(text, out_type="offset_mapping")["offsets"]]

    return Kind(tok, spell if lossless else None, " ", offsets)


def _unigram(tmp: Path) -> Kind:
    tok = train_tokenizer(_corpus(1), tmp, 400, user_symbols=[LOC, END], model_type="unigram")
    return _sp_kind(tok, lossless=True)


def _bpe(tmp: Path) -> Kind:
    tok = train_tokenizer(
        _corpus(2), tmp, 300, user_symbols=[LOC, END], model_type="bpe", byte_fallback=False
    )
    return _sp_kind(tok, lossless=True)


def _nfkc(tmp: Path) -> Kind:
    """SentencePiece's own defaults: NFKC, whitespace trimmed and collapsed (not lossless)."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(3)),
        model_writer=buf,
        vocab_size=250,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
        user_defined_symbols=[LOC, "<sep>", END],
    )
    return _sp_kind(Tokenizer(buf.getvalue(), "nfkc.model"), lossless=False)


def _hf(tmp: Path) -> Kind:
    """A byte-level BPE ``tokenizer.json`` (no prefix space); its offsets are checked in
    tests/test_hf_tokenizer.py, so here only the prompt's properties."""
    from speechdata.text.hf import train_hf_tokenizer

    return Kind(train_hf_tokenizer(_corpus(4), tmp, 400, [LOC, END]), None, "", None)


KINDS: dict[str, Callable[[Path], Kind]] = {
    "sp-unigram": _unigram,
    "sp-bpe": _bpe,
    "sp-nfkc": _nfkc,
    "hf-bytelevel": _hf,
}


@pytest.fixture(scope="module", params=list(KINDS))
def kind(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Kind:
    return KINDS[request.param](tmp_path_factory.mktemp(request.param))


_text = st.lists(st.sampled_from(ALPHABET), max_size=25).map("".join)


# ------------------------------------------------------------------------- the offsets contract


@given(text=st.one_of(_text, st.text(max_size=30)), continuation=st.booleans())
def test_offsets_follow_the_contract(kind: Kind, text: str, continuation: bool) -> None:
    tok = kind.tok
    ids, ends = tok.encode_with_offsets(text, continuation=continuation)
    assert ids == tok.encode(text, continuation=continuation)
    assert len(ends) == len(ids)
    assert ends == sorted(ends) and all(0 <= e <= len(text) for e in ends)
    if not continuation and kind.offsets is not None:
        # the library's (begin, end), a token of no character taking the next token's end
        offsets = kind.offsets(text)
        want = [end for _, end in offsets]
        for i in range(len(want) - 2, -1, -1):
            if offsets[i][0] == offsets[i][1]:
                want[i] = want[i + 1]
        assert ends == want
    if kind.spell is not None and getattr(tok, "unk_id", -1) not in ids:
        dummy = kind.dummy if text and not continuation else ""
        # every cut between two tokens of different characters is the text up to the first one's end
        for i in range(len(ids)):
            if i + 1 == len(ids) or ends[i] < ends[i + 1]:
                assert kind.spell(ids[: i + 1]) == dummy + text[: ends[i]]
        assert not ids or ends[-1] == len(text)


# --------------------------------------------------------------------------- formatted examples

TEMPLATES = [
    None,
    "Q: {context}\nA: {answer}",
    "{context} {answer}",
    "{context}{answer}",
    "[{context}]  {answer}",
    "Transcribe: {answer}",
    "Audio: " + LOC + " then {context}\n{answer}",
    "  {context}:{answer}",
]


@st.composite
def examples(draw: st.DrawFn) -> dict[str, Any]:
    template = draw(st.sampled_from(TEMPLATES))
    use_locator = draw(st.booleans())
    chunks = draw(st.lists(_text, min_size=1, max_size=4 if use_locator else 1))
    context: str | None = LOC.join(chunks)
    if (template is None or "{context}" not in template) and draw(st.booleans()):
        context = None
    cfg: dict[str, Any] = dict(
        prompt_template=template,
        separate_prompt_and_response_with_newline=draw(st.booleans()),
        add_bos=draw(st.booleans()),
        add_sep=draw(st.booleans()),
        add_eos=draw(st.booleans()),
        end_string=draw(st.sampled_from([None, END, ".", " END", "!\n"])),
        truncation_field=draw(st.sampled_from(["context", "answer"])),
        answer_only_loss=draw(st.booleans()),
        audio_locator=LOC if use_locator else None,
        min_seq_length=0,
    )
    return dict(
        cfg=cfg,
        context=context,
        answer=draw(_text),
        single=draw(st.booleans()),
        limit=draw(st.integers(1, 60)),
    )


@dataclass
class Layout:
    """The formatted text worked out here from the documented rules, independently of the builder."""

    text: str  # context part + answer part + end_string (locators still in it)
    context_part: int  # where the answer part starts in ``text``
    context: tuple[int, int]  # the context's characters in ``text``
    answer: tuple[int, int]  # the answer's characters in ``text``
    cuts: list[tuple[int, int, str]]  # (start, length, "loc" | "sep") in ``text``, in order


def layout(ex: dict[str, Any]) -> Layout:
    cfg, context, answer = ex["cfg"], ex["context"], ex["answer"]
    template = cfg["prompt_template"]
    if template is None:
        if context is None:
            ctx_part, rest, crange = "", "", (0, 0)
        else:
            ctx_part, crange = context, (0, len(context))
            rest = "\n" if cfg["separate_prompt_and_response_with_newline"] else " "
    else:
        before = template[: template.index("{answer}")]
        if "{context}" in before:
            i = before.index("{context}")
            before = before[:i] + str(context) + before[i + len("{context}") :]
        ctx_part = before.rstrip(" ")  # only trailing spaces move to the answer part
        i = template.find("{context}")
        crange = (min(i, len(ctx_part)), min(i + len(str(context)), len(ctx_part))) if i >= 0 else (0, 0)
        rest = before[len(ctx_part) :]
    text = ctx_part + rest + answer + (cfg["end_string"] or "")
    a0 = len(ctx_part) + len(rest)
    cuts = []
    if cfg["audio_locator"]:
        at = ctx_part.find(LOC)
        while at >= 0:
            cuts.append((at, len(LOC), "loc"))
            at = ctx_part.find(LOC, at + len(LOC))
    if cfg["add_sep"]:
        cuts.append((len(ctx_part), 0, "sep"))
    return Layout(text, len(ctx_part), crange, (a0, a0 + len(answer)), cuts)


@dataclass
class Expected:
    ids: list[int]
    positions: list[int]  # the ids index where each locator stood
    texts: list[str]  # the stretches between atoms
    starts: list[int]  # where each stretch's tokens start in ``ids``
    spans: list[tuple[int, int]]  # each stretch's characters in the layout's text
    ends: list[list[int]]  # each stretch's token ends (encode_with_offsets)

    def index(self, x: int, after: bool) -> int:
        """Index in ``ids`` of the first token after character ``x`` of the layout's text; at a
        cut, the side after it (``after``) or before it."""
        k = (
            max(i for i, (a, _) in enumerate(self.spans) if a <= x)
            if after
            else min(i for i, (_, b) in enumerate(self.spans) if b >= x)
        )
        offset = x - self.spans[k][0]
        if offset <= 0:
            return self.starts[k]
        if offset >= len(self.texts[k]):
            return self.starts[k] + len(self.ends[k])
        return self.starts[k] + bisect_right(self.ends[k], offset)


def expected(tok: TextTokenizer, ex: dict[str, Any], lay: Layout) -> Expected:
    """``encode`` of each stretch (the first plainly, the others as continuations), BOS/SEP/EOS
    added as ids, a locator as no token."""
    cfg = ex["cfg"]
    ids = [tok.bos_id] if cfg["add_bos"] else []
    out = Expected(ids, [], [], [], [], [])
    at = 0
    for cut in [*lay.cuts, (len(lay.text), 0, "end")]:
        start, length, what = cut
        piece = lay.text[at:start]
        piece_ids, ends = tok.encode_with_offsets(piece, continuation=bool(out.texts))
        out.texts.append(piece)
        out.starts.append(len(ids))
        out.spans.append((at, start))
        out.ends.append(ends)
        ids += piece_ids
        if what == "loc":
            out.positions.append(len(ids))
        elif what == "sep":
            ids.append(tok.sep_id)
        at = start + length
    if cfg["add_eos"]:
        ids.append(tok.eos_id)
    return out


def _build(tok: TextTokenizer, ex: dict[str, Any], audios: int, **over: Any):
    return PromptBuilder(make_dataset_config({**ex["cfg"], **over}), tok).build(
        ex["context"], ex["answer"], audios, "m.jsonl:1"
    )


@given(ex=examples())
def test_ids_are_the_natural_encoding_of_the_formatted_text(kind: Kind, ex: dict[str, Any]) -> None:
    tok = kind.tok
    lay = layout(ex)
    want = expected(tok, ex, lay)
    locators = len(want.positions)
    audios = locators if locators else int(ex["single"])
    full = _build(tok, ex, audios, max_seq_length=100_000)

    assert full.input_ids == want.ids
    assert full.audio_positions == (want.positions if locators else [0] * audios)
    # the answer part starts with the token that holds its first character
    assert full.answer_start == want.index(lay.context_part, after=True)
    assert full.context_ids == full.input_ids[: full.answer_start]
    n = len(full.input_ids)
    if ex["cfg"]["answer_only_loss"]:
        assert full.loss_mask == [0] * full.answer_start + [1] * (n - full.answer_start)
    if kind.spell is not None:
        spell, dummy = kind.spell, kind.dummy if want.texts[0] else ""
        plain = lay.text
        for start, length, what in reversed(lay.cuts):
            plain = plain[:start] + ("<sep>" if what == "sep" else "") + plain[start + length :]
        assert spell(full.input_ids) == dummy + plain
        before = dummy + plain[: lay.context_part - len(LOC) * sum(c[2] == "loc" for c in lay.cuts)]
        before += "<sep>" if ex["cfg"]["add_sep"] else ""
        # the tokens before the answer spell a prefix of the context part (all of it with SEP) ...
        assert before.startswith(spell(full.input_ids[: full.answer_start]))
        text_end = n - int(ex["cfg"]["add_eos"])
        if full.answer_start < text_end:
            # ... and the first answer token holds the answer part's first character (after a
            # dummy-prefix piece on its own, which holds none)
            k = full.answer_start + 1
            k += spell(full.input_ids[:k]) == dummy
            assert len(spell(full.input_ids[:k])) > len(before)
        # each audio goes where its locator stood
        for k, pos in enumerate(want.positions):
            upto = lay.text[: lay.cuts[k][0]].replace(LOC, "")
            assert spell(full.input_ids[:pos]) == dummy + upto


@given(ex=examples())
def test_truncation_removes_a_run_of_field_tokens(kind: Kind, ex: dict[str, Any]) -> None:
    tok = kind.tok
    lay = layout(ex)
    want = expected(tok, ex, lay)
    audios = len(want.positions) or int(ex["single"])
    full = _build(tok, ex, audios, max_seq_length=100_000)
    n, limit = len(full.input_ids), ex["limit"]
    a, b = lay.answer if ex["cfg"]["truncation_field"] == "answer" else lay.context
    lo, hi = want.index(a, after=True), want.index(b, after=a == b)  # an empty field: one place
    try:
        p = _build(tok, ex, audios, max_seq_length=limit)
    except DataError as e:
        assert e.reason == "too_long_text"
        assert hi - lo < n - limit
        return
    if n <= limit:
        assert p == full
        return
    excess = n - limit
    assert len(p.input_ids) <= limit
    cut = hi - p.truncated
    assert lo <= cut <= hi - excess
    # the kept field tokens are a prefix of the field's tokens; everything else stays
    assert p.input_ids == full.input_ids[:cut] + full.input_ids[hi:]
    # whole characters go: the cut is between tokens of different characters, and it takes more
    # than the excess only to keep the character at the excess's cut whole
    k = max(i for i, s in enumerate(want.starts) if s <= cut)
    j, ends = cut - want.starts[k], want.ends[k]
    assert j in (0, len(ends)) or ends[j - 1] < ends[j]
    if cut < hi - excess:
        assert ends[j] == ends[hi - excess - want.starts[k]]
    kept = [q if q <= cut else max(cut, q - p.truncated) for q in full.audio_positions]
    assert p.audio_positions == kept
    start = full.answer_start
    assert p.answer_start == (start if start <= cut else max(cut, start - p.truncated))
