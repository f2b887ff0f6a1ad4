"""Loader throughput: speechdata against the decode floor, lhotse and webdataset.

Builds (once, reused on later runs) a single-audio synthetic corpus of at least ``--hours`` hours,
16 kHz mono, in FLAC and in WAV, runs ``speechdata bench --compare`` on both, measures the time to
first batch on a 100,000-line manifest that reuses the corpus files, and writes
``results/loader.{md,png,json}`` with the targets checked.

    python benchmarks/bench_loader.py [--hours 2] [--repeats 3] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from speechdata.bench import (
    BenchResult,
    dataset_index,
    load_dataset,
    plot,
    run_benchmark,
    train_default_tokenizer,
)
from speechdata.cache import cache_folder, source_digest
from speechdata.testing import make_corpus, write_manifest

HERE = Path(__file__).resolve().parent
#: Mean clip length of make_corpus's duration distribution, for sizing the corpus (checked after).
MEAN_CLIP_S = 7.0
TARGETS = {"flac_vs_floor": 0.9, "flac_vs_lhotse": 1.3, "wav_vs_floor": 0.6, "first_batch_100k_s": 1.0}


def corpus(root: Path, fmt: str, hours: float) -> Path:
    """The manifest of a single-audio 16 kHz corpus of ``fmt`` files, made once per size."""
    n = math.ceil(hours * 3600 / MEAN_CLIP_S * 1.05)
    out = root / f"{fmt}-{n}"
    manifest = out / "manifest.jsonl"
    if not manifest.is_file():
        t = time.perf_counter()
        c = make_corpus(
            out,
            n,
            seed=0,
            formats=(fmt,),
            sample_rates=(16000,),
            stereo_fraction=0.0,
            multi_audio_fraction=0.0,
            shared_source_fraction=0.1,
            locator=None,
        )
        print(
            f"made {fmt} corpus: {n} clips, {c.hours:.2f} h in {time.perf_counter() - t:.0f} s",
            file=sys.stderr,
        )
    return manifest


def bench(
    manifest: Path, tok: str, args: argparse.Namespace, *, compare: bool, max_batches: int | None = None
) -> BenchResult:
    overrides = [f"num_workers={args.workers}", f"batch_duration={args.batch_duration}"]
    cfg, _ = load_dataset(manifest, overrides)
    command = f"speechdata bench {manifest} {' '.join(overrides)} --repeats {args.repeats}"
    command += " --compare" if compare else f" --max-batches {max_batches}"
    return run_benchmark(
        cfg,
        tok,
        compare=compare,
        repeats=args.repeats,
        max_batches=max_batches,
        command=command,
        log=lambda line: print(line, file=sys.stderr),
    )


def big_manifest(source: Path, out: Path, lines: int) -> Path:
    """``lines`` manifest lines cycling through ``source``'s entries (absolute paths, same audio)."""
    entries = [json.loads(x) for x in source.read_text().splitlines() if x.strip()]
    for e in entries:
        e["audio_filepath"] = str(source.parent / e["audio_filepath"])
    return write_manifest(out, (entries[i % len(entries)] for i in range(lines)))


def ratio(result: BenchResult, key: str) -> float | None:
    return result.peers["speechdata"].figures.get(key)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-duration", type=float, default=600.0)
    p.add_argument("--lines", type=int, default=100_000, help="lines of the first-batch manifest")
    p.add_argument("--corpus-dir", default=os.path.join(tempfile.gettempdir(), "speechdata-bench-corpus"))
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    root, out = Path(args.corpus_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    flac, wav = corpus(root, "flac", args.hours), corpus(root, "wav", args.hours)
    tok_dir = root / "tok"
    cfg, _ = load_dataset(flac)
    tok = train_default_tokenizer(dataset_index(cfg), cfg, tok_dir)

    res_flac = bench(flac, tok, args, compare=True)
    res_wav = bench(wav, tok, args, compare=True)

    big = big_manifest(flac, root / f"big-{args.lines}.jsonl", args.lines)
    big_cfg, _ = load_dataset(big)
    for stale in cache_folder("index").glob(f"{source_digest(big)}.*"):
        stale.unlink()  # time one index build from scratch
    t = time.perf_counter()
    dataset_index(big_cfg, tok)
    index_build_s = time.perf_counter() - t
    res_big = bench(big, tok, args, compare=False, max_batches=1)
    first_batch = res_big.peers["speechdata"].figures["first_batch_s"]

    checks = {
        "flac_vs_floor": ratio(res_flac, "ratio_to_floor"),
        "flac_vs_lhotse": ratio(res_flac, "ratio_to_lhotse"),
        "wav_vs_floor": ratio(res_wav, "ratio_to_floor"),
        "first_batch_100k_s": first_batch,
    }
    met = {
        k: (v is not None and (v <= TARGETS[k] if k.endswith("_s") else v >= TARGETS[k]))
        for k, v in checks.items()
    }
    lines = [
        f"# Loader throughput ({args.hours:g} h synthetic corpus, 16 kHz mono, single-audio)",
        "",
        "## FLAC",
        "",
        res_flac.markdown(),
        "",
        "## WAV (PCM16)",
        "",
        res_wav.markdown(),
        "",
        f"## First batch on a {args.lines:,}-line manifest",
        "",
        f"Time to first batch (cached index, median of {args.repeats}): {first_batch:.3f} s. "
        f"Building the index without its cache: {index_build_s:.3f} s.",
        "",
        f"Command: `{res_big.command}`",
        "",
        "## Targets",
        "",
        "| target | wanted | measured | met |",
        "|---|---:|---:|:---:|",
    ]
    for k, v in checks.items():
        want = f"≤ {TARGETS[k]} s" if k.endswith("_s") else f"≥ {TARGETS[k]}×"
        got = "–" if v is None else (f"{v:.3f} s" if k.endswith("_s") else f"{v:.2f}×")
        lines.append(f"| {k} | {want} | {got} | {'yes' if met[k] else 'no'} |")
    (out / "loader.md").write_text("\n".join(lines) + "\n")
    plot(res_flac, out / "loader.png")
    payload: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/bench_loader.py", *sys.argv[1:]]),
        "flac": res_flac.to_dict(),
        "wav": res_wav.to_dict(),
        "first_batch_100k": {**res_big.to_dict(), "index_build_uncached_s": index_build_s},
        "targets": {k: {"wanted": TARGETS[k], "measured": checks[k], "met": met[k]} for k in TARGETS},
    }
    (out / "loader.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
