"""Worker scaling (issue 16 §4): speechdata, lhotse and the decode floor at 1, 2, 4, 8, 14 workers.

For each format (``--formats flac wav``) a single-audio 16 kHz corpus of ``--hours`` hours of
audio files is made once (``bench_loader.corpus``), and a manifest that cycles through its lines
until it holds the audio of the largest run (``bench_loader.big_manifest``: every line is decoded;
the files stay in the page cache). For each worker count (``--workers``) one ``speechdata bench
--compare`` run (:func:`speechdata.bench.run_benchmark`, peers ``floor`` and ``lhotse``,
``--repeats`` runs each, medians) is capped at ``1 + --batches-per-worker × workers`` batches:
every worker times the same number of batches at every count, and the single epoch never runs
out, so no per-epoch start-up falls inside the timed span.

Reported per count: the audio seconds per second of speechdata, lhotse and the decode floor; the
floor per core × workers (the floor decodes in one process, on one core) and speechdata's share of
it (target: at least :data:`SCALING_TARGET` up to :data:`SCALING_UP_TO` workers); speechdata /
lhotse (target: above 1 at every count); and the machine (CPUs, GPU). With ``--device cuda`` the
loaders deliver their batches to the GPU, and the finalisation of one batch of the run's budget
(padding, padding + log-mel) is timed on the CPU and on the GPU (``gpu_check.finalize_timings``;
``--finalize`` times it on a CPU-only machine too, CPU against CPU).

    python benchmarks/bench_workers.py --workers 1 2 4 8 14 --formats flac wav \\
        --batch-duration 120 wav=300 --device cuda --md workers.md --json workers.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sibling scripts (also when this file is loaded by path)
    sys.path.insert(0, str(HERE))

from bench_loader import big_manifest, corpus  # noqa: E402
from gpu_check import finalize_timings  # noqa: E402

from speechdata.bench import (  # noqa: E402
    BenchResult,
    dataset_index,
    load_dataset,
    machine_info,
    run_benchmark,
    train_default_tokenizer,
)

#: speechdata's share of (floor per core × workers) wanted up to :data:`SCALING_UP_TO` workers.
SCALING_TARGET = 0.85
SCALING_UP_TO = 8
#: Audio held by the cycled manifest beyond the largest run's batches × budget: a bucket's batches
#: are not filled to the budget (padding, bucket ends), so lines run out before that many batches.
HEADROOM = 1.3
PEERS = ("floor", "lhotse")


def batch_durations(values: Sequence[str], formats: Sequence[str]) -> dict[str, float]:
    """Seconds of audio per batch for each format from ``--batch-duration`` values: ``SECONDS``
    (every format) and ``FMT=SECONDS`` (that format)."""
    out: dict[str, float] = {}
    for value in values:
        fmt, _, seconds = value.rpartition("=")
        try:
            s = float(seconds)
        except ValueError:
            raise SystemExit(f"--batch-duration: {value!r} is not SECONDS or FMT=SECONDS") from None
        if s <= 0:
            raise SystemExit(f"--batch-duration: {value!r} must be positive")
        if fmt and fmt not in formats:
            raise SystemExit(f"--batch-duration: {value!r} names a format not in --formats")
        for f in [fmt] if fmt else formats:
            if fmt or f not in out:
                out[f] = s
    missing = [f for f in formats if f not in out]
    if missing:
        raise SystemExit(f"--batch-duration: no value for {', '.join(missing)}")
    return out


def run_manifest(root: Path, fmt: str, hours: float, need_s: float) -> Path:
    """The manifest a format's runs read: the ``hours`` corpus of ``fmt`` files, its lines cycled
    until they hold ``need_s`` seconds of audio (at least every line once)."""
    source = corpus(root, fmt, hours)
    durations = [json.loads(x)["duration"] for x in source.read_text().splitlines() if x.strip()]
    lines = max(len(durations), math.ceil(need_s / (sum(durations) / len(durations))))
    return big_manifest(source, root / f"{source.parent.name}-x{lines}.jsonl", lines)


def _rate(result: BenchResult, peer: str) -> float | None:
    p = result.peers.get(peer)
    return None if p is None or p.skipped is not None else p.figures.get("audio_s_per_s")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def scaling_row(workers: int, result: BenchResult) -> dict[str, Any]:
    """One worker count's figures from its run: the three rates (medians), floor per core ×
    workers, speechdata's share of it and its ratio to lhotse, and whether the targets are met."""
    sd, floor, lhotse = (_rate(result, p) for p in ("speechdata", "floor", "lhotse"))
    ideal = None if floor is None else floor * workers
    scaling, vs_lhotse = _ratio(sd, ideal), _ratio(sd, lhotse)
    return {
        "workers": workers,
        "speechdata_audio_s_per_s": sd,
        "lhotse_audio_s_per_s": lhotse,
        "floor_audio_s_per_s": floor,
        "floor_x_workers": ideal,
        "scaling": scaling,
        "scaling_target": SCALING_TARGET if workers <= SCALING_UP_TO else None,
        "scaling_met": None if workers > SCALING_UP_TO or scaling is None else scaling >= SCALING_TARGET,
        "vs_lhotse": vs_lhotse,
        "ahead_of_lhotse": None if vs_lhotse is None else vs_lhotse > 1.0,
        "lhotse_skipped": result.peers["lhotse"].skipped if "lhotse" in result.peers else "not run",
        "warnings": list(result.warnings),
    }


