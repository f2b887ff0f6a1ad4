"""Sequence packing (docs/packing.md): the planned rows, the packed batch and the trainer on it."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers_models import SYNTH
from helpers_models import tiny_config as _tiny_config
from helpers_sampling import FakeIndex, make_index

from speechdata import build_dataloader
from speechdata.batch import Batch
from speechdata.collate import Packed, finalize
from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, DropCounter
from speechdata.sampling.packing import RowBatch, pack_rows, packing_cost
from speechdata.sampling.plan import BatchSampler, plan_epoch
from speechdata.sampling.tokens import Measures, TokenCounts, filter_tokens
from speechdata.testing import make_corpus
from speechdata.train.models import build_model, masked_cross_entropy
from speechdata.train.models.encoder import length_groups


def _index(d: np.ndarray) -> FakeIndex:
    return make_index(d)


def _cfg(**kw: Any) -> Any:
    base = {
        "manifest_filepath": "x.jsonl",
        "packing": True,
        "packed_sequence_size": 256,
        "micro_batch_size": 3,
        "token_equivalent_duration": 0.08,
        "seed": 5,
    }
    base.update(kw)
    return make_dataset_config(base)


def _data(n: int, cfg: Any, seed: int = 0) -> tuple[FakeIndex, Measures]:
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.3, 6.0, n)
    text = rng.integers(8, 60, n)
    counts = TokenCounts(text.astype(np.int32), (text // 3).astype(np.int32))
    index = _index(d)
    return index, Measures.of(index.duration, counts, cfg)


# ------------------------------------------------------------------------------------ planner


def test_best_fit_decreasing_fills_rows_within_capacity() -> None:
    rng = np.random.default_rng(0)
    cost = rng.integers(5, 300, 5000)
    order, lengths = pack_rows(cost, 512, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(5000))
    sums = np.add.reduceat(cost[order], np.cumsum(lengths) - lengths)
    assert sums.max() <= 512
    assert 1 - cost.sum() / (lengths.size * 512) < 0.01  # nearly full rows
    again = pack_rows(cost, 512, np.random.default_rng(1))
    assert np.array_equal(order, again[0]) and np.array_equal(lengths, again[1])
    # a lone item over the capacity is a row of its own
    order, lengths = pack_rows(np.array([600, 100, 100]), 512, None)
    assert lengths.tolist() == [1, 2]


def test_audio_budget_joins_the_token_cost() -> None:
    cost = packing_cost(np.array([1.0, 10.0]), np.array([50, 50]), 100, 5.0)
    assert cost.tolist() == [50, 200]  # 10 s of a 5 s row is two rows' worth
    assert packing_cost(np.array([10.0]), np.array([50]), 100, None).tolist() == [50]


@pytest.mark.parametrize("audio_budget", [None, 8.0])
def test_packed_plan_rows_fit_budgets_and_cover_the_epoch(audio_budget: float | None) -> None:
    cfg = _cfg(packed_audio_duration=audio_budget, drop_last=False)
    index, m = _data(600, cfg)
    keep = np.ones(600, bool)
    filter_tokens(index, keep, m, cfg, DropCounter())
    plan = plan_epoch(index, keep, cfg, epoch=0, measures=m)
    assert plan.packed
    seen = []
    for k in range(len(plan)):
        ids, rows = plan.batch(k), plan.batch_rows(k)
        assert np.all(np.diff(rows) >= 0) and rows[0] == 0 and rows[-1] < cfg.micro_batch_size
        for r in np.unique(rows):
            members = ids[rows == r]
            assert m.tokens[members].sum() <= cfg.packed_sequence_size
            if audio_budget is not None:
                assert m.duration[members].sum() <= audio_budget + 1e-6
        seen += ids.tolist()
    assert sorted(seen) == np.flatnonzero(keep).tolist()  # every kept example once
    # rows are nearly full: tokens over rows x capacity
    total_rows = sum(int(plan.batch_rows(k)[-1]) + 1 for k in range(len(plan)))
    fill = m.tokens[keep].sum() / (total_rows * cfg.packed_sequence_size)
    assert fill > (0.9 if audio_budget is None else 0.5)


def test_row_padding_is_each_batch_padded_to_its_longest_row() -> None:
    cfg = _cfg(micro_batch_size=2)
    index, m = _data(300, cfg)
    plan = plan_epoch(index, np.ones(300, bool), cfg, epoch=0, measures=m)
    used = slots = 0
    for k in range(len(plan)):
        ids, rows = plan.batch(k), plan.batch_rows(k)
        sums = [int(m.tokens[ids[rows == r]].sum()) for r in np.unique(rows)]
        used += sum(sums)
        slots += len(sums) * max(sums)
    assert plan.row_padding(m.tokens) == pytest.approx(1 - used / slots)
    assert plan.row_padding(m.tokens) < 0.03  # rows nearly full, batch mates about as full


def test_packed_plan_is_deterministic_per_epoch_and_equal_across_ranks() -> None:
    cfg = _cfg()
    index, m = _data(500, cfg)
    keep = np.ones(500, bool)
    a = plan_epoch(index, keep, cfg, epoch=1, measures=m)
    b = plan_epoch(index, keep, cfg, epoch=1, measures=m)
    c = plan_epoch(index, keep, cfg, epoch=2, measures=m)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.rows, b.rows)
    assert not np.array_equal(a.ids, c.ids)
    ranks = [plan_epoch(index, keep, cfg, epoch=0, rank=r, world_size=3, measures=m) for r in range(3)]
    assert len({len(p) for p in ranks}) == 1
    ids = np.concatenate([p.ids for p in ranks])
    assert np.unique(ids).size == ids.size  # no example on two ranks


def test_sampler_yields_row_batches_and_resumes_exactly() -> None:
    cfg = _cfg()
    index, m = _data(400, cfg)
    keep = np.ones(400, bool)
    full = BatchSampler(index, keep, cfg, rank=0, world_size=1, measures=m)
    batches = list(full)
    assert all(isinstance(b, RowBatch) for b in batches)
    clone = pickle.loads(pickle.dumps(batches[0]))  # as a DataLoader hands it to a worker
    assert list(clone) == list(batches[0]) and clone.rows == batches[0].rows
    resumed = BatchSampler(index, keep, cfg, rank=0, world_size=1, measures=m)
    resumed.load_state_dict({"epoch": 0, "batch": 4})
    rest = list(resumed)
    assert [list(b) for b in rest] == [list(b) for b in batches[4:]]
    assert [b.rows for b in rest] == [b.rows for b in batches[4:]]


def test_examples_longer_than_a_row_are_counted_drops() -> None:
    cfg = _cfg(packed_sequence_size=40, packed_audio_duration=2.0, token_equivalent_duration=None)
    index = _index(np.array([0.5, 1.0, 3.0]))
    m = Measures.of(index.duration, TokenCounts(np.array([10, 45, 10]), np.array([2, 2, 2])), cfg)
    keep = np.ones(3, bool)
    drops = DropCounter()
    filter_tokens(index, keep, m, cfg, drops)
    assert keep.tolist() == [True, False, False]
    assert drops.to_dict() == {"too_long_text": 1, "too_long_audio": 1}


def test_packing_config_errors() -> None:
    with pytest.raises(ConfigError, match="packing: needs packed_sequence_size"):
        make_dataset_config({"manifest_filepath": "x", "packing": True})
    with pytest.raises(ConfigError, match="packing and batch_duration are both set"):
        _cfg(batch_duration=30.0)
    with pytest.raises(ConfigError, match="packed_sequence_size: is set but packing is false"):
        make_dataset_config({"manifest_filepath": "x", "packed_sequence_size": 10})
    with pytest.raises(ConfigError, match="packed_audio_duration: must be positive"):
        _cfg(packed_audio_duration=0)


# ------------------------------------------------------------------------ packed batch, model


def _worker_batch(seed: int, n: int = 7, text_only: tuple[int, ...] = ()) -> Packed:
    """A worker's flat batch of ``n`` examples (1-2 audios each, at positions from 0 to the end;
    none for the examples ``text_only``)."""
    rng = np.random.default_rng(seed)
    audios, positions, num_audios, ids, targets, lengths, starts = [], [], [], [], [], [], []
    for i in range(n):
        ctx = [1, *rng.integers(6, 24, int(rng.integers(1, 9))).tolist()]
        answer = [*rng.integers(4, 24, int(rng.integers(1, 7))).tolist(), 2]
        k = 0 if i in text_only else int(rng.integers(1, 3))
        positions += np.sort(rng.integers(0, len(ctx) + 1, k)).tolist()
        for _ in range(k):
            audios.append(rng.standard_normal(int(rng.integers(800, 4000))).astype(np.float32) * 0.1)
        num_audios.append(k)
        ids += ctx + answer
        targets += [0] * len(ctx) + [1] * len(answer)
        lengths.append(len(ctx) + len(answer))
        starts.append(len(ctx))
    i64 = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return Packed(
        audio=torch.from_numpy(np.concatenate(audios) if audios else np.zeros(0, np.float32)),
        audio_lengths=i64([a.size for a in audios]),
        num_audios=i64(num_audios),
        audio_positions=i64(positions),
        ids=i64(ids),
        ids_lengths=i64(lengths),
        answer_start=i64(starts),
        sample_ids=i64(list(range(n))),
        targets=torch.tensor(targets, dtype=torch.uint8),
        metadata=[{} for _ in range(n)],
    )


def _row_batch(packed: Packed, rows: list[int]) -> Batch:
    """The collator's packed batch of the worker's batch ``packed`` with the examples in ``rows``."""
    return finalize(dataclasses.replace(packed, rows=torch.tensor(rows, dtype=torch.int64)), pad_id=0)


def test_row_tensors_lay_examples_back_to_back() -> None:
    packed = _worker_batch(0, n=3)
    padded = finalize(packed, pad_id=0)
    batch = _row_batch(packed, [0, 0, 1])
    m = padded["tokens_length"].tolist()
    cu = batch["cu_seqlens"]
    assert cu.tolist() == [[0, m[0], m[0] + m[1]], [0, m[2], -1]]
    row0 = batch["tokens"][0]
    assert row0[: m[0]].tolist() == padded["tokens"][0, : m[0]].tolist()
    assert row0[m[0] : m[0] + m[1]].tolist() == padded["tokens"][1, : m[1]].tolist()
    assert batch["labels"][1, : m[2]].tolist() == padded["labels"][2, : m[2]].tolist()
    assert batch["loss_mask"][0, m[0] : m[0] + m[1]].tolist() == padded["loss_mask"][1, : m[1]].tolist()
    assert batch["position_ids"][0, : m[0] + m[1]].tolist() == [*range(m[0]), *range(m[1])]
    ex = torch.repeat_interleave(torch.arange(3), packed.num_audios)
    starts = torch.tensor([0, m[0], 0])
    want = torch.minimum(padded["audio_positions"], padded["tokens_length"][ex]) + starts[ex]
    assert batch["packed_audio_positions"].tolist() == want.tolist()
    # padding: pad ids, no loss
    assert batch["tokens"][1, m[2] :].eq(0).all() and batch["loss_mask"][1, m[2] :].eq(0).all()


def test_rows_emptied_by_worker_drops_close_up() -> None:
    packed = _worker_batch(5, n=4)
    batch = _row_batch(packed, [0, 0, 2, 2])  # row 1 lost all its examples in the worker
    assert batch["tokens"].shape[0] == batch["cu_seqlens"].shape[0] == 2


def _per_token_losses(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(batch)
    ce = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, out.logits.shape[-1]), out.labels.reshape(-1), reduction="none"
    )
    mask = out.loss_mask.reshape(-1) > 0
    loss, _ = masked_cross_entropy(out.logits, out.labels, out.loss_mask)
    return ce[mask], loss


@pytest.mark.parametrize("text_only", [(), (1, 5)])
@pytest.mark.parametrize("arch", ["salm", "bestow"])
def test_packed_and_padded_batches_give_the_same_losses_and_gradients(
    arch: str, text_only: tuple[int, ...]
) -> None:
    packed = _worker_batch(3, n=7, text_only=text_only)
    padded = finalize(packed, pad_id=0)
    rows = _row_batch(packed, [0, 0, 0, 1, 1, 2, 2])
    assert rows["tokens"].shape[0] == 3
    torch.manual_seed(0)
    model = build_model(_tiny_config(arch, SYNTH)).float()
    grads = []
    losses = []
    for batch in (padded, rows):
        model.zero_grad()
        per_token, loss = _per_token_losses(model, batch)
        loss.backward()
        losses.append(per_token.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0].shape == losses[1].shape and losses[0].numel() > 10
    assert torch.allclose(losses[0], losses[1], atol=1e-5, rtol=0), (losses[0] - losses[1]).abs().max()
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-5, rtol=1e-4), name


def test_attention_does_not_cross_examples() -> None:
    """Changing one example of a row changes no logit of the others."""
    packed = _worker_batch(4, n=4)
    rows = _row_batch(packed, [0, 0, 0, 0])
    other = dict(rows)
    m = packed.ids_lengths - 1
    cut = int(m[0] + m[1])  # example 2 starts here
    tokens = rows["tokens"].clone()
    tokens[0, cut : cut + int(m[2])] = 5
    other["tokens"] = tokens
    torch.manual_seed(0)
    model = build_model(_tiny_config("salm", SYNTH)).float().eval()
    with torch.no_grad():
        a, b = model(rows), model(other)
    # the spliced row: examples 0, 1 come first; example 3 after example 2
    lengths = model.example_lengths(m, *model.encode_audio(rows)[1:], packed.num_audios)
    first_two = int(lengths[:2].sum())
    last = int(lengths[:3].sum())
    assert torch.equal(a.logits[0, :first_two], b.logits[0, :first_two])
    assert torch.allclose(
        a.logits[0, last : last + int(lengths[3])], b.logits[0, last : last + int(lengths[3])]
    )
    assert not torch.allclose(a.logits[0, first_two:last], b.logits[0, first_two:last])


def test_segment_attention_is_each_example_attended_alone() -> None:
    """blocks.Segments: causal attention without a mask over each length group's gathered
    positions gives every example the outputs and gradients of it attended alone (explicit causal
    mask); row padding attends to nothing (its output is the output projection's bias) and
    gets no gradient."""
    from speechdata.train.models.blocks import MultiHeadAttention, Segments, causal_mask

    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4).float()
    # two rows of 40: examples of 3..30 positions (several length groups, padding inside them)
    lengths = torch.tensor([30, 4, 3, 17, 12, 9])
    rows = torch.tensor([0, 0, 0, 1, 1, 1])
    starts = torch.tensor([0, 30, 34, 0, 17, 29])
    seg = Segments.of(rows, starts, lengths, (2, 40))
    assert len(seg.groups) > 1 and any(not bool(g.valid.all()) for g in seg.groups)
    x = torch.randn(2, 40, 16, requires_grad=True)
    w = torch.randn(2, 40, 16)
    out = attn(x, mask=seg)
    (out * w).sum().backward()
    assert x.grad is not None
    for r, a, n in zip(rows.tolist(), starts.tolist(), lengths.tolist(), strict=True):
        xi = x.detach()[r : r + 1, a : a + n].clone().requires_grad_(True)
        alone = attn(xi, mask=causal_mask(n, xi.device))
        (alone * w[r : r + 1, a : a + n]).sum().backward()
        assert torch.allclose(out[r, a : a + n], alone[0], atol=1e-6), (r, a)
        assert torch.allclose(x.grad[r, a : a + n], xi.grad[0], atol=1e-5), (r, a)
    assert torch.equal(out[0, 37:], attn.out_proj.bias.detach().expand(3, 16))  # row padding
    assert torch.equal(x.grad[0, 37:], torch.zeros(3, 16))
    assert torch.equal(x.grad[1, 38:], torch.zeros(2, 16))


def test_each_audio_is_encoded_on_its_own() -> None:
    """An audio's embeddings do not depend on its batch mates (padding, length groups)."""
    torch.manual_seed(0)
    model = build_model(_tiny_config("salm", SYNTH)).float().eval()
    rng = np.random.default_rng(1)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (900, 4000, 1000, 2600, 4100)]
    width = max(c.size for c in clips)
    signal = torch.zeros(len(clips), width)
    for i, c in enumerate(clips):
        signal[i, : c.size] = torch.from_numpy(c)
    lengths = torch.tensor([c.size for c in clips])
    assert len(length_groups(lengths)) > 1
    with torch.no_grad():
        together, together_len = model.perception({"audio_signal": signal, "audio_signal_length": lengths})
        for i, c in enumerate(clips):
            alone, alone_len = model.perception(
                {"audio_signal": torch.from_numpy(c)[None], "audio_signal_length": lengths[i : i + 1]}
            )
            n = int(alone_len[0])
            assert int(together_len[i]) == n
            assert torch.allclose(together[i, :n], alone[0, :n], atol=1e-5)
            assert not together[i, n:].any()  # nothing beyond its length


