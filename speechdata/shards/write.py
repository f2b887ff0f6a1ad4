"""``speechdata shard``: write manifests into NeMo-compatible tarred shards.

Layout of the output folder (NeMo's, plus two keys per entry)::

    audio_0.tar ... audio_{N-1}.tar       the audio members
    sharded_manifests/manifest_{i}.json   the entries of shard i
    tarred_audio_manifest.json            every entry, shard by shard (written last but one)
    metadata.yaml                         settings, counts, hours, bytes, drops (written last)
    .speechdata/audio_{i}.done            per-shard completion markers (for resuming)

With ``--buckets K`` (or ``--bucket-bins``) each bucket is such a folder, ``bucket1`` (shortest)
to ``bucketK``, next to a top-level ``metadata.yaml``.

Every entry keeps its manifest keys; ``audio_filepath`` becomes the member name (a list for
multi-audio entries), and ``shard_id``, ``tar_offset`` (byte offset of the member's data in its
tar) and ``tar_size`` (its length) are added, so a reader can ``pread`` the member without parsing
the tar. Entries sharing a source file are kept together in one shard and the file is stored once;
shard sizes differ by at most one entry (nothing is dropped but by the duration filters, which are
counted). Each shard is written to ``audio_i.tar.tmp``, fsynced and renamed, then its manifest and
marker are written: a rerun after a crash skips finished shards and produces the same bytes.

Example::

    $ speechdata shard train.jsonl --num-shards 8 --codec flac --shuffle --seed 1 --workers 2
    speechdata shard: 12000 entries, 20.12 h in 8 shards (0 reused), 1.21 GB -> train_tarred; none dropped
"""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing
import os
import queue
import re
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from tqdm import tqdm

from speechdata.audio import audio_info
from speechdata.errors import ConfigError, DataError, DropCounter, handle
from speechdata.manifest import AUDIO_KEYS, ManifestKeys, load_index
from speechdata.shards.codec import CODECS, EXTENSIONS, encode_audio
from speechdata.shards.tarfmt import TarWriter, atomic_write_bytes, fsync_dir

HELP = "write manifests into NeMo-compatible tar shards"
#: Default shard size: about this many entries ...
DEFAULT_SHARD_ENTRIES = 1000
#: ... or this many bytes, whichever is reached first.
DEFAULT_SHARD_BYTES = 1_000_000_000
MARKER_DIR = ".speechdata"
_FORMAT_VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_STEM = 120


