"""SentencePiece tokenizer: loading, training, and piecewise encoding for prompts.

:class:`Tokenizer` wraps a SentencePiece model. It keeps the serialized model bytes (not the C++
processor), so it pickles cheaply into DataLoader workers. Besides plain :meth:`Tokenizer.encode`
it offers *continuation* encoding: a piece of text that follows other text in the same sequence is
encoded without the model's dummy-prefix space and without whitespace trimming, so that encoding a
text piece by piece and concatenating the ids decodes back to the joined text (for models whose
normalizer is lossless, such as those :func:`train_tokenizer` writes). The prompt builder relies on
it to know exactly which tokens are template text and which are manifest content.

Example::

    >>> tok = train_tokenizer(["hello world", "good morning"], "out/tok", vocab_size=300,
    ...                       user_symbols=["|audio|"])
    >>> ids = tok.encode("hello") + tok.encode(" world", continuation=True)
    >>> tok.decode(ids)
    'hello world'
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from speechdata.errors import ConfigError

#: The piece used as separator token (``add_sep``); :func:`train_tokenizer` always defines it.
SEP_PIECE = "<sep>"

MODEL_TYPES = ("unigram", "bpe")

# Protobuf field numbers of sentencepiece_model.proto (ModelProto / NormalizerSpec).
_MODEL_NORMALIZER_SPEC = 3
_MODEL_SELF_TEST_DATA = 4
_NORM_ADD_DUMMY_PREFIX = 3
_NORM_REMOVE_EXTRA_WHITESPACES = 4


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
        sp = self._sp
        self.vocab_size: int = sp.get_piece_size()
        self.unk_id: int = sp.unk_id()
        self.bos_id: int | None = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_id: int | None = sp.eos_id() if sp.eos_id() >= 0 else None
        self.has_pad: bool = sp.pad_id() >= 0
        self.pad_id: int = sp.pad_id() if self.has_pad else self.unk_id
        self.sep_id: int | None = self.piece_to_id(SEP_PIECE)

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
        """Token ids of ``text``.

        With ``continuation=True`` the text is encoded as the continuation of earlier text: no
        dummy-prefix space is added and no whitespace is trimmed.
        """
        return self._enc_cont(text) if continuation else self._enc(text)

    def encode_batch(self, texts: Sequence[str], *, continuation: bool = False) -> list[list[int]]:
        """:meth:`encode` of each text (single-threaded: faster than a thread pool for short texts)."""
        enc = self._enc_cont if continuation else self._enc
        return [enc(t) for t in texts]

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
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size <= 0:
        raise ConfigError(f"tokenizer vocab_size must be a positive integer; got {vocab_size!r}")
    symbols = [SEP_PIECE]
    for s in user_symbols:
        if not isinstance(s, str) or not s:
            raise ConfigError(f"tokenizer user symbol must be a non-empty string; got {s!r}")
        if s not in symbols:
            symbols.append(s)
    minimum = 4 + len(symbols) + (256 if byte_fallback else 0)
    if vocab_size <= minimum:
        raise ConfigError(
            f"tokenizer vocab_size {vocab_size} is too small: {minimum} ids go to special, user and "
            f"byte pieces; use at least {minimum + 16}"
        )
    sentences = [t for t in texts if t and not t.isspace()]
    if not sentences:
        raise ConfigError("tokenizer training: no text found in the given corpus")
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
