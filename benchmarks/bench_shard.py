"""Shard writing speed: ``speechdata shard --codec keep`` against ``tar cf`` over the same files,
and FLAC re-encoding as a realtime factor.

Everything is measured in the same run on the same synthetic corpus (``speechdata.testing``), page
cache warmed first; each figure is the median of ``--repeats`` runs. ``keep`` throughput is
reported as a ratio to ``tar cf`` (target: >= 0.5 with 2 workers); both write every audio byte
once, speechdata additionally plans, fsyncs every shard and writes the manifests.

    python benchmarks/bench_shard.py --n 400 --repeats 3 [--out benchmarks/results/bench_shard.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from speechdata.shards import ShardOptions, write_shards
from speechdata.testing import make_corpus


def _median_time(fn: Callable[[], object], repeats: int, reset: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        reset()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally save) the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="examples in the synthetic corpus")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shards", type=int, default=8)
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

    def reset() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)

    def tar_cf() -> None:
        subprocess.run(["tar", "cf", str(out / "all.tar"), "-C", str(corpus.root), "audio"], check=True)

    def shard(codec: str, workers: int) -> Callable[[], object]:
        opts = ShardOptions(num_shards=args.shards, codec=codec, workers=workers, progress=False)
        return lambda: write_shards([corpus.manifest], out / "ds", opts)

    write_shards([corpus.manifest], work / "warm", ShardOptions(num_shards=1, progress=False))  # index cache
    t_tar = _median_time(tar_cf, args.repeats, reset)
    rows = [("tar cf (baseline)", t_tar, t_tar / t_tar, "")]
    for workers in (1, 2):
        t = _median_time(shard("keep", workers), args.repeats, reset)
        rows.append((f"speechdata shard --codec keep, {workers} worker(s)", t, t_tar / t, ""))
    for workers in (1, 2):
        t = _median_time(shard("flac", workers), max(1, args.repeats - 1), reset)
        rows.append(
            (
                f"speechdata shard --codec flac, {workers} worker(s)",
                t,
                t_tar / t,
                f"{audio_seconds / t:.0f}x realtime",
            )
        )
    header = (
        f"corpus: {len(files)} files, {total_bytes / 1e6:.1f} MB, {audio_seconds / 3600:.2f} h audio, "
        f"{args.n} entries, {args.shards} shards; median of {args.repeats} runs; {os.cpu_count()} CPUs"
    )
    lines = [
        header,
        "",
        "| run | seconds | throughput vs tar cf | FLAC speed |",
        "|---|---|---|---|",
        *[f"| {name} | {t:.3f} | {ratio:.2f} | {rtf} |" for name, t, ratio, rtf in rows],
    ]
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
