"""Planning at scale: time and memory per rank for a large Index on many ranks, simulated on one
machine by planning a few of the ranks.

Every rank of a data-parallel job holds the whole Index (39 bytes per example) and plans the whole
epoch from ``(config, seed, epoch)`` before keeping its own slots (docs/architecture.md, "Planning
and resume"); its DataLoader workers receive lists of ids and read only those rows. So what one
rank costs does not depend on how many ranks there are, except for the size of its slice, and
planning ``--ranks`` ranks out of ``--world-size`` on one machine measures it. Measured here, on a
synthetic Index of ``--n`` LibriSpeech-like examples (durations as in ``bench_sampling.py``):

1. the Index's bytes, and the process's resident memory once it is built;
2. the bucket estimate (``make_buckets``, once per rank and run);
3. ``plan_epoch`` for each simulated rank: time and CPU time (medians of ``--repeats``; the
   CPU time depends less on other processes' load), peak memory the
   planning allocates (tracemalloc, which numpy reports to; a separate run, not timed), the
   rank's batches and examples; the simulated ranks' plans must not share an example; the
   examples ``drop_last`` leaves out of the epoch, the steps made of the buckets' leftovers
   (their ranks hold adjacent buckets: rank 0's and the last rank's differ), and the same
   epoch's drops by the version-1 ``synced_randomized`` rule (each bucket's leftovers on their
   own) and under ``fully_randomized``;
4. ``--workers`` forked worker processes per rank, each reading the Index rows of its share of
   the rank's batches (every ``workers``-th batch, as a DataLoader deals them) as
   ``Index.record`` does: the memory each worker holds of its own (private) after that, from
   ``/proc/self/smaps_rollup`` (Linux), against a forked process that reads nothing.

    python benchmarks/bench_planning.py --n 10000000 --world-size 1024 --workers 8 \
        --out benchmarks/results/planning_scale.md
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from bench_sampling import BUCKETS, BUDGET, librispeech_like

from speechdata.config import make_dataset_config
from speechdata.errors import DropCounter
from speechdata.manifest import DatasetInfo, Index, ManifestKeys
from speechdata.sampling import make_buckets, plan_epoch
from speechdata.sampling.position import EpochDeal


def synthetic_index(n: int, seed: int) -> Index:
    """An Index of ``n`` single-clip examples (columns only; no manifest behind it)."""
    d = librispeech_like(n, seed).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    lengths = rng.integers(120, 400, n).astype(np.uint32)
    offsets = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    columns = {
        "duration": d,
        "min_clip": d,
        "max_clip": d,
        "num_audios": np.ones(n, np.uint8),
        "dataset": np.zeros(n, np.uint16),
        "line_no": np.arange(1, n + 1, dtype=np.uint32),
        "line_offset": offsets,
        "line_length": lengths,
        "text_len": (lengths // 2).astype(np.uint32),
        "shard_id": np.full(n, -1, np.int32),
    }
    info = DatasetInfo(path="synthetic.jsonl", name="synthetic", source="", root="", num_lines=n)
    return Index(columns, [info], ManifestKeys(), DropCounter())


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _private_mb() -> float:
    """This process's private memory (Private_Clean + Private_Dirty) in MB."""
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1000


