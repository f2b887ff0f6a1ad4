"""Prompt formatting: template, special tokens, truncation, audio locators, loss mask (docs/differences-from-nemo.md, "Text stage").

A :class:`PromptBuilder` turns one example's context and answer into a :class:`Prompt`::

    [BOS]? + context part + [SEP]? + answer part + end_string + [EOS]?

The context part is ``prompt_template`` up to the answer slot with the context filled in and its
trailing spaces removed; the answer part is the rest (so the space before the answer belongs to the
answer). Without a template, the context is followed by a separator (``"\\n"`` with
``separate_prompt_and_response_with_newline``, else ``" "``) that belongs to the answer.

**Natural tokenization.** The formatted text is tokenized whole, as the tokenizer tokenizes it:
the only cuts are at BOS, SEP and EOS (added as ids) and at audio locators (which become no token).
Each stretch of text between two such atoms is one :meth:`~speechdata.text.tokenizer.TextTokenizer.encode`
call, the first stretch of the sequence plainly and every later one as a continuation. Where the
answer part starts, where a truncated field's content ends, and where each audio goes are found
from the character offsets of the tokens (``encode_with_offsets``): **a token belongs to the part
of the text that holds its last character**, so a token that straddles a boundary belongs to the
later part. The answer part starts with the token that holds its first character (``▁yes`` in
``... A: yes``, the template's space and the answer's first word in one token, is an answer
token), and a field's content tokens are those that end inside it (``▁what`` in ``Q: what``
belongs to the context, space included).

Truncation removes tokens (it never re-encodes text) from the end of the ``truncation_field``
content, whole characters only, so a truncated example is its full token sequence with one run of
content tokens taken out; template text that shares no token with the content, BOS/SEP/EOS and
``end_string`` stay.

Example::

    >>> builder = PromptBuilder(cfg, tokenizer)   # prompt_template "Q: {context}\\nA: {answer}"
    >>> p = builder.build("what is said?", "hello", num_audios=1, where="train.jsonl:3")
    >>> p.input_ids == [*tokenizer.encode("Q: what is said?\\nA: hello"), tokenizer.eos_id]
    True
    >>> tokenizer.decode(p.context_ids), tokenizer.id_to_piece(p.answer_ids[0])
    ('Q: what is said?\\nA:', '▁hello')
"""

from __future__ import annotations

import re
import string
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from speechdata.config import DatasetConfig
from speechdata.errors import ConfigError, DataError
from speechdata.lines import Record
from speechdata.text.tokenizer import TextTokenizer

# The atoms between two stretches of text.
_LOC = 0  # an audio locator: where an audio goes (no token)
_SEP = 1  # the SEP token

# Marks of a layout (see PromptBuilder._layout): where these parts start or end in the text.
_CONTEXT_START, _CONTEXT_END, _ANSWER_PART, _ANSWER_START, _ANSWER_END = range(5)

_ESCAPES = re.compile(r"\\([ntr\\])")
_ESCAPED = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


@dataclass(slots=True)
class Prompt:
    """One formatted, tokenized example.

    ``input_ids`` is the whole sequence; ``context_ids == input_ids[:answer_start]`` (the prompt
    for generation, BOS and SEP included) and ``answer_ids == input_ids[answer_start:]`` (answer
    text, ``end_string`` and EOS; for a conversation, the last assistant turn). ``loss_mask[i]`` is
    1 where ``input_ids[i]`` is a target: ``targets`` when set (a conversation: the tokens of its
    assistant turns), else the answer part with ``answer_only_loss``, else every token but the
    first (nothing predicts it). ``audio_positions[k]`` is the index in ``input_ids`` where audio
    ``k`` is inserted. ``truncated`` counts the tokens removed to fit ``max_seq_length``: the
    excess, or a few more when the cut would have split the tokens of one character.
    ``context_ids``, ``answer_ids`` and ``loss_mask`` are computed when asked for.
    """

    input_ids: list[int]
    answer_start: int
    audio_positions: list[int]
    truncated: int = 0
    answer_only_loss: bool = True
    targets: list[int] | None = None

    @property
    def context_ids(self) -> list[int]:
        """``input_ids[:answer_start]``."""
        return self.input_ids[: self.answer_start]

    @property
    def answer_ids(self) -> list[int]:
        """``input_ids[answer_start:]``."""
        return self.input_ids[self.answer_start :]

    @property
    def loss_mask(self) -> list[int]:
        """1 for each target token, 0 for the others (see the class docstring)."""
        if self.targets is not None:
            return self.targets
        n = len(self.input_ids)
        if self.answer_only_loss:
            return [0] * self.answer_start + [1] * (n - self.answer_start)
        return [0] + [1] * (n - 1) if n else []


