"""Planning a ``speechdata shard`` job: read and filter entries, name members, lay out shards.

Everything here is metadata: entries are read from the manifests' Index, each distinct source (a
file, or a span of it with ``--slice-with-offset``) gets a safe member name unique in the job, and
entries are grouped by shared sources and dealt into shards of sizes differing by at most one.
Each :class:`ShardJob` carries a digest of its plan so that a rerun can recognise finished shards.

Example::

    >>> entries, sources = read_entries(["train.jsonl"], ShardOptions(), DropCounter())
    >>> jobs = plan_dataset(Path("out"), entries, sources, ShardOptions(num_shards=4), 0)
    >>> [len(j.entries) for j in jobs]
    [250, 250, 250, 250]
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from speechdata.audio import AudioInfo, audio_info
from speechdata.audio import check_span as audio_check_span
from speechdata.config import DatasetConfig
from speechdata.errors import ConfigError, DataError, DropCounter, handle
from speechdata.manifest import AUDIO_KEYS, Index, ManifestKeys, load_index, manifest_keys
from speechdata.sampling.buckets import estimate_bins
from speechdata.sampling.filters import duration_mask
from speechdata.shards.codec import CODECS, EXTENSIONS
from speechdata.shards.executors import LocalExecutor, check_executor
from speechdata.storage import RangeFile, RemoteOptions, clip_version, is_remote

#: Default shard size: about this many entries ...
DEFAULT_SHARD_ENTRIES = 1000
#: ... or this many bytes, whichever is reached first.
DEFAULT_SHARD_BYTES = 1_000_000_000
FORMAT_VERSION = 1
#: A member name stem keeps at most this many bytes (UTF-8) of the path, taken from the end.
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
    executor: str = "local"

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
        check_executor(self.executor)


@dataclass
class Entry:
    """One manifest entry to write: its raw JSON, source ids per clip, offsets, durations."""

    raw: dict[str, Any]
    sources: list[int]
    offset: list[float]
    duration: list[float]
    multi: bool
    where: str


@dataclass
class Source:
    """One member to store: a source file (or a span of it) and its member name."""

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
    entries: list[Entry]
    sources: dict[int, Source]
    codec: str
    sample_rate: int | None
    slice_with_offset: bool
    digest: str = ""


def _safe_char(c: str) -> str:
    """``c`` itself when it is a letter, mark or digit of any script, ``_`` or ``-``; else ``_``."""
    return c if c in "_-" or unicodedata.category(c)[0] in "LMN" else "_"


def member_stem(path_as_given: str) -> str:
    """A safe, readable member name stem for an audio path.

    The path is normalised to Unicode NFC, its folders are joined by ``_``, the extension is
    dropped, and every character that is not a letter, mark or digit (of any script), ``_`` or
    ``-`` becomes ``_``: dots too, since webdataset keys end at the first dot. No ``/``, ``..`` or
    leading ``-`` or dot survives. At most :data:`_MAX_STEM` bytes of UTF-8 are kept, whole
    characters taken from the end, so a member extracted by ``tar x`` fits any file system's name
    limit. ``naïve_日本.wav`` keeps its stem ``naïve_日本``; ``s3://bucket/a/b.wav`` has the stem
    ``bucket_a_b``.
    """
    path_as_given = unicodedata.normalize("NFC", path_as_given)
    if is_remote(path_as_given):  # a URL: its bucket and key, not its scheme
        path_as_given = path_as_given.split("://", 1)[1]
    parts = [p for p in path_as_given.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    joined = "_".join(parts)
    stem = os.path.splitext(joined)[0] if "." in (parts[-1] if parts else "") else joined
    stem = "".join(map(_safe_char, stem)).lstrip("-")
    while len(stem.encode()) > _MAX_STEM:
        stem = stem[max(1, (len(stem.encode()) - _MAX_STEM) // 4) :]
    return stem.lstrip("-") or "audio"


def _extension(path: str, codec: str, sliced: bool, info: AudioInfo) -> str:
    ext = re.sub(r"[^a-z0-9]", "", os.path.splitext(path)[1].lower())
    if codec != "keep":
        return EXTENSIONS[codec]
    if sliced:
        return ext if ext in ("wav", "flac") else "flac"
    if not ext:
        ext = re.sub(r"[^a-z0-9]", "", info.format.lower()) or "bin"
    return ext


def check_span(info: AudioInfo, offset: float, duration: float, where: str) -> None:
    """The reader's span rule (:func:`speechdata.audio.check_span`) on a header already read: an
    entry that passes here is one the loader reads, one that fails gets the loader's error."""
    audio_check_span(info.sample_rate, info.frames, offset, duration, where)


