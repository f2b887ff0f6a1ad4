"""SentencePiece tokenizer: loading, training, and encoding with character offsets for prompts.

:class:`Tokenizer` wraps a SentencePiece model. It keeps the serialized model bytes (not the C++
processor), so it pickles cheaply into DataLoader workers. Besides plain :meth:`Tokenizer.encode`
it offers *continuation* encoding: text that follows a special token or an audio in the same
sequence is encoded without the model's dummy-prefix space and without whitespace trimming, and
:meth:`Tokenizer.encode_with_offsets`, which also says where each token ends in the text. The
prompt builder encodes each stretch of a formatted example's text whole and finds the answer
boundary, truncation cuts and audio positions from those offsets (docs/differences-from-nemo.md,
"Natural tokenization"). :class:`TextTokenizer` is the interface the prompt builder needs, which
any other tokenizer kind implements too.

Example::

    >>> tok = train_tokenizer(texts, "out/tok", vocab_size=1000, user_symbols=["|audio|"])
    >>> ids, ends = tok.encode_with_offsets("the world")
    >>> [tok.id_to_piece(i) for i in ids], ends
    (['▁the', '▁world'], [3, 9])
"""

from __future__ import annotations

import io
import os
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any, Protocol

import sentencepiece as spm

from speechdata.errors import ConfigError

#: The piece used as separator token (``add_sep``); :func:`train_tokenizer` always defines it.
SEP_PIECE = "<sep>"

MODEL_TYPES = ("unigram", "bpe")

# Protobuf field numbers of sentencepiece_model.proto (ModelProto, TrainerSpec, NormalizerSpec).
_MODEL_TRAINER_SPEC = 2
_MODEL_NORMALIZER_SPEC = 3
_MODEL_SELF_TEST_DATA = 4
_TRAINER_WHITESPACE_AS_SUFFIX = 24
_NORM_NAME = 1
_NORM_CHARSMAP = 2
_NORM_ADD_DUMMY_PREFIX = 3
_NORM_REMOVE_EXTRA_WHITESPACES = 4
_NORM_RULE_TSV = 6


# ------------------------------------------------------------------------- protobuf patching


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: bytes) -> list[tuple[int, int, bytes]]:
    """Split a serialized protobuf message into ``(field, wire_type, raw_bytes)`` records."""
    out = []
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf message")
        out.append((field, wire, buf[start:pos]))
    return out


def _payload(raw: bytes) -> bytes:
    """The payload of a length-delimited record produced by :func:`_fields`."""
    _, pos = _read_varint(raw, 0)
    n, pos = _read_varint(raw, pos)
    return raw[pos : pos + n]


def _continuation_proto(model: bytes) -> bytes:
    """The model with ``add_dummy_prefix`` and ``remove_extra_whitespaces`` turned off.

    Self-test samples are dropped: they were computed with the original normalizer.
    """
    parts = []
    for field, wire, raw in _fields(model):
        if field == _MODEL_SELF_TEST_DATA:
            continue
        if field == _MODEL_NORMALIZER_SPEC and wire == 2:
            kept = [
                r
                for f, _, r in _fields(_payload(raw))
                if f not in (_NORM_ADD_DUMMY_PREFIX, _NORM_REMOVE_EXTRA_WHITESPACES)
            ]
            kept.append(_varint(_NORM_ADD_DUMMY_PREFIX << 3) + b"\x00")
            kept.append(_varint(_NORM_REMOVE_EXTRA_WHITESPACES << 3) + b"\x00")
            body = b"".join(kept)
            raw = _varint(_MODEL_NORMALIZER_SPEC << 3 | 2) + _varint(len(body)) + body
        parts.append(raw)
    return b"".join(parts)


def _spec(model: bytes, field: int) -> dict[int, bytes | int]:
    """The scalar fields of sub-message ``field`` of ``model``: bytes payloads and varint values."""
    out: dict[int, bytes | int] = {}
    for f, wire, raw in _fields(model):
        if f != field or wire != 2:
            continue
        for g, w, r in _fields(_payload(raw)):
            if w == 2:
                out[g] = _payload(r)
            elif w == 0:
                _, pos = _read_varint(r, 0)
                out[g] = _read_varint(r, pos)[0]
    return out


