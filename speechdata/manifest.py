"""NeMo JSONL manifests to an :class:`Index`: metadata in numpy columns, text left on disk.

One pass with orjson fills the columns (duration, clip count, dataset, line number, byte offset of
the line, text length, shard id). Paths and text stay in the manifest and are read back by byte
offset when a batch needs them (:meth:`Index.record`). The index of each manifest is cached in
the user's cache folder, bound to the manifest's real path and content (:mod:`speechdata.cache`),
so the next start is a load.

The rules of a line (which keys are read, what values they may hold) live in
:mod:`speechdata.lines`; both the fast path for the common line shape and the full resolver use
them, so a line is indexed exactly when :meth:`Index.record` can read it back. A missing duration
is measured from the audio header, never guessed.

Example::

    >>> index = load_index(["train.jsonl", "extra.jsonl.gz"])
    >>> len(index), float(index.duration.sum()) / 3600
    (120000, 180.2)
    >>> index.record(5).answer
    'the cat sat on the mat'
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import multiprocessing
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from speechdata.audio import audio_info
from speechdata.cache import FileStamp, cache_folder, crc32_of, prune, source_digest, touch
from speechdata.errors import DataError, DropCounter, SpeechDataError, handle
from speechdata.lines import (
    AUDIO_KEYS,
    MAX_SECONDS,
    ManifestKeys,
    Record,
    check_clip,
    check_json_lines,
    describe_audio,
    extra_fields,
    json_error,
    line_where,
    manifest_keys,
    manifest_root,
    parse_line,
    resolve_audio,
    shard_id_of,
)
from speechdata.openfiles import OpenFiles
from speechdata.storage import is_remote, local_copy

__all__ = [
    "AUDIO_KEYS",
    "CACHE_VERSION",
    "MAX_SECONDS",
    "PARALLEL_LINES",
    "DatasetInfo",
    "Index",
    "ManifestKeys",
    "Record",
    "build_one",
    "describe_audio",
    "load_index",
    "manifest_keys",
    "manifest_root",
    "pack_sample_id",
    "parse_line",
    "resolve_audio",
    "unpack_sample_id",
]

#: Version of the cached index format (bump when the columns or the line rules change).
CACHE_VERSION = 4
#: Manifests with at least this many lines are parsed by one forked process per core.
PARALLEL_LINES = 200_000
_COLUMNS = {
    "duration": np.float32,
    "min_clip": np.float32,
    "max_clip": np.float32,
    "num_audios": np.uint8,
    "line_no": np.uint32,
    "line_offset": np.int64,
    "line_length": np.uint32,
    "text_len": np.uint32,
    "shard_id": np.int32,
}


@dataclass
class DatasetInfo:
    """One manifest of an Index."""

    path: str
    name: str
    source: str
    root: str
    num_lines: int
    drops: dict[str, int] = field(default_factory=dict)
    crc32: int | None = None


def pack_sample_id(dataset: int, line_no: int) -> int:
    """Stable example id: dataset number in the high 32 bits, 1-based line number in the low."""
    return (int(dataset) << 32) | int(line_no)


def unpack_sample_id(sample_id: int) -> tuple[int, int]:
    """Inverse of :func:`pack_sample_id`."""
    return int(sample_id) >> 32, int(sample_id) & 0xFFFFFFFF


# ------------------------------------------------------------------------------- the Index


class Index:
    """Metadata of every example of one or more manifests, in numpy columns.

    Columns (one row per example): ``duration`` (float32, total seconds), ``min_clip``,
    ``max_clip``, ``num_audios``, ``dataset``, ``line_no``, ``line_offset``, ``line_length``,
    ``text_len``, ``shard_id``. ``datasets`` lists the manifests; ``drops`` counts lines that were
    not indexed, by reason.
    """

    duration: np.ndarray
    min_clip: np.ndarray
    max_clip: np.ndarray
    num_audios: np.ndarray
    dataset: np.ndarray
    line_no: np.ndarray
    line_offset: np.ndarray
    line_length: np.ndarray
    text_len: np.ndarray
    shard_id: np.ndarray

    def __init__(
        self,
        columns: dict[str, np.ndarray],
        datasets: list[DatasetInfo],
        keys: ManifestKeys,
        drops: DropCounter,
    ) -> None:
        for name, dtype in _COLUMNS.items():
            setattr(self, name, np.ascontiguousarray(columns[name], dtype=dtype))
        self.dataset = np.ascontiguousarray(columns["dataset"], dtype=np.uint16)
        self.datasets = datasets
        self.keys = keys
        self.drops = drops
        self._files = OpenFiles()

    def __len__(self) -> int:
        return int(self.duration.shape[0])

    @property
    def num_datasets(self) -> int:
        """Number of manifests in this index."""
        return len(self.datasets)

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns."""
        return sum(getattr(self, name).nbytes for name in (*_COLUMNS, "dataset"))

    def sample_ids(self, ids: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Packed stable ids (dataset << 32 | line number) of the given rows (all by default)."""
        sel = slice(None) if ids is None else np.asarray(ids, dtype=np.int64)
        return (self.dataset[sel].astype(np.int64) << 32) | self.line_no[sel].astype(np.int64)

    def line(self, i: int) -> bytes:
        """The raw manifest line of row ``i``."""
        source = self.datasets[int(self.dataset[i])].source
        return self._files.pread(source, int(self.line_length[i]), int(self.line_offset[i]))

    def where(self, i: int, line: Any = None) -> str:
        """``path:line`` of row ``i``, for messages; for a line converted from another file, the
        place it came from (:func:`~speechdata.lines.line_where`). ``line``: the row's line as
        the caller decoded it, else it is read again."""
        info = self.datasets[int(self.dataset[i])]
        obj: Any = line
        if obj is None and info.source:  # an Index of examples held in memory has no file to read
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                obj = orjson.loads(self.line(i))
        return line_where(info.path, int(self.line_no[i]), obj)

    def record(self, i: int) -> Record:
        """Read row ``i`` back from its manifest and resolve its keys."""
        i = int(i)
        ds = int(self.dataset[i])
        info = self.datasets[ds]
        obj: Any = None
        try:
            obj = orjson.loads(self.line(i))
            audio, dur, off, context, answer, messages = parse_line(obj, self.keys)
        except (orjson.JSONDecodeError, ValueError) as e:  # the file changed under us
            where = line_where(info.path, int(self.line_no[i]), obj)
            raise DataError("bad_line", where, f"{e} (was the manifest modified after indexing?)") from None
        where = line_where(info.path, int(self.line_no[i]), obj)
        names = [] if self.keys.tarred else list(audio)  # tar members are named as they are
        if dur is None:
            d = float(self.duration[i])
            dur = (
                [d]
                if len(audio) == 1
                else _measure_cached(audio, off, self.keys, info.root, info.path, {}, where)
            )
        if not self.keys.tarred:
            audio = [resolve_audio(a, info.root) for a in audio]
        extra = extra_fields(obj, self.keys)
        return Record(
            audio,
            off,
            dur,
            context,
            answer,
            extra,
            where,
            pack_sample_id(ds, self.line_no[i]),
            int(self.shard_id[i]),
            i,
            names,
            info.path,
            messages,
        )

    def close(self) -> None:
        """Close the manifest file handles opened by :meth:`record` (reopened on demand)."""
        self._files.close()

    @classmethod
    def concat(cls, parts: Sequence[Index]) -> Index:
        """Join per-manifest indexes; the ``dataset`` column becomes the position in ``parts``."""
        if not parts:
            raise SpeechDataError("no manifests given")
        columns = {name: np.concatenate([getattr(p, name) for p in parts]) for name in _COLUMNS}
        columns["dataset"] = np.concatenate(
            [np.full(len(p), k, dtype=np.uint16) for k, p in enumerate(parts)]
        )
        datasets = [d for p in parts for d in p.datasets]
        drops = DropCounter()
        for p in parts:
            drops.merge(p.drops)
        return cls(columns, datasets, parts[0].keys, drops)


def _check_not_empty(frames: int, path: str, where: str) -> None:
    if frames <= 0:
        raise DataError("decode_error", f"{where}: {path}", "audio is empty (0 samples)")


# ------------------------------------------------------------------------------ building


_BOM = b"\xef\xbb\xbf"


def _read_manifest(path: Path, cache_folder: Path | None) -> tuple[bytes, str, int]:
    """The manifest's bytes, the file that byte offsets refer to (a decompressed copy in the cache
    folder for ``.gz``, or a temporary one without a cache), and the CRC-32 of the file as stored."""
    raw = path.read_bytes()
    crc = crc32_of(raw)
    if path.suffix != ".gz":
        return raw, str(path), crc
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise SpeechDataError(f"{path}: cannot decompress gzip manifest: {e}") from None
    if cache_folder is None:
        cache_folder = Path(tempfile.mkdtemp(prefix="speechdata-"))
    plain = cache_folder / f"{source_digest(path)}.{crc:08x}.plain"
    _atomic_write(plain, data)
    return data, str(plain), crc


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def build_one(
    path: str | Path,
    keys: ManifestKeys,
    on_error: str,
    cache_folder: Path | None = None,
    root: str | None = None,
) -> Index:
    """Index one manifest without reading or writing a cache entry (see :func:`load_index`).

    Large manifests are split into byte ranges parsed by forked processes, one per core. The
    CRC-32 of the file as read is kept in ``index.datasets[0].crc32`` for the cache. A ``.gz``
    manifest is decompressed into ``cache_folder`` (reads go there by byte offset). ``root``:
    the folder relative audio paths resolve against, when not the file's own (a URL's).
    """
    path = Path(path)
    data, source, crc = _read_manifest(path, cache_folder)
    check_json_lines(data, path)
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if len(data) and (not len(ends) or ends[-1] != len(data) - 1):
        ends = np.append(ends, len(data))
    starts = np.empty_like(ends)
    if len(ends):
        starts[0] = len(_BOM) if data.startswith(_BOM) else 0  # a UTF-8 byte order mark is skipped
        starts[1:] = ends[:-1] + 1
    n = len(ends)
    root = root or manifest_root(path)
    procs = min(os.cpu_count() or 1, 8) if n >= PARALLEL_LINES else 1
    bounds = np.linspace(0, n, procs + 1).astype(np.int64)
    jobs = [
        (str(path), source, starts[a:b], ends[a:b], int(a), keys, on_error, root)
        for a, b in itertools.pairwise(bounds)
    ]
    del data, buf
    if procs > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(procs) as pool:
            results = pool.map(_index_range, jobs)
    else:
        results = [_index_range(jobs[0])]
    columns = {name: np.concatenate([r[0][name] for r in results]) for name in results[0][0]}
    drops = DropCounter()
    for _, d in results:
        drops.merge(d)
    info = DatasetInfo(str(path), path.name.split(".")[0], source, root, n, drops.to_dict(), crc)
    return Index(columns, [info], keys, drops)


def _index_range(
    job: tuple[str, str, np.ndarray, np.ndarray, int, ManifestKeys, str, str],
) -> tuple[dict[str, np.ndarray], DropCounter]:
    """Index lines ``[first, first + len(starts))`` of one manifest (runs in a worker process)."""
    name, source, starts, ends, first, keys, on_error, root = job
    drops = DropCounter()
    n = len(starts)
    if n == 0:
        return _columns([], [], [], [], [], [], [], [], [], []), drops
    with open(source, "rb") as f:
        f.seek(int(starts[0]))
        data = f.read(int(ends[-1]) - int(starts[0]))
    base = int(starts[0])
    mv = memoryview(data)
    loads, clip = orjson.loads, check_clip
    rows: list[int] = []
    dur: list[float] = []
    tl: list[int] = []
    add_row, add_dur, add_len = rows.append, dur.append, tl.append
    # rows that needed the full resolver: position in ``rows`` -> (min clip, max clip, clips, shard)
    slow: dict[int, tuple[float, float, int, int]] = {}
    info_cache: dict[str, float] = {}
    for j, (s, e) in enumerate(zip((starts - base).tolist(), (ends - base).tolist(), strict=True)):
        line = mv[s:e]
        try:
            obj = loads(line)
        except orjson.JSONDecodeError as err:
            if not bytes(line).strip():
                continue  # blank line
            handle(
                DataError("bad_line", line_where(name, first + j + 1, None), json_error(line, err)),
                on_error,
                drops,
            )
            continue
        # The common shape (one audio_filepath, scalar duration and offset, no shard id) needs no
        # per-clip columns; check_clip applies the rules parse_line applies to every clip.
        total = None
        if type(obj) is dict and "shard_id" not in obj:
            d = obj.get("duration")
            if d is not None:
                try:
                    context, answer = clip(obj.get("audio_filepath"), d, obj.get("offset"), obj, keys)
                    total = d
                except ValueError:
                    pass  # parse_line says what is wrong, or reads a shape this path does not
        if total is None:
            where = line_where(name, first + j + 1, obj)
            try:
                audio, ds, offs, context, answer, _ = parse_line(obj, keys)
                shard = shard_id_of(obj)
                if ds is None:
                    ds = _measure_cached(audio, offs, keys, root, name, info_cache, where)
            except ValueError as err:
                handle(DataError("bad_line", where, str(err)), on_error, drops)
                continue
            except DataError as err:
                handle(err, on_error, drops)
                continue
            slow[len(rows)] = (min(ds, default=0.0), max(ds, default=0.0), len(audio), shard)
            total = sum(ds)
        add_row(j)
        add_dur(total)
        add_len(len(answer) + len(context) if context else len(answer))
    idx = np.asarray(rows, dtype=np.int64)
    durations = np.asarray(dur, dtype=np.float32)
    mn, mx = durations.copy(), durations.copy()
    na = np.ones(len(rows), np.uint8)
    sid = np.full(len(rows), -1, np.int32)
    if slow:
        pos = np.fromiter(slow, dtype=np.int64, count=len(slow))
        vals = list(slow.values())
        mn[pos] = [v[0] for v in vals]
        mx[pos] = [v[1] for v in vals]
        na[pos] = [v[2] for v in vals]
        sid[pos] = [v[3] for v in vals]
    return _columns(
        durations,
        mn,
        mx,
        na,
        (idx + first + 1),
        starts[idx] if n else [],
        (ends - starts)[idx] if n else [],
        tl,
        sid,
        np.zeros(len(rows)),
    ), drops


def _columns(*cols: Any) -> dict[str, np.ndarray]:
    names = (
        "duration",
        "min_clip",
        "max_clip",
        "num_audios",
        "line_no",
        "line_offset",
        "line_length",
        "text_len",
        "shard_id",
        "dataset",
    )
    dtypes = {**_COLUMNS, "dataset": np.uint16}
    return {k: np.asarray(c, dtype=dtypes[k]) for k, c in zip(names, cols, strict=True)}


def _measure_cached(
    audio: list[str],
    off: list[float],
    keys: ManifestKeys,
    root: str,
    manifest: str,
    cache: dict[str, float],
    where: str,
) -> list[float]:
    if keys.tarred:
        raise DataError("bad_line", where, "tarred manifests must give 'duration' for every entry")
    out = []
    for a, o in zip(audio, off, strict=True):
        p = resolve_audio(a, root)
        shown = describe_audio(a, manifest)
        if is_remote(p):
            raise DataError("bad_line", where, f"{p}: 'duration' is required for audio on object storage")
        total = cache.get(p)
        if total is None:
            info = audio_info(p, where=f"{where}: {shown}")
            _check_not_empty(info.frames, shown, where)
            total = cache[p] = info.duration
        if total - o <= 0:
            raise DataError("decode_error", where, f"offset {o} s is past the end of {shown} ({total:.3f} s)")
        out.append(total - o)
    return out


def _cache_path(path: Path, keys: ManifestKeys, on_error: str, folder: Path) -> Path:
    return folder / f"{source_digest(path)}.{keys.digest()}.{on_error}.v{CACHE_VERSION}.npz"


def _load_cached(path: Path, cache_file: Path, keys: ManifestKeys, root: str) -> Index | None:
    """The cached Index of ``path`` if the entry is still valid (see :mod:`speechdata.cache`)."""
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            columns = {name: z[name] for name in (*_COLUMNS, "dataset")}
        stamp = FileStamp.from_dict(meta["stamp"])
        if meta["real_path"] != os.path.realpath(path):
            return None
    except (OSError, KeyError, TypeError, ValueError):
        return None
    now = FileStamp.of(path)
    if not stamp.same_file(now):
        if (stamp.size, stamp.mtime_ns) != (now.size, now.mtime_ns) or crc32_of(path=path) != meta["crc32"]:
            return None
        if now != stamp:  # unchanged content (a restore, a chmod): keep the fresh stamp
            meta["stamp"] = now.to_dict()
            _write_npz(cache_file, columns, meta)
    info = meta["info"]
    source = str(path) if info["plain"] is None else str(cache_file.parent / info["plain"])
    if info["plain"] is not None and not os.path.exists(source):
        return None
    drops = DropCounter()
    drops.merge(meta["drops"])
    drops.examples = meta.get("drop_examples", {})
    drops.places = meta.get("drop_places", {})
    drops.notes = meta.get("drop_notes", {})
    touch(cache_file)
    dataset = DatasetInfo(str(path), info["name"], source, root, info["num_lines"], meta["drops"])
    return Index(columns, [dataset], keys, drops)


def _save_cached(path: Path, cache_file: Path, index: Index, stamp: FileStamp, crc: int) -> None:
    info = index.datasets[0]
    plain = None if info.source == str(path) else Path(info.source).name
    meta = {
        "real_path": os.path.realpath(path),
        "stamp": stamp.to_dict(),
        "crc32": crc,
        "info": {"name": info.name, "num_lines": info.num_lines, "plain": plain},
        "drops": index.drops.to_dict(),
        "drop_examples": index.drops.examples,
        "drop_places": index.drops.places,
        "drop_notes": index.drops.notes,
    }
    _write_npz(cache_file, {name: getattr(index, name) for name in (*_COLUMNS, "dataset")}, meta)
    keep_plain = None if plain is None else cache_file.parent / plain
    prune(cache_file.parent, source_digest(path), keep=cache_file, keep_plain=keep_plain)


def _write_npz(cache_file: Path, columns: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    arrays = dict(columns)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, cache_file)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_index(
    manifests: str | Path | Sequence[str | Path],
    keys: ManifestKeys | None = None,
    *,
    on_error: str = "raise",
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> Index:
    """Index one or more manifests (``.json``, ``.jsonl``, optionally ``.gz``).

    ``manifests`` is a path, a comma-separated string of paths, or a list (``~`` is expanded); a
    path may be an object-storage URL (indexed from a local copy, :func:`speechdata.storage.local_copy`).
    With ``on_error="raise"`` the first bad line raises a one-line :class:`DataError` naming file
    and line; with ``"skip"`` it is counted in ``index.drops`` under its reason. Each manifest's
    index is cached under :func:`speechdata.cache.cache_root` (``cache_dir``, else
    ``$SPEECHDATA_CACHE_DIR``, else ``~/.cache/speechdata``), bound to the manifest's real path
    and content; ``cache=False`` neither reads nor writes entries.
    """
    if isinstance(manifests, (str, Path)):
        manifests = [p.strip() for p in str(manifests).split(",") if p.strip()]
    keys = keys or ManifestKeys()
    parts = []
    for m in manifests:
        # a manifest on object storage is indexed (and read back) from its local copy
        path = local_copy(str(m), cache_dir) if is_remote(str(m)) else Path(os.path.expanduser(str(m)))
        if not path.is_file():
            raise SpeechDataError(f"{m}: manifest not found")
        try:
            folder: Path | None = cache_folder("index", cache_dir)
        except OSError as e:
            if cache and cache_dir is not None:
                raise SpeechDataError(f"{cache_dir}: cannot use as cache folder ({e.strerror})") from None
            folder = None  # no writable cache: index every time
        use_cache = cache and folder is not None
        # relative audio paths of a manifest on object storage resolve against its URL's folder
        root = str(m).rsplit("/", 1)[0] if is_remote(str(m)) else manifest_root(path)
        part = None
        if use_cache:
            assert folder is not None
            cfile = _cache_path(path, keys, on_error, folder)
            part = _load_cached(path, cfile, keys, root)
        if part is None:
            stamp = FileStamp.of(path)
            part = build_one(path, keys, on_error, folder, root)
            if use_cache and FileStamp.of(path) == stamp:  # not edited while it was being indexed
                assert part.datasets[0].crc32 is not None
                _save_cached(path, cfile, part, stamp, part.datasets[0].crc32)
        part.datasets[0].path = str(m)
        parts.append(part)
    return parts[0] if len(parts) == 1 else Index.concat(parts)