# ------------------------------------------------------------------------------- the loader

LOCATOR = "|audio|"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("packing")
    c = make_corpus(root / "c", n=48, seed=21, max_duration=5.0, multi_audio_fraction=0.2)
    tok = c.train_tokenizer(vocab_size=90, locator=LOCATOR)
    return {"corpus": c, "tok": tok, "tok_path": str(c.root / "tok" / "tokenizer.model")}


def _packed_section(corpus: dict[str, Any], **kw: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "manifest_filepath": str(corpus["corpus"].manifest),
        "audio_locator": LOCATOR,
        "default_context": f"{LOCATOR} Transcribe the audio.",
        "token_equivalent_duration": 0.08,
        "packing": True,
        "packed_sequence_size": 300,
        "packed_audio_duration": 12.0,
        "micro_batch_size": 2,
        "max_duration": None,
        "drop_last": False,
        "seed": 3,
    }
    section.update(kw)
    return section


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_yields_the_planned_rows_and_resumes(corpus: dict[str, Any], workers: int) -> None:
    """Every batch is the plan's rows: each row within both budgets, each example's tokens those
    of its padded batch; every kept example once per epoch; a saved position resumes."""
    tok = corpus["tok"]
    loader = build_dataloader(_packed_section(corpus, num_workers=workers), tok)
    m, sampler = loader.measures, loader.sampler
    assert m is not None and sampler is not None
    plan = sampler.plan(0)
    batches = list(loader)
    assert len(batches) == len(plan) > 2
    seen: list[int] = []
    for k, batch in enumerate(batches):
        ids, rows = plan.batch(k), plan.batch_rows(k)
        assert batch["sample_ids"].tolist() == loader.index.sample_ids(ids).tolist()
        cu = batch["cu_seqlens"]
        assert cu.shape[0] == int(rows.max()) + 1 <= 2
        for r in range(cu.shape[0]):
            members = ids[rows == r]
            assert m.tokens[members].sum() <= 300 and m.duration[members].sum() <= 12.0 + 1e-6
            assert int(cu[r].max()) == int((m.text[members] - 1).sum())  # each row holds its text
        seen += ids.tolist()
    assert sorted(seen) == np.flatnonzero(loader.keep).tolist()
    resumed = build_dataloader(_packed_section(corpus, num_workers=workers), tok)
    resumed.load_state_dict({"epoch": 0, "batch": 2})
    rest = list(resumed)
    assert [b["sample_ids"].tolist() for b in rest] == [b["sample_ids"].tolist() for b in batches[2:]]
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(rest, batches[2:], strict=True))