def _normalizer(model: bytes) -> tuple[bool, bool]:
    """``(lossless, add_dummy_prefix)`` of a model's normalizer.

    Lossless: the pieces of an encoding spell the text exactly (one character per character,
    whitespace escaped as ``▁`` but not trimmed): the ``identity`` rule with no character map and
    no rule table, no whitespace removal, and the dummy prefix (if any) in front. Any field this
    parser cannot read makes the model count as not lossless.
    """
    try:
        norm = _spec(model, _MODEL_NORMALIZER_SPEC)
        trainer = _spec(model, _MODEL_TRAINER_SPEC)
    except ValueError:
        return False, True
    lossless = (
        norm.get(_NORM_NAME, b"") == b"identity"
        and not norm.get(_NORM_CHARSMAP, b"")
        and not norm.get(_NORM_RULE_TSV, b"")
        and norm.get(_NORM_REMOVE_EXTRA_WHITESPACES, 1) == 0
        and not trainer.get(_TRAINER_WHITESPACE_AS_SUFFIX, 0)
    )
    return lossless, bool(norm.get(_NORM_ADD_DUMMY_PREFIX, 1))


def _processor(model: bytes) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model)
    return sp


def _fast_encoder(sp: spm.SentencePieceProcessor) -> Callable[[str], list[int]]:
    """Fastest correct ``str -> ids`` callable for ``sp``.

    The public ``encode`` resolves a dozen options per call; the bound C++ method skips that. It is
    private API, so it is used only if present and agreeing with ``encode`` on a probe string.
    """
    raw = getattr(getattr(sp, "_processor", None), "_EncodeAsIds", None)
    if raw is not None:

        def fast(text: str) -> list[int]:
            return raw(text, False, 0, 0.0, False, False, False)

        probe = "speechdata probe 123"
        try:
            if fast(probe) == sp.encode(probe):
                return fast
        except (TypeError, RuntimeError):
            pass
    return sp.encode


# ------------------------------------------------------------------------------- interface


def cut_tokens(ends: Sequence[int], cuts: Sequence[int]) -> list[int]:
    """The number of tokens before each character offset of ``cuts``, from the token ``ends`` of
    :meth:`TextTokenizer.encode_with_offsets`: the tokens that end at or before the cut (a token
    that holds the character at the cut comes after it). The one rule of every prompt builder's
    cuts (:meth:`TextTokenizer.encode_cut`)."""
    return [bisect_right(ends, c) for c in cuts]


class TextTokenizer(Protocol):
    """What the prompt builder needs of a tokenizer; :class:`Tokenizer` (SentencePiece) is one.

    ``bos_id``, ``eos_id`` and ``sep_id`` are ``None`` when the tokenizer has no such token
    (``sep_id`` is the id of the :data:`SEP_PIECE` token); ``pad_id`` is always an id.
    """

    vocab_size: int
    pad_id: int
    bos_id: int | None
    eos_id: int | None
    sep_id: int | None

    def encode(self, text: str, *, continuation: bool = False) -> list[int]:
        """Token ids of ``text``, no special token added.

        ``continuation=False``: ``text`` starts a sequence (the tokenizer may add its prefix
        space, as SentencePiece's dummy prefix or a ``Metaspace`` pre-tokenizer do, and may trim
        whitespace as its normalizer says). ``continuation=True``: ``text`` continues a sequence,
        after a special token or an audio, so nothing is added in front of it and no whitespace is
        trimmed: exactly the tokens the text gets when it follows such an atom in a longer text.
        """
        ...

    def encode_with_offsets(self, text: str, *, continuation: bool = False) -> tuple[list[int], list[int]]:
        """``(ids, ends)``: the ids of :meth:`encode` (the same list, for the same arguments) and
        where each token ends in ``text``.

        ``ends[i]`` is a character offset into ``text`` (a Python ``str`` index, not a byte
        offset): the end of the last character that token ``i`` covers, so the tokens
        ``ids[:i + 1]`` spell ``text[:ends[i]]``, with these rules:

        * ``len(ends) == len(ids)``, ``ends`` is non-decreasing and ``0 <= ends[i] <= len(text)``;
        * a token holding only part of a character (a byte-fallback piece, a byte-level BPE
          token of a multi-byte character) ends where that character ends: all the tokens of one
          character have the same end;
        * a token holding no character of ``text`` (a prefix space the tokenizer adds in front
          of the text) has the end of the token after it;
        * characters the tokenizer drops (whitespace its normalizer trims) belong to no token.

        The prompt builder cuts the tokens at a character offset ``c`` of the text with
        ``bisect_right(ends, c)``: the tokens that end at or before ``c`` come before the cut, and
        a token that holds the character at ``c`` (even if it starts before ``c``) comes after it.
        For example ``"A: yes"`` as ``▁A``, ``:``, ``▁yes`` has ``ends == [1, 2, 6]``; cut at 2 (the
        space before ``yes``), ``▁yes`` is after the cut.
        """
        ...

    def encode_cut(
        self, text: str, cuts: Sequence[int], *, continuation: bool = False
    ) -> tuple[list[int], list[int]]:
        """``(ids, at)``: the ids of :meth:`encode` and, for each character offset ``cuts[j]``
        (``0 < cuts[j] < len(text)``), the number of tokens before that cut: the tokens that
        end at or before it, ``bisect_right(ends, cuts[j])`` with the ``ends`` of
        :meth:`encode_with_offsets` (:func:`cut_tokens`). The prompt builders ask for the cuts
        they need only, so a tokenizer may answer without building every token's offsets."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; control tokens (pad, BOS, EOS) decode to nothing."""
        ...


