"""build_dataloader end to end on real files (docs/architecture.md, docs/batch.md): contract, reference collator, workers,
exactly-once epochs, exact resume, multi-audio, errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechdata import build_dataloader
from speechdata.audio import load_audio
from speechdata.config import make_dataset_config
from speechdata.errors import DataError
from speechdata.manifest import pack_sample_id, unpack_sample_id
from speechdata.testing import make_corpus, write_manifest
from speechdata.text.tokenizer import Tokenizer

LOCATOR = "|audio|"
TEMPLATE = "Q: {context}\nA: {answer}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_corpus(tmp_path_factory.mktemp("loader"), n=48, seed=7, max_duration=9.0)


@pytest.fixture(scope="module")
def tokenizer(corpus) -> Tokenizer:
    return corpus.train_tokenizer(vocab_size=100, locator=LOCATOR)


def _cfg(corpus, **kw):
    base = {
        "manifest_filepath": str(corpus.manifest),
        "audio_locator": LOCATOR,
        "prompt_template": TEMPLATE,
        "micro_batch_size": 4,
        "drop_last": False,
        "min_duration": None,
        "max_duration": None,
        "seed": 11,
    }
    base.update(kw)
    return make_dataset_config(base)


def expected_prompt(tokenizer: Tokenizer, context: str, answer: str) -> tuple[list[int], int, list[int]]:
    """``(input_ids, answer_start, audio_positions)`` of one example under :data:`TEMPLATE`, by hand.

    Independent of ``PromptBuilder``; the rules are those of docs/differences-from-nemo.md
    ("Natural tokenization"): the formatted text ``"Q: "`` + context + ``"\nA: "`` + answer is
    encoded whole, cut only at each locator (the first stretch plainly, every later one as a
    continuation); BOS first (``add_bos``), EOS last (``add_eos``); each audio's position is the
    index in the final sequence, BOS included, where its locator was. The answer part starts at the
    space before the answer (only trailing spaces of the context part move to the answer), with the
    token that holds that space: a SentencePiece model starts a new piece at every space, so that
    token is the first of the answer part encoded on its own (checked here).
    """
    stretches = f"Q: {context}\nA: {answer}".split(LOCATOR)
    ids = [tokenizer.bos_id]
    positions = []
    for k, stretch in enumerate(stretches[:-1]):
        if k:
            positions.append(len(ids))
        ids += tokenizer.encode(stretch, continuation=k > 0)
    if len(stretches) > 1:
        positions.append(len(ids))
    last = len(stretches) > 1
    head = tokenizer.encode(stretches[-1][: -len(answer) - 1], continuation=last)
    tail = tokenizer.encode(" " + answer, continuation=True)
    assert head + tail == tokenizer.encode(stretches[-1], continuation=last)  # the stretch, whole
    ids += head
    answer_start = len(ids)
    ids += tail
    return [*ids, tokenizer.eos_id], answer_start, positions


def reference_batch(
    cfg, tokenizer: Tokenizer, sample_ids: list[int], entries: list[dict], root: Path
) -> dict[str, torch.Tensor]:
    """A slow, obviously-correct collator: python loops over the manifest's entries, per docs/batch.md."""
    recs = [entries[unpack_sample_id(s)[1] - 1] for s in sample_ids]
    prompts = [expected_prompt(tokenizer, r["context"], r["answer"]) for r in recs]
    listed = [(r["audio_filepath"], r["offset"], r["duration"]) for r in recs]
    clips = [
        load_audio(root / p, offset=o, duration=d, sample_rate=cfg.sample_rate)
        for paths, offsets, durations in listed
        for p, o, d in (
            zip(paths, offsets, durations, strict=True)
            if isinstance(paths, list)
            else [(paths, offsets, durations)]
        )
    ]
    T = max(len(c) for c in clips)
    audio = torch.zeros(len(clips), T)
    for k, c in enumerate(clips):
        audio[k, : len(c)] = torch.from_numpy(c)
    n = max(len(ids) - 1 for ids, _, _ in prompts)
    L = -(-n // 8) * 8  # pad_to_multiple 8
    pad = tokenizer.pad_id
    tokens = torch.full((len(recs), L), pad)
    labels = torch.full((len(recs), L), pad)
    mask = torch.zeros(len(recs), L)
    for b, (ids, start, _) in enumerate(prompts):
        for j in range(len(ids) - 1):
            tokens[b, j] = ids[j]
            labels[b, j] = ids[j + 1]
            # label j is token j + 1: a target in the answer part (answer_only_loss), else always
            mask[b, j] = 1.0 if j + 1 >= start or not cfg.answer_only_loss else 0.0
    Lc = max(start for _, start, _ in prompts)
    contexts = torch.full((len(recs), Lc), pad)
    for b, (ids, start, _) in enumerate(prompts):
        contexts[b, :start] = torch.tensor(ids[:start])
    La = max(len(ids) - start for ids, start, _ in prompts)
    answers = torch.full((len(recs), La), pad)
    for b, (ids, start, _) in enumerate(prompts):
        answers[b, : len(ids) - start] = torch.tensor(ids[start:])
    num_audios = [len(p) if isinstance(p, list) else 1 for p, _, _ in listed]
    # one audio and no locator in the context: the audio goes first
    positions = [q for (_, _, found), n in zip(prompts, num_audios, strict=True) for q in (found or [0] * n)]
    return {
        "audio_signal": audio,
        "audio_signal_length": torch.tensor([len(c) for c in clips]),
        "num_audios": torch.tensor(num_audios),
        "audio_positions": torch.tensor(positions),
        "tokens": tokens,
        "tokens_length": torch.tensor([len(ids) - 1 for ids, _, _ in prompts]),
        "labels": labels,
        "loss_mask": mask,
        "position_ids": torch.arange(L).expand(len(recs), L),
        "contexts": contexts,
        "context_lengths": torch.tensor([start for _, start, _ in prompts]),
        "answers": answers,
        "answer_lengths": torch.tensor([len(ids) - start for ids, start, _ in prompts]),
    }


@pytest.mark.parametrize(("answer_only_loss", "workers"), [(True, 0), (False, 0), (True, 2)])
def test_batches_equal_the_reference_collator(
    corpus, tokenizer, answer_only_loss: bool, workers: int
) -> None:
    cfg = _cfg(
        corpus, add_bos=True, answer_only_loss=answer_only_loss, batch_duration=40.0, num_workers=workers
    )
    assert (cfg.prompt_template, cfg.add_eos, cfg.pad_to_multiple) == (TEMPLATE, True, 8)
    loader = build_dataloader(cfg, tokenizer)
    seen_multi = False
    # two epochs kept whole: the workers reuse their pooled audio buffers meanwhile, which must
    # not change a batch already handed out
    batches = list(loader) + list(loader)
    for batch in batches:
        ref = reference_batch(cfg, tokenizer, batch["sample_ids"].tolist(), corpus.entries, corpus.root)
        for key, want in ref.items():
            got = batch[key]
            assert got.dtype == (torch.float32 if key in ("audio_signal", "loss_mask") else torch.int64), key
            torch.testing.assert_close(got, want.to(got.dtype), rtol=0, atol=0, msg=key)
        assert batch["tokens"].shape[1] % 8 == 0
        assert int(batch["num_audios"].sum()) == batch["audio_signal"].shape[0]
        seen_multi |= bool((batch["num_audios"] > 1).any())
        assert len(batch["metadata"]) == len(batch["sample_ids"])
        assert all("lang" in m and "audio_filepath" in m for m in batch["metadata"])
    assert seen_multi


@pytest.mark.parametrize("workers", [0, 2])
def test_every_example_exactly_once_per_epoch(corpus, tokenizer, workers: int) -> None:
    loader = build_dataloader(_cfg(corpus, num_workers=workers, batch_duration=30.0), tokenizer)
    expected = {pack_sample_id(0, i + 1) for i in range(len(corpus.entries))}
    for _ in range(2):
        seen = [s for b in loader for s in b["sample_ids"].tolist()]
        assert sorted(seen) == sorted(expected)
    assert loader.epoch == 2


def test_resume_gives_exactly_the_uninterrupted_batches(corpus, tokenizer) -> None:
    cfg = _cfg(corpus, batch_duration=25.0, num_workers=2)
    full = build_dataloader(cfg, tokenizer)
    want = [b["sample_ids"].tolist() for b in itertools.chain(full, full)]  # two epochs
    n1 = len(want) // 2
    rng = np.random.default_rng(0)
    for stop in [*rng.integers(1, len(want) - 1, 3).tolist(), n1]:
        first = build_dataloader(cfg, tokenizer)
        got: list[list[int]] = []
        it = iter(first)
        while len(got) < stop:
            try:
                got.append(next(it)["sample_ids"].tolist())
            except StopIteration:
                it = iter(first)
        state = first.state_dict()
        resumed = build_dataloader(cfg, tokenizer)
        resumed.load_state_dict(state)
        while len(got) < len(want):
            for b in resumed:
                got.append(b["sample_ids"].tolist())
                if len(got) == len(want):
                    break
        assert got == want, f"resume at {stop} diverged"


def test_different_seed_or_epoch_changes_order(corpus, tokenizer) -> None:
    a = build_dataloader(_cfg(corpus, seed=1), tokenizer)
    b = build_dataloader(_cfg(corpus, seed=2), tokenizer)
    ea = [x["sample_ids"].tolist() for x in a]
    assert ea != [x["sample_ids"].tolist() for x in b]
    assert ea != [x["sample_ids"].tolist() for x in a]  # epoch 1 differs from epoch 0
    c = build_dataloader(_cfg(corpus, seed=1), tokenizer)
    assert ea == [x["sample_ids"].tolist() for x in c]


@pytest.mark.parametrize(
    ("strategy", "world", "drop_last"),
    [("synced_randomized", 2, True), ("fully_randomized", 3, False), ("synced_randomized", 2, False)],
)
def test_ranks_split_the_epoch_without_overlap(
    corpus, tokenizer, strategy: str, world: int, drop_last: bool
) -> None:
    cfg = _cfg(corpus, batch_duration=30.0, num_buckets=4, bucketing_strategy=strategy, drop_last=drop_last)
    per_rank = []
    dropped = 0
    for rank in range(world):
        loader = build_dataloader(cfg, tokenizer, rank=rank, world_size=world)
        per_rank.append([tuple(sorted(b["sample_ids"].tolist())) for b in loader])
        dropped = loader.report().get("drop_last_tail", 0)  # the global plan's: the same on every rank
    assert len({len(batches) for batches in per_rank}) == 1  # equal steps
    everything = {pack_sample_id(0, i + 1) for i in range(len(corpus.entries))}
    if drop_last:
        # no example on two ranks, none twice on one; the rest is the counted tail
        flat = [s for batches in per_rank for b in batches for s in b]
        assert len(flat) == len(set(flat)) == len(everything) - dropped
        assert set(flat) <= everything
    else:
        # an epoch is filled up by repeating whole batches: the distinct batches partition the data
        distinct = {b for batches in per_rank for b in batches}
        flat = [s for b in distinct for s in b]
        assert len(flat) == len(set(flat)) and set(flat) == everything
        assert dropped == 0


def test_bad_audio_raises_one_line_error_or_is_counted(tmp_path: Path, corpus, tokenizer) -> None:
    entries = [dict(e) for e in corpus.entries if not isinstance(e["audio_filepath"], list)][:6]
    for e in entries:
        e["audio_filepath"] = str(corpus.root / e["audio_filepath"])
    entries[2]["audio_filepath"] = str(tmp_path / "gone.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 100)
    entries[4]["audio_filepath"] = str(tmp_path / "junk.wav")
    path = write_manifest(tmp_path / "m.jsonl", entries)
    for workers in (0, 2):
        cfg = _cfg(corpus, manifest_filepath=str(path), num_workers=workers, shuffle=False)
        with pytest.raises(DataError, match=r"m\.jsonl:3: .*gone\.wav: audio file not found") as err:
            list(build_dataloader(cfg, tokenizer))
        assert "\n" not in str(err.value)
        skip = build_dataloader(
            _cfg(corpus, manifest_filepath=str(path), num_workers=workers, on_error="skip"), tokenizer
        )
        got = [s for b in skip for s in b["sample_ids"].tolist()]
        assert sorted(got) == [pack_sample_id(0, k) for k in (1, 2, 4, 6)]
        assert skip.report() == {"missing_audio": 1, "decode_error": 1}


def test_duration_filters_are_counted(corpus, tokenizer) -> None:
    loader = build_dataloader(_cfg(corpus, min_duration=1.0, max_duration=6.0), tokenizer)
    n = sum(len(b["sample_ids"]) for b in loader)
    report = loader.report()
    assert n + sum(report.values()) == len(corpus.entries)
    assert set(report) <= {"too_short_audio", "too_long_audio"} and report


def test_features_on_the_loader(corpus, tokenizer) -> None:
    cfg = make_dataset_config({**_cfg(corpus).to_dict(), "features": {"n_mels": 40}})
    batch = next(iter(build_dataloader(cfg, tokenizer)))
    feats, flen = batch["audio_features"], batch["audio_features_length"]
    assert feats.shape[:2] == (batch["audio_signal"].shape[0], 40)
    assert int(flen.max()) == feats.shape[2]


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from speechdata.shards.write import ShardOptions, write_shards

    out = tmp_path_factory.mktemp("shards")
    write_shards([corpus.manifest], out, ShardOptions(num_shards=3, progress=False))
    return out


def _tarred(corpus, shards: Path, spec: str, **kw):
    kw.setdefault("manifest_filepath", str(shards / "tarred_audio_manifest.json"))
    return _cfg(corpus, is_tarred=True, tarred_audio_filepaths=spec, batch_duration=30.0, **kw)


def test_tarred_random_access_equals_plain_files(corpus, tokenizer, shards: Path) -> None:
    plain = build_dataloader(_cfg(corpus, batch_duration=30.0, shuffle=False), tokenizer)
    tarred = build_dataloader(
        _tarred(corpus, shards, str(shards / "audio_{0..2}.tar"), shuffle=False), tokenizer
    )
    assert not tarred.streaming
    by_answer = {}
    for b in plain:
        for k, m in enumerate(b["metadata"]):
            by_answer[m["answer"]] = b["audio_signal"][k, : b["audio_signal_length"][k]]
    n = 0
    for b in tarred:
        for k, m in enumerate(b["metadata"]):
            if b["num_audios"][k] == 1 and m["answer"] in by_answer:
                a = int(b["num_audios"][:k].sum())
                torch.testing.assert_close(
                    b["audio_signal"][a, : b["audio_signal_length"][a]], by_answer[m["answer"]]
                )
                n += 1
    assert n > len(corpus.entries) // 2


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_shards_every_example_once_and_resume(corpus, tokenizer, shards: Path, workers: int) -> None:
    spec = f"pipe:cat {shards}/audio__OP_0..2_CL_.tar"
    cfg = _tarred(corpus, shards, spec, num_workers=workers, shuffle_n=8, bucket_buffer_size=16)
    loader = build_dataloader(cfg, tokenizer)
    assert loader.streaming
    epoch0 = [b["sample_ids"].tolist() for b in loader]
    seen = [s for b in epoch0 for s in b]
    assert set(seen) == {pack_sample_id(0, i + 1) for i in range(len(corpus.entries))}
    # 3 shards over 2 workers: one shard is read twice (repeated, never dropped); 1 reader: once
    readers = max(1, workers)
    repeated_shards = -(-3 // readers) * readers - 3
    per_shard = -(-len(corpus.entries) // 3)
    assert len(seen) - len(corpus.entries) <= repeated_shards * per_shard
    assert (len(seen) > len(corpus.entries)) == (repeated_shards > 0)
    epoch1 = [b["sample_ids"].tolist() for b in loader]
    assert epoch1 != epoch0
    resumed = build_dataloader(cfg, tokenizer)
    resumed.load_state_dict({"epoch": 1, "batch": 2, "seed": cfg.seed, "world_size": 1})
    assert [b["sample_ids"].tolist() for b in resumed] == epoch1[2:]


def test_streaming_reads_no_manifest_line_at_start_and_finds_entries_without_shard_id(
    corpus, tokenizer, shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from speechdata.manifest import Index

    lines = (shards / "tarred_audio_manifest.json").read_text().splitlines()
    entries = [json.loads(x) for x in lines]
    for e in entries[::2]:  # half the entries do not say which shard holds their audio
        del e["shard_id"]
    manifest = write_manifest(tmp_path / "tarred.json", entries)
    spec = f"pipe:cat {shards}/audio__OP_0..2_CL_.tar"
    cfg = _tarred(corpus, shards, spec, manifest_filepath=str(manifest), num_workers=0)
    reads = []
    real = Index.record
    monkeypatch.setattr(Index, "record", lambda self, i: reads.append(i) or real(self, i))
    loader = build_dataloader(cfg, tokenizer)
    assert loader.streaming and reads == []
    seen = [s for b in loader for s in b["sample_ids"].tolist()]
    assert sorted(seen) == [pack_sample_id(0, i + 1) for i in range(len(entries))]


def _mixed_manifest(corpus, path: Path, extra: list[dict] = ()) -> tuple[Path, list[dict]]:
    """Plain ASR lines (no context), single-audio lines whose context has no locator, and the
    corpus's multi-audio lines with one locator per audio, paths made absolute."""
    singles = [dict(e) for e in corpus.entries if isinstance(e["audio_filepath"], str)][:6]
    multis = [dict(e) for e in corpus.entries if isinstance(e["audio_filepath"], list)][:3]
    lines = []
    for k, e in enumerate(singles):
        path_ = str(corpus.root / e["audio_filepath"])
        if k % 2:
            lines.append({"audio_filepath": path_, "duration": e["duration"], "text": e["answer"]})
        else:
            context = " ".join(e["context"].replace(LOCATOR, " ").split())
            lines.append({**e, "audio_filepath": path_, "context": context})
    for e in multis:
        lines.append({**e, "audio_filepath": [str(corpus.root / p) for p in e["audio_filepath"]]})
    lines += extra
    return write_manifest(path, lines), lines


def test_mixed_manifest_single_audio_without_locator_goes_first(tmp_path: Path, corpus, tokenizer) -> None:
    # NeMo's rule: with audio_locator set, a one-audio line whose context has no locator gets its
    # audio at position 0; lines with locators keep theirs
    path, lines = _mixed_manifest(corpus, tmp_path / "mixed.jsonl")
    default = "Transcribe the audio."
    cfg = _cfg(corpus, manifest_filepath=str(path), default_context=default, add_bos=True, shuffle=False)
    # the lines as the reference collator reads them: default_context filled in, 'text' as answer
    entries = [{"context": default, "answer": x.get("text"), "offset": 0.0, **x} for x in lines]
    seen = 0
    for batch in build_dataloader(cfg, tokenizer):
        ref = reference_batch(cfg, tokenizer, batch["sample_ids"].tolist(), entries, corpus.root)
        for key, want in ref.items():
            torch.testing.assert_close(batch[key], want.to(batch[key].dtype), rtol=0, atol=0, msg=key)
        seen += len(batch["sample_ids"])
    assert seen == len(lines)


def test_mixed_manifest_locator_mismatches_stay_errors(tmp_path: Path, corpus, tokenizer) -> None:
    multi = next(e for e in corpus.entries if isinstance(e["audio_filepath"], list))
    paths = [str(corpus.root / p) for p in multi["audio_filepath"]]
    bad = [
        {**multi, "audio_filepath": paths, "context": "Transcribe both."},  # several audios, no locator
        {**multi, "audio_filepath": paths, "context": f"Transcribe {LOCATOR} only."},  # 1 locator, 2+ audios
    ]
    path, lines = _mixed_manifest(corpus, tmp_path / "mixed.jsonl", bad)
    first = len(lines) - 1  # the 1-based line of the first bad line
    cfg = _cfg(corpus, manifest_filepath=str(path), default_context="Transcribe the audio.", shuffle=False)
    n = len(paths)
    with pytest.raises(DataError) as err:
        list(build_dataloader(cfg, tokenizer))
    # whichever of the two lines is read first
    assert str(err.value).endswith(
        (
            f"mixed.jsonl:{first}: context has 0 audio locator(s) '|audio|' but the example has {n} audio(s)",
            f"mixed.jsonl:{first + 1}: context has 1 audio locator(s) '|audio|' but the example has {n} audio(s)",
        )
    )
    skip = build_dataloader(
        _cfg(corpus, manifest_filepath=str(path), default_context="Transcribe the audio.", on_error="skip"),
        tokenizer,
    )
    got = sorted(s for b in skip for s in b["sample_ids"].tolist())
    assert got == [pack_sample_id(0, k) for k in range(1, first)]
    assert skip.report() == {"bad_line": 2}


def test_bundled_config_reads_a_mixed_manifest(tmp_path: Path, corpus, tokenizer) -> None:
    # salm_tiny's default_context "|audio| Transcribe the audio." puts the audio of a plain ASR
    # line after "Q: "; a line with a locator-less context has its audio first
    path, lines = _mixed_manifest(corpus, tmp_path / "mixed.jsonl")
    config = Path(__file__).resolve().parent.parent / "configs" / "salm_tiny.yaml"
    overrides = [
        f"model.train_ds.{k}"
        for k in (
            f"manifest_filepath={path}",
            "num_workers=0",
            "max_duration=null",
            "drop_last=false",
            "shuffle=false",
        )
    ]
    loader = build_dataloader(config, tokenizer, overrides=overrides)
    seen = 0
    head = len(tokenizer.encode("Q: ")) + 1  # BOS, then "Q: "
    for batch in loader:
        at = 0
        for b, meta in enumerate(batch["metadata"]):
            n = int(batch["num_audios"][b])
            positions = batch["audio_positions"][at : at + n].tolist()
            at += n
            line = lines[int(meta["where"].rsplit(":", 1)[1]) - 1]
            if n > 1:
                assert len(positions) == n and positions[0] >= head
            elif "context" in line:
                assert positions == [0]
            else:
                ids, start, want = expected_prompt(tokenizer, "|audio| Transcribe the audio.", meta["answer"])
                assert positions == want == [head]
                m = int(batch["context_lengths"][b])
                assert batch["contexts"][b, :m].tolist() == ids[:start]
            seen += 1
    assert seen == len(lines)