def check_locators(count: int, num_audios: int, locator: str | None, where: str) -> bool:
    """The audio-locator rule: a context holds one locator per audio, except that a single audio
    with no locator goes first. Returns whether that exception applies (one audio, no locator);
    raises :class:`DataError` (``bad_line``) for any other mismatch."""
    if count == num_audios:
        return False
    if count == 0 and num_audios == 1:
        return True
    if locator is None:
        message = f"the example has {num_audios} audios but no audio_locator is configured"
    else:
        message = (
            f"context has {count} audio locator(s) {locator!r} but the example has {num_audios} audio(s)"
        )
    raise DataError("bad_line", where, message)


def token_index(
    mark: tuple[int, int],
    texts: Sequence[str],
    spans: Sequence[tuple[int, int]],
    inside: Callable[[int, int], int],
) -> int:
    """The index in the sequence of the first token after ``mark`` (text number, character offset),
    where ``spans[k]`` are the token indexes of ``texts[k]``: the start of the text at its first
    character, the end at its last, else ``inside(k, offset)``, the first token that does not end
    at or before the offset (a token belongs to the part that holds its last character)."""
    k, offset = mark
    start, end = spans[k]
    if offset <= 0:
        return start
    if offset >= len(texts[k]):
        return end
    return inside(k, offset)


def _unescape(template: str) -> str:
    """Turn ``\\n``, ``\\t``, ``\\r``, ``\\\\`` typed as two characters into the characters.

    NeMo un-escapes templates too, so single-quoted YAML and CLI overrides work the same.
    """
    return _ESCAPES.sub(lambda m: _ESCAPED[m.group(1)], template)