# ------------------------------------------------------------------------------- Tokenizer


class Tokenizer:
    """A SentencePiece model with the ids the prompt builder needs.

    ``pad_id`` is always an int: the model's pad piece, or its unknown piece when it defines no pad
    (padding is masked out, so any id works; the unknown piece exists in every SentencePiece
    model). ``bos_id``, ``eos_id`` and ``sep_id`` are ``None`` when the model lacks the piece
    (``sep_id`` is the id of the ``<sep>`` piece).

    Pickling stores the model bytes; the processor is rebuilt on unpickling.
    """

    def __init__(self, model: bytes, source: str = "<bytes>") -> None:
        self.source = source
        self._model = bytes(model)
        self._setup()

    def _setup(self) -> None:
        try:
            self._sp = _processor(self._model)
        except (RuntimeError, OSError) as e:
            raise ConfigError(f"{self.source}: not a SentencePiece model ({e})".splitlines()[0]) from None
        try:
            self._sp_cont = _processor(_continuation_proto(self._model))
        except (ValueError, RuntimeError, OSError):
            self._sp_cont = self._sp
        self._enc = _fast_encoder(self._sp)
        self._enc_cont = _fast_encoder(self._sp_cont)
        lossless, self._dummy_prefix = _normalizer(self._model)
        sp = self._sp
        self.vocab_size: int = sp.get_piece_size()
        self.unk_id: int = sp.unk_id()
        self.bos_id: int | None = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_id: int | None = sp.eos_id() if sp.eos_id() >= 0 else None
        self.has_pad: bool = sp.pad_id() >= 0
        self.pad_id: int = sp.pad_id() if self.has_pad else self.unk_id
        self.sep_id: int | None = self.piece_to_id(SEP_PIECE)
        # Characters of text each piece spells, for lossless models (see encode_with_offsets).
        self._spelled: list[int] | None = self._spelled_lengths() if lossless else None

    def _spelled_lengths(self) -> list[int]:
        """Per id, how many characters of the text the piece ends: its length, for a byte piece 1
        for the first byte of a character and 0 for the others (so all the bytes of a character end
        where it ends), and 0 for control and unknown pieces (so a text with an unknown piece does
        not add up, and :meth:`encode_with_offsets` asks SentencePiece for its offsets instead)."""
        sp = self._sp
        out = []
        for i in range(sp.get_piece_size()):
            if sp.is_byte(i):
                byte = int(sp.id_to_piece(i)[3:5], 16)
                out.append(0 if 0x80 <= byte < 0xC0 else 1)
            elif sp.is_control(i) or sp.is_unknown(i):
                out.append(0)
            else:
                out.append(len(sp.id_to_piece(i)))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a ``.model`` file, or a directory holding ``tokenizer.model``."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.model"
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{p}: tokenizer model not found") from None
        except OSError as e:
            raise ConfigError(f"{p}: cannot read tokenizer model ({e.strerror})") from None
        return cls(data, str(p))

    @property
    def model_bytes(self) -> bytes:
        """The serialized SentencePiece model."""
        return self._model

    def encode(self, text: str, *, continuation: bool = False) -> list[int]:
        """Token ids of ``text`` (:meth:`TextTokenizer.encode`).

        With ``continuation=True`` the text is encoded as the continuation of earlier text: no
        dummy-prefix space is added and no whitespace is trimmed.
        """
        return self._enc_cont(text) if continuation else self._enc(text)

    def encode_with_offsets(self, text: str, *, continuation: bool = False) -> tuple[list[int], list[int]]:
        """:meth:`encode` and where each token ends in ``text``: the contract of
        :meth:`TextTokenizer.encode_with_offsets`.

        For a lossless model (``identity`` normalization, whitespace kept, as
        :func:`train_tokenizer` writes) the ends are the running sum of the characters each piece
        spells, less the dummy prefix; otherwise (and for a text with unknown pieces) they come
        from SentencePiece's own character offsets.
        """
        ids = self._enc_cont(text) if continuation else self._enc(text)
        spelled = self._spelled
        if spelled is not None and ids:
            prefix = self._dummy_prefix and not continuation
            ends = list(accumulate(map(spelled.__getitem__, ids), initial=-1 if prefix else 0))
            del ends[0]
            # an unknown piece spells nothing of the one or more characters it stands for
            if ends[-1] == len(text):
                if prefix and ends[0] == 0 and len(ends) > 1:
                    ends[0] = ends[1]  # the dummy prefix alone: no character of the text
                return ids, ends
        return ids, self._sp_offsets(text, continuation)

    def _sp_offsets(self, text: str, continuation: bool) -> list[int]:
        """Token ends from SentencePiece's ``(begin, end)`` character offsets; a token with
        ``begin == end`` (a dummy prefix, a byte of a character but its last) takes the next
        token's end."""
        sp = self._sp_cont if continuation else self._sp
        offsets = sp.encode(text, out_type="offset_mapping")["offsets"]
        ends = [end for _, end in offsets]
        for i in range(len(ends) - 2, -1, -1):
            if offsets[i][0] == offsets[i][1]:
                ends[i] = ends[i + 1]
        return ends

    def encode_batch(self, texts: Sequence[str], *, continuation: bool = False) -> list[list[int]]:
        """:meth:`encode` of each text (single-threaded: faster than a thread pool for short texts)."""
        enc = self._enc_cont if continuation else self._enc
        return [enc(t) for t in texts]

    def encode_cut(
        self, text: str, cuts: Sequence[int], *, continuation: bool = False
    ) -> tuple[list[int], list[int]]:
        """:meth:`TextTokenizer.encode_cut`, from :meth:`encode_with_offsets`."""
        ids, ends = self.encode_with_offsets(text, continuation=continuation)
        return ids, cut_tokens(ends, cuts)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; control pieces (pad, BOS, EOS) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def piece_to_id(self, piece: str) -> int | None:
        """Id of the vocabulary piece ``piece``, or ``None`` if the model has no such piece."""
        i = self._sp.piece_to_id(piece)
        if i == self.unk_id and self._sp.id_to_piece(i) != piece:
            return None
        return i

    def id_to_piece(self, i: int) -> str:
        """The vocabulary piece of id ``i``."""
        return self._sp.id_to_piece(int(i))

    def score(self, i: int) -> float:
        """The model's score of piece ``i`` (log probability for unigram models)."""
        return float(self._sp.get_score(int(i)))

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self._model, "source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.source = state["source"]
        self._model = state["model"]
        self._setup()

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"


