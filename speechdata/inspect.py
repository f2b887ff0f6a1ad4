"""``speechdata inspect``: what a dataset holds, before anyone trains on it.

Examples, hours, lines dropped by reason, a duration histogram and a text-length histogram (in
tokens with ``--tokenizer``, else characters), and suggested duration bucket bins (equal total
duration per bucket, the bins the sampler would estimate). ``--png`` draws the duration histogram
with the bins (needs the ``plot`` extra), ``--json`` writes every figure.

Example::

    $ speechdata inspect train.jsonl --num-buckets 8 --png hist.png
    $ speechdata inspect train_tarred/          # a tarred dataset, bucketed or not
    $ speechdata inspect manifests/             # every *.json[l][.gz] in the folder
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from speechdata.errors import DropCounter, SpeechDataError
from speechdata.manifest import Index, ManifestKeys, load_index
from speechdata.sampling.buckets import estimate_bins
from speechdata.shards.read import MANIFEST, tarred_dataset_folders

HELP = "dataset statistics: hours, histograms, suggested bucket bins"


@dataclass
class Stats:
    """The figures ``inspect`` reports (all plain numbers, JSON-ready)."""

    manifests: list[str]
    examples: int
    hours: float
    audios: int
    multi_audio_examples: int
    duration_min: float
    duration_mean: float
    duration_max: float
    drops: dict[str, int]
    duration_hist: dict[str, list[float]]
    text_unit: str
    text_hist: dict[str, list[float]]
    suggested_bins: list[float]


def _hist(values: np.ndarray, bins: int) -> dict[str, list[float]]:
    if values.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


#: Manifest file names a folder of manifests is scanned for.
MANIFEST_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


def resolve_manifests(paths: list[str]) -> tuple[list[str], bool]:
    """Manifests named by the arguments: files, or a folder: a tarred dataset (its
    ``tarred_audio_manifest.json``, or those of its ``bucket*`` datasets, found as ``speechdata
    validate`` finds them), else its ``*.json``, ``*.jsonl``, ``*.json.gz`` and ``*.jsonl.gz``
    files. Returns (paths, tarred)."""
    out: list[str] = []
    tarred = False
    for p in map(Path, paths):
        if p.is_dir():
            folders = tarred_dataset_folders(p)
            if folders:
                out.extend(str(f / MANIFEST) for f in folders)
                tarred = True
                continue
            found = sorted(x for x in p.iterdir() if x.is_file() and x.name.endswith(MANIFEST_SUFFIXES))
            if not found:
                raise SpeechDataError(f"{p}: no manifest in this folder")
            out.extend(map(str, found))
        elif p.is_file():
            out.append(str(p))
        else:
            raise SpeechDataError(f"{p}: no such file or folder")
    return out, tarred


def compute_stats(
    index: Index, *, num_buckets: int = 8, bins: int = 20, token_lengths: np.ndarray | None = None
) -> Stats:
    """Figures of an Index (``token_lengths`` replaces character counts when given)."""
    d = index.duration.astype(np.float64)
    text = token_lengths if token_lengths is not None else index.text_len.astype(np.float64)
    drops = DropCounter()
    drops.merge(index.drops)
    suggested = estimate_bins(index.max_clip, num_buckets) if len(index) else np.zeros(0)
    return Stats(
        manifests=[ds.path for ds in index.datasets],
        examples=len(index),
        hours=float(d.sum() / 3600),
        audios=int(index.num_audios.sum()),
        multi_audio_examples=int((index.num_audios > 1).sum()),
        duration_min=float(d.min()) if len(d) else 0.0,
        duration_mean=float(d.mean()) if len(d) else 0.0,
        duration_max=float(d.max()) if len(d) else 0.0,
        drops=drops.to_dict(),
        duration_hist=_hist(d, bins),
        text_unit="tokens" if token_lengths is not None else "characters",
        text_hist=_hist(np.asarray(text, dtype=np.float64), bins),
        suggested_bins=[round(float(b), 3) for b in np.unique(suggested)],
    )


def _bar_lines(hist: dict[str, list[float]], unit: str, width: int = 40) -> list[str]:
    counts, edges = hist["counts"], hist["edges"]
    if not counts:
        return ["  (empty)"]
    top = max(counts) or 1
    return [
        f"  {edges[k]:8.2f} - {edges[k + 1]:8.2f} {unit:<2} {c:8d} {'#' * max(1 if c else 0, round(width * c / top))}"
        for k, c in enumerate(counts)
    ]


def render(stats: Stats) -> str:
    """The text report."""
    lines = [
        f"manifests: {', '.join(stats.manifests)}",
        f"examples:  {stats.examples}  ({stats.audios} audios, {stats.multi_audio_examples} multi-audio examples)",
        f"hours:     {stats.hours:.3f}",
        f"duration:  min {stats.duration_min:.2f} s, mean {stats.duration_mean:.2f} s, max {stats.duration_max:.2f} s",
        "dropped:   " + (", ".join(f"{k}={v}" for k, v in stats.drops.items()) or "none"),
        "duration histogram (seconds):",
        *_bar_lines(stats.duration_hist, "s"),
        f"text length histogram ({stats.text_unit}):",
        *_bar_lines(stats.text_hist, ""),
        f"suggested bucket_duration_bins ({len(stats.suggested_bins) + 1} buckets of equal total duration):",
        f"  {stats.suggested_bins}",
    ]
    return "\n".join(lines)


def plot(stats: Stats, index: Index, path: str | Path) -> None:
    """Draw the duration histogram and the suggested bins to a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpeechDataError("--png needs matplotlib: pip install 'speechdata[plot]'") from None
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(index.duration, bins=60, color="#4c72b0")
    for b in stats.suggested_bins:
        ax.axvline(b, color="#dd8452", linewidth=0.8)
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("examples")
    ax.set_title(f"{stats.examples} examples, {stats.hours:.2f} h; orange: suggested bucket bins")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``speechdata inspect``."""
    p.add_argument(
        "paths",
        nargs="+",
        metavar="MANIFEST|DIR",
        help="manifests, or a folder (tarred dataset or manifests)",
    )
    p.add_argument("--num-buckets", type=int, default=8, help="buckets for the suggested bins (default 8)")
    p.add_argument("--bins", type=int, default=20, help="histogram bars (default 20)")
    p.add_argument(
        "--tokenizer", help="SentencePiece model: report text length in tokens instead of characters"
    )
    p.add_argument(
        "--answer-key", default="answer", help="manifest key of the answer (default: answer, else text)"
    )
    p.add_argument("--context-key", default="context", help="manifest key of the context (default: context)")
    p.add_argument("--png", help="write the duration histogram with the bins to this PNG")
    p.add_argument("--json", help="write every figure to this JSON file")


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata inspect``."""
    if args.num_buckets < 1 or args.bins < 1:
        raise SpeechDataError("--num-buckets and --bins must be at least 1")
    manifests, tarred = resolve_manifests(args.paths)
    keys = ManifestKeys(answer_key=args.answer_key, context_key=args.context_key, tarred=tarred)
    index = load_index(manifests, keys, on_error="skip")
    token_lengths = None
    if args.tokenizer:
        token_lengths = _token_lengths(index, args.tokenizer)
    stats = compute_stats(index, num_buckets=args.num_buckets, bins=args.bins, token_lengths=token_lengths)
    print(render(stats))
    if args.png:
        plot(stats, index, args.png)
        print(f"wrote {args.png}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(stats), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _token_lengths(index: Index, tokenizer_path: str) -> np.ndarray:
    from tqdm import tqdm

    from speechdata.text.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer_path)
    out = np.zeros(len(index), dtype=np.float64)
    for i in tqdm(range(len(index)), desc="tokenizing", unit="ex", disable=len(index) < 10_000):
        rec = index.record(i)
        out[i] = len(tok.encode(rec.answer)) + (len(tok.encode(rec.context)) if rec.context else 0)
    return out
