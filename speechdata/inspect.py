"""What a dataset holds, before anyone trains on it (``speechdata inspect``, the command being
:mod:`speechdata.commands.inspect`).

Examples, hours, lines dropped by reason with the first places and messages, a duration histogram
and a text-length histogram (in tokens with a tokenizer, else characters), and suggested duration
bucket bins (equal total duration per bucket, the bins the sampler would estimate).
:func:`check_readable` is the rule that a dataset with no readable example is an error.

With a tokenizer, each example's tokens are counted by the prompt builder as the loader counts
them (:func:`token_measures`, :mod:`speechdata.sampling.tokens`); the report then suggests 2D
``bucket_duration_bins`` (:func:`~speechdata.sampling.buckets.estimate_bins_2d`: seconds, or
input tokens with a ``token_equivalent_duration``, by output tokens) and gives the padding, on
the audio axis and the token axis, of one epoch planned under ``batch_tokens`` with the suggested
1D bins and with the 2D bins (:meth:`~speechdata.sampling.plan.Plan.padding`).

Example::

    >>> index = load_index("train.jsonl", on_error="skip")
    >>> check_readable(index, ["train.jsonl"])
    >>> print(render(compute_stats(index, num_buckets=8)))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speechdata.config import DatasetConfig, make_dataset_config
from speechdata.errors import DropCounter, EmptyDatasetError, SpeechDataError
from speechdata.manifest import Index
from speechdata.sampling.buckets import estimate_bins, estimate_bins_2d
from speechdata.sampling.plan import plan_epoch
from speechdata.sampling.tokens import Measures, count_tokens
from speechdata.shards.read import MANIFEST, remote_dataset_folders, tarred_dataset_folders
from speechdata.storage import is_remote, list_folder


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
    #: with token counts: 2D bins (``[seconds or input tokens, output tokens]`` pairs), what their
    #: first value measures, and the padding of one planned epoch per axis for 1D and 2D bins
    #: (``{"1d": {"audio": 0.12, "tokens": 0.05}, "2d": {...}}``) at ``batch_tokens``
    suggested_bins_2d: list[list[float]] = field(default_factory=list)
    bins_2d_first: str = ""
    batch_tokens: int | None = None
    padding: dict[str, dict[str, float]] = field(default_factory=dict)


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
    files. Files and folders may be object-storage URLs, as the loader takes them (folders listed
    through their fsspec filesystem). Returns (paths, tarred)."""
    out: list[str] = []
    tarred = False
    for arg in paths:
        if is_remote(arg):  # a manifest URL, or a folder URL listed through its filesystem
            if arg.endswith(MANIFEST_SUFFIXES):
                out.append(arg)
                continue
            folders = remote_dataset_folders(arg)
            if folders:
                out.extend(f"{f}/{MANIFEST}" for f in folders)
                tarred = True
                continue
            names = [n for n in list_folder(arg.rstrip("/")) if n.endswith(MANIFEST_SUFFIXES)]
            if not names:
                raise SpeechDataError(f"{arg}: no manifest there (nothing listed, or no *.json/*.jsonl)")
            out.extend(f"{arg.rstrip('/')}/{n}" for n in names)
            continue
        p = Path(arg)
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
    index: Index,
    *,
    num_buckets: int = 8,
    bins: int = 20,
    token_lengths: np.ndarray | None = None,
    measures: Measures | None = None,
    keep: np.ndarray | None = None,
    num_subbuckets: int = 4,
    batch_tokens: int = 4096,
    token_equivalent_duration: float | None = None,
) -> Stats:
    """Figures of an Index (``token_lengths`` replaces character counts when given). With
    ``measures`` (:func:`token_measures`) the text histogram is in tokens and the 2D bins and
    the padding per axis at ``batch_tokens`` (audio tokens from ``token_equivalent_duration``,
    as ``measures`` were made) are reported too (see the module docstring), over the examples of
    ``keep`` (default: all)."""
    d = index.duration.astype(np.float64)
    kept = np.ones(len(index), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if measures is not None:
        token_lengths = measures.text[kept].astype(np.float64)
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
        **(
            _token_figures(
                index, measures, kept, num_buckets, num_subbuckets, batch_tokens, token_equivalent_duration
            )
            if measures is not None
            else {}
        ),
    )


