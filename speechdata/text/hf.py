"""Hugging Face tokenizers: a ``tokenizer.json`` behind the interface of
:class:`~speechdata.text.tokenizer.Tokenizer` (docs/tokenizers.md).

:class:`HFTokenizer` reads a ``tokenizer.json`` with the ``tokenizers`` package, offline, and the
``tokenizer_config.json`` beside it for the named special tokens (``bos_token``, ``eos_token``,
``pad_token``, ``sep_token``, ``unk_token``, ...) and the ``chat_template`` (a
``chat_template.jinja`` file beside them takes priority, as in transformers). Ids are those of
transformers' ``tokenizer.encode(text, add_special_tokens=False)``: the prompt builder adds BOS,
SEP and EOS itself (``add_bos``, ``add_sep``, ``add_eos``), so a post-processor's template
(Llama-3 prepends ``<|begin_of_text|>``) is not applied. Padding and truncation settings stored
in the file are ignored, as transformers ignores them unless asked.

:func:`load_tokenizer` picks the kind from a path: a ``tokenizer.json`` (or any ``.json`` file),
or a folder holding one, is an :class:`HFTokenizer`; anything else is a SentencePiece
:class:`~speechdata.text.tokenizer.Tokenizer`. :func:`train_hf_tokenizer` trains a byte-level
BPE ``tokenizer.json`` (``speechdata tokenizer train --kind hf``).

Example::

    >>> tok = load_tokenizer("Qwen2.5-0.5B-Instruct/")          # holds tokenizer.json
    >>> ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    >>> tok.decode(ids)
    '<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _RustTokenizer

from speechdata.errors import ConfigError
from speechdata.text.chat import SPECIAL_TOKEN_KEYS, ChatTemplate
from speechdata.text.tokenizer import (
    SEP_PIECE,
    TOKENIZER_JSON,
    _write_atomic,
    cut_tokens,
    training_inputs,
)
from speechdata.text.wordcache import word_cache

TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


# ------------------------------------------------------------------------------ loading


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: {what} is not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what} ({e.strerror})") from None


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    text = _read_text(path, what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: {what} is not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {what} must be a JSON object, got {type(value).__name__}")
    return value


def _token_text(value: Any, key: str, where: str) -> str | None:
    """A special token of a config: a string, or an AddedToken object ``{"content": ...}``."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise ConfigError(f"{where}: {key} must be a string or an object with 'content', got {value!r}")


