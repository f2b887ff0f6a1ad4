"""``speechdata bench``: how fast the loader delivers batches, against the decode floor and peers.

The input is a YAML config (its ``train_ds`` section, under ``model.`` or at the top level;
``--section`` picks another), a manifest (a dataset config with ``batch_duration`` 600 s, no
duration filters and one worker), or a folder (manifests, or a tarred dataset when
``speechdata.shards.read`` is available). Dotted overrides follow the input
(``model.train_ds.num_buckets=16``; for a manifest, bare dataset keys such as ``num_buckets=16``).

Every run happens in a fresh process (:mod:`speechdata.bench_peers`) and is repeated
``--repeats`` times, peers interleaved; each figure is the median over the repeats. Measured for
speechdata's loader: audio seconds per second and examples per second (steady state, after the
first batch), padding fraction (``1 - valid samples / (A × T)`` summed over batches), time to first
batch (from the start of ``build_dataloader`` to the first batch in hand), peak RSS (the process
plus its largest worker) and the drops of ``loader.report()``. ``--compare`` adds, on the same clip
spans and batch budget: the soundfile decode floor, lhotse (DynamicBucketingSampler +
``collate_audio``) and webdataset + soundfile (fixed-size batches of
``floor(batch_duration / mean clip duration)``). Peers that cannot be imported are reported as
skipped, with the reason. A corpus too small for steady-state figures (see
:func:`small_corpus_warning`) is measured anyway, with a warning in the log and the table.

Example::

    $ speechdata bench train.jsonl --compare --repeats 3 --md bench.md --png bench.png --json bench.json
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from speechdata.bench_peers import LABELS, LHOTSE_BUCKETS, PEERS, Clip, Job, save_clips, write_wds_shards
from speechdata.config import DatasetConfig, dataset_config, load_config
from speechdata.errors import ConfigError, DropCounter, SpeechDataError
from speechdata.inspect import resolve_manifests
from speechdata.loader import manifest_keys
from speechdata.manifest import Index, ManifestKeys, load_index
from speechdata.sampling.filters import filter_mask
from speechdata.sampling.plan import plan_epoch
from speechdata.text.prompt import PromptBuilder
from speechdata.text.tokenizer import Tokenizer

HELP = "measure the loader against the decode floor and peers"

#: Dataset settings of a manifest given on its own (overridable).
MANIFEST_DEFAULTS: dict[str, Any] = {
    "batch_duration": 600.0,
    "max_duration": None,
    "min_duration": None,
    "num_workers": 1,
    "default_context": "Transcribe the audio.",
}
#: The figures of every peer, in table order (medians over the repeats; ratios from the medians).
FIGURES = (
    "audio_s_per_s",
    "examples_per_s",
    "ratio_to_floor",
    "ratio_to_lhotse",
    "padding_pct",
    "first_batch_s",
    "peak_rss_mb",
)
_HEADERS = (
    "audio s/s",
    "examples/s",
    "ratio to floor",
    "ratio to lhotse",
    "padding %",
    "first batch s",
    "peak RSS MB",
)
#: Batches after the first that a run must time, per DataLoader worker (and at least this many
#: without workers), for its steady-state figures to mean something: while the clock waits for
#: the first batch every worker is already decoding its own first batch, so up to one batch per
#: worker arrives almost free afterwards; with 10 timed batches per worker that head start moves
#: the rate by about 10% at most, and 10 batches average out one slow batch.
MIN_TIMED_BATCHES = 10
_DIGITS = {"audio_s_per_s": 0, "examples_per_s": 1, "padding_pct": 1, "first_batch_s": 3, "peak_rss_mb": 0}


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


# ------------------------------------------------------------------------------- the input


def _prefixed(overrides: Sequence[str], prefix: str) -> list[str]:
    return [o if o.startswith(("model.", f"{prefix}.")) else f"{prefix}.{o}" for o in overrides]


def load_dataset(
    source: str | Path, overrides: Sequence[str] = (), section: str = "train_ds"
) -> tuple[DatasetConfig, str | None]:
    """The dataset config ``bench`` measures, and the config's tokenizer path (if it names one).

    ``source`` is a YAML config, a manifest, or a folder of manifests / a tarred dataset.
    """
    path = Path(source)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        whole = load_config(path, overrides)
        from omegaconf import OmegaConf

        tok = OmegaConf.select(whole, "model.tokenizer.model", default=None)
        return dataset_config(whole, section), (str(tok) if tok else None)
    manifests, tarred = resolve_manifests([str(path)])
    values: dict[str, Any] = {**MANIFEST_DEFAULTS, "manifest_filepath": manifests}
    if tarred:
        if importlib.util.find_spec("speechdata.shards.read") is None:
            raise SpeechDataError(
                f"{path}: reading tarred datasets needs speechdata.shards.read (not available)"
            )
        from speechdata.shards.read import tarred_dataset_folders

        specs = []
        for folder in tarred_dataset_folders(path):  # one dataset, or its bucket* datasets
            tars = sorted(folder.glob("audio_*.tar"))
            if not tars:
                raise SpeechDataError(f"{folder}: tarred_audio_manifest.json but no audio_*.tar beside it")
            specs.append(str(folder / f"audio__OP_0..{len(tars) - 1}_CL_.tar"))
        values.update(
            is_tarred=True, tarred_audio_filepaths=specs[0] if len(specs) == 1 else [[s] for s in specs]
        )
    whole = load_config({"model": {section: values}}, _prefixed(overrides, f"model.{section}"))
    return dataset_config(whole, section), None


def dataset_index(cfg: DatasetConfig, tokenizer: str | Path | None = None) -> Index:
    """The Index of ``cfg``'s manifests: with the loader's key settings when ``tokenizer`` is given
    (so the loader finds it cached), else with lenient ones (no context required, bad lines
    skipped), which is enough to read the text for a tokenizer."""
    if tokenizer is None:
        keys = ManifestKeys(cfg.answer_key, cfg.context_key, cfg.default_context, cfg.is_tarred)
        return load_index(cfg.manifests, keys, on_error="skip", cache_dir=cfg.cache_dir)
    builder = PromptBuilder(cfg, Tokenizer.load(tokenizer))
    return load_index(
        cfg.manifests, manifest_keys(cfg, builder), on_error=cfg.on_error, cache_dir=cfg.cache_dir
    )


def train_default_tokenizer(index: Index, cfg: DatasetConfig, out_dir: str | Path) -> str:
    """A small SentencePiece model (no byte fallback) on the manifests' text; returns its path."""
    from speechdata.text.tokenizer import train_tokenizer
    from speechdata.text.train_cli import manifest_texts

    symbols = [s for s in (cfg.audio_locator, cfg.end_string) if s]
    texts = list(manifest_texts(index, progress=False))
    if cfg.default_context:
        texts.append(cfg.default_context)
    train_tokenizer(texts, out_dir, 1024, user_symbols=symbols, byte_fallback=False)
    return str(Path(out_dir) / "tokenizer.model")