def _token_figures(
    index: Index,
    measures: Measures,
    keep: np.ndarray,
    num_buckets: int,
    num_subbuckets: int,
    batch_tokens: int,
    token_equivalent_duration: float | None,
) -> dict[str, object]:
    """The suggested 2D bins and the padding per axis of 1D and 2D bins (Stats fields)."""
    first, second = measures.axes()
    bins_2d = estimate_bins_2d(first[keep], second[keep], num_buckets, num_subbuckets)
    bins_1d = np.unique(estimate_bins(measures.length[keep], num_buckets))
    padding: dict[str, dict[str, float]] = {}
    for name, bins in (("1d", bins_1d.tolist()), ("2d", bins_2d.tolist())):
        cfg = _planning_config(measures, batch_tokens, bins, token_equivalent_duration)
        plan = plan_epoch(index, keep, cfg, epoch=0, measures=measures)
        padding[name] = {
            "audio": round(plan.padding(measures.duration), 4),
            "tokens": round(plan.padding(measures.tokens), 4),
        }
    return {
        # upper bounds: rounded up, so that every example still fits its pair
        "suggested_bins_2d": [[_ceil3(a), _ceil3(b)] for a, b in bins_2d.tolist()],
        "bins_2d_first": "input tokens" if measures.multimodal else "seconds",
        "batch_tokens": batch_tokens,
        "padding": padding,
    }


def _ceil3(x: float) -> float:
    """``x`` rounded up to 3 decimals (an inclusive upper bound stays one)."""
    return float(np.ceil(round(x * 1000, 6)) / 1000)


def _planning_config(measures: Measures, batch_tokens: int, bins: list, ted: float | None) -> DatasetConfig:
    """The dataset config of the planned epoch ``inspect`` measures padding on."""
    values: dict[str, object] = {
        "batch_tokens": batch_tokens,
        "bucket_duration_bins": bins or None,
        "token_equivalent_duration": ted,
        "use_multimodal_sampling": measures.multimodal,
        "min_duration": None,
        "max_duration": None,
        "drop_last": False,
    }
    return make_dataset_config(values, "inspect")


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
    if stats.suggested_bins_2d:
        lines += [
            f"suggested 2D bucket_duration_bins ([{stats.bins_2d_first}, output tokens]; "
            f"{len(stats.suggested_bins_2d)} buckets):",
            f"  {stats.suggested_bins_2d}",
            f"padding of one epoch planned at batch_tokens {stats.batch_tokens} (audio seconds / tokens):",
        ]
        for name, label in (("1d", "1D bins"), ("2d", "2D bins")):
            pad = stats.padding[name]
            lines.append(f"  {label}: audio {pad['audio']:.1%}, tokens {pad['tokens']:.1%}")
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


def token_measures(
    index: Index,
    tokenizer_path: str | Path,
    cfg: DatasetConfig,
    drops: DropCounter,
) -> tuple[Measures, np.ndarray]:
    """Each example's token counts, from the prompt builder of ``cfg`` with the tokenizer at
    ``tokenizer_path`` (:func:`~speechdata.sampling.tokens.count_tokens`, cached as the loader
    caches them), and the mask of the examples whose prompt was built; the others are counted in
    ``drops``."""
    from speechdata.sources import ManifestSource
    from speechdata.text.dialog import make_prompt_builder
    from speechdata.text.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    builder = make_prompt_builder(cfg, tok)
    keep = np.ones(len(index), dtype=bool)
    skip = dataclasses.replace(cfg, on_error="skip")
    counts = count_tokens(ManifestSource(index), builder, keep, skip, drops, tokenizer=tok)
    return Measures.of(index.duration, counts, cfg), keep