def member_codec(job: ShardJob, src: Source) -> str | None:
    """The codec a member is re-encoded with, or None when the file's bytes are copied."""
    if job.codec != "keep":
        return job.codec
    if src.span is not None:
        return src.name.rsplit(".", 1)[1]
    return None


def read_entries(
    manifests: Sequence[str | Path],
    opts: ShardOptions,
    drops: DropCounter,
    cache_dir: str | Path | None = None,
    keys: ManifestKeys | None = None,
) -> tuple[list[Entry], list[Source]]:
    """Index the manifests, apply the duration filters, check and name the source files.

    ``keys`` says how lines are read (default: the loader's defaults); build them from a config
    or the command-line flags with :func:`speechdata.manifest.manifest_keys`. The duration filter
    is the loader's (:func:`speechdata.sampling.filters.duration_mask`: every clip, compared in
    float32). Each clip's span ``[offset, offset + duration]`` is checked against its file's
    header (read once per file, no samples decoded) with :func:`check_span`, so an entry the
    loader could not read is an error (or, with ``on_error="skip"``, a counted ``decode_error``)
    here rather than later. ``cache_dir`` holds the manifests' index cache (default: beside each
    manifest).
    """
    if keys is None:
        keys = manifest_keys(DatasetConfig())
    index = load_index([str(m) for m in manifests], keys, on_error=opts.on_error, cache_dir=cache_dir)
    drops.merge(index.drops)
    _, too_short, too_long = duration_mask(
        index.min_clip, index.max_clip, opts.min_duration, opts.max_duration
    )
    kept = np.flatnonzero(~(too_short | too_long))
    size = max(_MIN_CHUNK, math.ceil(len(kept) / (4 * opts.workers)))
    chunks = [kept[k : k + size] for k in range(0, len(kept), size)]
    with LocalExecutor(opts.workers) as ex:
        rows = iter([r for part in ex.map(_read_rows, chunks, shared=index) for r in part])
    entries: list[Entry] = []
    sources: list[Source] = []
    by_key: dict[tuple[str, float, float] | str, int] = {}
    taken: set[str] = set()
    for i in range(len(index)):
        if too_short[i]:
            clip = float(index.min_clip[i])
            drops.add(
                "too_short_audio",
                f"{index.where(i)}: clip of {clip:.3f} s < --min-duration {opts.min_duration}",
            )
            continue
        if too_long[i]:
            clip = float(index.max_clip[i])
            drops.add(
                "too_long_audio",
                f"{index.where(i)}: clip of {clip:.3f} s > --max-duration {opts.max_duration}",
            )
            continue
        row = next(rows)
        if isinstance(row, DataError):
            handle(row, opts.on_error, drops)
            continue
        ids = []
        for clip in row.clips:
            span = (clip.offset, clip.duration) if opts.slice_with_offset else None
            key = (clip.real, clip.offset, clip.duration) if span else clip.real
            if key not in by_key:
                stem = member_stem(clip.given)
                if span:
                    stem = f"{stem}_{round(clip.offset * 1000)}_{round(clip.duration * 1000)}"
                ext = _extension(clip.real, opts.codec, span is not None, clip.info)
                by_key[key] = len(sources)
                sources.append(
                    Source(clip.real, f"{_unique(stem, taken)}.{ext}", clip.size, clip.mtime_ns, span)
                )
            ids.append(by_key[key])
        raw = row.raw
        entries.append(
            Entry(
                raw,
                ids,
                [c.offset for c in row.clips],
                [c.duration for c in row.clips],
                _lists(raw),
                row.where,
            )
        )
    return entries, sources


#: Rows read per task when the rows are read by several processes.
_MIN_CHUNK = 256


@dataclass
class _Clip:
    """One clip of a row: real path, path as given, span, and its file's size, mtime and header."""

    real: str
    given: str
    offset: float
    duration: float
    size: int
    mtime_ns: int
    info: AudioInfo


@dataclass
class _Row:
    """One manifest row read and checked: its raw JSON and clips."""

    raw: dict[str, Any]
    clips: list[_Clip]
    where: str


def _read_rows(index: Index, rows: np.ndarray, progress: Callable[[int], None]) -> list[_Row | DataError]:
    """Read ``rows`` of ``index``, resolve each clip's real path and check its span against its
    file's header (read once per file); a bad row is its :class:`DataError`. The per-row work of
    :func:`read_entries`, done by several processes when ``--workers`` is more than one."""
    files: dict[str, tuple[os.stat_result | _Remote, AudioInfo]] = {}
    real = RealPaths()
    out: list[_Row | DataError] = []
    for i in rows:
        raw = orjson.loads(index.line(i))
        where = index.where(i, raw)
        try:
            rec = index.record(i)
            given = rec.names  # the paths as the line wrote them (conversation turns included)
            clips = []
            # every clip is checked before any is named: a dropped entry takes no member name
            for path, rel, off, dur in zip(rec.audio, given, rec.offset, rec.duration, strict=True):
                rpath = real(path)
                st, info = _header(path, rpath, where, files)
                check_span(info, off, dur, f"{where}: {path}")
                clips.append(_Clip(rpath, rel, off, dur, st.st_size, st.st_mtime_ns, info))
            out.append(_Row(raw, clips, where))
        except DataError as err:
            out.append(err)
    return out