# -------------------------------------------------------------------------------- training


TOKENIZER_JSON = "tokenizer.json"


def find_tokenizer_json(path: str | os.PathLike[str]) -> Path | None:
    """The ``tokenizer.json`` that ``path`` names (the file itself when it ends in ``.json``, or
    ``path/tokenizer.json`` for a folder holding one), or ``None`` when ``path`` names a
    SentencePiece model (a ``.model`` file or a folder without ``tokenizer.json``).

    A folder holding both ``tokenizer.json`` and ``tokenizer.model`` (as many Hugging Face
    repositories do) is read as ``tokenizer.json``, which is what transformers reads too.
    """
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.suffix == ".json":
        return p
    if p.is_dir() and (p / TOKENIZER_JSON).is_file():
        return p / TOKENIZER_JSON
    return None


def load_tokenizer(path: str | os.PathLike[str]) -> TextTokenizer:
    """The tokenizer at ``path``, of either kind (see :func:`find_tokenizer_json`): a Hugging Face
    ``tokenizer.json`` (:class:`speechdata.text.hf.HFTokenizer`, imported only then) or a
    SentencePiece model (:class:`Tokenizer`). Every command and ``build_dataloader`` load
    tokenizers through this function."""
    found = find_tokenizer_json(path)
    if found is None:
        return Tokenizer.load(os.path.expanduser(os.fspath(path)))
    from speechdata.text.hf import HFTokenizer

    return HFTokenizer.load(found)