def _num(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _met(v: bool | None) -> str:
    return "–" if v is None else ("yes" if v else "no")


def format_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The markdown table of one format's rows."""
    lines = [
        "| workers | speechdata audio s/s | lhotse audio s/s | decode floor audio s/s (1 core) | "
        "floor × workers | speechdata / (floor × workers) | "
        f"≥ {SCALING_TARGET} (≤ {SCALING_UP_TO} workers) | speechdata / lhotse | ahead of lhotse |",
        "|---:|---:|---:|---:|---:|---:|:---:|---:|:---:|",
    ]
    for r in rows:
        cells = [
            str(r["workers"]),
            _num(r["speechdata_audio_s_per_s"]),
            _num(r["lhotse_audio_s_per_s"]),
            _num(r["floor_audio_s_per_s"]),
            _num(r["floor_x_workers"]),
            _x(r["scaling"]),
            _met(r["scaling_met"]),
            _x(r["vs_lhotse"]),
            _met(r["ahead_of_lhotse"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def finalize_table(timings: dict[str, dict[str, float]], device: str) -> list[str]:
    """The markdown table of the finalisation timings, one row per format."""
    lines = [
        f"| format | batch audio s | examples | pad CPU ms | pad {device} ms | pad+log-mel CPU ms | "
        f"pad+log-mel {device} ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fmt, t in timings.items():
        cells = [
            fmt,
            _num(t["timed_batch_audio_seconds"], 1),
            str(int(t["timed_batch_examples"])),
            *(_num(t[k], 2) for k in ("pad_cpu_ms", "pad_dev_ms", "pad+logmel_cpu_ms", "pad+logmel_dev_ms")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def gpu_name() -> str | None:
    """The first CUDA device's name, or ``None`` without one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker-scaling benchmark; writes ``--md``/``--json`` and prints the tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 14], help="worker counts")
    p.add_argument("--formats", nargs="+", default=["flac", "wav"], choices=["flac", "wav"])
    p.add_argument("--hours", type=float, default=0.5, help="hours of audio files per format (made once)")
    p.add_argument(
        "--batch-duration",
        nargs="+",
        default=["120"],
        metavar="[FMT=]SECONDS",
        help="seconds of audio per batch, for every format or one (default 120)",
    )
    p.add_argument(
        "--batches-per-worker", type=int, default=15, help="timed batches per worker in each run (default 15)"
    )
    p.add_argument("--repeats", type=int, default=2, help="runs per loader and count; medians (default 2)")
    p.add_argument("--device", default="cpu", help="where the loaders deliver batches (default cpu)")
    p.add_argument("--finalize", action="store_true", help="time the finalisation also with --device cpu")
    p.add_argument("--finalize-repeats", type=int, default=30, help="timed finalisations (median)")
    p.add_argument("--corpus-dir", default=os.path.join(tempfile.gettempdir(), "speechdata-bench-corpus"))
    p.add_argument("--md", help="write the tables to this markdown file")
    p.add_argument("--json", help="write every figure to this JSON file")
    args = p.parse_args(argv)
    if min(args.workers) < 1 or args.batches_per_worker < 1 or args.repeats < 1 or args.hours <= 0:
        p.error("--workers, --batches-per-worker and --repeats must be at least 1, --hours positive")
    workers = sorted(set(args.workers))
    budgets = batch_durations(args.batch_duration, args.formats)
    root = Path(args.corpus_dir)
    root.mkdir(parents=True, exist_ok=True)
    gpu = gpu_name()
    machine = {**machine_info(), "gpu": gpu}
    tok: str | None = None
    formats: dict[str, Any] = {}
    timings: dict[str, dict[str, float]] = {}
    for fmt in args.formats:
        cap = 1 + args.batches_per_worker * max(workers)
        manifest = run_manifest(root, fmt, args.hours, HEADROOM * cap * budgets[fmt])
        if tok is None:
            cfg, _ = load_dataset(corpus(root, fmt, args.hours))
            tok = train_default_tokenizer(dataset_index(cfg), cfg, root / "tok")
        rows, runs = [], {}
        for w in workers:
            overrides = [f"num_workers={w}", f"batch_duration={budgets[fmt]}"]
            cfg, _ = load_dataset(manifest, overrides)
            max_batches = 1 + args.batches_per_worker * w
            command = (
                f"speechdata bench {manifest} {' '.join(overrides)} --compare --repeats {args.repeats} "
                f"--max-batches {max_batches} --device {args.device} (peers: {', '.join(PEERS)})"
            )
            result = run_benchmark(
                cfg,
                tok,
                compare=True,
                repeats=args.repeats,
                device=args.device,
                max_batches=max_batches,
                command=command,
                log=lambda line, fmt=fmt, w=w: print(f"{fmt} {w} worker(s): {line}", file=sys.stderr),
                peers=PEERS,
            )
            rows.append(scaling_row(w, result))
            runs[str(w)] = result.to_dict()
        formats[fmt] = {"manifest": str(manifest), "batch_duration": budgets[fmt], "rows": rows, "runs": runs}
        if args.device != "cpu" or args.finalize:
            cfg, _ = load_dataset(manifest, [f"batch_duration={budgets[fmt]}"])
            timings[fmt] = finalize_timings(
                dataclasses.replace(cfg, num_workers=0), tok, args.device, args.finalize_repeats
            )

    cpus = f"{machine['cpu_count']} CPUs ({machine['cpu_model'] or 'model unknown'})"
    lines = [
        "# Worker scaling: speechdata, lhotse and the decode floor",
        "",
        f"Machine: {cpus}, GPU {gpu or 'none'}; torch {machine['torch']}, lhotse {machine['lhotse']}, "
        f"Python {machine['python']}. Loaders deliver to {args.device}.",
        f"Each run: one epoch of a cycled manifest, capped at 1 + {args.batches_per_worker} × workers batches "
        f"(the first not timed); medians of {args.repeats} run(s). The decode floor decodes the same "
        "audio in one process (one core), so floor × workers is what perfect scaling would deliver.",
    ]
    for fmt, f in formats.items():
        first = f["runs"][str(workers[0])]["corpus"]
        lines += [
            "",
            f"## {fmt.upper()} (batch_duration {f['batch_duration']:g} s)",
            "",
            *format_table(f["rows"]),
            "",
            f"Manifest `{f['manifest']}`: {first['examples']} lines, {first['hours']:.2f} h of audio lines "
            f"cycled over {args.hours:g} h of files, mean clip {first['mean_clip_s']:.2f} s.",
        ]
        warned = sorted({w for r in f["rows"] for w in r["warnings"]})
        lines += [f"\nWarning: {w}" for w in warned]
    if timings:
        lines += [
            "",
            f"## Finalisation per batch ({args.device}; medians of {args.finalize_repeats})",
            "",
            *finalize_table(timings, args.device),
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    if args.json:
        payload = {
            "command": " ".join(["python", "benchmarks/bench_workers.py", *(argv or sys.argv[1:])]),
            "machine": machine,
            "settings": {
                "workers": workers,
                "batches_per_worker": args.batches_per_worker,
                "repeats": args.repeats,
                "device": args.device,
                "hours_of_files": args.hours,
                "scaling_target": SCALING_TARGET,
                "scaling_up_to_workers": SCALING_UP_TO,
            },
            "formats": formats,
            "finalize": timings or None,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