def _worker_private(index: Index, batches: list[np.ndarray], read: bool) -> float:
    """Fork a process that reads the Index rows of ``batches`` (when ``read``) the way
    ``Index.record`` does, and return its private memory in MB."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            if read:
                for ids in batches:
                    for i in ids:
                        # the columns record() reads for one row
                        int(index.dataset[i]), int(index.line_length[i]), int(index.line_offset[i])
                        int(index.line_no[i]), float(index.duration[i]), int(index.shard_id[i])
            os.write(w, f"{_private_mb():.3f}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        value = float(f.read())
    os.waitpid(pid, 0)
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally save) the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000, help="examples in the Index")
    ap.add_argument("--world-size", type=int, default=1024)
    ap.add_argument("--ranks", default="0,1,511,1023", help="the ranks planned (comma-separated)")
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers per rank")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="also write the report as markdown here")
    args = ap.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    load_before = os.getloadavg()[0]

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    index = synthetic_index(args.n, seed=0)
    t_index = time.perf_counter() - t0
    rss_index = _rss_mb()
    keep = np.ones(len(index), dtype=bool)
    cfg_keys = {
        "batch_duration": BUDGET,
        "num_buckets": BUCKETS,
        "max_duration": None,
        "bucketing_strategy": "synced_randomized",
    }
    cfg = make_dataset_config(cfg_keys)
    t0 = time.perf_counter()
    buckets = make_buckets(index, keep, cfg)
    t_buckets = time.perf_counter() - t0

    rows = []
    plans = {}
    for rank in ranks:
        times, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            plan = plan_epoch(
                index, keep, cfg, epoch=0, rank=rank, world_size=args.world_size, buckets=buckets
            )
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        tracemalloc.start()
        plan_epoch(index, keep, cfg, epoch=0, rank=rank, world_size=args.world_size, buckets=buckets)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        plans[rank] = plan
        rows.append(
            (
                rank,
                statistics.median(times),
                min(times),
                max(times),
                statistics.median(cpu),
                peak / 1e6,
                len(plan),
                plan.ids.size,
            )
        )
    # the same epoch under fully_randomized: how much of the drop_last tail is synced_randomized's
    other = make_dataset_config({**cfg_keys, "bucketing_strategy": "fully_randomized"})
    full = plan_epoch(index, keep, other, epoch=0, rank=0, world_size=args.world_size, buckets=buckets)
    # the version-1 rule (what a version-1 position finishes its epoch with): the baseline
    v1 = plan_epoch(
        index, keep, cfg, epoch=0, rank=0, world_size=args.world_size, buckets=buckets, deal=EpochDeal(rule=1)
    )
    first, last = plans.get(0), plans.get(args.world_size - 1)
    if first is not None and last is not None and args.world_size > 1:
        apart = last.bucket.astype(np.int64) - first.bucket.astype(np.int64)
        mixed = (
            f"{int(np.count_nonzero(apart)):,} of its {len(first):,} steps are groups of the buckets' "
            f"leftovers (there rank 0's bucket differs from rank {args.world_size - 1}'s; the widest "
            f"spans {int(apart.max()) + 1 if apart.size else 1} adjacent buckets)"
        )
    else:
        mixed = f"(plan ranks 0 and {args.world_size - 1} to count the steps of leftovers)"
    seen = np.concatenate([p.ids for p in plans.values()])
    disjoint = np.unique(seen).size == seen.size  # no mixing weights: each example at most once
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000

    plan = plans[ranks[0]]
    batches = plan.batches
    shares = [len(batches[k :: args.workers]) for k in range(args.workers)]
    base = [_worker_private(index, [], read=False) for _ in range(3)]
    workers = [_worker_private(index, batches[k :: args.workers], read=True) for k in range(args.workers)]

    lines = [
        f"planning for {len(ranks)} of {args.world_size:,} ranks, {args.n:,}-example synthetic Index "
        f"(LibriSpeech-like durations), batch_duration={BUDGET:g} s, {BUCKETS} buckets, synced_randomized",
        "",
        f"Index: {index.nbytes / 1e6:.0f} MB of columns ({index.nbytes / len(index):.0f} bytes per example), "
        f"built in {t_index:.2f} s; process RSS {rss0:.0f} MB before, {rss_index:.0f} MB after",
        f"bucket estimate (make_buckets, once per rank): {t_buckets:.2f} s",
        "",
        "| rank | plan one epoch (median) | min-max | CPU time (median) | peak memory allocated "
        "while planning | batches per rank | examples on this rank |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r} | {t:.2f} s | {lo:.2f}-{hi:.2f} s | {c:.2f} s | {peak:.0f} MB | {nb:,} | {ne:,} |"
            for r, t, lo, hi, c, peak, nb, ne in rows
        ],
        "",
        f"simulated ranks' plans share no example: {disjoint}; over all {args.world_size:,} ranks the "
        f"epoch holds {len(plan) * args.world_size:,} batches ({plan.formed:,} formed), "
        f"{plan.dropped:,} examples dropped by drop_last (the uneven tail), {plan.repeated:,} repeated; "
        f"{mixed}",
        f"the same epoch by the version-1 synced_randomized rule (each bucket's leftovers dropped on "
        f"their own): {len(v1) * args.world_size:,} batches, {v1.dropped:,} examples dropped; "
        f"under fully_randomized: {len(full) * args.world_size:,} batches, {full.dropped:,} examples dropped",
        f"peak RSS of this process (Index + planning + interpreter): {rss_peak:.0f} MB",
        "",
        f"{args.workers} forked workers of rank {ranks[0]}, each reading the Index rows of its "
        f"{min(shares)}-{max(shares)} batches: "
        f"private memory {min(workers):.1f}-{max(workers):.1f} MB per worker "
        f"(a forked process that reads nothing: {statistics.median(base):.1f} MB); "
        "the Index pages stay shared with the rank's main process",
        "",
        f"machine: {os.cpu_count()} CPUs, 1-minute load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        cmd = "python benchmarks/bench_planning.py " + " ".join(sys.argv[1:] if argv is None else argv)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"# Planning at scale\n\n`{cmd}`\n\n{report}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
