"""speechdata tune: the search against fake memory models, the CPU estimate on the real tiny model,
and the command end to end (dry run, a CPU-estimated run whose YAML the loader reads back), for 1D
and 2D bins."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from speechdata.cli import main
from speechdata.config import dataset_config, load_config, load_yaml, make_dataset_config
from speechdata.errors import ConfigError
from speechdata.loader import build_dataloader
from speechdata.testing import TINY_MODEL, make_corpus
from speechdata.text.tokenizer import train_tokenizer
from speechdata.tune import (
    BucketShape,
    StepRunner,
    bucket_bins,
    bucket_shapes,
    estimate_measure,
    guarded,
    largest_fitting,
    parse_bytes,
    prepare,
    search_buckets,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
MiB = 1024**2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tune")
    c = make_corpus(root, n=24, seed=5, min_duration=0.3, max_duration=1.9, shared_source_fraction=0.0)
    texts = [e["answer"] for e in c.entries] + [e["context"] for e in c.entries]
    train_tokenizer(texts, root / "tok", vocab_size=320, user_symbols=["|audio|"])
    return {"manifest": str(root / "manifest.jsonl"), "tokenizer": str(root / "tok" / "tokenizer.model")}


def small(corpus: dict[str, str], *extra: str) -> list[str]:
    """Overrides that make the bundled config's step tiny (float32: bf16 autocast is slow on CPUs)."""
    return [
        f"model.tokenizer.model={corpus['tokenizer']}",
        "trainer.precision=32",
        "model.train_ds.max_seq_length=32",
        "model.train_ds.max_duration=2",
        *TINY_MODEL,
        *extra,
    ]


# ------------------------------------------------------------------------------------ the search


@pytest.mark.parametrize("static,per,power", [(100, 7, 1), (5_000, 3, 2), (0, 1000, 1), (50, 1, 1.5)])
@pytest.mark.parametrize("budget", [99, 150, 1_000, 12_345, 10**6])
@pytest.mark.parametrize("margin", [0, 40])
def test_largest_fitting_is_the_brute_force_answer(
    static: int, per: int, power: float, budget: int, margin: int
) -> None:
    def peak(b: int) -> int:
        return static + int(per * b**power)

    cap = 700
    expect = max((b for b in range(1, cap + 1) if peak(b) + margin <= budget), default=0)
    got, trials = largest_fitting(peak, budget, margin, max_batch=cap)
    assert got == expect
    assert len(trials) <= 2 * math.ceil(math.log2(cap)) + 2
    assert all(t.fits == (t.peak + margin <= budget) for t in trials)
    assert trials[0].batch_size == 1


def test_out_of_memory_is_does_not_fit_and_cleans_up() -> None:
    cleaned: list[int] = []
    shape = BucketShape(0, 0.0, 1.0, 8, 16000)

    def step(s: BucketShape, b: int) -> int:
        if b > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return 10 * b

    measure = guarded(step, lambda: cleaned.append(1))
    got, trials = largest_fitting(lambda b: measure(shape, b), budget=10**9)
    assert got == 5
    assert [t.peak for t in trials if not t.fits] and all(t.peak is None for t in trials if not t.fits)
    assert len(cleaned) == len(trials)