def training_inputs(
    texts: Iterable[str],
    vocab_size: int,
    fixed: Sequence[str],
    user_symbols: Sequence[str],
    reserved: int,
    reserved_what: str,
) -> tuple[list[str], list[str]]:
    """The checks every tokenizer trainer makes (both kinds): a positive ``vocab_size`` with room
    beyond ``reserved`` ids plus the symbols, non-empty string ``user_symbols``, some text.

    Returns ``(symbols, sentences)``: ``fixed`` followed by the new ``user_symbols`` in order, and
    the non-blank texts. Raises :class:`ConfigError` naming what is wrong.
    """
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size <= 0:
        raise ConfigError(f"tokenizer vocab_size must be a positive integer; got {vocab_size!r}")
    symbols = list(fixed)
    for s in user_symbols:
        if not isinstance(s, str) or not s:
            raise ConfigError(f"tokenizer user symbol must be a non-empty string; got {s!r}")
        if s not in symbols:
            symbols.append(s)
    minimum = reserved + len(symbols)
    if vocab_size <= minimum:
        raise ConfigError(
            f"tokenizer vocab_size {vocab_size} is too small: {minimum} ids go to {reserved_what}; "
            f"use at least {minimum + 16}"
        )
    sentences = [t for t in texts if t and not t.isspace()]
    if not sentences:
        raise ConfigError("tokenizer training: no text found in the given corpus")
    return symbols, sentences


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike[str],
    vocab_size: int,
    user_symbols: Sequence[str] = (),
    model_type: str = "unigram",
    seed: int = 0,
    *,
    byte_fallback: bool = True,
) -> Tokenizer:
    """Train a SentencePiece model on ``texts`` and write ``out_dir/tokenizer.{model,vocab}``.

    Ids are fixed: pad=0, unk=1, bos=2, eos=3, then ``<sep>`` and each of ``user_symbols`` (for
    example the audio locator and ``end_string``) as single user-defined pieces. Training is
    deterministic (one thread, seeded) and lossless on text: no normalization, whitespace kept,
    unseen characters fall back to bytes (``byte_fallback``, which needs 256 byte pieces).
    ``vocab_size`` is an upper bound (``hard_vocab_limit=False``), so tiny corpora work.

    Raises :class:`ConfigError` for a bad ``vocab_size``/``model_type`` or a corpus with no text.
    """
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"tokenizer model_type must be one of {', '.join(MODEL_TYPES)}; got {model_type!r}")
    symbols, sentences = training_inputs(
        texts,
        vocab_size,
        [SEP_PIECE],
        user_symbols,
        4 + (256 if byte_fallback else 0),
        "special, user and byte pieces",
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=writer,
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            model_type=model_type,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            user_defined_symbols=symbols,
            num_threads=1,
            byte_fallback=byte_fallback,
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            max_sentence_length=1 << 16,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ConfigError(f"tokenizer training failed: {e}".splitlines()[0]) from None
    tok = Tokenizer(writer.getvalue(), str(out / "tokenizer.model"))
    # Written through a temporary name so that a crash never leaves a truncated model behind.
    vocab = "".join(f"{tok.id_to_piece(i)}\t{tok.score(i):g}\n" for i in range(tok.vocab_size))
    _write_atomic(out / "tokenizer.vocab", vocab.encode("utf-8"))
    _write_atomic(out / "tokenizer.model", tok.model_bytes)
    return tok


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