def _default_template(value: Any, where: str) -> str | None:
    """The default chat template of a config's ``chat_template``: a string, or a list of
    ``{"name", "template"}`` entries of which the one named ``default``."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list) and all(isinstance(t, Mapping) and "name" in t for t in value):
        named = {t["name"]: t.get("template") for t in value}
        if isinstance(named.get("default"), str):
            return str(named["default"])
        raise ConfigError(f"{where}: chat_template has no template named 'default' (names: {sorted(named)})")
    raise ConfigError(f"{where}: chat_template must be a string or a list of named templates")


# ------------------------------------------------------------------------------- encoders

#: A special token of speechdata's own, added to the continuation encoder only: text is encoded as
#: a continuation by encoding it after this atom (private-use characters: never in real text).
_ATOM = "\ue000speechdata:continue\ue001"


def _encoders(spec: dict[str, Any]) -> tuple[_RustTokenizer, _RustTokenizer, int]:
    """The encoder of plain text, the continuation encoder and the id of its :data:`_ATOM`.

    Both drop the post-processor (it only adds special tokens, which are never asked for here,
    and ByteLevel's trims the offsets) and the stored padding and truncation.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"expected a JSON object, got {type(spec).__name__}")
    plain = json.dumps({**spec, "post_processor": None, "padding": None, "truncation": None})
    enc = _RustTokenizer.from_str(plain)
    cont = _RustTokenizer.from_str(plain)
    cont.add_special_tokens([AddedToken(_ATOM, special=True, normalized=False)])
    atom = cont.token_to_id(_ATOM)
    assert atom is not None
    return enc, cont, int(atom)


#: Normalizers and pre-tokenizers that treat the start of a text like the text after a special
#: token (no prefix space added, no whitespace trimmed): with only these, a continuation is
#: encoded as plain text.
_SAME_AT_START = frozenset({"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Split", "Digits", "Punctuation"})


def _start_is_continuation(spec: dict[str, Any]) -> bool:
    """Whether ``spec`` encodes text at the start of a sequence as it encodes it after a special
    token: its normalizer and pre-tokenizer are built only of :data:`_SAME_AT_START` steps and
    ``ByteLevel`` without ``add_prefix_space`` (GPT-2, Llama-3 and Qwen tokenizers). Anything
    else (``Metaspace``, ``Prepend``, ``Strip``, an unknown step) answers False."""

    def plain(step: Any) -> bool:
        if step is None:
            return True
        if not isinstance(step, dict):
            return False
        kind = step.get("type")
        if kind == "Sequence":
            inner = step.get("normalizers", step.get("pretokenizers"))
            return isinstance(inner, list) and all(plain(x) for x in inner)
        if kind == "ByteLevel":
            return step.get("add_prefix_space") is False
        return kind in _SAME_AT_START

    return plain(spec.get("normalizer")) and plain(spec.get("pre_tokenizer"))


def _ends(offsets: Sequence[tuple[int, int]], shift: int = 0) -> list[int]:
    """Token ends (the contract of ``encode_with_offsets``) from ``(start, end)`` character
    offsets, less ``shift``; a token with ``start == end`` (no character of the text: a prefix
    space the tokenizer added) takes the end of the token after it."""
    ends = [end - shift if end > shift else 0 for _, end in offsets]
    if any(start == end for start, end in offsets):
        for i in range(len(ends) - 2, -1, -1):
            if offsets[i][0] == offsets[i][1]:
                ends[i] = ends[i + 1]
    return ends


# ------------------------------------------------------------------------------ HFTokenizer


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` with the ids the prompt builder needs.

    The interface is :class:`~speechdata.text.tokenizer.Tokenizer`'s (the prompt builder's
    ``TextTokenizer``). ``bos_id``, ``eos_id`` and
    ``sep_id`` are the ids of the config's ``bos_token``, ``eos_token`` and ``sep_token`` (for
    ``sep_id``, else the ``<sep>`` token when the vocabulary has it), ``None`` when absent.
    ``pad_id`` is always an int: the ``pad_token``, else the ``eos_token``, else the unknown
    token, else 0 (padding is masked out; ``has_pad`` tells whether it is a real pad token).
    ``unk_id`` is the ``unk_token`` (config, else the model's) or ``None``: byte-level models have
    none. ``vocab_size`` is one more than the largest id, added tokens included (the size of an
    embedding table that every id fits).

    ``chat_template`` is the template text or ``None``; :meth:`render_chat` and
    :meth:`apply_chat_template` use it (:mod:`speechdata.text.chat`).

    Pickling stores the JSON texts; the Rust tokenizer is rebuilt on unpickling.
    """

    def __init__(
        self,
        tokenizer_json: str,
        config: Mapping[str, Any] | None = None,
        *,
        chat_template: str | None = None,
        source: str = "<tokenizer.json>",
        config_source: str = "<tokenizer_config>",
    ) -> None:
        self.source = source
        self.config_source = config_source
        self._json = tokenizer_json
        self._config: dict[str, Any] = dict(config or {})
        self._template_override = chat_template
        self._setup()

    def _setup(self) -> None:
        try:
            spec = json.loads(self._json)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.source}:{e.lineno}: not valid JSON ({e.msg})") from None
        try:
            self._enc, self._cont, self._atom = _encoders(spec)
        except Exception as e:  # the tokenizers package raises its own exception type
            raise ConfigError(f"{self.source}: not a Hugging Face tokenizer.json ({e})") from None
        self._same_at_start = _start_is_continuation(spec)  # continuations need no atom in front
        # ASCII text by cached pre-tokens, where that gives the same ids (None: always tokenizers)
        self._words = word_cache(spec, self._enc) if self._same_at_start else None

        where = self.config_source
        self.special_tokens: dict[str, str] = {}
        for key in SPECIAL_TOKEN_KEYS:
            text = _token_text(self._config.get(key), key, where)
            if text is not None:
                self.special_tokens[key] = text

        def token_id(key: str) -> int | None:
            text = self.special_tokens.get(key)
            if text is None:
                return None
            i = self._enc.token_to_id(text)
            if i is None:
                raise ConfigError(f"{where}: {key} {text!r} is not in the vocabulary of {self.source}")
            return int(i)

        vocab = self._enc.get_vocab(with_added_tokens=True)
        self.vocab_size: int = max(vocab.values()) + 1 if vocab else 0
        model_unk = spec.get("model", {}).get("unk_token") if isinstance(spec.get("model"), dict) else None
        unk = token_id("unk_token")
        if unk is None and isinstance(model_unk, str):
            unk = self.piece_to_id(model_unk)
        self.unk_id: int | None = unk
        self.bos_id: int | None = token_id("bos_token")
        self.eos_id: int | None = token_id("eos_token")
        pad = token_id("pad_token")
        self.has_pad: bool = pad is not None
        fallback = next((i for i in (self.eos_id, self.unk_id) if i is not None), 0)
        self.pad_id: int = pad if pad is not None else fallback
        sep = token_id("sep_token")
        self.sep_id: int | None = sep if sep is not None else self.piece_to_id(SEP_PIECE)
        self._control = frozenset(
            i for i in (self.bos_id, self.eos_id, pad) if i is not None
        )  # what decode leaves out

        template = self._template_override
        if template is None:
            template = _default_template(self._config.get("chat_template"), where)
        self.chat_template: str | None = template
        self._chat = (
            ChatTemplate(template, self.special_tokens, name=f"{where}:chat_template")
            if template is not None
            else None
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HFTokenizer:
        """Load a ``tokenizer.json`` file, or a folder holding one, with the
        ``tokenizer_config.json`` (and ``special_tokens_map.json``, ``chat_template.jinja``) beside
        it when present."""
        p = Path(path)
        if p.is_dir():
            p = p / TOKENIZER_JSON
        text = _read_text(p, "tokenizer.json")
        folder = p.parent
        config_path = folder / TOKENIZER_CONFIG
        config: dict[str, Any] = {}
        if config_path.is_file():
            config = _read_json_object(config_path, "tokenizer config")
        map_path = folder / SPECIAL_TOKENS_MAP
        if map_path.is_file():  # the older file: tokens the config does not name
            for key, value in _read_json_object(map_path, "special tokens map").items():
                if key in SPECIAL_TOKEN_KEYS and config.get(key) is None:
                    config[key] = value
        template_path = folder / CHAT_TEMPLATE_FILE
        template = _read_text(template_path, "chat template") if template_path.is_file() else None
        return cls(text, config, chat_template=template, source=str(p), config_source=str(config_path))

    @property
    def tokenizer_json(self) -> str:
        """The ``tokenizer.json`` text as loaded."""
        return self._json

    @property
    def config(self) -> dict[str, Any]:
        """The ``tokenizer_config.json`` entries as loaded (a copy)."""
        return dict(self._config)

    # ----------------------------------------------------------------------------- encoding

    def _encoding(self, text: str, continuation: bool) -> tuple[Any, int]:
        """The ``tokenizers`` Encoding of ``text`` and how many leading tokens are not ``text``'s."""
        if not continuation or self._same_at_start:
            return self._enc.encode(text, add_special_tokens=False), 0
        e = self._cont.encode(_ATOM + text, add_special_tokens=False)
        if not e.ids or e.ids[0] != self._atom:  # never seen: the atom is split off before anything else
            raise ConfigError(f"{self.source}: cannot encode continuation text with this tokenizer")
        return e, 1

    def encode(self, text: str, *, continuation: bool = False) -> list[int]:
        """Token ids of ``text``, no special token added; added tokens (special or not) found in
        ``text`` are single ids.

        ``continuation=False``: ``text`` starts a sequence (a ``Metaspace`` pre-tokenizer or a
        ``Prepend`` normalizer may put a space in front, a ``Strip`` normalizer may trim).
        ``continuation=True``: ``text`` continues a sequence after a special token or an audio,
        and gets exactly the tokens it gets after a special token in a longer text: it is encoded
        after a special token of speechdata's own, which is then left out. For a byte-level BPE
        without ``add_prefix_space`` (GPT-2, Llama-3, Qwen) both are the same.
        """
        if self._words is not None:
            ids = self._words.encode(text)
            if ids is not None:
                return ids
        e, skip = self._encoding(text, continuation)
        return e.ids[skip:] if skip else e.ids

    def encode_batch(self, texts: Sequence[str], *, continuation: bool = False) -> list[list[int]]:
        """:meth:`encode` of each text, on this thread (DataLoader workers are already one per
        core, and a ``tokenizers`` thread pool used before a fork is disabled in the children)."""
        return [self.encode(t, continuation=continuation) for t in texts]

    def encode_with_offsets(self, text: str, *, continuation: bool = False) -> tuple[list[int], list[int]]:
        """``(ids, ends)``: the ids of :meth:`encode` and where each token ends in ``text``: the
        contract of :meth:`speechdata.text.tokenizer.TextTokenizer.encode_with_offsets`, from
        the ``tokenizers`` character offsets (the tokens of one multi-byte character all end
        where it ends; a token that covers no character takes the end of the token after it)."""
        if self._words is not None:
            found = self._words.encode_with_ends(text)
            if found is not None:
                return found
        e, skip = self._encoding(text, continuation)
        offsets = e.offsets[skip:] if skip else e.offsets
        return (e.ids[skip:] if skip else e.ids), _ends(offsets, len(_ATOM) if skip else 0)

    def encode_cut(
        self, text: str, cuts: Sequence[int], *, continuation: bool = False
    ) -> tuple[list[int], list[int]]:
        """:meth:`TextTokenizer.encode_cut`: each cut is the token that holds its character
        (``tokenizers``' own ``char_to_token``), which is the rule of :func:`cut_tokens` when the
        token before it ends at or before the cut; otherwise (a character no token holds, a
        token of no character in front) the cut comes from every token's offsets."""
        if self._words is not None:
            found = self._words.encode_cut(text, cuts)
            if found is not None:
                return found
        e, skip = self._encoding(text, continuation)
        shift = len(_ATOM) if skip else 0
        at: list[int] = []
        ids = e.ids[skip:] if skip else e.ids
        for c in cuts:
            t = e.char_to_token(c + shift)
            if t is not None and t > skip:
                start, end = e.token_to_chars(t - 1)
                if not start < end <= c + shift:
                    t = None
            if t is None or t < skip:
                offsets = e.offsets[skip:] if skip else e.offsets
                return ids, cut_tokens(_ends(offsets, shift), cuts)
            at.append(t - skip)
        return ids, at

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; BOS, EOS and the pad token decode to nothing, other added tokens (the
        audio locator) to their text."""
        return self._enc.decode(
            [int(i) for i in ids if int(i) not in self._control], skip_special_tokens=False
        )

    def piece_to_id(self, piece: str) -> int | None:
        """Id of the vocabulary token ``piece`` (as written in the vocabulary: byte-level tokens
        spell a space as ``Ġ``), or ``None`` if there is no such token."""
        i = self._enc.token_to_id(piece)
        return None if i is None else int(i)

    def id_to_piece(self, i: int) -> str:
        """The vocabulary token of id ``i``; ``IndexError`` for an id no token has."""
        piece = self._enc.id_to_token(int(i))
        if piece is None:
            raise IndexError(f"token id {i} is not in the vocabulary of {self.source}")
        return str(piece)

    # --------------------------------------------------------------------------- chat template

    def _template(self) -> ChatTemplate:
        if self._chat is None:
            raise ConfigError(
                f"{self.config_source}: the tokenizer has no chat_template (add one to "
                f"{TOKENIZER_CONFIG} or as {CHAT_TEMPLATE_FILE})"
            )
        return self._chat

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        where: str = "",
        **kwargs: Any,
    ) -> str:
        """``messages`` rendered with the tokenizer's chat template (:meth:`ChatTemplate.render`):
        transformers' ``apply_chat_template(messages, tokenize=False)``."""
        return self._template().render(
            messages, add_generation_prompt=add_generation_prompt, where=where, **kwargs
        )

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        where: str = "",
        **kwargs: Any,
    ) -> list[int]:
        """The ids of :meth:`render_chat`: transformers' ``apply_chat_template(messages)`` (its
        ``input_ids``: the rendered text encoded without adding special tokens)."""
        return self.encode(
            self.render_chat(messages, add_generation_prompt=add_generation_prompt, where=where, **kwargs)
        )

    # ----------------------------------------------------------------------------- pickling

    def __getstate__(self) -> dict[str, Any]:
        return {
            "json": self._json,
            "config": self._config,
            "chat_template": self._template_override,
            "source": self.source,
            "config_source": self.config_source,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.source = state["source"]
        self.config_source = state["config_source"]
        self._json = state["json"]
        self._config = state["config"]
        self._template_override = state["chat_template"]
        self._setup()

    def __repr__(self) -> str:
        return f"HFTokenizer({self.source!r}, vocab_size={self.vocab_size})"


# -------------------------------------------------------------------------------- training

#: The special tokens :func:`train_hf_tokenizer` defines first, with their ids and config keys.
HF_SPECIAL_TOKENS = (
    ("pad_token", "<pad>"),
    ("bos_token", "<s>"),
    ("eos_token", "</s>"),
    ("sep_token", SEP_PIECE),
)


def train_hf_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike[str],
    vocab_size: int,
    user_symbols: Sequence[str] = (),
    *,
    min_frequency: int = 2,
    prompt_format: str | None = None,
) -> HFTokenizer:
    """Train a byte-level BPE tokenizer on ``texts`` and write ``out_dir/tokenizer.json`` and
    ``out_dir/tokenizer_config.json``.

    Ids are fixed: ``<pad>``=0, ``<s>``=1 (BOS), ``</s>``=2 (EOS), ``<sep>``=3, then each of
    ``user_symbols`` (the audio locator, ``end_string``) as a special added token, so it is one id
    wherever it appears and is never merged with its neighbours; then the 256 byte tokens and the
    merges. The pre-tokenizer is GPT-2's byte-level split without a prefix space, so any text
    encodes (no unknown token) and decodes back exactly. ``vocab_size`` is an upper bound: a small
    corpus yields fewer merges. Training is deterministic (BPE merges ties by a fixed order).

    ``prompt_format`` (``llama3``, ``qwen``, ``gemma``: :mod:`speechdata.text.formats`) adds the
    format's special tokens after the user symbols, makes its end-of-turn token the EOS (so
    generation stops where an assistant turn ends, as the instruct models of those families
    do) and writes a chat template that writes conversations as the format does.

    Raises :class:`ConfigError` for a bad ``vocab_size`` or symbol, or a corpus with no text.
    """
    config: dict[str, Any] = {key: token for key, token in HF_SPECIAL_TOKENS}
    if prompt_format is not None:
        from speechdata.text.formats import FORMATS

        fmt = FORMATS.get(prompt_format)
        if fmt is None or fmt.chat_template is None:
            usable = ", ".join(name for name, f in FORMATS.items() if f.chat_template)
            raise ConfigError(f"tokenizer prompt format must be one of {usable}; got {prompt_format!r}")
        user_symbols = [*user_symbols, *fmt.specials]
        config["eos_token"] = fmt.end_of_turn
        config["chat_template"] = fmt.chat_template
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials, sentences = training_inputs(
        texts,
        vocab_size,
        [token for _, token in HF_SPECIAL_TOKENS],
        user_symbols,
        len(alphabet),
        "special and byte tokens",
    )
    tok = _RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.update(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 30,
        }
    )
    tokenizer_json = tok.to_str(pretty=True)
    _write_atomic(out / TOKENIZER_JSON, tokenizer_json.encode("utf-8"))
    _write_atomic(
        out / TOKENIZER_CONFIG, (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    )
    return HFTokenizer(
        tokenizer_json,
        config,
        source=str(out / TOKENIZER_JSON),
        config_source=str(out / TOKENIZER_CONFIG),
    )
