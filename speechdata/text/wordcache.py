"""Byte-level BPE of ASCII text by pre-token, each pre-token's tokens cached (docs/tokenizers.md).

A byte-level BPE ``tokenizer.json`` (GPT-2, Llama-3, Qwen: a ``ByteLevel`` pre-tokenizer, or a
``Split`` regex followed by ``ByteLevel`` without its own regex, no normalizer) tokenizes a text
in three steps: added tokens are split out, the rest is cut into pre-tokens by one regex, and the
BPE model encodes each pre-token on its own. The tokens of a pre-token depend on that pre-token
only, so a dictionary of the pre-tokens already seen gives the same ids as the ``tokenizers``
package at a third of the cost (most of which is the package's per-call work, not the merges).

:func:`word_cache` builds a :class:`WordCache` for such a tokenizer, or ``None`` for any other
(a normalizer, another pre-tokenizer, a BPE with dropout, an added token with ``lstrip``,
``rstrip`` or ``single_word``, added tokens that can overlap). It reads only ASCII text
(``str.isascii``): the pre-tokenizer's regex is run by Python's ``re`` with ``\\p{L}`` as
``A-Za-z`` and ``\\p{N}`` as ``0-9``, which is exact on ASCII only; every method answers ``None``
for other text, and the caller encodes it with ``tokenizers``. A word is encoded by ``tokenizers``
the first time it is seen. Before it is used, the cache must agree with ``tokenizers`` on probe
texts that hold every ASCII character; it is not used otherwise.

Example::

    >>> cache = word_cache(json.loads(tokenizer_json), rust_tokenizer)
    >>> cache.encode("<|im_start|>user\\nhello world") == rust_tokenizer.encode(...).ids
    True
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any

from tokenizers import Tokenizer as RustTokenizer

#: GPT-2's pre-tokenizer regex: the one ``ByteLevel(use_regex=True)`` uses.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

#: At most this many pre-tokens are kept; the cache starts again empty when it is full.
CACHE_WORDS = 1 << 16
#: Text between added tokens up to this many characters is also kept whole (a chat format's
#: ``"user\n"`` or ``"\n"``): one lookup instead of a regex run.
SHORT_PIECE = 24

#: Texts the cache must encode as ``tokenizers`` does before it is used: every ASCII character,
#: alone and between letters, digits and spaces, contractions, runs of whitespace.
_PROBES = (
    "".join(map(chr, range(128))),
    " ".join(map(chr, range(128))),
    "".join(f"a{chr(i)}1 {chr(i)}{chr(i)}b" for i in range(128)),
    "I'm sure you'll see they've said 'twas he'd WE'RE DON'T it's\n\n  \t x  \r\n\r\n",
    ' 12345 6.5% $3,000 --a_b__c-- (x) [y] {z} <w> @#!? \\ / ` ~ ^ | "q" \x0b\x0c\x1c\x1f ',
)


class Unsupported(ValueError):
    """The tokenizer's pipeline is not one :class:`WordCache` reproduces."""


