"""Prompt formatting: template, special tokens, truncation, audio locators, loss mask (docs/differences-from-nemo.md, "Text stage").

A :class:`PromptBuilder` turns one example's context and answer into a :class:`Prompt`::

    [BOS]? + context part + [SEP]? + answer part + end_string? + [EOS]?

The context part is ``prompt_template`` up to the answer slot with the context filled in and its
trailing spaces removed; the answer part is the rest (so the space before the answer belongs to the
answer). Without a template, the context is followed by a separator (``"\\n"`` with
``separate_prompt_and_response_with_newline``, else ``" "``) that belongs to the answer.

Template text, manifest content and special tokens are tokenized as separate pieces, each piece
after the first as a continuation (see :meth:`Tokenizer.encode`), so the builder knows which token
is which: truncation removes tokens only from the end of the ``truncation_field`` content, audio
locators become exact insertion indices, and the loss mask covers exactly the answer part.

Example::

    >>> builder = PromptBuilder(cfg, tokenizer)   # prompt_template "Q: {context}\\nA: {answer}"
    >>> p = builder.build("what is said?", "hello", num_audios=1, where="train.jsonl:3")
    >>> tokenizer.decode(p.context_ids), tokenizer.decode(p.answer_ids)
    ('Q: what is said?\\nA:', ' hello')
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from speechdata.config import DatasetConfig
from speechdata.errors import ConfigError, DataError
from speechdata.text.tokenizer import Tokenizer

# Kinds of pieces of a formatted example.
_TEMPLATE = 0  # template text, separators, end_string: cached, never truncated
_CONTEXT = 1  # manifest context text
_LOCATOR = 2  # an audio insertion point (no tokens)
_ANSWER = 3  # manifest answer text

_EMPTY: list[int] = []  # shared, never mutated

_ESCAPES = re.compile(r"\\([ntr\\])")
_ESCAPED = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


@dataclass(slots=True)
class Prompt:
    """One formatted, tokenized example.

    ``input_ids`` is the whole sequence; ``context_ids == input_ids[:answer_start]`` (the prompt
    for generation, BOS and SEP included) and ``answer_ids == input_ids[answer_start:]`` (answer
    text, ``end_string`` and EOS). ``loss_mask[i]`` is 1 where ``input_ids[i]`` is a target: the
    answer part with ``answer_only_loss``, else every token but the first (nothing predicts it).
    ``audio_positions[k]`` is the index in ``input_ids`` where audio ``k`` is inserted.
    ``truncated`` counts the tokens removed to fit ``max_seq_length``.
    """

    input_ids: list[int]
    answer_start: int
    loss_mask: list[int]
    context_ids: list[int]
    answer_ids: list[int]
    audio_positions: list[int]
    truncated: int = 0


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

    def __init__(self, cfg: DatasetConfig, tokenizer: Tokenizer) -> None:
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
        self._end = tokenizer.encode(cfg.end_string, continuation=True) if cfg.end_string else []
        self._cache: dict[tuple[str, bool], list[int]] = {}
        self._fixed = len(self._bos) + len(self._sep) + len(self._end) + len(self._eos)

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

    def _template_ids(self, text: str, first: bool) -> list[int]:
        key = (text, first)
        ids = self._cache.get(key)
        if ids is None:
            ids = self.tokenizer.encode(text, continuation=not first)
            self._cache[key] = ids
        return ids

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

    def build(self, context: str | None, answer: str, num_audios: int, where: str = "") -> Prompt:
        """Format, tokenize and (if needed) truncate one example; see :class:`Prompt`.

        ``context`` ``None`` falls back to ``default_context``. ``where`` (``"path:line"``) names
        the example in errors.
        """
        pre, ctx, mid, moved = self._split(context, where)
        if self._locator is not None:
            return self._build_pieces(pre, ctx, mid, moved, answer, num_audios, where)
        if num_audios > 1:
            raise DataError(
                "bad_line", where, f"the example has {num_audios} audios but no audio_locator is configured"
            )
        # One piece of each kind: the common case, without the bookkeeping of _build_pieces.
        enc = self.tokenizer.encode
        first = True
        pre_ids = ctx_ids = mid_ids = moved_ids = ans_ids = _EMPTY
        if pre:
            pre_ids = self._template_ids(pre, True)
            first = False
        if ctx:
            ctx_ids = enc(ctx, continuation=not first)
            first = False
        if mid:
            mid_ids = self._template_ids(mid, first)
            first = False
        if self._sep:
            first = False
        if moved:
            moved_ids = self._template_ids(moved, first)
            first = False
        if answer:
            ans_ids = enc(answer, continuation=not first)
        total = self._fixed + len(pre_ids) + len(ctx_ids) + len(mid_ids) + len(moved_ids) + len(ans_ids)
        truncated = 0
        if total > self._max:
            truncated = total - self._max
            if self._truncate_answer:
                self._check_room(total, len(ans_ids), where)
                ans_ids = ans_ids[: len(ans_ids) - truncated]
            else:
                self._check_room(total, len(ctx_ids), where)
                ctx_ids = ctx_ids[: len(ctx_ids) - truncated]
        input_ids = [*self._bos, *pre_ids, *ctx_ids, *mid_ids, *self._sep]
        answer_start = len(input_ids)
        input_ids += moved_ids
        input_ids += ans_ids
        input_ids += self._end
        input_ids += self._eos
        return self._finish(input_ids, answer_start, [0] if num_audios == 1 else [], truncated, where)

    def _build_pieces(
        self, pre: str, ctx: str, mid: str, moved: str, answer: str, num_audios: int, where: str
    ) -> Prompt:
        """:meth:`build` with an audio locator: the context part is cut at each locator."""
        loc = self._locator
        assert loc is not None
        pieces: list[tuple[int, str]] = []
        count = 0
        for kind, text in ((_TEMPLATE, pre), (_CONTEXT, ctx), (_TEMPLATE, mid)):
            parts = text.split(loc) if loc in text else [text]
            count += len(parts) - 1
            pieces.append((kind, parts[0]))
            for part in parts[1:]:
                pieces.append((_LOCATOR, ""))
                pieces.append((kind, part))
        if count != num_audios:
            raise DataError(
                "bad_line",
                where,
                f"context has {count} audio locator(s) {loc!r} but the example has {num_audios} audio(s)",
            )
        pieces.append((_TEMPLATE, moved))
        pieces.append((_ANSWER, answer))

        enc = self.tokenizer.encode
        first = True
        segs: list[tuple[int, list[int]]] = []
        total = self._fixed
        answer_part = len(pieces) - 2
        for i, (kind, text) in enumerate(pieces):
            if i == answer_part and self._sep:
                first = False  # text after <sep> continues the sequence, even with an empty context
            if not text:
                segs.append((kind, _EMPTY))
                continue
            ids = self._template_ids(text, first) if kind == _TEMPLATE else enc(text, continuation=not first)
            first = False
            total += len(ids)
            segs.append((kind, ids))

        truncated = 0
        if total > self._max:
            truncated = total - self._max
            self._truncate(segs, truncated, total, where)

        input_ids = list(self._bos)
        positions: list[int] = []
        for kind, ids in segs[:-2]:
            if kind == _LOCATOR:
                positions.append(len(input_ids))
            else:
                input_ids += ids
        input_ids += self._sep
        answer_start = len(input_ids)
        # The last two pieces are the answer part: the separator (or moved spaces), then the answer.
        input_ids += segs[-2][1]
        input_ids += segs[-1][1]
        input_ids += self._end
        input_ids += self._eos
        return self._finish(input_ids, answer_start, positions, truncated, where)

    def _finish(
        self, input_ids: list[int], answer_start: int, positions: list[int], truncated: int, where: str
    ) -> Prompt:
        n = len(input_ids)
        if n < self._min:
            raise DataError("too_short_text", where, f"{n} tokens, fewer than min_seq_length={self._min}")
        if self._answer_only:
            loss_mask = [0] * answer_start + [1] * (n - answer_start)
        else:
            loss_mask = [0] + [1] * (n - 1) if n else []
        return Prompt(
            input_ids=input_ids,
            answer_start=answer_start,
            loss_mask=loss_mask,
            context_ids=input_ids[:answer_start],
            answer_ids=input_ids[answer_start:],
            audio_positions=positions,
            truncated=truncated,
        )

    def _check_room(self, total: int, available: int, where: str) -> None:
        """Raise ``too_long_text`` when the truncation field has fewer tokens than the excess."""
        if available < total - self._max:
            name = "answer" if self._truncate_answer else "context"
            raise DataError(
                "too_long_text",
                where,
                f"{total} tokens exceed max_seq_length={self._max} and the {name} "
                f"(truncation_field) has only {available} tokens to remove",
            )

    def _truncate(self, segs: list[tuple[int, list[int]]], excess: int, total: int, where: str) -> None:
        """Remove ``excess`` tokens from the end of the truncation field's content, in place."""
        field = _ANSWER if self._truncate_answer else _CONTEXT
        self._check_room(total, sum(len(ids) for kind, ids in segs if kind == field), where)
        for i in range(len(segs) - 1, -1, -1):
            kind, ids = segs[i]
            if kind != field or not ids:
                continue
            cut = min(excess, len(ids))
            segs[i] = (kind, ids[: len(ids) - cut])
            excess -= cut
            if not excess:
                return
