"""The report of ``speechdata bench``: each peer's runs and medians, the table, the chart.

:class:`BenchResult` holds everything one run of ``speechdata bench`` measured (JSON through
:meth:`BenchResult.to_dict`, the markdown table through :meth:`BenchResult.markdown`);
:func:`summarize` turns each peer's runs into medians and ratios, :func:`plot` draws the chart.

Example::

    >>> summarize(peers)
    >>> print(BenchResult(command, machine_info(), settings, corpus, peers).markdown())
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from speechdata.errors import SpeechDataError

#: The figures of every peer, in table order (medians over the repeats; ratios from the medians).
FIGURES = (
    "audio_s_per_s",
    "examples_per_s",
    "ratio_to_floor",
    "ratio_to_lhotse",
    "padding_pct",
    "token_padding_pct",
    "first_batch_s",
    "peak_rss_mb",
    "overhead_us",
    "cpu_us_per_example",
)
_HEADERS = (
    "audio s/s",
    "examples/s",
    "ratio to floor",
    "ratio to lhotse",
    "padding %",
    "token padding %",
    "first batch s",
    "peak RSS MB",
    "µs/example over floor",
    "CPU µs/example",
)
_DIGITS = {
    "audio_s_per_s": 0,
    "examples_per_s": 1,
    "padding_pct": 1,
    "token_padding_pct": 1,
    "first_batch_s": 3,
    "peak_rss_mb": 0,
    "overhead_us": 0,
    "cpu_us_per_example": 0,
}


@dataclass
class PeerResult:
    """One row: the medians of a peer's runs (``figures``), the runs, or why it did not run."""

    name: str
    label: str
    figures: dict[str, float | None] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None
    drops: dict[str, int] = field(default_factory=dict)


@dataclass
class BenchResult:
    """Everything one ``speechdata bench`` run measured, JSON-ready through :meth:`to_dict`."""

    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    corpus: dict[str, Any]
    peers: dict[str, PeerResult]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (what ``--json`` writes)."""
        return dataclasses.asdict(self)

    def markdown(self) -> str:
        """The results table with the settings and the command that produced it."""
        lines = [
            "| loader | " + " | ".join(_HEADERS) + " |",
            "|---|" + "---:|" * len(_HEADERS),
        ]
        for peer in self.peers.values():
            if peer.skipped is not None:
                lines.append(f"| {peer.label} | skipped: {peer.skipped} |" + " |" * (len(_HEADERS) - 1))
                continue
            cells = [_cell(name, peer.figures.get(name)) for name in FIGURES]
            lines.append(f"| {peer.label} | " + " | ".join(cells) + " |")
        s, c = self.settings, self.corpus
        budget = (
            f"batch_duration {s['batch_duration']} s"
            if s["batch_duration"]
            else f"batch size {s['batch_size']}"
        )
        lines += [
            "",
            f"Corpus: {c['examples']} examples, {c['audios']} clips, {c['hours']:.2f} h, formats "
            f"{c['formats']}, sample rates {c['sample_rates']}. {budget}, {s['workers']} worker(s), "
            f"{s['epochs']} epoch(s), device {s['device']}; medians of {s['repeats']} run(s), "
            f"{self.machine['cpu_count']} CPUs.",
            "",
            f"Command: `{self.command}`",
        ]
        lines += [f"\nWarning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _cell(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    if name.startswith("ratio"):
        return f"{value:.2f}×"
    return f"{value:,.{_DIGITS[name]}f}"


def machine_info() -> dict[str, Any]:
    """CPU count and model, Python and library versions."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libsndfile": sf.__libsndfile_version__,
        **{name: ver(name) for name in ("speechdata", "torch", "numpy", "soundfile", "lhotse", "webdataset")},
    }


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else None


def summarize(peers: dict[str, PeerResult]) -> None:
    """Fill each peer's median figures, its ratios to the floor and to lhotse, and its time per
    example beyond the floor's (``overhead_us``: ``1e6 / examples_per_s`` minus the floor's; all
    from the medians); ``cpu_us_per_example`` is the median over the runs of CPU time (the process
    and its workers, whole run) per example, ``worker_cpu_us_per_example`` the workers' part."""
    for peer in peers.values():
        if peer.skipped is not None:
            continue
        runs = peer.runs
        pad = _median([r["padding_fraction"] for r in runs])
        token_pad = _median([r.get("token_padding_fraction") for r in runs])
        peer.figures = {
            "audio_s_per_s": _median([r["audio_s_per_s"] for r in runs]),
            "examples_per_s": _median([r["examples_per_s"] for r in runs]),
            "padding_pct": None if pad is None else 100.0 * pad,
            "token_padding_pct": None if token_pad is None else 100.0 * token_pad,
            "first_batch_s": _median([r["first_batch_s"] for r in runs]),
            "peak_rss_mb": _median([r["peak_rss_mb"] for r in runs]),
            "cpu_us_per_example": _median(
                [1e6 * r["cpu_s"] / r["examples"] if r.get("cpu_s") and r["examples"] else None for r in runs]
            ),
            "worker_cpu_us_per_example": _median(
                [
                    1e6 * r["child_cpu_s"] / r["examples"]
                    if r.get("child_cpu_s") is not None and r["examples"]
                    else None
                    for r in runs
                ]
            ),
        }
    for peer in peers.values():
        if peer.skipped is not None:
            continue
        for ref, key in (("floor", "ratio_to_floor"), ("lhotse", "ratio_to_lhotse")):
            other = peers.get(ref)
            base = other.figures.get("audio_s_per_s") if other is not None and other.skipped is None else None
            mine = peer.figures["audio_s_per_s"]
            peer.figures[key] = mine / base if base and mine is not None else None
        # time per example beyond the floor's: what the loader adds to decoding, in microseconds
        floor = peers.get("floor")
        base = floor.figures.get("examples_per_s") if floor is not None and floor.skipped is None else None
        mine = peer.figures["examples_per_s"]
        peer.figures["overhead_us"] = 1e6 / mine - 1e6 / base if base and mine else None


def plot(result: BenchResult, path: str | Path) -> None:
    """Bar charts of audio s/s (labelled with the ratio to the floor) and padding % per loader."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpeechDataError("--png needs matplotlib: pip install 'speechdata[plot]'") from None
    ran = [p for p in result.peers.values() if p.skipped is None]
    labels = [p.label for p in ran]
    speed = [p.figures["audio_s_per_s"] or 0.0 for p in ran]
    padding = [p.figures["padding_pct"] or 0.0 for p in ran]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    colors = ["#4c72b0", "#8c8c8c", "#dd8452", "#55a868"][: len(ran)]
    bars = ax1.bar(labels, speed, color=colors)
    for bar, p in zip(bars, ran, strict=True):
        ratio = p.figures.get("ratio_to_floor")
        note = f"{ratio:.2f}× floor" if ratio is not None else ""
        ax1.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax1.set_ylabel("audio seconds per second")
    ax1.set_title("throughput (median, steady state)")
    ax2.bar(labels, padding, color=colors)
    ax2.set_ylabel("padding %")
    ax2.set_title("padding")
    s = result.settings
    fig.suptitle(
        f"{result.corpus['hours']:.2f} h, {s['workers']} worker(s), "
        f"batch {s['batch_duration'] or s['batch_size']}, {result.machine['cpu_count']} CPUs"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