class PromptBuilder:
    """Formats and tokenizes examples for one dataset config (see the module docstring).

    Construction checks the config against the tokenizer and raises :class:`ConfigError` for a
    malformed ``prompt_template`` (unknown slot, answer slot missing or not last, duplicated slot),
    a special token the tokenizer lacks (``add_bos``/``add_sep``/``add_eos``) or
    ``min_seq_length > max_seq_length``. :meth:`build` raises :class:`DataError` for one bad
    example: reason ``bad_line`` (missing context, locator count mismatch) or the filter reasons
    ``too_long_text`` / ``too_short_text``.

    ``needs_context`` tells whether an example without a context (and no ``default_context``) is
    an error: true when ``prompt_template`` has a context slot. Without a template, an example with
    no context is its answer alone.
    """

    def __init__(self, cfg: DatasetConfig, tokenizer: TextTokenizer) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self._bos = self._special("add_bos", cfg.add_bos, tokenizer.bos_id, "BOS")
        self._sep = self._special("add_sep", cfg.add_sep, tokenizer.sep_id, "<sep>")
        self._eos = self._special("add_eos", cfg.add_eos, tokenizer.eos_id, "EOS")
        if cfg.min_seq_length > cfg.max_seq_length:
            raise ConfigError(
                f"min_seq_length {cfg.min_seq_length} is larger than max_seq_length {cfg.max_seq_length}"
            )
        self._max = cfg.max_seq_length
        self._min = cfg.min_seq_length
        self._truncate_answer = cfg.truncation_field == "answer"
        self._answer_only = cfg.answer_only_loss
        self._locator = cfg.audio_locator or None
        self._default_context = cfg.default_context
        self._end = cfg.end_string or ""

        self._templated = cfg.prompt_template is not None
        if self._templated:
            pre, mid, has_slot = self._parse_template(cfg)
            self.needs_context = has_slot
            self._mid_kept = mid.rstrip(" ")
            self._mid_moved = mid[len(self._mid_kept) :]
        else:
            # context + separator + answer, the separator belonging to the answer.
            pre, has_slot = "", True
            self.needs_context = False
            self._mid_kept = ""
            self._mid_moved = "\n" if cfg.separate_prompt_and_response_with_newline else " "
        self._has_slot = has_slot
        self._pre = pre

    # ------------------------------------------------------------------------ construction

    @staticmethod
    def _special(key: str, enabled: bool, token: int | None, name: str) -> list[int]:
        if not enabled:
            return []
        if token is None:
            raise ConfigError(f"{key} is true but the tokenizer has no {name} token")
        return [token]

    @staticmethod
    def _parse_template(cfg: DatasetConfig) -> tuple[str, str, bool]:
        """``(text before the context slot, text between the slots, has a context slot)``."""
        template = _unescape(str(cfg.prompt_template))
        context_names = {cfg.context_key, "input"}
        answer_names = {cfg.answer_key, "output"}
        try:
            items = list(string.Formatter().parse(template))
        except ValueError as e:
            raise ConfigError(f"prompt_template {template!r}: {e}") from None
        literals = [""]  # the template text before each slot, and after the last one
        slots: list[str] = []
        for literal, name, spec, conversion in items:
            literals[-1] += literal
            if name is None:
                continue
            if spec or conversion:
                raise ConfigError(
                    f"prompt_template: slot {{{name}}} must not have a format spec or conversion"
                )
            if name in answer_names:
                slots.append("answer")
                literals.append("")
            elif name in context_names:
                slots.append("context")
                literals.append("")
            else:
                raise ConfigError(
                    f"prompt_template: unknown slot {{{name}}}; use {{{cfg.context_key}}} and "
                    f"{{{cfg.answer_key}}} (or the legacy {{input}} and {{output}})"
                )
        if "answer" not in slots:
            raise ConfigError(f"prompt_template {template!r} has no answer slot {{{cfg.answer_key}}}")
        if slots.count("answer") > 1 or slots.count("context") > 1:
            raise ConfigError(f"prompt_template {template!r}: each slot may appear only once")
        if slots[-1] != "answer" or literals[-1]:
            raise ConfigError(
                f"prompt_template {template!r}: the answer slot {{{cfg.answer_key}}} must end the template"
            )
        if slots == ["answer"]:
            return literals[0], "", False
        return literals[0], literals[1], True

    # ------------------------------------------------------------------------------- build

    def _split(self, context: str | None, where: str) -> tuple[str, str, str, str]:
        """``(template text before the context, context, template text after it, answer prefix)``.

        The first three make the context part (its trailing spaces already moved to the answer
        prefix); the answer prefix (template text or separator) starts the answer part.
        """
        if context is None:
            context = self._default_context
            if context is None:
                if self.needs_context:
                    raise DataError(
                        "bad_line",
                        where,
                        f"no context (key '{self.cfg.context_key}' or 'question') and no default_context, "
                        f"but prompt_template {self.cfg.prompt_template!r} needs one",
                    )
                if not self._templated:
                    return "", "", "", ""  # no template, no context: the answer alone
        pre, ctx = self._pre, (context or "") if self._has_slot else ""
        mid, moved = self._mid_kept, self._mid_moved
        if not mid and self._templated:
            kept = ctx.rstrip(" ")
            moved = ctx[len(kept) :] + moved
            ctx = kept
            if not ctx:
                kept = pre.rstrip(" ")
                moved = pre[len(kept) :] + moved
                pre = kept
        return pre, ctx, mid, moved

    def _layout(
        self, pre: str, ctx: str, mid: str, moved: str, answer: str
    ) -> tuple[list[str], list[int], list[tuple[int, int]]]:
        """The formatted text cut at its atoms: ``(texts, atoms, marks)``.

        ``atoms[k]`` (:data:`_LOC` or :data:`_SEP`) stands between ``texts[k]`` and
        ``texts[k + 1]``; locators are cut out of the template text and the context only. Each
        mark is ``(k, offset)``, a character offset into ``texts[k]``: the context's start and
        end, the answer part's start, the answer's start and end (indexed by ``_CONTEXT_START``
        ...).
        """
        loc = self._locator
        if not self._sep and (loc is None or (loc not in pre and loc not in ctx and loc not in mid)):
            # one text and no atom (the common case): the marks are sums of lengths
            c0 = len(pre)
            c1 = c0 + len(ctx)
            part = c1 + len(mid)
            a0 = part + len(moved)
            marks = [(0, c0), (0, c1), (0, part), (0, a0), (0, a0 + len(answer))]
            return [f"{pre}{ctx}{mid}{moved}{answer}{self._end}"], [], marks
        texts: list[str] = []
        atoms: list[int] = []
        marks = []
        cur = self._add(texts, atoms, "", pre)
        marks.append((len(texts), len(cur)))
        cur = self._add(texts, atoms, cur, ctx)
        marks.append((len(texts), len(cur)))
        cur = self._add(texts, atoms, cur, mid)
        if self._sep:
            texts.append(cur)
            atoms.append(_SEP)
            cur = ""
        marks.append((len(texts), len(cur)))
        cur += moved
        marks.append((len(texts), len(cur)))
        cur += answer
        marks.append((len(texts), len(cur)))
        texts.append(cur + self._end)
        return texts, atoms, marks

    def _add(self, texts: list[str], atoms: list[int], cur: str, piece: str) -> str:
        """Append ``piece`` to the text ``cur``, cutting it at each audio locator; the text after
        the last locator is returned (it continues)."""
        loc = self._locator
        if loc is None or loc not in piece:
            return cur + piece
        parts = piece.split(loc)
        texts.append(cur + parts[0])
        texts += parts[1:-1]
        atoms += [_LOC] * (len(parts) - 1)
        return parts[-1]

    def build_record(self, rec: Record) -> Prompt:
        """:meth:`build` for one example read from a source (every builder has this method).
        A conversation needs ``prompt_format`` (:class:`~speechdata.text.dialog.ConversationBuilder`)."""
        if rec.messages is not None:
            raise ConfigError(
                f"{rec.where}: a conversation line needs prompt_format (one of llama2, llama3, qwen, "
                "gemma, plain, chat_template); prompt_template formats context/answer lines only"
            )
        return self.build(rec.context, rec.answer, len(rec.audio), rec.where)

    def build(self, context: str | None, answer: str, num_audios: int, where: str = "") -> Prompt:
        """Format, tokenize and (if needed) truncate one example; see :class:`Prompt`.

        ``context`` ``None`` falls back to ``default_context``. ``where`` (``"path:line"``) names
        the example in errors. With ``audio_locator`` set, the context (and template) must hold one
        locator per audio, except that a single audio with no locator goes first (position 0, as
        without ``audio_locator``).
        """
        pre, ctx, mid, moved = self._split(context, where)
        texts, atoms, marks = self._layout(pre, ctx, mid, moved, answer)
        count = len(atoms) - len(self._sep)
        check_locators(count, num_audios, self._locator, where)

        tok = self.tokenizer
        part = marks[_ANSWER_PART]
        input_ids = self._bos.copy()
        spans: list[tuple[int, int]] = []  # where the tokens of each text are in input_ids
        ends: dict[int, list[int]] = {}  # the token ends of the texts encoded with offsets
        positions = []
        answer_start = -1  # found while encoding when the answer starts inside a text
        # a text of c characters has at most 4c tokens (one per UTF-8 byte) and a prefix token:
        # when truncation cannot happen, the answer's cut is all that is needed of the offsets
        keep_ends = 4 * sum(map(len, texts)) + len(texts) + 3 > self._max
        for k, text in enumerate(texts):
            start = len(input_ids)
            if k == part[0] and 0 < part[1] < len(text):
                if keep_ends:
                    ids, ends[k] = tok.encode_with_offsets(text, continuation=k > 0)
                else:
                    ids, (at,) = tok.encode_cut(text, [part[1]], continuation=k > 0)
                    answer_start = start + at
                input_ids += ids
            else:
                input_ids += tok.encode(text, continuation=k > 0)
            spans.append((start, len(input_ids)))
            if k < len(atoms):
                if atoms[k] == _LOC:
                    positions.append(len(input_ids))
                else:
                    input_ids += self._sep
        input_ids += self._eos
        if num_audios and not count:
            positions = [0]  # one audio and no locator: the audio goes first

        if answer_start < 0:
            answer_start = self._index(part, texts, spans, ends)
        removed = 0
        if len(input_ids) > self._max:
            cut, removed = self._truncate(input_ids, marks, texts, spans, ends, where)
            positions = [p if p <= cut else max(cut, p - removed) for p in positions]
            if answer_start > cut:
                answer_start = max(cut, answer_start - removed)
        return self._finish(input_ids, answer_start, positions, removed, where)

    def _ends(self, k: int, texts: list[str], ends: dict[int, list[int]]) -> list[int]:
        """The token ends of ``texts[k]`` (encoded with offsets on first use)."""
        found = ends.get(k)
        if found is None:
            found = ends[k] = self.tokenizer.encode_with_offsets(texts[k], continuation=k > 0)[1]
        return found

    def _index(
        self,
        mark: tuple[int, int],
        texts: list[str],
        spans: list[tuple[int, int]],
        ends: dict[int, list[int]],
    ) -> int:
        """The index in the sequence of the first token after ``mark`` (:func:`token_index`)."""
        return token_index(
            mark, texts, spans, lambda k, c: spans[k][0] + bisect_right(self._ends(k, texts, ends), c)
        )

    def _truncate(
        self,
        input_ids: list[int],
        marks: list[tuple[int, int]],
        texts: list[str],
        spans: list[tuple[int, int]],
        ends: dict[int, list[int]],
        where: str,
    ) -> tuple[int, int]:
        """Remove tokens from the end of the ``truncation_field`` content, in place, whole
        characters only; ``(index of the cut, tokens removed)``. Raises ``too_long_text`` when the
        field has fewer tokens than the excess."""
        excess = len(input_ids) - self._max
        first, last = (
            (_ANSWER_START, _ANSWER_END) if self._truncate_answer else (_CONTEXT_START, _CONTEXT_END)
        )
        lo = self._index(marks[first], texts, spans, ends)
        hi = self._index(marks[last], texts, spans, ends)
        if hi - lo < excess:
            name = "answer" if self._truncate_answer else "context"
            raise DataError(
                "too_long_text",
                where,
                f"{len(input_ids)} tokens exceed max_seq_length={self._max} and the {name} "
                f"(truncation_field) has only {hi - lo} tokens to remove",
            )
        cut = hi - excess
        # Whole characters only: the other tokens of a character cut in two go as well.
        k = max(i for i, (start, _) in enumerate(spans) if start <= cut)
        start, end = spans[k]
        if start < cut < end:
            found = self._ends(k, texts, ends)
            j = cut - start
            while j > 0 and found[j - 1] == found[j]:
                j -= 1
            cut = start + j
        del input_ids[cut:hi]
        return cut, hi - cut

    def _finish(
        self, input_ids: list[int], answer_start: int, positions: list[int], truncated: int, where: str
    ) -> Prompt:
        n = len(input_ids)
        if n < self._min:
            raise DataError("too_short_text", where, f"{n} tokens, fewer than min_seq_length={self._min}")
        return Prompt(input_ids, answer_start, positions, truncated, self._answer_only)