def test_search_buckets_per_shape_with_a_fake_memory_model() -> None:
    shapes = [
        BucketShape(i, lo, hi, 64, 16000) for i, (lo, hi) in enumerate([(0, 2), (2, 4), (4, 8), (8, 8)])
    ]
    calls: list[tuple[float, int]] = []

    def measure(s: BucketShape, b: int) -> int | None:
        calls.append((s.seconds, b))
        need = 1000 + b * (s.samples // 100 + 3 * s.tokens)
        return None if need > 50_000 else need  # out of memory above 50 kB

    lines: list[str] = []
    results = search_buckets(
        shapes, measure, budget=40_000, margin=500, max_batch=4096, progress=lines.append
    )
    for r in results:
        per = r.shape.samples // 100 + 3 * r.shape.tokens
        assert r.batch_size == (40_000 - 500 - 1000) // per
        assert r.chosen is not None and r.chosen.peak + 500 <= 40_000
    assert [r.shape.bucket for r in results] == [0, 1, 2, 3]
    assert results[2].batch_size == results[3].batch_size  # the same shape, measured once
    assert sum(1 for sec, _ in calls if sec == 8) == len(results[2].trials)
    assert calls[0][0] == 8  # longest first
    assert len(lines) == len(calls) and "out of memory" in " ".join(lines)


def test_bucket_shapes_follow_the_loaders_bins() -> None:
    ds = make_dataset_config({"max_duration": 8, "min_duration": 0.1, "max_seq_length": 100})
    shapes = bucket_shapes(ds, [2, 4, 9])
    assert [(s.low, s.seconds, s.tokens) for s in shapes] == [
        (0.1, 2, 100),
        (2, 4, 100),
        (4, 8, 100),
        (8, 8, 100),
    ]
    assert [s.samples for s in shapes][:2] == [32000, 64000]
    assert [(s.low, s.seconds) for s in bucket_shapes(ds, [])] == [(0.1, 8)]
    with pytest.raises(ConfigError, match=r"train_ds.max_duration: null"):
        bucket_shapes(make_dataset_config({"max_duration": None}), [])
    assert bucket_bins(make_dataset_config({"bucket_duration_bins": [1, 3]}), "x") == [1.0, 3.0]
    assert bucket_bins(make_dataset_config({}), "x") == []  # no bucketing: one bucket
    with pytest.raises(
        ConfigError, match=r"x: 30 buckets are estimated from the data, but manifest_filepath"
    ):
        bucket_bins(make_dataset_config({"batch_duration": 100}), "x", lambda: np.zeros(29))
    assert parse_bytes("80GiB") == 80 * 1024**3 and parse_bytes("1.5 MB") == 1_500_000
    with pytest.raises(ConfigError, match="memory size 'lots'"):
        parse_bytes("lots")


# ------------------------------------------------------------------------- the real CPU estimate


def test_cpu_estimate_counts_weights_gradients_optimizer_and_saved_activations(
    corpus: dict[str, str],
) -> None:
    plan = prepare(
        load_config(CONFIGS / "salm_tiny.yaml", small(corpus, "model.train_ds.bucket_duration_bins=[1]"))
    )
    runner = StepRunner(plan.cfg, plan.setup, "cpu", plan.precision)
    measure = estimate_measure(runner)
    long, short = plan.shapes[1], plan.shapes[0]
    measure(short, 1)  # the optimiser state exists from here on
    params = runner.parameter_bytes()
    # AdamW: two moments per trainable weight, plus one scalar step per parameter tensor
    assert params * 2 <= runner.optimizer_bytes() <= params * 2 + 8 * len(list(runner.model.parameters()))
    m1, m2, m4 = (measure(long, b) for b in (1, 2, 4))
    assert m1 is not None and m2 is not None and m4 is not None
    assert m1 > 4 * params  # weights, gradients, two moments, and activations on top
    per_example = m2 - m1
    assert per_example > 0
    assert abs((m4 - m2) - 2 * per_example) <= 0.1 * per_example  # activations scale with the batch
    assert measure(short, 4) < m4  # shorter audio, less memory


# ---------------------------------------------------------------------------------- the command


def test_dry_run_shows_shapes_and_writes_nothing(
    corpus: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tuned.yaml"
    args = [
        "tune",
        str(CONFIGS / "bestow_tiny.yaml"),
        *small(corpus, "model.train_ds.bucket_duration_bins=[0.5,1]"),
    ]
    assert main([*args, "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("DRY RUN (--dry-run): nothing is measured and nothing is written")
    assert "BESTOW" in text and f"not writing {out} (dry run)" in text
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert [r[:4] for r in rows] == [
        ["0", "0.1-0.5", "8000", "32"],
        ["1", "0.5-1", "16000", "32"],
        ["2", "1-2", "32000", "32"],
    ]
    assert not out.exists()


def test_cpu_estimate_run_writes_sizes_the_loader_uses(
    corpus: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tuned.yaml"
    overrides = small(corpus, "model.train_ds.bucket_duration_bins=[1.0]")
    cfg_path = str(CONFIGS / "salm_tiny.yaml")
    assert (
        main(
            ["tune", cfg_path, *overrides, "--estimate-cpu", "48MiB", "--fraction", "0.5", "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr()
    assert (
        "CPU ESTIMATE against 48.0 MiB" in printed.out and "budget 0.5 x 48.0 MiB = 24.0 MiB" in printed.out
    )
    assert "bucket 1 (2 s, 32 tokens): batch 1: peak" in printed.err
    tuned = load_yaml(out)
    sizes = list(tuned.model.train_ds.bucketing_batch_size)
    assert list(tuned.model.train_ds.bucket_duration_bins) == [1.0]
    assert len(sizes) == 2 and sizes[0] > sizes[1] >= 1  # the shorter bucket takes more examples

    merged = OmegaConf.merge(load_config(cfg_path, overrides), tuned)
    merged.model.train_ds.manifest_filepath = corpus["manifest"]
    merged.model.train_ds.drop_last = False
    ds = dataset_config(merged, "train_ds")
    assert ds.bucketing_batch_size == sizes and ds.bucket_duration_bins == [1.0]
    line = next(x for x in printed.out.splitlines() if x.startswith("as overrides: "))
    again = dataset_config(
        load_config(
            cfg_path,
            [*overrides, *line.split()[2:], f"model.train_ds.manifest_filepath={corpus['manifest']}"],
        ),
        "train_ds",
    )
    assert again.bucketing_batch_size == sizes

    from speechdata.text.tokenizer import load_tokenizer

    loader = build_dataloader(ds, load_tokenizer(corpus["tokenizer"]))
    assert loader.sampler is not None
    assert list(loader.sampler.buckets.sizes) == sizes
    plan = loader.sampler.plan(0)
    counts = loader.sampler.buckets.counts(loader.keep)
    lengths = np.diff(plan.offsets)
    for b in (0, 1):
        assert lengths[plan.bucket == b].max() == min(sizes[b], counts[b])  # full batches of the tuned size
        assert (lengths[plan.bucket == b] <= sizes[b]).all()


def test_a_budget_below_batch_one_is_a_one_line_error(
    corpus: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["tune", str(CONFIGS / "salm_tiny.yaml"), *small(corpus), "--estimate-cpu", "64KiB"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "speechdata: error: model.train_ds: bucket 0 (2 s, 32 tokens) does not fit at batch 1 within 57.6 KiB"
    )


def test_the_docs_example_is_the_results_file() -> None:
    repo = CONFIGS.parent
    results = (repo / "benchmarks/results/tune_cpu_estimate_salm_tiny.txt").read_text().splitlines()
    docs = (repo / "docs/tuning.md").read_text()
    rows = [
        line for line in results if line.strip()[:1].isdigit() or line.strip().startswith("bucketing_batch")
    ]
    assert len(rows) == 5
    for row in rows:
        assert row in docs, f"docs/tuning.md lacks the results line {row!r}"


def test_cuda_measure_reads_the_peak_and_cleans_up_after_out_of_memory(
    corpus: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA probe's logic with torch.cuda's memory calls stood in for (no GPU here)."""
    from speechdata.tune import cuda_measure

    plan = prepare(load_config(CONFIGS / "salm_tiny.yaml", small(corpus)))
    runner = StepRunner(plan.cfg, plan.setup, "cpu", plan.precision)
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 1000 + runner.gradient_bytes())
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    real_step = runner.step

    def step(batch: dict) -> None:
        if batch["tokens"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")
        real_step(batch)

    monkeypatch.setattr(runner, "step", step)
    measure = cuda_measure(runner)
    peak = measure(plan.shapes[0], 2)
    assert peak == 1000 + runner.parameter_bytes(
        trainable_only=True
    )  # read before the gradients were dropped
    assert all(p.grad is None for p in runner.model.parameters())
    assert measure(plan.shapes[0], 3) is None
    assert calls == ["reset", "empty", "reset", "empty"]


def test_bins_the_loader_estimates_are_the_ones_tuned(corpus: dict[str, str]) -> None:
    extra = (f"model.train_ds.manifest_filepath={corpus['manifest']}", "model.train_ds.num_buckets=3")
    plan = prepare(load_config(CONFIGS / "salm_tiny.yaml", small(corpus, *extra)))
    from speechdata.text.tokenizer import load_tokenizer

    loader = build_dataloader(plan.setup.train_ds, load_tokenizer(corpus["tokenizer"]))
    assert loader.sampler is not None
    assert plan.bins == list(loader.sampler.buckets.bins) and len(plan.bins) == 2
    assert [s.seconds for s in plan.shapes] == [*plan.bins, 2.0]
    with pytest.raises(ConfigError, match=r"model.train_ds: 3 buckets are estimated from the data"):
        prepare(load_config(CONFIGS / "salm_tiny.yaml", small(corpus, "model.train_ds.num_buckets=3")))


# ------------------------------------------------------------------------------------- 2D buckets

PAIRS = [[1, 10], [1, 30], [1.6, 15], [1.6, 30], [2, 30]]


def two_d(corpus: dict[str, str], *extra: str) -> list[str]:
    """:func:`small` with 2D bins (seconds, output tokens) and room for the prompts (64 ids)."""
    bins = "[" + ",".join(f"[{a},{b}]" for a, b in PAIRS) + "]"
    return small(
        corpus, "model.train_ds.max_seq_length=64", f"model.train_ds.bucket_duration_bins={bins}", *extra
    )


def test_2d_shapes_without_manifests_take_max_seq_length(
    corpus: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    plan = prepare(load_config(CONFIGS / "salm_tiny.yaml", two_d(corpus)))
    assert plan.bins == [(1.0, 10.0), (1.0, 30.0), (1.6, 15.0), (1.6, 30.0), (2.0, 30.0)]
    assert [(s.bucket, s.low, s.seconds, s.tokens, s.bin) for s in plan.shapes] == [
        (0, 0.1, 1.0, 64, "1s/10t"),
        (1, 0.1, 1.0, 64, "1s/30t"),
        (2, 1.0, 1.6, 64, "1.6s/15t"),
        (3, 1.0, 1.6, 64, "1.6s/30t"),
        (4, 1.6, 2.0, 64, "2s/30t"),  # the last pair's seconds: max_duration caps it
    ]
    assert plan.note is not None and plan.note.startswith("without manifests, every 2D bucket's tokens are ")
    assert "max_seq_length (64)" in plan.note

    assert main(["tune", str(CONFIGS / "salm_tiny.yaml"), *two_d(corpus), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(x for x in lines if x.lstrip().startswith("bucket"))
    assert header.split()[:3] == ["bucket", "bin", "seconds"]
    rows = [x.split() for x in lines if x.strip()[:1].isdigit()]
    assert [r[:5] for r in rows] == [
        ["0", "1s/10t", "0.1-1", "16000", "64"],
        ["1", "1s/30t", "0.1-1", "16000", "64"],
        ["2", "1.6s/15t", "1-1.6", "25600", "64"],
        ["3", "1.6s/30t", "1-1.6", "25600", "64"],
        ["4", "2s/30t", "1.6-2", "32000", "64"],
    ]
    assert sum(1 for x in lines if x == plan.note) == 1  # said once, in one line


def test_2d_shapes_with_manifests_bound_the_prompt_by_the_data(corpus: dict[str, str]) -> None:
    overrides = two_d(corpus, f"model.train_ds.manifest_filepath={corpus['manifest']}")
    plan = prepare(load_config(CONFIGS / "salm_tiny.yaml", overrides))
    from speechdata.text.tokenizer import load_tokenizer

    loader = build_dataloader(plan.setup.train_ds, load_tokenizer(corpus["tokenizer"]))
    m = loader.measures
    assert m is not None
    # by hand: an example goes to the first pair of the smallest first bound >= its seconds whose
    # output bound holds it (strict mode); the extra tokens are its input ids minus its output
    extra: dict[int, int] = {}
    firsts = sorted({a for a, _ in PAIRS})
    for row in np.flatnonzero(loader.keep).tolist():
        seconds, output, text = float(m.duration[row]), int(m.output[row]), int(m.text[row])
        first = next(a for a in firsts if seconds <= a)
        k = next(i for i, (a, b) in enumerate(PAIRS) if a == first and output <= b)
        extra[k] = max(extra.get(k, 0), text - output)
    assert len(set(extra.values())) > 1 and len(extra) < len(PAIRS)  # the data tells buckets apart
    expected = [min(64, b + extra[k]) if k in extra else 64 for k, (_, b) in enumerate(PAIRS)]
    assert [s.tokens for s in plan.shapes] == expected
    assert [s.seconds for s in plan.shapes] == [1.0, 1.0, 1.6, 1.6, 2.0]
    empty = [str(k) for k in range(len(PAIRS)) if k not in extra]
    assert plan.note is not None and plan.note.startswith(
        f"bucket{'s' if len(empty) > 1 else ''} {', '.join(empty)} hold"
    )


def test_2d_shapes_with_multimodal_sampling_bound_tokens_by_both_bins(corpus: dict[str, str]) -> None:
    pairs = [[20, 10], [20, 40], [40, 30], [80, 30]]
    bins = "[" + ",".join(f"[{a},{b}]" for a, b in pairs) + "]"
    overrides = small(
        corpus,
        "model.train_ds.max_seq_length=64",
        f"model.train_ds.bucket_duration_bins={bins}",
        "model.train_ds.use_multimodal_sampling=true",
        "model.train_ds.token_equivalent_duration=0.08",
        f"model.train_ds.manifest_filepath={corpus['manifest']}",
    )
    plan = prepare(load_config(CONFIGS / "salm_tiny.yaml", overrides))
    # seconds: input tokens x 0.08 s, at most max_duration; tokens: input + output, at most max_seq_length
    assert [(s.low, s.seconds, s.tokens, s.bin) for s in plan.shapes] == [
        (0.1, pytest.approx(1.6), 30, "20t/10t"),
        (0.1, pytest.approx(1.6), 60, "20t/40t"),
        (0.1, 2.0, 64, "40t/30t"),
        (0.1, 2.0, 64, "80t/30t"),
    ]
    assert plan.note is None  # the bound does not depend on the data


def test_1d_bins_with_multimodal_sampling_are_token_bounds(corpus: dict[str, str]) -> None:
    """With use_multimodal_sampling the loader reads 1D bins as token counts (text + audio
    tokens); so does the tune: audio u x token_equivalent_duration seconds, u input ids."""
    overrides = small(
        corpus,
        "model.train_ds.max_seq_length=64",
        "model.train_ds.bucket_duration_bins=[20,40,80]",
        "model.train_ds.use_multimodal_sampling=true",
        "model.train_ds.token_equivalent_duration=0.08",
    )
    plan = prepare(load_config(CONFIGS / "salm_tiny.yaml", overrides))
    assert [(s.seconds, s.tokens, s.bin) for s in plan.shapes] == [
        (pytest.approx(1.6), 20, "0-20t"),
        (2.0, 40, "20-40t"),
        (2.0, 64, "40-80t"),
        (2.0, 64, "80-inft"),
    ]


def test_2d_cpu_estimate_writes_pairs_and_sizes_the_loader_uses(
    corpus: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tuned.yaml"
    cfg_path = str(CONFIGS / "salm_tiny.yaml")
    pairs = [[1.0, 30.0], [2.0, 15.0], [2.0, 30.0]]
    bins = "[" + ",".join(f"[{a},{b}]" for a, b in pairs) + "]"
    overrides = small(
        corpus,
        "model.train_ds.max_seq_length=64",
        f"model.train_ds.bucket_duration_bins={bins}",
        f"model.train_ds.manifest_filepath={corpus['manifest']}",
        "model.train_ds.drop_last=false",
    )
    args = ["tune", cfg_path, *overrides, "--estimate-cpu", "48MiB", "--fraction", "0.5", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    tuned = load_yaml(out)
    sizes = list(tuned.model.train_ds.bucketing_batch_size)
    assert [list(p) for p in tuned.model.train_ds.bucket_duration_bins] == pairs
    assert len(sizes) == 3 and min(sizes) >= 1 and len(set(sizes)) > 1
    # each pair's size is the one measured for its shape (the result table: bucket, bin, ..., batch)
    rows = [x.split() for x in printed.splitlines() if x[:6].strip().isdigit()]
    assert [(r[0], r[1], int(r[5])) for r in rows] == [
        ("0", "1s/30t", sizes[0]),
        ("1", "2s/15t", sizes[1]),
        ("2", "2s/30t", sizes[2]),
    ]
    assert sizes[1] >= sizes[2]  # the same audio, fewer output tokens: no less fits

    merged = OmegaConf.merge(load_config(cfg_path, overrides), tuned)
    ds = dataset_config(merged, "train_ds")
    assert ds.bucketing_batch_size == sizes and ds.bucket_duration_bins == pairs
    line = next(x for x in printed.splitlines() if x.startswith("as overrides: "))
    again = dataset_config(load_config(cfg_path, [*overrides, *line.split()[2:]]), "train_ds")
    assert again.bucketing_batch_size == sizes and again.bucket_duration_bins == pairs

    from speechdata.text.tokenizer import load_tokenizer

    loader = build_dataloader(ds, load_tokenizer(corpus["tokenizer"]))
    assert loader.sampler is not None
    buckets = loader.sampler.buckets
    assert list(buckets.sizes) == sizes and buckets.bins.tolist() == pairs
    plan = loader.sampler.plan(0)
    counts = buckets.counts(loader.keep)
    lengths = np.diff(plan.offsets)
    assert (counts > 0).all()
    for b in range(3):
        assert lengths[plan.bucket == b].max() == min(sizes[b], counts[b])  # full batches of the tuned size
        assert (lengths[plan.bucket == b] <= sizes[b]).all()