class RealPaths:
    """``os.path.realpath`` for many files in few folders: each folder is resolved once, and a
    file costs one ``lstat`` (to see whether it is itself a link) instead of one per component.
    ``RealPaths()(p) == os.path.realpath(p)`` for every ``p``."""

    def __init__(self) -> None:
        self._dirs: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        """The canonical path of ``path`` (links resolved, absolute); a URL is itself."""
        if is_remote(path):
            return path
        folder, base = os.path.split(os.path.abspath(path))
        rdir = self._dirs.get(folder)
        if rdir is None:
            rdir = self._dirs[folder] = os.path.realpath(folder)
        joined = os.path.join(rdir, base)
        return os.path.realpath(joined) if os.path.islink(joined) else joined


def _header(
    path: str, real: str, where: str, files: dict[str, tuple[os.stat_result | _Remote, AudioInfo]]
) -> tuple[os.stat_result | _Remote, AudioInfo]:
    """The stat and audio header of file ``path`` (``real``: its real path), read once per file
    (``files`` caches them by real path). A clip named by URL gets its object's version and the
    header read by range (:func:`_remote_header`)."""
    found = files.get(real)
    if found is None:
        if is_remote(path):
            found = files[real] = _remote_header(path, f"{where}: {path}")
            return found
        try:
            st = os.stat(real)
        except OSError:
            raise DataError("missing_audio", where, f"audio file not found: {path}") from None
        found = files[real] = (st, audio_info(real, where=f"{where}: {path}"))
    return found


@dataclass(frozen=True)
class _Remote:
    """What a plan records of a clip on object storage, in place of a file's stat: its size, and
    its version tag as an integer (in the plan's digest where a file has its mtime)."""

    st_size: int
    st_mtime_ns: int


def _remote_header(url: str, where: str) -> tuple[_Remote, AudioInfo]:
    """The version and audio header of the clip at ``url``: one metadata request, then the
    header read through a :class:`~speechdata.storage.RangeFile` (64 KiB per range request;
    libsndfile reads what it needs). A missing object is ``missing_audio``, a store that keeps
    failing ``read_error`` (even where libsndfile's callback had to swallow the error), an
    unreadable header ``decode_error``: each names ``where``."""
    options = RemoteOptions.from_env()
    version = clip_version(url, options, where)
    raw = RangeFile(url, version.size, options, where)
    try:
        info = audio_info(io.BufferedReader(raw, _HEADER_BLOCK), where=where)
    except DataError:
        if raw.error is not None:
            raise raw.error from None
        raise
    if raw.error is not None:  # a read failed and libsndfile read on regardless
        raise raw.error
    tag = int.from_bytes(hashlib.sha1(version.tag.encode()).digest()[:7], "big")
    return _Remote(version.size, tag), info


#: Bytes per range request when a remote clip's header is read.
_HEADER_BLOCK = 64 << 10


def _lists(raw: dict[str, Any]) -> bool:
    """Whether the line's per-clip fields are lists: its audio key holds a list, or it is a
    conversation (per-clip fields of a conversation are always lists)."""
    if "conversations" in raw:
        return True
    return isinstance(raw.get(next(k for k in AUDIO_KEYS if k in raw)), list)


def _unique(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3``... : the first one not taken (case-insensitively, by
    Unicode case folding)."""
    name, k = stem, 1
    while name.casefold() in taken:
        k += 1
        name = f"{stem}_{k}"
    taken.add(name.casefold())
    return name


def equal_duration_bins(durations: np.ndarray, k: int) -> list[float]:
    """The bins of ``speechdata shard --buckets k``: the loader's estimator
    (:func:`speechdata.sampling.buckets.estimate_bins`, whose docstring defines them) as plain
    floats for ``metadata.yaml``; no bins without durations.

    An example of duration ``d`` goes to bucket ``searchsorted(bins, d, side="right")``.
    """
    return [float(b) for b in estimate_bins(durations, k)] if len(durations) else []


def _groups(entries: list[Entry], opts: ShardOptions, salt: int) -> list[list[int]]:
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
    folder: Path, entries: list[Entry], sources: list[Source], opts: ShardOptions, salt: int
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
        "v": FORMAT_VERSION,
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