def test_loader_packing_refuses_a_streamed_dataset() -> None:
    with pytest.raises(ConfigError, match="packing needs every example's token counts"):
        make_dataset_config(
            {"manifest_filepath": "x", "packing": True, "packed_sequence_size": 8, "streaming": True}
        )


def test_the_trainer_trains_on_packed_rows(corpus: dict[str, Any], tmp_path: Path) -> None:
    """``speechdata train`` with packing: the planned rows, examples counted (not rows), finite loss."""
    import warnings

    from speechdata.config import load_config
    from speechdata.testing import TINY_MODEL
    from speechdata.train.run import train

    manifest = str(corpus["corpus"].manifest)
    args = [
        f"model.train_ds.manifest_filepath={manifest}",
        f"model.validation_ds.manifest_filepath={manifest}",
        f"model.tokenizer.model={corpus['tok_path']}",
        f"exp_manager.exp_dir={tmp_path}",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "model.train_ds.num_workers=0",
        "model.micro_batch_size=2",
        "model.global_batch_size=2",
        "model.train_ds.packing=true",
        "model.train_ds.packed_sequence_size=300",
        "model.train_ds.token_equivalent_duration=0.08",
        "model.train_ds.max_duration=6",
        "model.validation_ds.tokens_to_generate=2",
        *TINY_MODEL,
    ]
    cfg = load_config(REPO / "configs" / "salm_tiny.yaml", args)
    loader = build_dataloader(cfg, corpus["tok_path"])
    expected = [b["sample_ids"].tolist() for b, _ in zip(loader, range(3), strict=False)]
    seen: list[list[int]] = []

    class Recorder(pl.Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            assert "cu_seqlens" in batch
            seen.append(batch["sample_ids"].tolist())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(load_config(REPO / "configs" / "salm_tiny.yaml", args), callbacks=[Recorder()])
    assert result.global_step == 3 and seen == expected
    assert result.consumed_samples == sum(len(s) for s in seen)
    assert torch.isfinite(torch.tensor(result.metrics["reduced_train_loss"]))


# ------------------------------------------------------------------------------ the docs


def test_the_packing_page_quotes_its_results_file() -> None:
    """docs/packing.md's measured table is the results file's, which exists."""
    doc = (REPO / "docs" / "packing.md").read_text(encoding="utf-8")
    assert "benchmarks/results/packing.md" in doc
    results = (REPO / "benchmarks" / "results" / "packing.md").read_text(encoding="utf-8").splitlines()
    rows = [line for line in results if line.startswith(("| fixed |", "| bucketed |", "| packed |"))]
    assert len(rows) in (3, 5)  # the tiny SALM's table, and the LLM-dominant one's unless skipped
    for row in rows:
        assert row in doc.splitlines(), f"docs/packing.md lacks the results row {row!r}"
