"""The loaders ``speechdata bench`` times, each run alone in a fresh process.

One run is one :class:`Job` (a JSON file) executed by ``python -m speechdata.bench.peers JOB OUT``:
the child imports what its peer needs, then starts the clock, runs ``epochs`` epochs, and writes
:class:`RunFigures` to ``OUT``. A fresh process per run keeps the peers from sharing imports, page
tables or a peak RSS: the figure is ``ru_maxrss`` of the child plus the largest of its own
(DataLoader worker) children, read after the workers have been joined.

The peers, on the same clip spans (:class:`~speechdata.bench.clips.Clip`) and the same batch
budget:

* ``speechdata``: :func:`speechdata.loader.build_dataloader` on the dataset config.
* ``floor``: soundfile decoding of exactly the clip spans (seek + read), one process, no batching;
  a tarred dataset's clips are decoded from their members' bytes, read from the tar by offset
  (``os.pread``).
* ``decoder`` (only when asked for by name): the same spans decoded by speechdata's own decoder
  (:func:`speechdata.audio.load_audio`), one process, no batching; the loader's time beyond it is
  what batching, text and the hand-over cost.
* ``lhotse``: an in-memory CutSet (``Recording`` + ``MonoCut`` per clip), lhotse's
  ``DynamicBucketingSampler`` (30 buckets, shuffled, seeded) and ``collate_audio`` in a
  ``torch.utils.data.DataLoader`` with the same workers. lhotse has no reader for NeMo tarred
  datasets: on one it is skipped (:data:`NO_TARRED`).
* ``webdataset``: plain files are written once into webdataset-style tars
  (:func:`~speechdata.bench.clips.write_wds_shards`); a tarred dataset's own tars are read as they
  are (one member per audio file, the key its name without extension, no JSON member). Either way
  ``webdataset.WebDataset`` reads them front to back, soundfile decodes, and fixed-size batches
  are padded into a tensor, through a DataLoader with the same workers.

Multi-audio examples: every clip of every example is decoded by every peer. The peers other than
speechdata treat each clip as an item; an example counts as delivered when its first clip is.

Throughput is measured in steady state: the audio delivered after the first batch over the time
from the first batch to the last (the first batch's latency is its own figure); a run of a single
batch, and the floor, use the whole run.

Example::

    $ python -m speechdata.bench.peers job.json result.json
"""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from speechdata.bench.clips import Clip, TarReader, decode_span, load_clips, to_mono, wds_name
from speechdata.errors import SpeechDataError

#: Peer names in report order (``--compare`` runs all but :data:`ON_REQUEST`).
PEERS = ("speechdata", "floor", "decoder", "lhotse", "webdataset")
#: Peers run only when asked for by name (``run_benchmark(peers=...)``).
ON_REQUEST = ("decoder",)
#: How the report names each peer.
LABELS = {
    "speechdata": "speechdata",
    "floor": "decode floor",
    "decoder": "speechdata decoder",
    "lhotse": "lhotse",
    "webdataset": "webdataset",
}
#: Buckets of lhotse's DynamicBucketingSampler (fewer when the corpus has fewer clips).
LHOTSE_BUCKETS = 30
#: Why a peer is skipped on a tarred dataset (the peers not named here read one).
NO_TARRED = {
    "lhotse": "lhotse has no reader for NeMo tarred datasets (CutSet.from_webdataset and "
    "CutSet.from_shar read only lhotse's own formats)"
}


