"""The batch contract (docs/batch.md, speechdata.batch): the page's key table is Batch's keys and
LAYOUT, every real loader batch (and every synthetic one) has exactly those keys with the
documented dtypes, shapes, padding and relations, the worked example is what the loader yields,
and make_batch refuses a batch that breaks the layout, naming the key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from speechdata import build_dataloader
from speechdata.batch import LAYOUT, Batch, make_batch
from speechdata.config import FeatureConfig, make_dataset_config
from speechdata.features import frame_params
from speechdata.manifest import unpack_sample_id
from speechdata.testing import make_corpus
from speechdata.text.tokenizer import Tokenizer, train_tokenizer
from speechdata.train.synthetic import SyntheticSpec, synthetic_batch

DOC = Path(__file__).resolve().parents[1] / "docs" / "batch.md"
LOCATOR = "|audio|"
TEMPLATE = "Q: {context}\nA: {answer}"
DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32}
#: the key giving each padded tensor's valid length along its last dimension (docs/batch.md)
LENGTH_OF = {
    "audio_signal": "audio_signal_length",
    "tokens": "tokens_length",
    "labels": "tokens_length",
    "loss_mask": "tokens_length",
    "contexts": "context_lengths",
    "answers": "answer_lengths",
    "audio_features": "audio_features_length",
}
METADATA_KEYS = ("audio_filepath", "offset", "duration", "where", "context", "answer")


# ------------------------------------------------------------------------------ the page


def _section(title: str) -> list[str]:
    """The lines of the ``## title`` section of docs/batch.md."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def _table(title: str) -> list[list[str]]:
    """The rows of the first table in a section, as cells (header and rule left out)."""
    rows = [line for line in _section(title) if line.startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    return cells[2:]


def doc_keys() -> dict[str, dict[str, Any]]:
    """``{key: {dtype, dims, padding, optional}}`` from the "Keys" table of docs/batch.md."""
    out: dict[str, dict[str, Any]] = {}
    for key, dtype, shape, padding, meaning in _table("Keys"):
        name = key.strip("`")
        assert name not in out, f"docs/batch.md lists {name} twice"
        dims = tuple(d.strip() for d in shape.strip("`[]").split(","))
        out[name] = {
            "dtype": dtype,
            "dims": dims,
            "padding": padding,
            "optional": meaning.startswith(("only with `features`", "only with `packing`")),
            "packing": meaning.startswith("only with `packing`"),
        }
    return out


def test_the_page_lists_exactly_the_keys_of_batch() -> None:
    keys = doc_keys()
    assert list(keys) == list(Batch.__annotations__)
    assert {k for k, v in keys.items() if v["optional"]} == set(Batch.__optional_keys__)
    assert {k for k, v in keys.items() if not v["optional"]} == set(Batch.__required_keys__)
    # the dtypes and shapes make_batch checks are the ones the page gives
    tensors = {k: v for k, v in keys.items() if k != "metadata"}
    assert {k: (DTYPES[v["dtype"]], v["dims"]) for k, v in tensors.items()} == LAYOUT
    assert (keys["metadata"]["dtype"], keys["metadata"]["dims"]) == ("list[dict]", ("B",))
    # every dimension a shape uses is defined under "Dimensions"
    defined = {row[0].strip("`") for row in _table("Dimensions")}
    assert {d for v in keys.values() for d in v["dims"]} == defined


def test_the_page_names_every_metadata_key() -> None:
    named = [row[0].strip("`") for row in _table("metadata")]
    assert named[: len(METADATA_KEYS)] == list(METADATA_KEYS)


# ------------------------------------------------------------------------- contract checks


def check_contract(batch: dict[str, Any], *, pad: int, multiple: int, answer_only_loss: bool) -> None:
    """Assert everything docs/batch.md says about one batch (keys, dtypes, shapes, padding, relations)."""
    spec = doc_keys()
    want = {k for k, v in spec.items() if not v["optional"]}
    if "audio_features" in batch:
        want |= {k for k, v in spec.items() if v["optional"] and not v["packing"]}
    assert set(batch) == want

    num_audios, tlen = batch["num_audios"], batch["tokens_length"]
    ctx, ans = batch["context_lengths"], batch["answer_lengths"]
    alen = batch["audio_signal_length"]
    b_size = len(batch["metadata"])
    dims = {
        "B": b_size,
        "A": int(num_audios.sum()),
        "T": int(alen.max()) if alen.numel() else 0,
        "L": max(multiple, -(-int(tlen.max()) // multiple) * multiple),
        "Lc": int(ctx.max()),
        "La": int(ans.max()),
    }
    if "audio_features" in batch:
        dims["M"] = batch["audio_features"].shape[1]
        dims["F"] = batch["audio_features"].shape[2]
    for key, v in spec.items():
        if key not in batch or key == "metadata":
            continue
        t = batch[key]
        assert t.dtype == DTYPES[v["dtype"]], key
        assert tuple(t.shape) == tuple(dims[d] for d in v["dims"]), (key, tuple(t.shape), v["dims"])
        assert t.device == batch["tokens"].device, key
        if key in LENGTH_OF:
            fill = pad if v["padding"] == "`pad`" else float(v["padding"])
            lengths = batch[LENGTH_OF[key]]
            beyond = torch.arange(t.shape[-1], device=t.device) >= lengths.reshape(-1, *[1] * (t.dim() - 1))
            assert bool((t[beyond.expand_as(t)] == fill).all()), f"{key}: padding is not {fill}"

    # the relations of "How the keys relate", example by example
    assert torch.equal(ctx + ans, tlen + 1)
    assert torch.equal(batch["position_ids"], torch.arange(dims["L"]).expand(b_size, -1).to(tlen.device))
    first_audio = 0
    for b in range(b_size):
        n, c = int(tlen[b]) + 1, int(ctx[b])
        ids = torch.cat([batch["contexts"][b, :c], batch["answers"][b, : n - c]])
        assert torch.equal(batch["tokens"][b, : n - 1], ids[:-1])
        assert torch.equal(batch["labels"][b, : n - 1], ids[1:])
        j = torch.arange(dims["L"], device=tlen.device)
        target = (j < n - 1) & ((j + 1 >= c) if answer_only_loss else True)
        assert torch.equal(batch["loss_mask"][b], target.to(torch.float32))
        k = int(num_audios[b])
        pos = batch["audio_positions"][first_audio : first_audio + k]
        assert bool(((pos >= 0) & (pos <= c)).all()), (b, pos, c)
        assert bool((pos[1:] >= pos[:-1]).all()), (b, pos)
        first_audio += k
    if "audio_features" in batch:
        assert torch.equal(batch["audio_features_length"], 1 + alen // _HOP)


_HOP = frame_params(16000, FeatureConfig())[1]


# ------------------------------------------------------------------------- real batches


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_corpus(tmp_path_factory.mktemp("batch"), n=24, seed=3, max_duration=6.0)


@pytest.fixture(scope="module")
def tokenizer(corpus) -> Tokenizer:
    return corpus.train_tokenizer(vocab_size=100, locator=LOCATOR)


def _config(manifest: Path, **kw: Any):
    base: dict[str, Any] = {
        "manifest_filepath": str(manifest),
        "micro_batch_size": 3,
        "drop_last": False,
        "min_duration": None,
        "max_duration": None,
        "seed": 5,
    }
    base.update(kw)
    return make_dataset_config(base)


@pytest.mark.parametrize(
    ("answer_only_loss", "features", "workers"),
    [(True, None, 0), (False, {"n_mels": 16}, 2)],
)
def test_every_loader_batch_follows_the_page(corpus, tokenizer, answer_only_loss, features, workers) -> None:
    cfg = _config(
        corpus.manifest,
        audio_locator=LOCATOR,
        prompt_template=TEMPLATE,
        add_bos=True,
        answer_only_loss=answer_only_loss,
        features=features,
        num_workers=workers,
    )
    seen, multi = set(), False
    for batch in build_dataloader(cfg, tokenizer):
        check_contract(
            batch, pad=tokenizer.pad_id, multiple=cfg.pad_to_multiple, answer_only_loss=answer_only_loss
        )
        if features is not None:
            assert batch["audio_features"].shape[1] == 16
        multi |= bool((batch["num_audios"] > 1).any())
        for sid, meta in zip(batch["sample_ids"].tolist(), batch["metadata"], strict=True):
            dataset, line = unpack_sample_id(sid)
            entry = corpus.entries[line - 1]
            assert dataset == 0 and meta["where"] == f"{corpus.manifest}:{line}"
            assert list(meta)[-len(METADATA_KEYS) :] == list(METADATA_KEYS)
            assert (meta["context"], meta["answer"], meta["lang"]) == (
                entry["context"],
                entry["answer"],
                entry["lang"],
            )
            assert len(meta["audio_filepath"]) == len(meta["offset"]) == len(meta["duration"])
            seen.add(sid)
    assert multi and len(seen) == len(corpus.entries)


def test_without_a_locator_every_audio_is_at_position_zero(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, n=6, seed=4, max_duration=4.0, locator=None, multi_audio_fraction=0.0)
    tok = corpus.train_tokenizer(vocab_size=80)
    batches = list(build_dataloader(_config(corpus.manifest), tok))
    for batch in batches:
        check_contract(batch, pad=tok.pad_id, multiple=8, answer_only_loss=True)
        assert batch["num_audios"].tolist() == [1] * len(batch["metadata"])
        assert batch["audio_positions"].tolist() == [0] * len(batch["metadata"])
    assert sum(len(b["metadata"]) for b in batches) == 6


def test_a_line_key_named_like_a_metadata_key_does_not_replace_it(corpus, tokenizer, tmp_path: Path) -> None:
    entry = next(dict(e) for e in corpus.entries if isinstance(e["audio_filepath"], str))
    entry["audio_filepath"] = str(corpus.root / entry["audio_filepath"])
    real = corpus.entries[2]["answer"]  # text the tokenizer knows, so it decodes back
    line = {**entry, "output": real, "answer": "a note", "where": "elsewhere"}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(line) + "\n")
    cfg = _config(manifest, answer_key="output", audio_locator=LOCATOR)
    (batch,) = list(build_dataloader(cfg, tokenizer))
    meta = batch["metadata"][0]
    assert (meta["answer"], meta["where"], meta["lang"]) == (real, f"{manifest}:1", entry["lang"])
    answer_ids = batch["answers"][0, : int(batch["answer_lengths"][0]) - 1].tolist()  # EOS left out
    assert tokenizer.decode(answer_ids).strip() == real


def test_synthetic_batches_follow_the_page() -> None:
    spec = SyntheticSpec(vocab_size=24, num_classes=4, max_audios=3)
    for seed in range(3):
        batch = synthetic_batch(spec, 4, seed)
        check_contract(batch, pad=spec.pad_id, multiple=spec.pad_to_multiple, answer_only_loss=True)
        assert bool((batch["num_audios"] > 0).all())


# --------------------------------------------------------------------- the worked example


def test_the_worked_example_is_what_the_loader_yields(tmp_path: Path) -> None:
    section = "\n".join(_section("A worked example"))
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)
    lines = [json.loads(s) for s in blocks[0][1].splitlines()]
    make_corpus(tmp_path, n=48, seed=7, max_duration=9.0)  # audio/000001.flac ... as the lines name them
    manifest = tmp_path / "two.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    prompts = [TEMPLATE.format(context=x["context"], answer=x["answer"]) for x in lines]
    tok = train_tokenizer(prompts * 50, tmp_path / "tok", 200, [LOCATOR], "bpe", byte_fallback=False)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 3, 0)
    cfg = _config(
        manifest,
        prompt_template=TEMPLATE,
        audio_locator=LOCATOR,
        add_bos=True,
        micro_batch_size=2,
        shuffle=False,
    )
    (batch,) = list(build_dataloader(cfg, tok))
    check_contract(batch, pad=0, multiple=8, answer_only_loss=True)

    # the piece sequences: [audio] marks a position, ‖ the start of the answer part
    rows = [r.split(":", 1)[1].split() for r in blocks[1][1].splitlines()]
    for b, row in enumerate(rows):
        pieces = row[: row.index("n")]  # "n = 13, c = 10" closes the row
        positions, ids, start = [], [], -1
        for p in pieces:
            if p == "[audio]":
                positions.append(len(ids))
            elif p == "‖":
                start = len(ids)
            else:
                ids.append(tok.piece_to_id(p.replace("\\n", "\n")))
        first = int(batch["num_audios"][:b].sum())
        assert batch["audio_positions"][first : first + len(positions)].tolist() == positions
        assert int(batch["context_lengths"][b]) == start
        n = int(batch["tokens_length"][b]) + 1
        assert batch["tokens"][b, : n - 1].tolist() + batch["labels"][b, n - 2 : n - 1].tolist() == ids

    # the table's list values
    for key, value in _table("A worked example"):
        key = key.strip("`")
        found = re.match(r"`(\[[-\d, ]*\])`", value)
        if found:
            assert batch[key].tolist() == json.loads(found.group(1)), key
        shape = re.search(r"`\[(\d+), (\d+)\]`", value)
        if shape and not found:
            assert list(batch[key].shape) == [int(shape.group(1)), int(shape.group(2))], key
    assert batch["metadata"][1]["lang"] == "de"


# -------------------------------------------------------------------------------- make_batch


def _fields(**changes: Any) -> dict[str, Any]:
    batch = dict(synthetic_batch(SyntheticSpec(max_audios=2), 3, seed=1))
    batch.update(changes)
    return batch


def test_make_batch_builds_the_same_batch_from_its_own_fields() -> None:
    batch = _fields()
    again = make_batch(**batch)
    assert list(again) == list(batch)
    assert all(again[k] is batch[k] for k in batch)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda b: {"tokens": b["tokens"][:, :-1]},
            r"batch\['labels'\]: shape \[3, \d+\] has L=\d+, but batch\['tokens'\] has L=",
        ),
        (
            lambda b: {"loss_mask": b["loss_mask"].to(torch.int64)},
            r"batch\['loss_mask'\]: dtype torch.int64, expected torch.float32",
        ),
        (
            lambda b: {"audio_positions": b["audio_positions"][:-1]},
            r"batch\['audio_positions'\]: shape .* has A=",
        ),
        (
            lambda b: {"sample_ids": b["sample_ids"][None]},
            r"batch\['sample_ids'\]: shape \[1, 3\], expected \[B\]",
        ),
        (lambda b: {"metadata": b["metadata"][:2]}, r"batch\['metadata'\]: 2 entries for B=3"),
        (lambda b: {"audio_features": torch.zeros(2, 4, 5)}, "come together"),
    ],
)
def test_make_batch_names_the_key_that_breaks_the_layout(change, message) -> None:
    batch = _fields()
    with pytest.raises(ValueError, match=message):
        make_batch(**{**batch, **change(batch)})


def test_make_batch_refuses_a_value_that_is_not_a_tensor() -> None:
    batch = _fields()
    with pytest.raises(TypeError, match=r"batch\['num_audios'\]: expected a torch.Tensor, got list"):
        make_batch(**{**batch, "num_audios": batch["num_audios"].tolist()})
