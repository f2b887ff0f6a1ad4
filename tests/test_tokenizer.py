"""Tests of speechdata.text.tokenizer: training, loading, ids, continuation encoding, pickling."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given
from hypothesis import strategies as st

from speechdata.errors import ConfigError
from speechdata.text.tokenizer import SEP_PIECE, Tokenizer, train_tokenizer

SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "du", "sha", "gen"]


def _sentences(n: int, seed: int) -> list[str]:
    """Pseudo-words from a fixed syllable set, so the model learns multi-character pieces."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = ["".join(rng.choice(SYLLABLES, size=rng.integers(1, 4))) for _ in range(rng.integers(2, 9))]
        out.append(" ".join(words))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, Path]:
    out = tmp_path_factory.mktemp("tok")
    tok = train_tokenizer(_sentences(300, 1), out, vocab_size=420, user_symbols=["|audio|", "<eot>"])
    return tok, out


@pytest.fixture(scope="module")
def plain_model() -> bytes:
    """A model trained with SentencePiece's own defaults: NFKC, whitespace trimming, no pad/sep."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sentences(200, 2)),
        model_writer=buf,
        vocab_size=120,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
        bos_id=-1,
    )
    return buf.getvalue()


def test_fixed_ids_and_files(trained: tuple[Tokenizer, Path]) -> None:
    tok, out = trained
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.sep_id) == (0, 1, 2, 3, 4)
    assert tok.has_pad
    assert tok.piece_to_id(SEP_PIECE) == 4
    assert tok.piece_to_id("|audio|") == 5
    assert tok.piece_to_id("<eot>") == 6
    assert tok.piece_to_id("<unk>") == 1
    assert tok.piece_to_id("no such piece") is None
    assert (out / "tokenizer.model").read_bytes() == tok.model_bytes
    vocab = (out / "tokenizer.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == tok.vocab_size
    assert vocab[4].split("\t")[0] == SEP_PIECE
    assert 256 + 7 < tok.vocab_size <= 420


def test_user_symbols_are_single_pieces(trained: tuple[Tokenizer, Path]) -> None:
    tok, _ = trained
    ids = tok.encode("kalo |audio| mine<eot>")
    assert ids.count(5) == 1
    assert ids[-1] == 6


def test_load_from_dir_and_file(trained: tuple[Tokenizer, Path]) -> None:
    tok, out = trained
    text = "kalo mine sushagen tari"
    for path in (out, out / "tokenizer.model", str(out)):
        loaded = Tokenizer.load(path)
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.vocab_size == tok.vocab_size


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Tokenizer.load(tmp_path / "missing.model")
    with pytest.raises(ConfigError, match=r"tokenizer\.model: tokenizer model not found"):
        Tokenizer.load(tmp_path)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ConfigError, match="not a SentencePiece model"):
        Tokenizer.load(bad)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_training_is_deterministic(tmp_path: Path, model_type: str) -> None:
    texts = _sentences(150, 3)
    a = train_tokenizer(
        texts, tmp_path / "a", vocab_size=400, user_symbols=["|audio|"], model_type=model_type
    )
    b = train_tokenizer(
        texts, tmp_path / "b", vocab_size=400, user_symbols=["|audio|"], model_type=model_type
    )
    assert a.model_bytes == b.model_bytes
    assert (tmp_path / "a" / "tokenizer.vocab").read_bytes() == (
        tmp_path / "b" / "tokenizer.vocab"
    ).read_bytes()
    assert a.piece_to_id("|audio|") == 5


def test_training_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model_type"):
        train_tokenizer(["a b"], tmp_path, vocab_size=400, model_type="wordpiece")
    with pytest.raises(ConfigError, match="too small"):
        train_tokenizer(["a b"], tmp_path, vocab_size=100)
    with pytest.raises(ConfigError, match="positive"):
        train_tokenizer(["a b"], tmp_path, vocab_size=0)
    with pytest.raises(ConfigError, match="no text"):
        train_tokenizer(["", "  "], tmp_path, vocab_size=400)
    with pytest.raises(ConfigError, match="user symbol"):
        train_tokenizer(["a b"], tmp_path, vocab_size=400, user_symbols=[""])


def test_unseen_characters_round_trip(trained: tuple[Tokenizer, Path]) -> None:
    tok, _ = trained
    text = "Zürich 東京\n\tkalo  mine!"
    assert tok.decode(tok.encode(text)) == text
    assert tok.unk_id not in tok.encode(text)


def test_decode_skips_control_pieces(trained: tuple[Tokenizer, Path]) -> None:
    tok, _ = trained
    ids = [tok.bos_id, *tok.encode("kalo"), tok.sep_id, *tok.encode(" mine", continuation=True), tok.eos_id]
    assert tok.decode(ids) == "kalo<sep> mine"
    assert tok.decode([tok.pad_id, tok.pad_id]) == ""


def test_encode_batch_matches_encode(trained: tuple[Tokenizer, Path]) -> None:
    tok, _ = trained
    texts = [*_sentences(20, 4), "", " lead", "trail "]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, continuation=True) == [tok.encode(t, continuation=True) for t in texts]


def test_pickle_carries_model_bytes(trained: tuple[Tokenizer, Path]) -> None:
    tok, _ = trained
    data = pickle.dumps(tok)
    assert len(data) < len(tok.model_bytes) + 512
    copy = pickle.loads(data)
    text = "sushagen kalo |audio| ve"
    assert copy.encode(text) == tok.encode(text)
    assert copy.encode(text, continuation=True) == tok.encode(text, continuation=True)
    assert copy.encode_with_offsets(text) == tok.encode_with_offsets(text)
    assert (copy.pad_id, copy.bos_id, copy.eos_id, copy.sep_id) == (
        tok.pad_id,
        tok.bos_id,
        tok.eos_id,
        tok.sep_id,
    )


def test_continuation_drops_dummy_prefix(trained: tuple[Tokenizer, Path]) -> None:
    tok, _ = trained
    alone = [tok.id_to_piece(i) for i in tok.encode("kalo")]
    cont = [tok.id_to_piece(i) for i in tok.encode("kalo", continuation=True)]
    assert alone[0].startswith("▁")
    assert not cont[0].startswith("▁")
    assert tok.decode(tok.encode("mi") + tok.encode("kalo", continuation=True)) == "mikalo"


def test_model_without_pad_bos_sep(plain_model: bytes) -> None:
    tok = Tokenizer(plain_model, "plain.model")
    assert not tok.has_pad
    assert tok.pad_id == tok.unk_id
    assert tok.bos_id is None
    assert tok.sep_id is None
    assert tok.eos_id is not None
    # Whitespace-trimming normalizer: plain encode drops the leading space; continuation keeps it.
    joined = tok.encode("kalo") + tok.encode(" mine", continuation=True)
    assert tok.decode(joined) == "kalo mine"
    assert tok.decode(tok.encode("kalo") + tok.encode("mine", continuation=True)) == "kalomine"


_text = st.text(alphabet=st.sampled_from(list("kalomineé東 \n,.")), max_size=30)


@given(parts=st.lists(_text, min_size=1, max_size=5))
def test_piecewise_encoding_decodes_to_joined_text(trained: tuple[Tokenizer, Path], parts: list[str]) -> None:
    tok, _ = trained
    ids: list[int] = []
    for part in parts:
        # Text continues once some text was encoded; empty parts before it do not count.
        ids += tok.encode(part, continuation=bool(ids))
    assert tok.decode(ids) == "".join(parts)


def test_offsets_mark_where_tokens_end(trained: tuple[Tokenizer, Path], plain_model: bytes) -> None:
    # a lossless model (train_tokenizer) and SentencePiece's defaults (NFKC, whitespace trimmed)
    # both follow TextTokenizer.encode_with_offsets; tests/test_natural_tokens.py has the properties
    tok, _ = trained
    ids, ends = tok.encode_with_offsets("kalo 東 mine")
    assert ids == tok.encode("kalo 東 mine")
    # 東 is three byte pieces, which all end where the character ends
    assert [e for e, i in zip(ends, ids, strict=True) if tok.id_to_piece(i).startswith("<0x")] == [6, 6, 6]
    assert ends[-1] == len("kalo 東 mine")
    plain = Tokenizer(plain_model, "plain.model")
    ids, ends = plain.encode_with_offsets("  kalo   mine  ")
    assert ids == plain.encode("  kalo   mine  ")
    assert ends[-1] == len("  kalo   mine")  # trimmed whitespace belongs to no token
    assert ends == sorted(ends)