def corpus_clips(index: Index, cfg: DatasetConfig) -> list[Clip]:
    """Every clip span of the examples the loader keeps (filters applied), in manifest order."""
    keep = filter_mask(index, cfg, DropCounter())
    infos: dict[str, sf._SoundFileInfo] = {}
    clips: list[Clip] = []
    for n, i in enumerate(np.flatnonzero(keep)):
        rec = index.record(int(i))
        for k, (p, off, dur) in enumerate(zip(rec.audio, rec.offset, rec.duration, strict=True)):
            info = infos.get(p)
            if info is None:
                info = infos[p] = sf.info(p)
            sr, total = int(info.samplerate), int(info.frames)
            start = round(off * sr)
            frames = max(0, min(round(dur * sr), total - start))
            clips.append(
                Clip(p, start, frames, sr, int(info.channels), total, n, k, rec.answer, str(info.format))
            )
    return clips


def small_corpus_warning(
    index: Index, cfg: DatasetConfig, *, epochs: int = 1, max_batches: int | None = None
) -> str | None:
    """A one-line warning when a run would time fewer than ``MIN_TIMED_BATCHES`` batches per
    worker (at least ``MIN_TIMED_BATCHES``) after its first, else ``None``.

    The batches per run are epoch 0's plan for one rank (filters applied) times ``epochs``,
    capped by ``max_batches``. A corpus with nothing kept is left to the loader's own error.
    """
    keep = filter_mask(index, cfg, DropCounter())
    if not keep.any():
        return None
    per_epoch = len(plan_epoch(index, keep, cfg, epoch=0))
    per_run = per_epoch * epochs if max_batches is None else min(per_epoch * epochs, max_batches)
    need = MIN_TIMED_BATCHES * max(1, cfg.num_workers)
    timed = max(0, per_run - 1)
    if timed >= need:
        return None
    seconds = float(index.duration[keep].sum())
    capped = max_batches is not None and max_batches < per_epoch * epochs
    fix = "raise --max-batches" if capped else "give more data or --epochs, or a smaller --batch-duration"
    return (
        f"the corpus is too small to measure: a run times {timed} batch(es) after the first "
        f"({int(keep.sum())} examples, {seconds:.0f} s of audio, {per_epoch} batch(es) per epoch, "
        f"{epochs} epoch(s)), and steady-state figures need at least {need} "
        f"({MIN_TIMED_BATCHES} per worker: each worker decodes its first batch while the clock waits "
        f"for the first one); {fix}"
    )