@dataclass
class Job:
    """One timed run of one peer (written as JSON for the child process).

    ``batch_duration`` is the padding-aware batch budget in seconds; when it is ``None``, batches
    hold ``batch_size`` items. ``wds_batch_size`` is the webdataset peer's fixed batch size,
    ``dataset`` the speechdata config (``DatasetConfig.to_dict()``), ``max_batches`` stops a run
    early (the floor then decodes as much audio as that many full batches hold). ``tarred``: the
    clips are members of a tarred dataset's tars, which are ``wds_urls``.
    """

    peer: str
    clips_file: str
    workers: int = 1
    epochs: int = 1
    batch_duration: float | None = 600.0
    batch_size: int = 1
    quadratic_duration: float | None = None
    seed: int = 0
    sample_rate: int = 16000
    device: str = "cpu"
    max_batches: int | None = None
    dataset: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = ""
    wds_urls: list[str] = field(default_factory=list)
    wds_batch_size: int = 1
    tarred: bool = False

    def save(self, path: str | Path) -> None:
        """Write this job as JSON."""
        Path(path).write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> Job:
        """Read a job written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class RunFigures:
    """What one run measured. Rates are per wall-clock second; ``padding_fraction`` is
    ``1 - valid samples / (A × T)`` summed over batches (``None`` for the unbatched floor)."""

    audio_seconds: float
    examples: int
    audios: int
    batches: int
    wall_s: float
    first_batch_s: float | None
    audio_s_per_s: float
    examples_per_s: float
    padding_fraction: float | None
    peak_rss_mb: float
    drops: dict[str, int] = field(default_factory=dict)
    #: CPU seconds (user + system) of the process from the clock's start, plus its DataLoader
    #: workers', over the whole run; unlike the wall clock it hardly moves when other work shares
    #: the machine
    cpu_s: float | None = None
    #: the part of ``cpu_s`` spent in child processes (the DataLoader workers)
    child_cpu_s: float | None = None
    #: ``1 - tokens / (B × L)`` summed over batches, for a loader that delivers token rows
    #: (speechdata); ``None`` for the audio-only peers
    token_padding_fraction: float | None = None


class Meter:
    """Counts what a loader delivers, batch by batch, against a clock started by :meth:`start`.

    ``clock`` returns seconds (``time.perf_counter`` unless a test injects another); it is read
    once by :meth:`start` and once per :meth:`batch`.
    """

    def __init__(self, device: str = "cpu", clock: Callable[[], float] = time.perf_counter) -> None:
        self.cuda = device.startswith("cuda")
        self.clock = clock
        self.t0 = 0.0
        self.cpu0 = self.child_cpu0 = 0.0
        self.times: list[float] = []
        self.seconds: list[float] = []
        self.examples: list[int] = []
        self.audios = 0
        self.valid = 0
        self.cells = 0
        self.token_valid = 0
        self.token_cells = 0

    def start(self) -> None:
        """Start the clock (the run's time zero)."""
        self.cpu0, self.child_cpu0 = cpu_seconds(), cpu_seconds(children_only=True)
        self.t0 = self.clock()

    def batch(self, seconds: float, examples: int, audios: int, valid: int = 0, cells: int = 0) -> None:
        """Record one batch in hand: its audio seconds, examples, clips and samples (valid / A × T)."""
        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(self.clock())
        self.seconds.append(float(seconds))
        self.examples.append(int(examples))
        self.audios += int(audios)
        self.valid += int(valid)
        self.cells += int(cells)

    def tensor_batch(
        self, lengths: torch.Tensor, padded: torch.Tensor, sample_rate: int, examples: int
    ) -> None:
        """Record a padded ``[A, T]`` batch with its valid ``lengths``."""
        valid = int(lengths.sum())
        self.batch(valid / sample_rate, examples, int(lengths.numel()), valid, int(padded.numel()))

    def token_rows(self, lengths: torch.Tensor, rows: torch.Tensor) -> None:
        """Record a batch's padded ``[B, L]`` token rows with their ``lengths`` (after
        :meth:`batch` or :meth:`tensor_batch` of the same batch)."""
        self.token_valid += int(lengths.sum())
        self.token_cells += int(rows.numel())

    def figures(self, *, batched: bool = True, drops: dict[str, int] | None = None) -> RunFigures:
        """The run's figures; call after the loader's workers are gone (peak RSS includes them).

        Steady-state rates: what arrived after the first batch over the time from the first batch
        to the last, ``(sum - first) / (t_last - t_first)``. ``batched=False`` (the floor: one
        "batch" per clip), a single batch, or batches all at one instant use the whole run,
        ``sum / (t_last - t0)``; only ``batched`` runs report a first batch."""
        if not self.times:
            raise RuntimeError("the loader delivered no batch")
        total, n_ex = sum(self.seconds), sum(self.examples)
        wall = self.times[-1] - self.t0
        span = self.times[-1] - self.times[0]
        if batched and len(self.times) > 1 and span > 0:
            rate_a, rate_e = (total - self.seconds[0]) / span, (n_ex - self.examples[0]) / span
        else:
            rate_a, rate_e = total / wall, n_ex / wall
        return RunFigures(
            audio_seconds=total,
            examples=n_ex,
            audios=self.audios,
            batches=len(self.times),
            wall_s=wall,
            first_batch_s=self.times[0] - self.t0 if batched else None,
            audio_s_per_s=rate_a,
            examples_per_s=rate_e,
            padding_fraction=(1.0 - self.valid / self.cells) if self.cells else None,
            peak_rss_mb=peak_rss_mb(),
            drops=dict(drops or {}),
            cpu_s=cpu_seconds() - self.cpu0,
            child_cpu_s=cpu_seconds(children_only=True) - self.child_cpu0,
            token_padding_fraction=(1.0 - self.token_valid / self.token_cells) if self.token_cells else None,
        )


def cpu_seconds(*, children_only: bool = False) -> float:
    """CPU seconds (user + system) used so far by this process and its finished, joined children
    (only the children's with ``children_only``)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = children.ru_utime + children.ru_stime
    if not children_only:
        own = resource.getrusage(resource.RUSAGE_SELF)
        total += own.ru_utime + own.ru_stime
    return total


def peak_rss_mb() -> float:
    """Peak resident memory of this process plus its largest finished child, in MiB (Linux KiB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024.0


# ------------------------------------------------------------------------------------ peers


def _budget(job: Job, clips: Sequence[Clip]) -> float | None:
    """Seconds of audio an unbatched run decodes under ``max_batches`` (as much as that many full
    batches hold), or None for whole epochs."""
    if job.max_batches is None:
        return None
    per_batch = (
        job.batch_duration
        if job.batch_duration is not None
        else job.batch_size * np.mean([c.seconds for c in clips])
    )
    return job.max_batches * float(per_batch)


def _clip_by_clip(job: Job, meter: Meter, frames: Callable[[Clip, TarReader], int]) -> RunFigures:
    """Every clip span decoded by ``frames(clip, members)`` (returns the frames decoded), in
    manifest order, one process, no batching; stops at the job's batch budget."""
    clips = load_clips(job.clips_file)
    budget = _budget(job, clips)
    members = TarReader()
    meter.start()
    done = 0.0
    try:
        for _ in range(job.epochs):
            for c in clips:
                seconds = frames(c, members) / c.sample_rate
                done += seconds
                meter.batch(seconds, int(c.clip == 0), 1)
                if budget is not None and done >= budget:
                    return meter.figures(batched=False)
    finally:
        members.close()
    return meter.figures(batched=False)


def run_floor(job: Job, meter: Meter) -> RunFigures:
    """Decode every clip span with soundfile (seek + read), in manifest order, one process; a tar
    member's bytes are read by offset and decoded from memory."""

    def frames(c: Clip, members: TarReader) -> int:
        audio = io.BytesIO(members.clip(c)) if c.member else c.path
        return int(decode_span(audio, c.start, c.frames).shape[0])

    return _clip_by_clip(job, meter, frames)


def run_decoder(job: Job, meter: Meter) -> RunFigures:
    """The floor's clip spans decoded by speechdata's own decoder (:func:`speechdata.audio.load_audio`,
    at the file's rate), one process, no batching: the decode the loader's workers do, without
    the rest of the loader."""
    from speechdata.audio import load_audio

    def frames(c: Clip, members: TarReader) -> int:
        audio = members.clip(c) if c.member else c.path
        return int(
            load_audio(audio, offset=c.start / c.sample_rate, duration=c.frames / c.sample_rate).shape[0]
        )

    return _clip_by_clip(job, meter, frames)


def run_speechdata(job: Job, meter: Meter) -> RunFigures:
    """speechdata's loader, from ``build_dataloader`` to the last padded batch."""
    from speechdata.config import make_dataset_config
    from speechdata.loader import build_dataloader

    cfg = make_dataset_config(job.dataset)
    meter.start()
    loader = build_dataloader(cfg, job.tokenizer, device=job.device)
    n = 0
    for _ in range(job.epochs):
        it = iter(loader)
        for batch in it:
            meter.tensor_batch(
                batch["audio_signal_length"], batch["audio_signal"], cfg.sample_rate, len(batch["num_audios"])
            )
            meter.token_rows(batch["tokens_length"], batch["tokens"])
            n += 1
            if job.max_batches is not None and n >= job.max_batches:
                break
        it.close()
        if job.max_batches is not None and n >= job.max_batches:
            break
    drops = loader.report()
    del loader, it
    gc.collect()
    return meter.figures(drops=drops)


class LhotseAudio(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """lhotse-style dataset: a CutSet in, ``(audio [B, T], lengths [B], first clips)`` out."""

    def __getitem__(self, cuts: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        from lhotse.dataset.collation import collate_audio

        audio, lengths = collate_audio(cuts)
        return audio, lengths, sum(1 for c in cuts if c.id.endswith("-0"))


def _batches(loader: Iterable[Any], job: Job, meter: Meter, epoch_hook: Any = None) -> None:
    n = 0
    for epoch in range(job.epochs):
        if epoch_hook is not None:
            epoch_hook(epoch)
        for audio, lengths, first_clips in loader:
            audio = audio.to(job.device)
            meter.tensor_batch(lengths, audio, job.sample_rate, first_clips)
            n += 1
            if job.max_batches is not None and n >= job.max_batches:
                return


def _loader(dataset: Any, job: Job, **kwargs: Any) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=job.workers, **kwargs)


def run_lhotse(job: Job, meter: Meter) -> RunFigures:
    """lhotse: CutSet in memory, DynamicBucketingSampler, collate_audio in DataLoader workers."""
    from lhotse import AudioSource, CutSet, MonoCut, Recording
    from lhotse.dataset import DynamicBucketingSampler

    clips = load_clips(job.clips_file)
    meter.start()
    recordings: dict[str, Recording] = {}
    cuts = []
    for c in clips:
        rec = recordings.get(c.path)
        if rec is None:
            rec = recordings[c.path] = Recording(
                id=f"rec{len(recordings)}",
                sources=[AudioSource(type="file", channels=list(range(c.channels)), source=c.path)],
                sampling_rate=c.sample_rate,
                num_samples=c.file_frames,
                duration=c.file_frames / c.sample_rate,
            )
        cut = MonoCut(
            id=f"{c.example}-{c.clip}",
            start=c.start / c.sample_rate,
            duration=c.seconds,
            channel=0,
            recording=rec,
        )
        cuts.append(cut.resample(job.sample_rate) if c.sample_rate != job.sample_rate else cut)
    budget: dict[str, Any] = (
        {"max_duration": job.batch_duration, "quadratic_duration": job.quadratic_duration}
        if job.batch_duration is not None
        else {"max_cuts": job.batch_size}
    )
    # lhotse refuses more buckets than cuts (tiny corpora)
    buckets = min(LHOTSE_BUCKETS, len(cuts))
    sampler = DynamicBucketingSampler(
        CutSet.from_cuts(cuts), num_buckets=buckets, shuffle=True, seed=job.seed, **budget
    )
    loader = _loader(LhotseAudio(), job, sampler=sampler)
    _batches(loader, job, meter, sampler.set_epoch)
    del loader
    gc.collect()
    return meter.figures()


#: One item of the webdataset peer: a clip's mono audio, its sample rate, and whether it is its
#: example's first clip.
WdsItem = tuple[np.ndarray, int, bool]


def wds_audio(key: str, data: bytes) -> np.ndarray | None:
    """webdataset decode handler: ``.flac``/``.wav`` bytes to float32 mono (other keys: ``None``)."""
    if not key.endswith((".flac", ".wav")):
        return None
    audio, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return to_mono(audio)


def wds_json_item(sample: tuple[np.ndarray, dict[str, Any]]) -> WdsItem:
    """A decoded ``(audio, json)`` sample of :func:`~speechdata.bench.clips.write_wds_shards`'s
    tars as a :data:`WdsItem`."""
    audio, meta = sample
    return audio, int(meta["sample_rate"]), meta["clip"] == 0


class TarMembers:
    """webdataset stage on a tarred dataset's own tars: each member of a sample (``__url__``,
    ``__key__``, one entry per extension) becomes the clips that use it, each span decoded from the
    member's bytes (seek + read), in tar order. Members no clip uses are read and passed over."""

    def __init__(self, clips: Sequence[Clip]) -> None:
        self.uses: dict[tuple[str, str, str], list[Clip]] = {}
        for c in clips:
            name = wds_name(c.member)
            if name is not None:
                self.uses.setdefault((c.path, *name), []).append(c)

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[WdsItem]:
        for sample in samples:
            url, key = sample["__url__"], sample["__key__"]
            for ext, data in sample.items():
                for c in self.uses.get((url, key, ext), ()):
                    audio = decode_span(io.BytesIO(data), c.start, c.frames)
                    yield to_mono(audio), c.sample_rate, c.clip == 0


class WdsCollate:
    """Pads a list of :data:`WdsItem` into ``(audio [B, T], lengths [B], first clips)``, resampling
    (soxr) clips whose rate differs from ``sample_rate``."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def __call__(self, items: list[WdsItem]) -> tuple[torch.Tensor, torch.Tensor, int]:
        import soxr

        arrays = [
            audio if sr == self.sample_rate else soxr.resample(audio, sr, self.sample_rate)
            for audio, sr, _ in items
        ]
        lengths = torch.tensor([len(a) for a in arrays], dtype=torch.int64)
        out = torch.zeros(len(arrays), int(lengths.max()), dtype=torch.float32)
        for row, a in enumerate(arrays):
            out[row, : len(a)] = torch.from_numpy(a)
        return out, lengths, sum(1 for _, _, first in items if first)


def run_webdataset(job: Job, meter: Meter) -> RunFigures:
    """webdataset + soundfile: tars read front to back, decoded, fixed-size padded batches in
    DataLoader workers (a tarred dataset: its own tars, through :class:`TarMembers`)."""
    import webdataset as wds

    members = TarMembers(load_clips(job.clips_file)) if job.tarred else None
    meter.start()
    dataset = wds.WebDataset(job.wds_urls, shardshuffle=False, empty_check=False)
    if members is not None:
        dataset = dataset.compose(members)
    else:
        dataset = dataset.decode(wds_audio).to_tuple("flac;wav", "json").map(wds_json_item)
    dataset = dataset.batched(job.wds_batch_size, collation_fn=WdsCollate(job.sample_rate), partial=True)
    loader = _loader(dataset, job)
    _batches(loader, job, meter)
    del loader
    gc.collect()
    return meter.figures()


RUNNERS = {
    "speechdata": run_speechdata,
    "floor": run_floor,
    "decoder": run_decoder,
    "lhotse": run_lhotse,
    "webdataset": run_webdataset,
}
#: Modules each peer needs; imported before the clock starts (a failure marks the peer skipped).
IMPORTS = {
    "speechdata": ("speechdata.loader",),
    "floor": (),
    "decoder": ("speechdata.audio",),
    "lhotse": ("lhotse", "lhotse.dataset", "lhotse.dataset.collation"),
    "webdataset": ("webdataset", "soxr"),
}


def run_job(job: Job) -> dict[str, Any]:
    """Run one job in this process; returns ``{"figures": ...}``, ``{"skipped": why}`` or ``{"error": why}``."""
    import importlib

    if job.tarred and job.peer in NO_TARRED:
        return {"skipped": NO_TARRED[job.peer]}
    for module in IMPORTS[job.peer]:
        try:
            importlib.import_module(module)
        except Exception as e:
            return {"skipped": f"cannot import {module}: {type(e).__name__}: {e}".splitlines()[0]}
    try:
        figures = RUNNERS[job.peer](job, Meter(job.device))
    except SpeechDataError as e:
        return {"error": str(e)}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    return {"figures": dataclasses.asdict(figures)}


def main(argv: Sequence[str]) -> int:
    """``python -m speechdata.bench.peers JOB.json OUT.json``."""
    if len(argv) != 2:
        print("usage: python -m speechdata.bench.peers JOB.json OUT.json", file=sys.stderr)
        return 2
    result = run_job(Job.load(argv[0]))
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