@dataclass
class ShardOptions:
    """Settings of one ``speechdata shard`` job (the CLI flags, same names)."""

    num_shards: int | None = None
    shard_size: int | None = None
    shuffle: bool = False
    seed: int = 0
    sort_in_shards: bool = False
    min_duration: float | None = None
    max_duration: float | None = None
    buckets: int | None = None
    bucket_bins: list[float] | None = None
    codec: str = "keep"
    sample_rate: int | None = None
    slice_with_offset: bool = False
    workers: int = 1
    on_error: str = "raise"
    progress: bool = True

    def check(self) -> None:
        """Raise :class:`ConfigError` for contradictory or out-of-range settings."""
        if self.num_shards is not None and self.shard_size is not None:
            raise ConfigError("--num-shards and --shard-size: give one of them, not both")
        for name in ("num_shards", "shard_size", "buckets", "sample_rate", "workers"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {v}")
        if self.buckets is not None and self.bucket_bins is not None:
            raise ConfigError("--buckets and --bucket-bins: give one of them, not both")
        if self.bucket_bins is not None:
            bins = list(self.bucket_bins)
            if not bins or any(b <= 0 for b in bins) or bins != sorted(set(bins)):
                raise ConfigError(f"--bucket-bins: need increasing positive durations, got {bins}")
        if self.codec not in CODECS:
            raise ConfigError(f"--codec: must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if self.sample_rate is not None and self.codec == "keep":
            raise ConfigError("--sample-rate needs a re-encoding --codec (flac, wav or opus), not keep")
        if (
            self.min_duration is not None
            and self.max_duration is not None
            and self.min_duration > self.max_duration
        ):
            raise ConfigError(
                f"--min-duration {self.min_duration} is larger than --max-duration {self.max_duration}"
            )
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"--on-error: must be raise or skip, got {self.on_error!r}")


@dataclass
class ShardReport:
    """What a job wrote: ``datasets`` are the NeMo dataset folders (one per bucket)."""

    out_dir: Path
    datasets: list[Path]
    entries: int = 0
    seconds: float = 0.0
    bytes: int = 0
    shards: int = 0
    reused: int = 0
    drops: DropCounter = field(default_factory=DropCounter)

    def summary(self) -> str:
        """The closing line printed by the CLI."""
        return (
            f"speechdata shard: {self.entries} entries, {self.seconds / 3600:.2f} h in {self.shards} shards "
            f"({self.reused} reused), {_human(self.bytes)} -> {self.out_dir}; {self.drops.summary()}"
        )


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


# ---------------------------------------------------------------------------------- planning


@dataclass
class _Entry:
    raw: dict[str, Any]
    sources: list[int]
    offset: list[float]
    duration: list[float]
    multi: bool
    where: str


@dataclass
class _Source:
    path: str
    name: str
    size: int
    mtime_ns: int
    span: tuple[float, float] | None  # (offset, duration) when the member is a slice


@dataclass
class ShardJob:
    """Everything one worker needs to write one shard (picklable)."""

    folder: str
    shard_id: int
    entries: list[_Entry]
    sources: dict[int, _Source]
    codec: str
    sample_rate: int | None
    slice_with_offset: bool
    digest: str = ""


def member_stem(path_as_given: str) -> str:
    """A safe member name stem for an audio path: folders joined by ``_``, dots and odd characters
    replaced by ``_`` (webdataset keys end at the first dot), no ``..`` or leading ``/``."""
    parts = [p for p in path_as_given.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    joined = "_".join(parts)
    stem = os.path.splitext(joined)[0] if "." in (parts[-1] if parts else "") else joined
    stem = _UNSAFE.sub("_", stem).lstrip("-") or "audio"
    return stem[-_MAX_STEM:].lstrip("-") or "audio"


def _extension(path: str, codec: str, sliced: bool, where: str) -> str:
    ext = re.sub(r"[^a-z0-9]", "", os.path.splitext(path)[1].lower())
    if codec != "keep":
        return EXTENSIONS[codec]
    if sliced:
        return ext if ext in ("wav", "flac") else "flac"
    if not ext:
        ext = re.sub(r"[^a-z0-9]", "", audio_info(path, where=where).format.lower()) or "bin"
    return ext


def _slice_codec(job: ShardJob, src: _Source) -> str | None:
    """The codec a member is re-encoded with, or None when the file's bytes are copied."""
    if job.codec != "keep":
        return job.codec
    if src.span is not None:
        return src.name.rsplit(".", 1)[1]
    return None


def _read_entries(
    manifests: Sequence[str | Path], opts: ShardOptions, drops: DropCounter
) -> tuple[list[_Entry], list[_Source]]:
    """Index the manifests, apply the duration filters, resolve and name the source files."""
    index = load_index([str(m) for m in manifests], ManifestKeys(), on_error=opts.on_error)
    drops.merge(index.drops)
    lo = opts.min_duration if opts.min_duration is not None else -math.inf
    hi = opts.max_duration if opts.max_duration is not None else math.inf
    entries: list[_Entry] = []
    sources: list[_Source] = []
    by_key: dict[tuple[str, float, float] | str, int] = {}
    stats: dict[str, os.stat_result] = {}
    taken: set[str] = set()
    for i in range(len(index)):
        clip_min, clip_max = float(index.min_clip[i]), float(index.max_clip[i])
        where = index.where(i)
        if clip_min < lo:
            drops.add("too_short_audio", f"{where}: clip of {clip_min:.3f} s < --min-duration {lo}")
            continue
        if clip_max > hi:
            drops.add("too_long_audio", f"{where}: clip of {clip_max:.3f} s > --max-duration {hi}")
            continue
        raw = orjson.loads(index.line(i))
        try:
            rec = index.record(i)
            given = next(raw[k] for k in AUDIO_KEYS if k in raw)
            given = given if isinstance(given, list) else [given]
            ids = []
            for path, rel, off, dur in zip(rec.audio, given, rec.offset, rec.duration, strict=True):
                real = os.path.realpath(path)
                span = (off, dur) if opts.slice_with_offset else None
                key = (real, off, dur) if span else real
                if key not in by_key:
                    st = stats.get(real)
                    if st is None:
                        try:
                            st = stats[real] = os.stat(real)
                        except OSError:
                            raise DataError("missing_audio", where, f"audio file not found: {path}") from None
                    stem = member_stem(rel)
                    if span:
                        stem = f"{stem}_{round(off * 1000)}_{round(dur * 1000)}"
                    name = _unique(stem, taken) + "." + _extension(real, opts.codec, span is not None, where)
                    by_key[key] = len(sources)
                    sources.append(_Source(real, name, st.st_size, st.st_mtime_ns, span))
                ids.append(by_key[key])
        except DataError as err:
            handle(err, opts.on_error, drops)
            continue
        entries.append(
            _Entry(raw, ids, rec.offset, rec.duration, isinstance(raw.get(_audio_key(raw)), list), where)
        )
    return entries, sources


def _audio_key(raw: dict[str, Any]) -> str:
    return next(k for k in AUDIO_KEYS if k in raw)


def _unique(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3``... : the first one not taken (case-insensitively)."""
    name, k = stem, 1
    while name.lower() in taken:
        k += 1
        name = f"{stem}_{k}"
    taken.add(name.lower())
    return name


def equal_duration_bins(durations: np.ndarray, k: int) -> list[float]:
    """``k - 1`` boundaries splitting ``durations`` into ``k`` buckets of about equal total duration.

    An example of duration ``d`` goes to bucket ``searchsorted(bins, d, side="right")``.
    """
    d = np.sort(np.asarray(durations, dtype=np.float64))
    if k <= 1 or d.size == 0:
        return []
    running = np.cumsum(d)
    cut = np.searchsorted(running, running[-1] * np.arange(1, k) / k, side="left")
    return [float(d[min(c + 1, d.size - 1)]) for c in cut]


def _groups(entries: list[_Entry], opts: ShardOptions, salt: int) -> list[list[int]]:
    """Entries in sharding order (shuffled with the seed, or as given), as groups of entries that
    share a source file (directly or through a multi-audio entry), each group in that order."""
    n = len(entries)
    order = (
        np.random.default_rng([opts.seed, 0x5A4D, salt]).permutation(n).tolist()
        if opts.shuffle
        else list(range(n))
    )
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[int, int] = {}
    for i, e in enumerate(entries):
        for s in e.sources:
            if s in owner:
                a, b = find(i), find(owner[s])
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                owner[s] = i
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def assign_groups(groups: list[list[int]], capacities: list[int]) -> list[list[int]]:
    """Fill shards of exactly ``capacities`` entries with ``groups``, keeping each group in one
    shard when some shard still has room for all of it (first fit from the shard being filled),
    splitting it over consecutive shards only when none has."""
    if sum(len(g) for g in groups) != sum(capacities):
        raise ValueError("capacities must add up to the number of entries")
    room = list(capacities)
    shards: list[list[int]] = [[] for _ in capacities]
    p = 0
    for g in groups:
        while p < len(room) and room[p] == 0:
            p += 1
        q = next((k for k in range(p, len(room)) if room[k] >= len(g)), None)
        if q is not None:
            shards[q].extend(g)
            room[q] -= len(g)
            continue
        rest = list(g)
        k = p
        while rest:
            take = min(room[k], len(rest))
            shards[k].extend(rest[:take])
            room[k] -= take
            rest = rest[take:]
            k += 1
    return shards


def _num_shards(n: int, bytes_estimate: int, opts: ShardOptions) -> int:
    if opts.num_shards is not None:
        k = opts.num_shards
    elif opts.shard_size is not None:
        k = math.ceil(n / opts.shard_size)
    else:
        k = max(math.ceil(n / DEFAULT_SHARD_ENTRIES), math.ceil(bytes_estimate / DEFAULT_SHARD_BYTES))
    return max(1, min(k, n))


def plan_dataset(
    folder: Path, entries: list[_Entry], sources: list[_Source], opts: ShardOptions, salt: int
) -> list[ShardJob]:
    """Split one dataset's entries into shard jobs: sizes differ by at most one entry."""
    groups = _groups(entries, opts, salt)
    rank = {i: r for r, i in enumerate(i for g in groups for i in g)}
    used = {s for e in entries for s in e.sources}
    k = _num_shards(len(entries), sum(sources[s].size for s in used), opts)
    base, extra = divmod(len(entries), k)
    layout = assign_groups(groups, [base + (1 if shard < extra else 0) for shard in range(k)])
    jobs = []
    settings = {
        "v": _FORMAT_VERSION,
        "codec": opts.codec,
        "sample_rate": opts.sample_rate,
        "slice": opts.slice_with_offset,
    }
    for shard in range(k):
        chunk = [entries[i] for i in sorted(layout[shard], key=rank.__getitem__)]
        if opts.sort_in_shards:
            chunk.sort(key=lambda e: sum(e.duration))
        srcs = {s: sources[s] for e in chunk for s in e.sources}
        job = ShardJob(str(folder), shard, chunk, srcs, opts.codec, opts.sample_rate, opts.slice_with_offset)
        blob = orjson.dumps(
            [
                settings,
                [(e.raw, e.sources, e.offset, e.duration) for e in chunk],
                [(s, v.__dict__) for s, v in srcs.items()],
            ],
            option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY,
        )
        job.digest = hashlib.sha1(blob).hexdigest()
        jobs.append(job)
    return jobs


# ---------------------------------------------------------------------------------- writing


def _marker(folder: str, shard: int) -> Path:
    return Path(folder) / MARKER_DIR / f"audio_{shard}.done"


def _finished(job: ShardJob) -> dict[str, Any] | None:
    """The marker of a shard finished by an earlier run of the same plan, else None."""
    try:
        done = orjson.loads(_marker(job.folder, job.shard_id).read_bytes())
        tar = Path(job.folder) / f"audio_{job.shard_id}.tar"
        man = Path(job.folder) / "sharded_manifests" / f"manifest_{job.shard_id}.json"
        if (
            done["digest"] == job.digest
            and tar.stat().st_size == done["bytes"]
            and man.stat().st_size == done["manifest_bytes"]
        ):
            return dict(done)
    except (OSError, KeyError, orjson.JSONDecodeError):
        pass
    return None


def _out_entry(e: _Entry, job: ShardJob, where: dict[int, tuple[int, int]]) -> dict[str, Any]:
    names = [job.sources[s].name for s in e.sources]
    offs = [where[s][0] for s in e.sources]
    sizes = [where[s][1] for s in e.sources]
    one = (lambda v: v) if e.multi else (lambda v: v[0])
    out: dict[str, Any] = {}
    for key, value in e.raw.items():
        if key in AUDIO_KEYS:
            out.setdefault("audio_filepath", one(names))
        else:
            out[key] = value
    out.setdefault("duration", one(e.duration))
    if job.slice_with_offset:
        out["offset"] = one([0.0] * len(names))
        out["source_audio_offset"] = one(e.offset)
    elif "offset" not in out and any(e.offset):
        out["offset"] = one(e.offset)
    out["shard_id"] = job.shard_id
    out["tar_offset"] = one(offs)
    out["tar_size"] = one(sizes)
    return out


def write_shard(job: ShardJob, progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Write one shard atomically (tar, then its manifest, then its marker); skip it if a
    previous run of the same plan finished it. Returns the marker's stats."""
    done = _finished(job)
    if done is not None:
        progress(len(job.entries))
        done["reused"] = True
        return done
    folder = Path(job.folder)
    tar = folder / f"audio_{job.shard_id}.tar"
    tmp = folder / f"audio_{job.shard_id}.tar.tmp"
    where: dict[int, tuple[int, int]] = {}
    try:
        with TarWriter(tmp) as tw:
            for e in job.entries:
                for s in e.sources:
                    if s in where:
                        continue
                    src = job.sources[s]
                    codec = _slice_codec(job, src)
                    if codec is None:
                        m = tw.add_file(src.name, src.path, where=e.where)
                    else:
                        off, dur = src.span if src.span else (0.0, None)
                        data = encode_audio(
                            src.path,
                            codec,
                            sample_rate=job.sample_rate,
                            offset=off,
                            duration=dur,
                            where=e.where,
                        )
                        m = tw.add_bytes(src.name, data)
                    where[s] = (m.offset, m.size)
                progress(1)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, tar)
    fsync_dir(folder)
    lines = b"".join(orjson.dumps(_out_entry(e, job, where)) + b"\n" for e in job.entries)
    # The marker records the manifest's size, so these two need no fsync of their own: a marker or
    # manifest lost or cut short by a power failure fails the check in _finished and the shard is
    # written again.
    atomic_write_bytes(folder / "sharded_manifests" / f"manifest_{job.shard_id}.json", lines, fsync=False)
    stats = {
        "digest": job.digest,
        "bytes": tar.stat().st_size,
        "manifest_bytes": len(lines),
        "entries": len(job.entries),
        "seconds": sum(sum(e.duration) for e in job.entries),
        "members": len(where),
    }
    atomic_write_bytes(_marker(job.folder, job.shard_id), orjson.dumps(stats), fsync=False)
    stats["reused"] = False
    return stats


_QUEUE: Any = None


def _init_worker(q: Any) -> None:
    global _QUEUE
    _QUEUE = q


def _write_in_worker(job: ShardJob) -> dict[str, Any]:
    pending = [0, time.monotonic()]

    def report(n: int) -> None:
        pending[0] += n
        if time.monotonic() - pending[1] > 0.2:
            _QUEUE.put(pending[0])
            pending[0], pending[1] = 0, time.monotonic()

    stats = write_shard(job, report)
    if pending[0]:
        _QUEUE.put(pending[0])
    return stats


def _run_jobs(jobs: list[ShardJob], workers: int, bar: tqdm) -> list[dict[str, Any]]:
    if workers <= 1 or len(jobs) <= 1:
        return [write_shard(job, bar.update) for job in jobs]
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    q = ctx.Queue()
    results: dict[int, dict[str, Any]] = {}
    with ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker, initargs=(q,)
    ) as ex:
        futures = {ex.submit(_write_in_worker, job): k for k, job in enumerate(jobs)}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                _drain(q, bar)
                for f in finished:
                    results[futures[f]] = f.result()
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)
            raise
    _drain(q, bar)
    return [results[k] for k in range(len(jobs))]


def _drain(q: Any, bar: tqdm) -> None:
    while True:
        try:
            bar.update(q.get_nowait())
        except queue.Empty:
            return


def _clean_stale(folder: Path, num_shards: int) -> None:
    """Remove leftovers of killed runs (``.tmp`` files) and shards beyond this plan's count."""
    for p in folder.glob("*.tmp"):
        p.unlink(missing_ok=True)
    for sub in ("sharded_manifests", MARKER_DIR):
        for p in (folder / sub).glob("*.tmp"):
            p.unlink(missing_ok=True)
    pattern = re.compile(r"(?:audio|manifest)_(\d+)\.(?:tar|json|done)$")
    for p in [
        *folder.glob("audio_*.tar"),
        *(folder / "sharded_manifests").glob("manifest_*.json"),
        *(folder / MARKER_DIR).glob("*.done"),
    ]:
        m = pattern.search(p.name)
        if m and int(m.group(1)) >= num_shards:
            p.unlink(missing_ok=True)


def _metadata(
    opts: ShardOptions,
    jobs: list[ShardJob],
    stats: list[dict[str, Any]],
    drops: DropCounter,
    extra: dict[str, Any],
) -> bytes:
    n = sum(s["entries"] for s in stats)
    meta = {
        "version": 0,
        "num_samples_per_shard": n // max(1, len(jobs)),
        "is_concatenated_manifest": False,
        "dataset_config": {
            "num_shards": len(jobs),
            "shuffle": opts.shuffle,
            "max_duration": opts.max_duration,
            "min_duration": opts.min_duration,
            "shuffle_seed": opts.seed,
            "sort_in_shards": opts.sort_in_shards,
            "slice_with_offset": opts.slice_with_offset,
            "shard_manifests": True,
            "keep_files_together": True,
            "force_codec": None if opts.codec == "keep" else opts.codec,
        },
        "history": [],
        "speechdata": {
            "format_version": _FORMAT_VERSION,
            "codec": opts.codec,
            "sample_rate": opts.sample_rate,
            "entries": n,
            "hours": round(sum(s["seconds"] for s in stats) / 3600, 6),
            "bytes": sum(s["bytes"] for s in stats),
            "members": sum(s["members"] for s in stats),
            "entries_per_shard": [s["entries"] for s in stats],
            "drops": drops.to_dict(),
            **extra,
        },
    }
    return yaml.safe_dump(meta, sort_keys=False).encode()


def write_shards(
    manifests: Sequence[str | Path], out_dir: str | Path | None = None, options: ShardOptions | None = None
) -> ShardReport:
    """Shard ``manifests`` into ``out_dir`` (default: ``<first manifest's stem>_tarred`` beside it).

    See the module docstring for the layout. Rerunning the same job after a crash finishes it
    without rewriting completed shards; the same inputs and options give byte-identical tars.
    """
    opts = options or ShardOptions()
    opts.check()
    if not manifests:
        raise ConfigError("speechdata shard: give at least one manifest")
    first = Path(manifests[0])
    out = Path(out_dir) if out_dir is not None else first.parent / f"{first.name.split('.')[0]}_tarred"
    drops = DropCounter()
    entries, sources = _read_entries(manifests, opts, drops)
    if not entries:
        raise ConfigError(f"speechdata shard: no entries left to write ({drops.summary()})")
    bucketed = opts.buckets is not None or opts.bucket_bins is not None
    totals = np.array([sum(e.duration) for e in entries])
    bins = (
        list(opts.bucket_bins)
        if opts.bucket_bins is not None
        else equal_duration_bins(totals, opts.buckets or 1)
    )
    parts: list[tuple[Path, list[_Entry]]] = []
    if bucketed:
        which = np.searchsorted(np.asarray(bins, dtype=np.float64), totals, side="right")
        edges = [0.0, *bins, math.inf]
        for b in range(len(bins) + 1):
            members = [e for e, w in zip(entries, which, strict=True) if w == b]
            if not members:
                raise ConfigError(
                    f"bucket{b + 1} ({edges[b]:g}-{edges[b + 1]:g} s) has no entries; choose fewer buckets or other --bucket-bins"
                )
            parts.append((out / f"bucket{b + 1}", members))
    else:
        parts.append((out, entries))
    plans = [
        (folder, plan_dataset(folder, members, sources, opts, b)) for b, (folder, members) in enumerate(parts)
    ]
    for folder, jobs in plans:
        (folder / "sharded_manifests").mkdir(parents=True, exist_ok=True)
        (folder / MARKER_DIR).mkdir(exist_ok=True)
        _clean_stale(folder, len(jobs))
    all_jobs = [job for _, jobs in plans for job in jobs]
    with tqdm(
        total=len(entries), unit="entry", desc="shard", disable=not opts.progress, file=sys.stderr
    ) as bar:
        all_stats = _run_jobs(all_jobs, opts.workers, bar)
    report = ShardReport(out, [folder for folder, _ in plans], drops=drops)
    pos = 0
    for b, (folder, jobs) in enumerate(plans):
        stats = all_stats[pos : pos + len(jobs)]
        pos += len(jobs)
        manifest = b"".join(
            (folder / "sharded_manifests" / f"manifest_{j.shard_id}.json").read_bytes() for j in jobs
        )
        atomic_write_bytes(folder / "tarred_audio_manifest.json", manifest)
        extra: dict[str, Any] = {}
        if bucketed:
            edges = [0.0, *bins, None]
            extra = {"bucket": b + 1, "bucket_min_duration": edges[b], "bucket_max_duration": edges[b + 1]}
        atomic_write_bytes(folder / "metadata.yaml", _metadata(opts, jobs, stats, drops, extra))
        report.shards += len(jobs)
        report.reused += sum(1 for s in stats if s["reused"])
        report.entries += sum(s["entries"] for s in stats)
        report.seconds += sum(s["seconds"] for s in stats)
        report.bytes += sum(s["bytes"] for s in stats)
    if bucketed:
        top = {
            "buckets": [f.name for f, _ in plans],
            "bucket_duration_bins": bins,
            "tarred_audio_filepaths": [[str(f / f"audio__OP_0..{len(j) - 1}_CL_.tar")] for f, j in plans],
            "manifest_filepath": [str(f / "tarred_audio_manifest.json") for f, _ in plans],
            "entries": report.entries,
            "hours": round(report.seconds / 3600, 6),
            "bytes": report.bytes,
            "drops": drops.to_dict(),
        }
        atomic_write_bytes(out / "metadata.yaml", yaml.safe_dump(top, sort_keys=False).encode())
    return report


# -------------------------------------------------------------------------------------- CLI


def _bins(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated seconds like 2,5,10, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``speechdata shard``."""
    parser.add_argument("manifests", nargs="+", metavar="MANIFEST", help="NeMo JSONL manifest(s)")
    parser.add_argument(
        "--out", help="output folder (default: <manifest stem>_tarred beside the first manifest)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--num-shards", type=int, help="number of tar shards (per bucket)")
    size.add_argument("--shard-size", type=int, help="entries per shard")
    parser.add_argument("--shuffle", action="store_true", help="shuffle entries before sharding")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default 0)")
    parser.add_argument(
        "--sort-in-shards", action="store_true", help="sort entries by duration inside each shard"
    )
    parser.add_argument("--min-duration", type=float, help="drop entries with a clip shorter than this (s)")
    parser.add_argument("--max-duration", type=float, help="drop entries with a clip longer than this (s)")
    buckets = parser.add_mutually_exclusive_group()
    buckets.add_argument(
        "--buckets", type=int, help="K duration buckets of equal total duration (bucket1..bucketK)"
    )
    buckets.add_argument(
        "--bucket-bins", type=_bins, help="explicit bucket boundaries in seconds, e.g. 2,5,10"
    )
    parser.add_argument(
        "--codec", choices=CODECS, default="keep", help="keep the source bytes or re-encode (default keep)"
    )
    parser.add_argument("--sample-rate", type=int, help="resample to this rate (needs a re-encoding codec)")
    parser.add_argument(
        "--slice-with-offset",
        action="store_true",
        help="store only [offset, offset+duration] of each source (re-encoded) and set offset 0",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes writing shards in parallel (default 1)"
    )
    parser.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="bad lines / missing audio: stop or count and skip",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata shard``; prints the closing summary line."""
    opts = ShardOptions(
        num_shards=args.num_shards,
        shard_size=args.shard_size,
        shuffle=args.shuffle,
        seed=args.seed,
        sort_in_shards=args.sort_in_shards,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        buckets=args.buckets,
        bucket_bins=args.bucket_bins,
        codec=args.codec,
        sample_rate=args.sample_rate,
        slice_with_offset=args.slice_with_offset,
        workers=args.workers,
        on_error=args.on_error,
        progress=not args.no_progress,
    )
    report = write_shards(args.manifests, args.out, opts)
    print(report.summary())
    return 0