def _ascii_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` (Oniguruma syntax, as ``tokenizers`` runs it) for Python's ``re`` on ASCII text:
    ``\\p{L}`` and ``\\p{N}`` become their ASCII members; any other Unicode property is refused."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i : i + 5]
            if nxt in ("\\p{L}", "\\p{N}"):
                members = "A-Za-z" if nxt == "\\p{L}" else "0-9"
                out.append(members if in_class else f"[{members}]")
                i += 5
                continue
            if pattern[i + 1 : i + 2] in ("p", "P"):
                raise Unsupported(f"pre-tokenizer regex uses {pattern[i : i + 6]!r}")
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class and out and out[-1] != "[":
            in_class = False
        out.append(c)
        i += 1
    try:
        return re.compile("".join(out), re.ASCII)
    except re.error as e:
        raise Unsupported(f"pre-tokenizer regex not readable by re ({e})") from None


def _splitter(pre: Any) -> Callable[[str], list[str]]:
    """The pre-token splitter of a ``pre_tokenizer`` spec: ``ByteLevel`` with GPT-2's regex, or a
    ``Sequence`` of an isolating ``Split`` regex and a ``ByteLevel`` without one."""
    if not isinstance(pre, dict):
        raise Unsupported("no pre-tokenizer")
    kind = pre.get("type")
    if kind == "ByteLevel":
        if pre.get("add_prefix_space") or pre.get("use_regex") is False:
            raise Unsupported("ByteLevel with a prefix space or without its regex")
        return _ascii_pattern(GPT2_PATTERN).findall
    if kind == "Sequence":
        steps = pre.get("pretokenizers")
        if isinstance(steps, list) and len(steps) == 2:
            split, byte = steps
            if (
                isinstance(split, dict)
                and isinstance(byte, dict)
                and split.get("type") == "Split"
                and split.get("behavior") == "Isolated"
                and not split.get("invert")
                and isinstance(split.get("pattern"), dict)
                and isinstance(split["pattern"].get("Regex"), str)
                and byte.get("type") == "ByteLevel"
                and not byte.get("add_prefix_space")
                and byte.get("use_regex") is False
            ):
                return _ascii_pattern(split["pattern"]["Regex"]).findall
    raise Unsupported(f"pre-tokenizer {kind!r}")


def _added(spec: dict[str, Any], enc: RustTokenizer) -> tuple[re.Pattern[str] | None, dict[str, int]]:
    """The splitter of the added tokens (longest first) and their ids; refused when a token strips
    or matches whole words only, or when two of them can overlap (``tokenizers`` would then split
    in an order of its own)."""
    tokens: dict[str, int] = {}
    for tok in spec.get("added_tokens") or []:
        if not isinstance(tok, dict) or not isinstance(tok.get("content"), str) or not tok["content"]:
            raise Unsupported("an added token without content")
        if tok.get("lstrip") or tok.get("rstrip") or tok.get("single_word"):
            raise Unsupported(f"added token {tok['content']!r} strips or matches whole words")
        i = enc.token_to_id(tok["content"])
        if i is None:
            raise Unsupported(f"added token {tok['content']!r} has no id")
        tokens[tok["content"]] = int(i)
    for a in tokens:
        for b in tokens:
            if a != b and (a in b or any(a.endswith(b[:k]) for k in range(1, min(len(a), len(b))))):
                raise Unsupported(f"added tokens {a!r} and {b!r} can overlap")
    if not tokens:
        return None, tokens
    alternatives = sorted(tokens, key=lambda t: (-len(t), t))
    return re.compile("(" + "|".join(map(re.escape, alternatives)) + ")"), tokens


class WordCache:
    """Ids (and token ends) of ASCII text, each pre-token encoded once by ``tokenizers``.

    Built by :func:`word_cache`. Every method returns ``None`` for text that is not ASCII.
    Token ends follow :meth:`~speechdata.text.tokenizer.TextTokenizer.encode_with_offsets`.
    """

    def __init__(
        self,
        enc: RustTokenizer,
        split: Callable[[str], list[str]],
        added: re.Pattern[str] | None,
        added_ids: dict[str, int],
    ) -> None:
        self._enc = enc
        self._split = split
        self._added = added.split if added is not None else None
        self.added_ids = added_ids
        self._ids: dict[str, list[int]] = {}  # pre-token -> its ids
        self._ends: dict[str, list[int]] = {}  # pre-token -> where each of its tokens ends in it
        self._short: dict[str, list[int]] = {}  # short text between added tokens -> its ids

    def clear(self) -> None:
        """Forget every pre-token and short text seen."""
        self._ids.clear()
        self._ends.clear()
        self._short.clear()

    def _short_ids(self, piece: str) -> list[int]:
        """The ids of a short text between added tokens, kept whole."""
        ids = self._short.get(piece)
        if ids is None:
            get = self._ids.get
            ids = []
            for w in self._split(piece):
                ids += get(w) or self._fill(w)
            if len(self._short) >= CACHE_WORDS:
                self._short.clear()
            self._short[piece] = ids
        return ids

    def _fill(self, word: str) -> list[int]:
        """The ids of ``word``, from ``tokenizers``, kept with its token ends."""
        e = self._enc.encode(word, add_special_tokens=False)
        if len(self._ids) >= CACHE_WORDS:
            self.clear()
        ids = self._ids[word] = e.ids
        self._ends[word] = [end for _, end in e.offsets]
        return ids

    def _word_ends(self, word: str) -> list[int]:
        ends = self._ends.get(word)
        if ends is None:
            self._fill(word)
            ends = self._ends[word]
        return ends

    def _pieces(self, text: str) -> list[str]:
        """``text`` cut at its added tokens: plain text at even indices, added tokens at odd ones."""
        return self._added(text) if self._added is not None else [text]

    def encode(self, text: str) -> list[int] | None:
        """The ids of ``text`` (``tokenizers``' ``encode(text, add_special_tokens=False).ids``)."""
        if not text.isascii():
            return None
        get = self._ids.get
        out: list[int] = []
        for k, piece in enumerate(self._pieces(text)):
            if k & 1:
                out.append(self.added_ids[piece])
            elif len(piece) <= SHORT_PIECE:
                out += self._short_ids(piece)
            else:
                for w in self._split(piece):
                    out += get(w) or self._fill(w)
        return out

    def encode_with_ends(self, text: str) -> tuple[list[int], list[int]] | None:
        """``(ids, ends)``: the ids of :meth:`encode` and the character offset where each token
        ends in ``text``."""
        if not text.isascii():
            return None
        get = self._ids.get
        ids: list[int] = []
        ends: list[int] = []
        pos = 0
        for k, piece in enumerate(self._pieces(text)):
            if k & 1:
                ids.append(self.added_ids[piece])
                pos += len(piece)
                ends.append(pos)
                continue
            for w in self._split(piece):
                ids += get(w) or self._fill(w)
                ends += [pos + e for e in self._ends[w]]
                pos += len(w)
        return ids, ends

    def encode_cut(self, text: str, cuts: Sequence[int]) -> tuple[list[int], list[int]] | None:
        """``(ids, at)``: the ids of :meth:`encode` and, for each character offset of ``cuts``,
        the number of tokens that end at or before it (:func:`~speechdata.text.tokenizer.cut_tokens`
        of the token ends)."""
        if not text.isascii():
            return None
        get, fill = self._ids.get, self._fill
        order = sorted(range(len(cuts)), key=cuts.__getitem__) if len(cuts) > 1 else [0] * len(cuts)
        at = [0] * len(cuts)
        nxt = 0  # the next cut, in ``order``, still to place
        ids: list[int] = []
        pos = 0
        for k, piece in enumerate(self._pieces(text)):
            end = pos + len(piece)
            if k & 1:
                while nxt < len(order) and cuts[order[nxt]] < end:  # inside an added token
                    at[order[nxt]] = len(ids)
                    nxt += 1
                ids.append(self.added_ids[piece])
            elif nxt < len(order) and cuts[order[nxt]] < end:  # a cut inside: word by word
                words = self._split(piece)
                starts = list(accumulate(map(len, words), initial=pos))
                done = 0  # the words already encoded
                while nxt < len(order) and cuts[order[nxt]] < end:
                    c = cuts[order[nxt]]
                    w = bisect_right(starts, c) - 1  # the word that holds the cut
                    for word in words[done:w]:
                        ids += get(word) or fill(word)
                    done = w
                    at[order[nxt]] = len(ids) + bisect_right(self._word_ends(words[w]), c - starts[w])
                    nxt += 1
                for word in words[done:]:
                    ids += get(word) or fill(word)
            elif len(piece) <= SHORT_PIECE:
                ids += self._short_ids(piece)
            else:
                for word in self._split(piece):
                    ids += get(word) or fill(word)
            pos = end
        for j in order[nxt:]:
            at[j] = len(ids)
        return ids, at


def word_cache(spec: dict[str, Any], enc: RustTokenizer) -> WordCache | None:
    """A :class:`WordCache` for the tokenizer of ``spec`` (a parsed ``tokenizer.json``) encoded by
    ``enc`` (the same tokenizer, no post-processor), or ``None`` when its pipeline is not one the
    cache reproduces or the cache disagrees with ``enc`` on a probe text."""
    model = spec.get("model")
    if spec.get("normalizer") is not None or not isinstance(model, dict) or model.get("type") != "BPE":
        return None
    if model.get("dropout") not in (None, 0, 0.0):
        return None
    try:
        cache = WordCache(enc, _splitter(spec.get("pre_tokenizer")), *_added(spec, enc))
    except Unsupported:
        return None
    probes = list(_PROBES)
    added = sorted(cache.added_ids)
    if added:
        probes.append(f"{added[0]}x{''.join(added)} y{added[-1]}\n{added[0]}")
    for probe in probes:
        e = enc.encode(probe, add_special_tokens=False)
        if cache.encode_with_ends(probe) != (e.ids, [end for _, end in e.offsets]):
            return None
    cache.clear()
    return cache
