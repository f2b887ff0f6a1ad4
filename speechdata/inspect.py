"""What a dataset holds, before anyone trains on it (``speechdata inspect``, the command being
:mod:`speechdata.commands.inspect`).

Examples, hours, lines dropped by reason with the first places and messages, a duration histogram
and a text-length histogram (in tokens with a tokenizer, else characters), and suggested duration
bucket bins (equal total duration per bucket, the bins the sampler would estimate).
:func:`check_readable` is the rule that a dataset with no readable example is an error.

Example::

    >>> index = load_index("train.jsonl", on_error="skip")
    >>> check_readable(index, ["train.jsonl"])
    >>> print(render(compute_stats(index, num_buckets=8)))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechdata.errors import DropCounter, EmptyDatasetError, SpeechDataError
from speechdata.manifest import Index
from speechdata.sampling.buckets import estimate_bins
from speechdata.shards.read import MANIFEST, tarred_dataset_folders


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
    #: the loader's words for them: ``bad_line=2 e.g. m.jsonl:2, m.jsonl:5`` ("none" without drops)
    drops_line: str
    #: the first places (``path:line``) and messages of each reason's drops
    drop_places: dict[str, list[str]]
    drop_messages: dict[str, list[str]]
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
        drops_line=drops.by_reason() or "none",
        drop_places={r: list(drops.places.get(r, [])) for r in drops.to_dict()},
        drop_messages={r: list(drops.examples.get(r, [])) for r in drops.to_dict()},
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


def check_readable(index: Index, names: Sequence[str]) -> None:
    """An :class:`~speechdata.errors.EmptyDatasetError` naming ``names`` (the paths the user gave)
    when ``index`` has no example: ``"m.jsonl: no readable example: 3 dropped: bad_line=3 e.g.
    m.jsonl:1, m.jsonl:2, m.jsonl:3"``, or ``"m.jsonl: no readable example: no lines"``."""
    if len(index):
        return
    why = index.drops.describe() if index.drops.total() else "no lines"
    raise EmptyDatasetError(f"{', '.join(map(str, names))}: no readable example: {why}")


def _drop_lines(stats: Stats) -> list[str]:
    """``dropped: bad_line=2 e.g. m.jsonl:2, m.jsonl:5`` (the loader's words), then the first
    messages of each reason, indented."""
    lines = [f"dropped:   {stats.drops_line}"]
    for reason in stats.drops:
        lines += [f"  {m}" for m in stats.drop_messages.get(reason, [])[: DropCounter.show_places]]
    return lines


def render(stats: Stats) -> str:
    """The text report."""
    lines = [
        f"manifests: {', '.join(stats.manifests)}",
        f"examples:  {stats.examples}  ({stats.audios} audios, {stats.multi_audio_examples} multi-audio examples)",
        f"hours:     {stats.hours:.3f}",
        f"duration:  min {stats.duration_min:.2f} s, mean {stats.duration_mean:.2f} s, max {stats.duration_max:.2f} s",
        *_drop_lines(stats),
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


def token_lengths(index: Index, tokenizer_path: str | Path) -> np.ndarray:
    """Tokens of each example's context and answer with the SentencePiece model at ``tokenizer_path``."""
    from tqdm import tqdm

    from speechdata.text.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    out = np.zeros(len(index), dtype=np.float64)
    for i in tqdm(range(len(index)), desc="tokenizing", unit="ex", disable=len(index) < 10_000):
        rec = index.record(i)
        out[i] = len(tok.encode(rec.answer)) + (len(tok.encode(rec.context)) if rec.context else 0)
    return out