def _warm_page_cache(paths: Sequence[str]) -> None:
    for p in dict.fromkeys(paths):
        with open(p, "rb") as f:
            while f.read(1 << 22):
                pass


def corpus_summary(clips: Sequence[Clip]) -> dict[str, Any]:
    """Examples, clips, hours, formats and sample rates of a clip list."""
    seconds = [c.seconds for c in clips]
    return {
        "examples": len({c.example for c in clips}),
        "audios": len(clips),
        "hours": sum(seconds) / 3600.0,
        "mean_clip_s": float(np.mean(seconds)) if seconds else 0.0,
        "multi_audio_examples": len({c.example for c in clips if c.clip > 0}),
        "formats": dict(Counter(c.format for c in clips)),
        "sample_rates": dict(Counter(str(c.sample_rate) for c in clips)),
    }


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


# ------------------------------------------------------------------------------- the runs


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(job: Job, workdir: Path, tag: str) -> dict[str, Any]:
    """Run one job in a fresh Python process; returns its result dict (``error`` if it died)."""
    job_file, out_file = workdir / f"{tag}.job.json", workdir / f"{tag}.out.json"
    job.save(job_file)
    proc = subprocess.run(
        [sys.executable, "-m", "speechdata.bench_peers", str(job_file), str(out_file)],
        env=_child_env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not out_file.is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"process exited with {proc.returncode}: {tail}"}
    return dict(json.loads(out_file.read_text()))


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else None


def summarize(peers: dict[str, PeerResult]) -> None:
    """Fill each peer's median figures and its ratios to the floor and to lhotse (from the medians)."""
    for peer in peers.values():
        if peer.skipped is not None:
            continue
        runs = peer.runs
        pad = _median([r["padding_fraction"] for r in runs])
        peer.figures = {
            "audio_s_per_s": _median([r["audio_s_per_s"] for r in runs]),
            "examples_per_s": _median([r["examples_per_s"] for r in runs]),
            "padding_pct": None if pad is None else 100.0 * pad,
            "first_batch_s": _median([r["first_batch_s"] for r in runs]),
            "peak_rss_mb": _median([r["peak_rss_mb"] for r in runs]),
        }
    for peer in peers.values():
        if peer.skipped is not None:
            continue
        for ref, key in (("floor", "ratio_to_floor"), ("lhotse", "ratio_to_lhotse")):
            other = peers.get(ref)
            base = other.figures.get("audio_s_per_s") if other is not None and other.skipped is None else None
            mine = peer.figures["audio_s_per_s"]
            peer.figures[key] = mine / base if base and mine is not None else None


