"""Sampling benchmark: planning speed and padding against lhotse's DynamicBucketingSampler, and
token-aware planning (2D buckets, budgets in seconds and tokens).

Run: ``python benchmarks/bench_sampling.py [--n 1000000] [--n-padding 100000] [--repeats 5]
[--out results/sampling.md]``, or with ``--tokens`` the token-aware part only
(``--out results/sampling_tokens.md``).

Durations are LibriSpeech-like: a gamma distribution (shape 6, scale 2.1: mean ~12.6 s) clipped to
[1, 35] s. The numbers it imitates are LibriSpeech's published ones (Panayotov et al., ICASSP 2015:
segments of at most 35 s; train-clean-100 holds 28,539 utterances in 100.6 h, i.e. 12.7 s on
average, most of them between 10 and 17 s). It is an approximation of the spread, not the exact
histogram.

1. Planning speed: one epoch of ``--n`` examples (dynamic batches, batch_duration=600 s, 30
   estimated buckets, 8 ranks) with :func:`speechdata.sampling.plan_epoch`, median of
   ``--repeats`` runs; reported in examples per second.
2. Padding on ``--n-padding`` examples at batch_duration=600 s and 30 buckets, for speechdata and
   for lhotse's ``DynamicBucketingSampler`` (max_duration=600, num_buckets=30, on an in-memory
   CutSet of MonoCuts with dummy recordings: no audio is read), with lhotse's defaults and with
   lhotse given the whole set for its bin estimate and buffer (its best case). Padding fraction
   is ``1 - sum(d) / sum(n × max d)`` over batches; fullness is the mean of ``n × max d`` over the
   budget. Both samplers are also timed (examples per second) in the same run.
3. ``--tokens``: token-aware planning. Each example gets output tokens ``1 + round(d × r)`` with
   ``r`` drawn per example from a log-normal around ``--tokens-per-second`` (default 3; a
   synthetic assumption, not a measured speaking rate) and text tokens = output + 20 (a
   prompt); audio tokens are ``ceil(d / 0.08)`` (``token_equivalent_duration`` 0.08 s, NeMo's
   SALM recipe). Planning one epoch of ``--n`` examples with 2D bins (``estimate_bins_2d``, 8 × 4)
   under ``batch_duration`` 600 s and ``batch_tokens`` 10000, against the 1D plan of part 1 timed
   in the same run; then the padding on both axes (audio seconds, tokens) of one epoch of
   ``--n-padding`` examples for 1D bins under ``batch_duration``, 1D bins under both budgets and
   2D bins under both budgets.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from speechdata.config import make_dataset_config
from speechdata.sampling import make_buckets, plan_epoch
from speechdata.sampling.buckets import estimate_bins_2d
from speechdata.sampling.tokens import Measures, TokenCounts

BUDGET = 600.0
BUCKETS = 30


class Columns:
    """The Index columns the planner reads, for one dataset of the given durations."""

    def __init__(self, durations: np.ndarray) -> None:
        d = durations.astype(np.float32)
        self.duration = self.min_clip = self.max_clip = d
        self.num_audios = np.ones(d.size, np.uint8)
        self.dataset = np.zeros(d.size, np.uint16)
        self.num_datasets = 1


def librispeech_like(n: int, seed: int) -> np.ndarray:
    """``n`` LibriSpeech-like utterance durations in seconds (see the module docstring)."""
    return np.clip(np.random.default_rng(seed).gamma(6.0, 2.1, n), 1.0, 35.0)


def batch_stats(batches: list[np.ndarray]) -> tuple[float, float, int]:
    """(padding fraction, mean fullness, number of batches) of batches of durations."""
    lengths = np.array([b.size for b in batches], dtype=np.float64)
    longest = np.array([b.max() for b in batches])
    useful = sum(float(b.sum()) for b in batches)
    padded = float((lengths * longest).sum())
    return 1.0 - useful / padded, float((lengths * longest).mean() / BUDGET), len(batches)


def speechdata_batches(d: np.ndarray) -> tuple[list[np.ndarray], float]:
    cols = Columns(d)
    keep = np.ones(d.size, bool)
    cfg = make_dataset_config({"batch_duration": BUDGET, "num_buckets": BUCKETS, "max_duration": None})
    t0 = time.perf_counter()
    plan = plan_epoch(cols, keep, cfg, epoch=0)
    elapsed = time.perf_counter() - t0
    d32 = cols.duration.astype(np.float64)
    return [d32[b] for b in plan], elapsed


def lhotse_batches(d: np.ndarray, best_case: bool) -> tuple[list[np.ndarray], float]:
    from lhotse import CutSet, MonoCut, Recording
    from lhotse.audio import AudioSource
    from lhotse.dataset import DynamicBucketingSampler

    d32 = d.astype(np.float32).astype(np.float64)  # the same values speechdata's Index holds
    cuts = []
    for i, x in enumerate(d32.tolist()):
        rec = Recording(
            id=f"r{i}",
            sources=[AudioSource(type="file", channels=[0], source="/dev/null")],
            sampling_rate=16000,
            num_samples=round(x * 16000),
            duration=x,
        )
        cuts.append(MonoCut(id=f"c{i}", start=0.0, duration=x, channel=0, recording=rec))
    cutset = CutSet.from_cuts(cuts)
    # lhotse warns that an eager CutSet brings no memory benefit; irrelevant for this comparison.
    warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
    extra = {"num_cuts_for_bins_estimate": d.size, "buffer_size": d.size} if best_case else {}
    sampler = DynamicBucketingSampler(
        cutset, max_duration=BUDGET, num_buckets=BUCKETS, shuffle=True, seed=0, world_size=1, rank=0, **extra
    )
    t0 = time.perf_counter()
    batches = [np.array([c.duration for c in batch], dtype=np.float64) for batch in sampler]
    return batches, time.perf_counter() - t0


TED = 0.08
BATCH_TOKENS = 10_000


def token_measures(d: np.ndarray, tokens_per_second: float, seed: int) -> Measures:
    """Synthetic token counts of durations ``d`` (see the module docstring, part 3)."""
    rng = np.random.default_rng(seed)
    rate = tokens_per_second * rng.lognormal(0.0, 0.3, d.size)
    output = 1 + np.round(d.astype(np.float32).astype(np.float64) * rate).astype(np.int64)
    counts = TokenCounts(output + 20, output)
    cfg = make_dataset_config({"token_equivalent_duration": TED, "max_duration": None})
    return Measures.of(d.astype(np.float32), counts, cfg)


def token_report(args: argparse.Namespace) -> list[str]:
    """Part 3: token-aware planning speed and padding on both axes."""
    lines: list[str] = []
    d = librispeech_like(args.n, seed=1)
    big = Columns(d)
    keep = np.ones(args.n, bool)
    m = token_measures(d, args.tokens_per_second, seed=3)
    t0 = time.perf_counter()
    bins = estimate_bins_2d(*m.axes(), 8, 4)
    t_bins = time.perf_counter() - t0
    both = {"batch_duration": BUDGET, "batch_tokens": BATCH_TOKENS, "token_equivalent_duration": TED}
    cfg2 = make_dataset_config({**both, "bucket_duration_bins": bins.tolist(), "max_duration": None})
    cfg1 = make_dataset_config({"batch_duration": BUDGET, "max_duration": None})
    b2 = make_buckets(big, keep, cfg2, measures=m)
    b1 = make_buckets(big, keep, cfg1)
    t1, t2 = [], []
    for epoch in range(args.repeats):  # interleaved, so that load changes hit both alike
        t0 = time.perf_counter()
        plan_epoch(big, keep, cfg1, epoch=epoch, rank=3, world_size=8, buckets=b1)
        t1.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plan_epoch(big, keep, cfg2, epoch=epoch, rank=3, world_size=8, buckets=b2, measures=m)
        t2.append(time.perf_counter() - t0)
    p1, p2 = statistics.median(t1), statistics.median(t2)
    lines.append(
        f"token-aware planning of {args.n:,} examples (2D bins 8 x 4, batch_duration={BUDGET:g} s and "
        f"batch_tokens={BATCH_TOKENS:,}, 8 ranks; tokens/s {args.tokens_per_second:g})"
    )
    lines.append(f"  2D bin estimate (once): {t_bins * 1e3:.0f} ms")
    lines.append(
        f"  plan one epoch, 2D (median of {args.repeats}): {p2 * 1e3:.0f} ms = {args.n / p2:,.0f} examples/s "
        f"({p1 / p2:.2f}x the 1D duration plan, {p1 * 1e3:.0f} ms, timed alternately in this run; "
        f"per-run 2D/1D ratios {', '.join(f'{b / a:.2f}' for a, b in zip(t1, t2, strict=True))})"
    )
    lines.append(f"  target >= 1,000,000 examples/s: {'met' if args.n / p2 >= 1e6 else 'NOT met'}")

    dp = librispeech_like(args.n_padding, seed=2)
    small = Columns(dp)
    mp = token_measures(dp, args.tokens_per_second, seed=4)
    kp = np.ones(args.n_padding, bool)
    bins_p = estimate_bins_2d(*mp.axes(), 8, 4)
    setups = [
        ("1D bins (30), batch_duration", cfg1),
        ("1D bins (30), batch_duration + batch_tokens", make_dataset_config({**both, "max_duration": None})),
        (
            f"2D bins ({len(bins_p)}), batch_duration + batch_tokens",
            make_dataset_config({**both, "bucket_duration_bins": bins_p.tolist(), "max_duration": None}),
        ),
    ]
    lines.append(
        f"\npadding of one epoch on both axes, {args.n_padding:,} examples (tokens = text + audio tokens)"
    )
    lines.append(
        "| bins, budgets | audio padding | token padding | batches | max tokens in a batch (n x longest) |"
    )
    lines.append("|---|---|---|---|---|")
    tokens = mp.tokens
    for name, cfg in setups:
        plan = plan_epoch(small, kp, cfg, epoch=0, measures=mp)
        assert sorted(plan.ids.tolist()) == list(range(args.n_padding)), name
        worst = max(int(b.size * tokens[b].max()) for b in plan)
        lines.append(
            f"| {name} | {plan.padding(mp.duration):.2%} | {plan.padding(tokens):.2%} | {len(plan)} | {worst:,} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="examples for the planning-speed run")
    ap.add_argument("--n-padding", type=int, default=100_000, help="examples for the padding comparison")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", help="also write the report to this markdown file")
    ap.add_argument("--tokens", action="store_true", help="token-aware planning and padding only (part 3)")
    ap.add_argument("--tokens-per-second", type=float, default=3.0, help="synthetic output tokens per second")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    lines: list[str] = []
    if args.tokens:
        lines = token_report(args)
        _finish(lines, load_before, args.out)
        return

    big = Columns(librispeech_like(args.n, seed=1))
    keep = np.ones(args.n, bool)
    cfg = make_dataset_config({"batch_duration": BUDGET, "max_duration": None})
    t0 = time.perf_counter()
    buckets = make_buckets(big, keep, cfg)
    t_bins = time.perf_counter() - t0
    times = []
    for epoch in range(args.repeats):
        t0 = time.perf_counter()
        plan_epoch(big, keep, cfg, epoch=epoch, rank=3, world_size=8, buckets=buckets)
        times.append(time.perf_counter() - t0)
    t_plan = statistics.median(times)
    lines.append(f"planning {args.n:,} examples (batch_duration={BUDGET:g} s, {BUCKETS} buckets, 8 ranks)")
    lines.append(f"  bin estimate (once): {t_bins * 1e3:.0f} ms")
    lines.append(
        f"  plan one epoch (median of {args.repeats}): {t_plan * 1e3:.0f} ms = {args.n / t_plan:,.0f} examples/s"
    )

    d = librispeech_like(args.n_padding, seed=2)
    rows = [("speechdata", *speechdata_batches(d))]
    rows.append(("lhotse (defaults)", *lhotse_batches(d, best_case=False)))
    rows.append(("lhotse (whole-set bins/buffer)", *lhotse_batches(d, best_case=True)))
    lines.append(
        f"\npadding at batch_duration={BUDGET:g} s, {BUCKETS} buckets, {args.n_padding:,} LibriSpeech-like examples"
    )
    lines.append("| sampler | padding | vs speechdata | fullness | batches | examples/s | speed vs lhotse |")
    lines.append("|---|---|---|---|---|---|---|")
    ours_pad = batch_stats(rows[0][1])[0]
    lhotse_speed = args.n_padding / rows[1][2]
    for name, batches, elapsed in rows:
        pad, full, count = batch_stats(batches)
        assert sum(b.size for b in batches) == args.n_padding, name
        speed = args.n_padding / elapsed
        lines.append(
            f"| {name} | {pad:.2%} | {pad / ours_pad:.2f}x | {full:.1%} | {count} | {speed:,.0f} | "
            f"{speed / lhotse_speed:.1f}x |"
        )
    lines.append(
        f"\ntargets: speechdata padding <= lhotse and <= 3%: {'met' if ours_pad <= min(0.03, batch_stats(rows[1][1])[0]) else 'NOT met'}"
    )

    _finish(lines, load_before, args.out)


def _finish(lines: list[str], load_before: float, out: str | None) -> None:
    """Add the machine and command lines, print the report and write it to ``out``."""
    lines += [
        "",
        f"machine: {os.cpu_count()} CPUs, 1-minute load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after",
        f"command: python benchmarks/bench_sampling.py {' '.join(sys.argv[1:])}".rstrip(),
    ]
    print("\n".join(lines))
    if out:
        Path(out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
