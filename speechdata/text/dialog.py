"""Conversations to token ids: prompt formats, chat templates, loss on assistant turns.

With ``prompt_format`` set, every example is a conversation: a conversation line's messages
(:data:`~speechdata.lines.Message`), or a context/answer line as one user message (the context,
its audio locators as audios; a single audio without a locator first) and one assistant message
(the answer). ``system_prompt`` adds a system message in front when the conversation has none.

:class:`ConversationBuilder` writes the conversation with a named format
(:mod:`speechdata.text.formats`) or with the tokenizer's own chat template
(``prompt_format: chat_template``), then tokenizes it the natural way (as
:mod:`speechdata.text.prompt` does): the text is encoded whole, cut only where an audio goes and
where the format adds BOS/EOS ids; special tokens written as text (``<|im_start|>``) are matched by
the tokenizer itself. Which tokens carry the loss is found from character offsets: a token belongs
to the part of the text that holds its last character.

* **Loss.** Each assistant turn as its format writes it is a target: for a named format the whole
  turn template (NeMo's rule: ``<|im_start|>assistant\\n...<|im_end|>\\n`` for ``qwen``), for a
  chat template the text the template adds for that message (``render(messages[:k + 1])`` minus
  ``render(messages[:k])``; located once per sequence of roles on a probe conversation, see
  :class:`_Probe`). ``loss_turns: last`` keeps only the last assistant turn;
  ``answer_only_loss: false`` makes every token but the first a target.
* **Context and answer.** ``answer_start`` is where the last assistant message's content begins
  (after its header), so ``context_ids`` is the prompt for generating it.
* **Length.** A conversation longer than ``max_seq_length`` is dropped (``too_long_text``), never
  cut: a cut conversation would teach a truncated answer.

Example::

    >>> builder = ConversationBuilder(cfg, tokenizer)        # prompt_format: qwen
    >>> p = builder.build_record(rec)                        # user: [audio] "Transcribe", assistant: "hi"
    >>> tokenizer.decode(p.input_ids)
    '<|im_start|>user\\n Transcribe<|im_end|>\\n<|im_start|>assistant\\nhi<|im_end|>\\n'
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from speechdata.config import DatasetConfig
from speechdata.errors import ConfigError, DataError
from speechdata.lines import Message, Record
from speechdata.text.formats import BOS, EOS, FORMATS, MESSAGE, SYSTEM, PromptFormat
from speechdata.text.prompt import Prompt, PromptBuilder, check_locators, token_index
from speechdata.text.tokenizer import TextTokenizer

__all__ = ["DEFAULT_LOCATOR", "ConversationBuilder", "make_prompt_builder", "record_messages"]

#: The text that stands for an audio in a chat template's messages when no ``audio_locator`` is set.
DEFAULT_LOCATOR = "<|audio|>"

_AUDIO, _ID = 0, 1
#: How many of a format's own texts (turn headers that stand between audios) a builder keeps encoded.
_FIXED_TEXTS = 256

Mark = tuple[int, int]  # (text number, character offset into that text)

#: How many role sequences a builder keeps located (see :class:`_Probe`).
_PROBES = 256
#: A probe message's content: private-use characters around the message's number.
_PROBE_TEXT = "\ue000{}\ue001"
_PROBE_FIND = re.compile("\ue000(\\d+)\ue001")


@dataclass(frozen=True)
class _Probe:
    """A chat template's text for one sequence of roles, with a stand-in for each content.

    ``pieces`` are the template's own texts around the contents; ``order`` says which message's
    content follows each piece but the last; ``widths`` are the stand-ins' lengths; ``spans`` hold
    each assistant turn's (turn start, content start, turn end), each as (stand-ins before it,
    offset in the probe text). A conversation of the same roles whose text is the pieces with its
    contents put in has its turns at the same places, moved by the contents' lengths: one render
    locates it instead of three per assistant message.
    """

    pieces: tuple[str, ...]
    order: tuple[int, ...]
    widths: tuple[int, ...]
    spans: tuple[tuple[tuple[int, int], ...], ...]


@dataclass
class _Layout:
    """A written conversation cut at its atoms: ``atoms[k]`` (``(_AUDIO, k)`` or ``(_ID, id)``)
    stands between ``texts[k]`` and ``texts[k + 1]``. ``turns`` holds, per assistant message,
    (turn start, content start, turn end) as marks."""

    texts: list[str] = field(default_factory=lambda: [""])
    atoms: list[tuple[int, int]] = field(default_factory=list)
    turns: list[tuple[Mark, Mark, Mark]] = field(default_factory=list)
    #: the texts that hold something of the conversation (the others are the format's own)
    varying: set[int] = field(default_factory=set)

    def mark(self) -> Mark:
        return len(self.texts) - 1, len(self.texts[-1])

    def text(self, s: str) -> None:
        self.texts[-1] += s

    def content(self, s: str) -> None:
        self.texts[-1] += s
        self.varying.add(len(self.texts) - 1)

    def atom(self, kind: int, value: int) -> None:
        self.atoms.append((kind, value))
        self.texts.append("")


def record_messages(rec: Record, locator: str | None, system_prompt: str | None) -> list[Message]:
    """The messages of one example: a conversation's own, or a context/answer example as a user
    message and an assistant message (see the module docstring); ``system_prompt`` in front when
    there is no system message. Raises :class:`DataError` when the locators of the context do
    not match its audios."""
    if rec.messages is not None:
        messages = list(rec.messages)
    else:
        context = rec.context or ""
        parts: list[str | int] = []
        if locator and locator in context:
            for k, piece in enumerate(context.split(locator)):
                if k:
                    parts.append(k - 1)
                if piece:
                    parts.append(piece)
        count = sum(1 for p in parts if type(p) is int)
        if check_locators(count, len(rec.audio), locator, rec.where):
            parts = [0, " " + context] if context else [0]
        messages = [("user", tuple(parts)), ("assistant", (rec.answer,))]
    if system_prompt is not None and messages[0][0] != "system":
        messages.insert(0, ("system", (system_prompt,)))
    return messages


class ConversationBuilder:
    """Formats and tokenizes conversations for one dataset config (see the module docstring).

    Construction raises :class:`ConfigError` for an unknown format, a format's special token that
    the tokenizer does not have as one token, a BOS/EOS the format needs and the tokenizer lacks,
    or ``chat_template`` with a tokenizer that has no chat template.
    """

    needs_context = False

    def __init__(self, cfg: DatasetConfig, tokenizer: TextTokenizer) -> None:
        name = cfg.prompt_format
        self.cfg = cfg
        self.tokenizer = tokenizer
        self._max, self._min = cfg.max_seq_length, cfg.min_seq_length
        if self._min > self._max:
            raise ConfigError(f"min_seq_length {self._min} is larger than max_seq_length {self._max}")
        self._locator = cfg.audio_locator or None
        self._system = cfg.system_prompt
        self._last_only = cfg.loss_turns == "last"
        self._answer_only = cfg.answer_only_loss
        self._fixed: dict[tuple[str, bool], list[int]] = {}  # the format's own texts, encoded
        self._bos = self._special_id(cfg.add_bos, tokenizer.bos_id, "add_bos is true", "BOS")
        self._format: PromptFormat | None = None
        self._chat = None
        if name == "chat_template":
            render = getattr(tokenizer, "render_chat", None)
            if render is None or getattr(tokenizer, "chat_template", None) is None:
                raise ConfigError(
                    "prompt_format: chat_template needs a Hugging Face tokenizer with a chat template "
                    "(tokenizer_config.json's chat_template)"
                )
            self._chat = render
            self._probes: dict[tuple[str, ...], _Probe | None] = {}
            self._chat_locator = self._locator or DEFAULT_LOCATOR
        else:
            fmt = FORMATS.get(str(name))
            if fmt is None:
                raise ConfigError(
                    f"prompt_format: unknown format {name!r}; choose one of {', '.join(FORMATS)}"
                )
            self._format = fmt
            for text in fmt.specials:
                ids = tokenizer.encode(text, continuation=True)
                if len(ids) != 1:
                    raise ConfigError(
                        f"prompt_format {fmt.name}: the tokenizer has no token {text!r} (it encodes as "
                        f"{len(ids)} tokens); use the model's own tokenizer, or train one with "
                        f"`speechdata tokenizer train --kind hf --user-symbols` listing the format's tokens"
                    )
            self._bos_id = self._special_id(fmt.uses(BOS), tokenizer.bos_id, f"prompt_format {name}", "BOS")
            self._eos_id = self._special_id(fmt.uses(EOS), tokenizer.eos_id, f"prompt_format {name}", "EOS")

    @staticmethod
    def _special_id(needed: bool, token: int | None, why: str, what: str) -> list[int]:
        if not needed:
            return []
        if token is None:
            raise ConfigError(f"{why} but the tokenizer has no {what} token")
        return [token]

    # ------------------------------------------------------------------------------ writing

    def _write(self, messages: Sequence[Message]) -> _Layout:
        """The conversation written with the named format."""
        fmt = self._format
        assert fmt is not None
        out = _Layout()
        if self._bos:
            out.atom(_ID, self._bos[0])
        out.text(fmt.preamble)
        system: tuple[str | int, ...] | None = None
        for role, parts in messages:
            if role == "system":
                if fmt.system is not None:
                    self._turn(out, fmt.system, parts)
                else:
                    system = parts
                continue
            template = fmt.user if role == "user" else fmt.assistant
            if role == "user" and system is not None:
                if fmt.system_and_user is not None:
                    template = fmt.system_and_user
                    self._turn(out, template, parts, system)
                else:  # no system role: the system text in front of the first user message
                    self._turn(out, template, (*system, "\n\n", *parts))
                system = None
                continue
            start = out.mark()
            content = self._turn(out, template, parts)
            if role == "assistant":
                out.turns.append((start, content, out.mark()))
        return out

    def _turn(
        self,
        out: _Layout,
        template: Sequence[str | int],
        parts: Sequence[str | int],
        system: Sequence[str | int] = (),
    ) -> Mark:
        """Write one message with its role template; the mark where its content begins."""
        content = out.mark()
        for item in template:
            if type(item) is str:
                out.text(item)
            elif item in (MESSAGE, SYSTEM):
                if item == MESSAGE:
                    content = out.mark()
                for p in parts if item == MESSAGE else system:
                    if type(p) is str:
                        out.content(p)
                    else:
                        out.atom(_AUDIO, p)
            elif item == BOS:
                out.atom(_ID, self._bos_id[0])
            else:
                out.atom(_ID, self._eos_id[0])
        return content

    def _render(self, messages: Sequence[Message], where: str) -> _Layout:
        """The conversation written with the tokenizer's chat template."""
        loc = self._chat_locator
        chat = [
            {"role": role, "content": "".join(p if type(p) is str else loc for p in parts)}
            for role, parts in messages
        ]
        render = self._chat
        assert render is not None
        full = render(chat, where=where)
        spans = self._probed_spans(chat, full)
        if spans is None:
            spans = self._prefix_spans(chat, full, where)
        # cut the text at the locators; turn the character positions into marks
        out = _Layout()
        if self._bos:
            out.atom(_ID, self._bos[0])
        cuts: list[int] = []  # where each text after a locator starts in `full`
        pos = 0
        audio = 0
        while True:
            found = full.find(loc, pos)
            if found < 0:
                break
            out.text(full[pos:found])
            out.atom(_AUDIO, audio)
            audio += 1
            pos = found + len(loc)
            cuts.append(pos)
        out.text(full[pos:])
        base = len(out.texts) - 1 - len(cuts)  # the text number of full's first text
        out.varying.update(range(base, len(out.texts)))

        def mark(c: int) -> Mark:
            k = bisect_right(cuts, c)
            return base + k, c - (cuts[k - 1] if k else 0)

        out.turns = [(mark(a), mark(b), mark(c)) for a, b, c in spans]
        return out

    def _prefix_spans(self, chat: list[dict[str, str]], full: str, where: str) -> list[tuple[int, int, int]]:
        """Per assistant message k, (turn start, content start, turn end) in ``full``: the ends of
        ``render(chat[:k])``, of the same with the generation prompt, and of ``render(chat[:k + 1])``."""
        render = self._chat
        assert render is not None
        spans: list[tuple[int, int, int]] = []
        for k, message in enumerate(chat):
            if message["role"] != "assistant":
                continue
            before = render(chat[:k], where=where) if k else ""
            header = render(chat[:k], add_generation_prompt=True, where=where)
            upto = full if k + 1 == len(chat) else render(chat[: k + 1], where=where)
            if not (full.startswith(upto) and upto.startswith(header) and header.startswith(before)):
                raise DataError(
                    "bad_line",
                    where,
                    "the chat template does not write this conversation message by message (the text "
                    f"up to assistant message {k + 1} is not a prefix of the whole), so its turns "
                    "cannot be located",
                )
            spans.append((len(before), len(header), len(upto)))
        return spans

    def _probe(self, roles: tuple[str, ...]) -> _Probe | None:
        """The probe conversation of these roles (see :class:`_Probe`), located once per builder by
        the prefix rule; ``None`` when the template cannot write it message by message."""
        if roles in self._probes:
            return self._probes[roles]
        chat = [{"role": role, "content": _PROBE_TEXT.format(i)} for i, role in enumerate(roles)]
        probe: _Probe | None = None
        try:
            text = self._chat(chat, where="probe")  # type: ignore[misc]
            spans = self._prefix_spans(chat, text, "probe")
        except DataError:
            spans = None
        if spans is not None:
            found = list(_PROBE_FIND.finditer(text))
            starts = [m.start() for m in found]
            ends = [m.end() for m in found]
            bounds = []
            for span in spans:
                for c in span:
                    before = bisect_right(starts, c - 1)  # probe contents that start before c
                    if before and c < ends[before - 1]:
                        bounds = None  # a turn boundary inside a message's content
                        break
                    bounds.append((before, c))
                if bounds is None:
                    break
            if bounds is not None:
                pieces = [text[a:b] for a, b in zip([0, *ends], [*starts, len(text)], strict=True)]
                probe = _Probe(
                    tuple(pieces),
                    tuple(int(m.group(1)) for m in found),
                    tuple(m.end() - m.start() for m in found),
                    tuple(tuple(bounds[i : i + 3]) for i in range(0, len(bounds), 3)),
                )
        if len(self._probes) < _PROBES:
            self._probes[roles] = probe
        return probe

    def _probed_spans(self, chat: list[dict[str, str]], full: str) -> list[tuple[int, int, int]] | None:
        """The turns of ``full`` from the probe conversation of the same roles, when ``full`` is the
        probe's text with this conversation's contents put in; else ``None`` (locate by prefixes)."""
        probe = self._probe(tuple(m["role"] for m in chat))
        if probe is None:
            return None
        contents = [chat[j]["content"] for j in probe.order]
        parts = [probe.pieces[0]]
        for content, piece in zip(contents, probe.pieces[1:], strict=True):
            parts += (content, piece)
        if "".join(parts) != full:
            return None
        shift = [0]
        for content, width in zip(contents, probe.widths, strict=True):
            shift.append(shift[-1] + len(content) - width)
        return [tuple(c + shift[n] for n, c in span) for span in probe.spans]  # type: ignore[misc]

    # --------------------------------------------------------------------------- tokenizing

    def build_record(self, rec: Record) -> Prompt:
        """The tokens of one example (see the module docstring); raises :class:`DataError`
        (``bad_line``, ``too_long_text``, ``too_short_text``) for one bad example."""
        messages = record_messages(rec, self._locator, self._system)
        layout = self._render(messages, rec.where) if self._chat else self._write(messages)
        audios = sum(1 for kind, _ in layout.atoms if kind == _AUDIO)
        if audios != len(rec.audio):
            raise DataError(
                "bad_line",
                rec.where,
                f"the written conversation holds {audios} audio(s) but the example has {len(rec.audio)} "
                "(does the chat template change the audio locator?)",
            )
        return self._tokenize(layout, rec.where)

    def _tokenize(self, layout: _Layout, where: str) -> Prompt:
        tok = self.tokenizer
        texts, atoms = layout.texts, layout.atoms
        cuts: dict[int, list[int]] = {}  # per text, the marks inside it (character offsets)
        for turn in layout.turns:
            for k, c in turn:
                if 0 < c < len(texts[k]):
                    cuts.setdefault(k, []).append(c)
        fixed = self._fixed
        input_ids: list[int] = []
        spans: list[tuple[int, int]] = []
        at: dict[Mark, int] = {}  # the token index of each mark inside a text
        positions: list[int] = []
        after_start = True  # a text that starts the sequence or follows a BOS is not a continuation
        for k, text in enumerate(texts):
            start = len(input_ids)
            if text:
                cont = not after_start
                if k in cuts:
                    ids, found = tok.encode_cut(text, cuts[k], continuation=cont)
                    at.update(((k, c), start + i) for c, i in zip(cuts[k], found, strict=True))
                elif k in layout.varying:
                    ids = tok.encode(text, continuation=cont)
                else:  # the format's own text (a turn header between audios): encoded once
                    ids = fixed.get((text, cont))
                    if ids is None:
                        ids = tok.encode(text, continuation=cont)
                        if len(fixed) < _FIXED_TEXTS:
                            fixed[(text, cont)] = ids
                input_ids += ids
                after_start = False
            spans.append((start, len(input_ids)))
            if k < len(atoms):
                kind, value = atoms[k]
                if kind == _AUDIO:
                    positions.append(len(input_ids))
                    after_start = False
                else:
                    input_ids.append(value)
                    after_start = value == tok.bos_id

        def index(mark: Mark) -> int:
            return token_index(mark, texts, spans, lambda k, c: at[(k, c)])

        n = len(input_ids)
        if n > self._max:
            raise DataError("too_long_text", where, f"{n} tokens exceed max_seq_length={self._max}")
        if n < self._min:
            raise DataError("too_short_text", where, f"{n} tokens, fewer than min_seq_length={self._min}")
        turns = [(index(a), index(b), index(c)) for a, b, c in layout.turns]
        answer_start = turns[-1][1] if turns else n
        if not self._answer_only:
            targets = [0] + [1] * (n - 1) if n else []
        else:
            targets = [0] * n
            for first, _, last in turns[-1:] if self._last_only else turns:
                targets[first:last] = [1] * (last - first)
        return Prompt(input_ids, answer_start, positions, 0, self._answer_only, targets)


def make_prompt_builder(cfg: DatasetConfig, tokenizer: TextTokenizer) -> PromptBuilder | ConversationBuilder:
    """The prompt builder of a dataset config: a :class:`ConversationBuilder` with
    ``prompt_format``, else the context/answer :class:`~speechdata.text.prompt.PromptBuilder`."""
    if cfg.prompt_format is not None:
        return ConversationBuilder(cfg, tokenizer)
    return PromptBuilder(cfg, tokenizer)