def run_benchmark(
    cfg: DatasetConfig,
    tokenizer: str | Path | None = None,
    *,
    compare: bool = False,
    repeats: int = 3,
    epochs: int = 1,
    device: str = "cpu",
    max_batches: int | None = None,
    command: str = "",
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Measure speechdata's loader on ``cfg`` (and, with ``compare``, its peers) in fresh processes.

    ``tokenizer`` defaults to a small model trained on the manifests' text. ``max_batches`` stops
    every run after that many batches. ``log`` receives one line per run.
    """
    if repeats < 1 or epochs < 1:
        raise ConfigError("--repeats and --epochs must be at least 1")
    if max_batches is not None and max_batches < 1:
        raise ConfigError("--max-batches must be at least 1")
    if cfg.is_tarred and compare:
        raise ConfigError(
            "--compare needs plain audio files; a tarred dataset has none (bench it without --compare)"
        )
    with tempfile.TemporaryDirectory(prefix="speechdata-bench-") as tmp:
        work = Path(tmp)
        tok = str(tokenizer) if tokenizer else train_default_tokenizer(dataset_index(cfg), cfg, work / "tok")
        index = dataset_index(cfg, tok)  # the loader's keys: its runs find the index cached
        small = small_corpus_warning(index, cfg, epochs=epochs, max_batches=max_batches)
        if small is not None:
            logging.getLogger("speechdata").warning("bench: %s", small)
        clips = [] if cfg.is_tarred else corpus_clips(index, cfg)
        _warm_page_cache([c.path for c in clips])
        save_clips(clips, work / "clips.json")
        mean_clip = float(np.mean([c.seconds for c in clips])) if clips else 0.0
        wds_batch = (
            max(1, math.floor(cfg.batch_duration / mean_clip))
            if cfg.batch_duration and mean_clip
            else cfg.micro_batch_size
        )
        base = Job(
            peer="speechdata",
            clips_file=str(work / "clips.json"),
            workers=cfg.num_workers,
            epochs=epochs,
            batch_duration=cfg.batch_duration,
            batch_size=cfg.micro_batch_size,
            quadratic_duration=cfg.quadratic_duration,
            seed=cfg.seed,
            sample_rate=cfg.sample_rate,
            device=device,
            max_batches=max_batches,
            dataset={**cfg.to_dict(), "manifest_filepath": cfg.manifests},
            tokenizer=tok,
            wds_batch_size=wds_batch,
        )
        names = PEERS if compare else ("speechdata",)
        if compare:
            base.wds_urls = write_wds_shards(clips, work / "wds", max(1, cfg.num_workers), cfg.seed)
        peers = {n: PeerResult(n, LABELS[n]) for n in names}
        for r in range(repeats):
            for name in names:
                peer = peers[name]
                if peer.skipped is not None:
                    continue
                out = run_child(dataclasses.replace(base, peer=name), work, f"{name}-{r}")
                if "figures" in out:
                    peer.runs.append(out["figures"])
                    peer.drops = out["figures"].get("drops", {})
                    if log is not None:
                        f = out["figures"]
                        first = (
                            "" if f["first_batch_s"] is None else f", first batch {f['first_batch_s']:.3f} s"
                        )
                        log(f"run {r + 1}/{repeats} {peer.label}: {f['audio_s_per_s']:,.0f} audio s/s{first}")
                elif name == "speechdata":
                    raise SpeechDataError(f"speechdata loader: {out.get('error') or out.get('skipped')}")
                else:
                    peer.skipped = out.get("skipped") or f"failed: {out.get('error')}"
                    if log is not None:
                        log(f"{peer.label}: skipped ({peer.skipped})")
    summarize(peers)
    settings = {
        "workers": cfg.num_workers,
        "batch_duration": cfg.batch_duration,
        "batch_size": cfg.micro_batch_size,
        "webdataset_batch_size": wds_batch,
        "lhotse_buckets": min(LHOTSE_BUCKETS, len(clips)),
        "epochs": epochs,
        "repeats": repeats,
        "device": device,
        "max_batches": max_batches,
        "seed": cfg.seed,
        "sample_rate": cfg.sample_rate,
        "manifests": cfg.manifests,
        "throughput": "steady state: audio after the first batch / time from first to last batch",
    }
    corpus = corpus_summary(clips)
    if not clips:  # tarred: no clip spans, figures from the index
        corpus.update(
            examples=len(index), audios=int(index.num_audios.sum()), hours=float(index.duration.sum()) / 3600
        )
    return BenchResult(command, machine_info(), settings, corpus, peers, [small] if small else [])


# ------------------------------------------------------------------------------- the outputs


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``speechdata bench``."""
    p.add_argument(
        "source", metavar="CONFIG|MANIFEST|DIR", help="a YAML config, a manifest, or a dataset folder"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--section", default="train_ds", help="dataset section of a config (default: train_ds)")
    p.add_argument("--tokenizer", help="SentencePiece model (default: one trained on the manifests' text)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: the config's; 1 for a manifest)")
    p.add_argument("--batch-duration", type=float, help="seconds of audio per batch (padding-aware)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="runs per loader; figures are medians (default 3)")
    p.add_argument("--max-batches", type=int, help="stop each run after this many batches")
    p.add_argument("--compare", action="store_true", help="also run the decode floor, lhotse and webdataset")
    p.add_argument("--device", default="cpu", help="where batches are padded (default cpu)")
    p.add_argument("--json", help="write every figure to this JSON file")
    p.add_argument("--md", help="write the markdown table to this file")
    p.add_argument("--png", help="write a bar chart to this PNG")


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata bench``."""
    cfg, config_tok = load_dataset(args.source, args.overrides, args.section)
    changes: dict[str, Any] = {}
    if args.workers is not None:
        if args.workers < 0:
            raise ConfigError("--workers must be >= 0")
        changes["num_workers"] = args.workers
    if args.batch_duration is not None:
        if args.batch_duration <= 0:
            raise ConfigError("--batch-duration must be positive")
        changes["batch_duration"] = args.batch_duration
    cfg = dataclasses.replace(cfg, **changes)
    command = "speechdata bench " + " ".join(shlex.quote(a) for a in _argv(args))
    result = run_benchmark(
        cfg,
        args.tokenizer or config_tok,
        compare=args.compare,
        repeats=args.repeats,
        epochs=args.epochs,
        device=args.device,
        max_batches=args.max_batches,
        command=command,
        log=lambda line: print(line, file=sys.stderr),
    )
    table = result.markdown()
    print(table)
    if result.peers["speechdata"].drops:
        print("dropped: " + ", ".join(f"{k}={v}" for k, v in result.peers["speechdata"].drops.items()))
    if args.md:
        Path(args.md).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if args.png:
        plot(result, args.png)
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces this run (normalised from the parsed options)."""
    out = [args.source, *args.overrides]
    for name in (
        "section",
        "tokenizer",
        "workers",
        "batch_duration",
        "epochs",
        "repeats",
        "max_batches",
        "device",
    ):
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    if args.compare:
        out.append("--compare")
    for name in ("json", "md", "png"):
        if getattr(args, name):
            out += [f"--{name}", getattr(args, name)]
    return out
