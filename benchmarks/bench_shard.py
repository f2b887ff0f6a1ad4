"""Shard writing speed: ``speechdata shard --codec keep`` against ``tar cf`` + ``sync`` over the
same files, the planning step alone, and FLAC re-encoding as a realtime factor.

Everything is measured in the same run on the same synthetic corpus (``speechdata.testing``), page
cache warmed first. Each repeat runs every configuration once, in turn (so that load from other
processes spreads over all of them); a figure is the median over ``--repeats``, and a ratio's
spread is the lowest and highest per-repeat ratio to that repeat's baseline. The baseline is
``tar cf`` followed by ``sync`` of the tar (an fsync, as speechdata fsyncs every shard), so both
write every audio byte once and make it durable; speechdata also reads and checks every audio
header, plans, and writes the manifests. ``keep`` target: >= 0.5 with 2 workers. CPU seconds
(user + system, this process and its finished children) do not depend on the load from other
processes the way wall time does: they show the work done, not the waiting.

    python benchmarks/bench_shard.py --n 2000 --repeats 5 [--out benchmarks/results/shard_write.md]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from speechdata.errors import DropCounter
from speechdata.shards import ShardOptions, write_shards
from speechdata.shards.plan import read_entries
from speechdata.testing import make_corpus


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (workers, tar, sync)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally save) the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="examples in the synthetic corpus")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--no-flac", action="store_true", help="skip the FLAC rows")
    ap.add_argument("--workdir", help="where to build the corpus (default: a temp folder)")
    ap.add_argument("--out", help="also write the table as markdown here")
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-shard-"))
    corpus = make_corpus(work / "corpus", n=args.n, seed=0, max_duration=20.0)
    audio_dir = corpus.root / "audio"
    files = sorted(audio_dir.iterdir())
    total_bytes = sum(p.stat().st_size for p in files)
    for p in files:  # warm the page cache
        p.read_bytes()
    audio_seconds = corpus.hours * 3600
    out = work / "out"

    def tar_alone() -> None:
        subprocess.run(["tar", "cf", str(out / "all.tar"), "-C", str(corpus.root), "audio"], check=True)

    def tar_sync() -> None:
        subprocess.run(["tar", "cf", str(out / "all.tar"), "-C", str(corpus.root), "audio"], check=True)
        subprocess.run(["sync", str(out / "all.tar")], check=True)

    def shard(codec: str, workers: int) -> Callable[[], object]:
        opts = ShardOptions(num_shards=args.shards, codec=codec, workers=workers, progress=False)
        return lambda: write_shards([corpus.manifest], out / "ds", opts)

    def planning(workers: int) -> Callable[[], object]:
        opts = ShardOptions(workers=workers, progress=False)
        return lambda: read_entries([corpus.manifest], opts, DropCounter(), cache_dir=out / "index_cache")

    runs: list[tuple[str, Callable[[], object], str]] = [
        ("tar cf + sync (baseline)", tar_sync, ""),
        ("tar cf alone (no sync: the data may still be in the page cache)", tar_alone, ""),
    ]
    for w in (1, 2):
        runs.append((f"speechdata shard --codec keep, {w} worker(s)", shard("keep", w), ""))
    for w in (1, 2):
        runs.append(
            (f"planning alone (read and check headers, name members), {w} worker(s)", planning(w), "")
        )
    if not args.no_flac:
        for w in (1, 2):
            runs.append((f"speechdata shard --codec flac, {w} worker(s)", shard("flac", w), "flac"))
    write_shards([corpus.manifest], work / "warm", ShardOptions(num_shards=1, progress=False))  # warm-up
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(args.repeats):
        for name, fn, _ in runs:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            c0 = _cpu_seconds()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(_cpu_seconds() - c0)
    base = times[runs[0][0]]
    header = (
        f"corpus: {len(files)} files, {total_bytes / 1e6:.1f} MB, {audio_seconds / 3600:.2f} h audio, "
        f"{args.n} entries, {args.shards} shards; median of {args.repeats} interleaved runs; "
        f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}"
    )
    lines = [
        header,
        "",
        "| run | seconds (median) | throughput vs tar cf + sync (median) | per-repeat ratio range "
        "| CPU seconds (median) | FLAC speed |",
        "|---|---|---|---|---|---|",
    ]
    for name, _, kind in runs:
        t = statistics.median(times[name])
        ratios = [b / x for b, x in zip(base, times[name], strict=True)]
        rtf = f"{audio_seconds / t:.0f}x realtime" if kind == "flac" else ""
        lines.append(
            f"| {name} | {t:.3f} | {statistics.median(base) / t:.2f} | {min(ratios):.2f}-{max(ratios):.2f} "
            f"| {statistics.median(cpu[name]):.2f} | {rtf} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        cmd = "python benchmarks/bench_shard.py " + " ".join(sys.argv[1:] if argv is None else argv)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"# Shard writing\n\n`{cmd}`\n\n{table}\n")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
