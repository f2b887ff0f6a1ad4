"""Manifest indexing benchmark (issue #2): a 1,000,000-line manifest to an Index.

Measures, in one run on the same file: building the Index without the cache, building it and
writing the cache, loading it from the cache, and bytes per example; and as the baseline, a bare
``orjson.loads`` of every line (the floor any JSONL reader pays). Targets: build < 3 s, cached load
< 0.3 s, <= 64 bytes per example. Times are medians of ``--repeats`` runs.

Usage::

    python benchmarks/bench_index.py [--lines 1000000] [--repeats 3] [--out benchmarks/results/index.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from speechdata.manifest import load_index


def write_manifest(path: Path, lines: int, seed: int = 0) -> None:
    """A NeMo-style manifest: paths, durations, context, answer, one extra key."""
    rng = np.random.default_rng(seed)
    durations = np.round(rng.gamma(6.0, 2.1, lines).clip(0.5, 35.0), 2)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "speech", "audio"]
    lengths = rng.integers(3, 30, lines)
    with open(path, "wb") as f:
        for i in range(lines):
            answer = " ".join(words[(i + k) % len(words)] for k in range(int(lengths[i])))
            line = {
                "audio_filepath": f"audio/{i % 50_000:05d}.flac",
                "duration": float(durations[i]),
                "offset": 0.0,
                "context": "Transcribe the audio.",
                "answer": answer,
                "lang": "en",
            }
            f.write(orjson.dumps(line) + b"\n")


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="write the table to this markdown file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.jsonl"
        write_manifest(path, args.lines)
        data = path.read_bytes()

        def raw() -> None:
            loads = orjson.loads
            for line in data.splitlines():
                loads(line)

        t_raw = _median(raw, args.repeats)
        t_build = _median(lambda: load_index(path, cache=False), args.repeats)
        cache_dir = Path(tmp) / "cache"
        t_first = _median(lambda: load_index(path, cache_dir=cache_dir), 1)
        os.utime(path, ns=(0, path.stat().st_mtime_ns - 10**10))  # not "racy": stamp alone decides
        load_index(path, cache_dir=cache_dir)
        t_cached = _median(lambda: load_index(path, cache_dir=cache_dir), args.repeats)
        os.chmod(path, 0o640)  # ctime changes, content does not: every load re-checks the CRC-32
        t_crc = _median(lambda: load_index(path, cache_dir=cache_dir), args.repeats)
        index = load_index(path, cache_dir=cache_dir)
        per_example = index.nbytes / len(index)
    rows = [
        ("orjson.loads of every line (baseline)", t_raw, 1.0),
        ("Index build, no cache", t_build, t_build / t_raw),
        ("Index build + cache write", t_first, t_first / t_raw),
        ("Index load from cache", t_cached, t_cached / t_raw),
        ("Index load from cache, content re-checked (CRC-32)", t_crc, t_crc / t_raw),
    ]
    out = [
        f"Manifest indexing, {args.lines:,} lines ({len(data) / 1e6:.0f} MB), median of {args.repeats}",
        "",
        "| step | seconds | ratio to orjson baseline |",
        "|---|---:|---:|",
        *(f"| {name} | {t:.3f} | {r:.2f} |" for name, t, r in rows),
        "",
        f"Index memory: {per_example:.1f} bytes per example (target <= 64).",
        f"Targets: build < 3 s ({'met' if t_build < 3 else 'MISSED'}), "
        f"cached load < 0.3 s ({'met' if t_cached < 0.3 else 'MISSED'}; "
        f"with the CRC re-check {'met' if t_crc < 0.3 else 'MISSED'}).",
        f"Command: python benchmarks/bench_index.py --lines {args.lines} --repeats {args.repeats}",
    ]
    text = "\n".join(out)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
