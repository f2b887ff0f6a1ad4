"""Memory soak: many epochs of a small corpus with DataLoader workers; RSS must stay flat.

Builds a synthetic corpus, iterates ``--epochs`` epochs with ``--workers`` persistent workers and
after each epoch samples the resident set size (``VmRSS`` in ``/proc/<pid>/status``) of the main
process and of every worker. After ``--warmup`` epochs a least-squares line is fitted to each
series, and another to its second half; the slopes (MB per epoch) and the growth over the second
half are printed and written to ``benchmarks/results/soak.md``. A leak of a few kB per batch shows up as a steady positive slope;
noise is a few hundred kB either way.

    python benchmarks/soak.py                 # 2 workers, 60 epochs
    python benchmarks/soak.py --epochs 100 --workers 4
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.testing import make_corpus
from speechdata.text.tokenizer import train_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"
LOCATOR = "|audio|"


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def slope(values: list[float]) -> tuple[float, float]:
    """Least-squares slope per step and the residual standard deviation of ``values``."""
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64)
    a, b = np.polyfit(x, y, 1)
    return float(a), float(np.std(y - (a * x + b)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="epochs left out of the fit (default 10)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--examples", type=int, default=64, help="corpus size (default 64)")
    p.add_argument("--out", type=Path, default=RESULTS / "soak.md")
    args = p.parse_args()
    if args.epochs - args.warmup < 10:
        p.error("need at least 10 epochs after the warm-up to fit slopes")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="speechdata_soak_") as tmp:
        corpus = make_corpus(tmp, n=args.examples, seed=1, max_duration=8.0)
        texts = [e["answer"] for e in corpus.entries] + [e["context"] for e in corpus.entries]
        tok = train_tokenizer(
            texts, Path(tmp) / "tok", vocab_size=120, user_symbols=[LOCATOR], byte_fallback=False
        )
        cfg = make_dataset_config(
            {
                "manifest_filepath": str(corpus.manifest),
                "audio_locator": LOCATOR,
                "prompt_template": "Q: {context}\nA: {answer}",
                "batch_duration": 40.0,
                "num_workers": args.workers,
                "min_duration": None,
                "max_duration": None,
                "features": {"n_mels": 80},
            }
        )
        loader = build_dataloader(cfg, tok)
        main_rss: list[float] = []
        worker_rss: list[list[float]] = []
        batches = examples = 0
        start = time.perf_counter()
        for epoch in range(args.epochs):
            for batch in loader:
                batches += 1
                examples += len(batch["sample_ids"])
                del batch
            gc.collect()
            main_rss.append(rss_mb(os.getpid()))
            worker_rss.append([rss_mb(pid) for pid in loader.worker_pids()])
            print(
                f"epoch {epoch:3d}: main {main_rss[-1]:7.1f} MB, workers "
                + ", ".join(f"{r:6.1f}" for r in worker_rss[-1])
                + " MB",
                flush=True,
            )
        seconds = time.perf_counter() - start
    fit = args.warmup
    rows = [("main", main_rss)]
    for k in range(len(worker_rss[-1])):
        rows.append((f"worker {k}", [w[k] if k < len(w) else 0.0 for w in worker_rss]))
    lines = [
        "# Memory soak",
        "",
        f"Command: `python benchmarks/soak.py --epochs {args.epochs} --warmup {args.warmup} "
        f"--workers {args.workers} --examples {args.examples}`",
        "",
        f"{args.epochs} epochs of {args.examples} examples ({batches} batches, {examples} examples, "
        f"{seconds:.0f} s), {args.workers} persistent DataLoader workers, log-mel features on. RSS from "
        f"`/proc/<pid>/status` after each epoch; slope fitted over epochs {fit}..{args.epochs - 1}.",
        "",
        "| process | RSS after warm-up (MB) | RSS at end (MB) | slope (MB/epoch) | residual sd (MB) "
        "| slope, 2nd half (MB/epoch) | growth over 2nd half (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    flat = True
    half = fit + (args.epochs - fit) // 2
    for name, series in rows:
        a, sd = slope(series[fit:])
        # A leak grows linearly; allocator arenas step up a few MB and then plateau. So the
        # verdict looks at the second half of the run: its fitted growth must stay within the noise.
        a2, sd2 = slope(series[half:])
        growth = a2 * (len(series) - half - 1)
        flat &= growth <= max(2.0, 3 * max(sd, sd2))
        lines.append(
            f"| {name} | {series[fit]:.1f} | {series[-1]:.1f} | {a:+.4f} | {sd:.3f} | {a2:+.4f} | {growth:+.2f} |"
        )
        print(
            f"{name}: slope {a:+.4f} MB/epoch (sd {sd:.3f} MB); 2nd half {a2:+.4f} MB/epoch, growth {growth:+.2f} MB"
        )
    verdict = "flat (no growth beyond noise)" if flat else "GROWING"
    lines += ["", f"Verdict: {verdict}.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"soak: {verdict}; wrote {args.out}")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
