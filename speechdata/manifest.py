"""NeMo JSONL manifests to an :class:`Index`: metadata in numpy columns, text left on disk.

One pass with orjson fills the columns (duration, clip count, dataset, line number, byte offset of
the line, text length, shard id). Paths and text stay in the manifest and are read back by byte
offset when a batch needs them (:meth:`Index.record`). The index of each manifest is cached (an
``.npz`` keyed by the manifest's size and mtime and the key settings) so the next start is a load.

Key resolution follows NeMo (SPEC §1): audio from ``audio_filepath`` (or ``audio_filename``,
``audio_file``), a string or a list for multi-audio; ``duration`` and ``offset`` as numbers or
lists; the answer from ``answer_key`` else ``text``; the context from ``context_key`` else
``question`` else ``default_context``. Relative paths resolve against the manifest's folder. A
missing duration is measured from the audio header, never guessed.

Example::

    >>> index = load_index(["train.jsonl", "extra.jsonl.gz"])
    >>> len(index), float(index.duration.sum()) / 3600
    (120000, 180.2)
    >>> index.record(5).answer
    'the cat sat on the mat'
"""

from __future__ import annotations

import gzip
import hashlib
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
from speechdata.errors import DataError, DropCounter, SpeechDataError, handle
from speechdata.openfiles import OpenFiles

AUDIO_KEYS = ("audio_filepath", "audio_filename", "audio_file")
_RESERVED = {*AUDIO_KEYS, "duration", "offset"}
CACHE_VERSION = 3
#: Largest duration or offset accepted (about 116 days): larger values are typos or garbage, and
#: would overflow the float32 columns to infinity.
MAX_SECONDS = 1e7
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


@dataclass(frozen=True)
class ManifestKeys:
    """How manifest fields are resolved; part of the cache key.

    ``tarred``: audio paths are tar member names (kept as they are, never resolved on disk).
    ``require_context``: a line without any context (and no ``default_context``) is an error.
    """

    answer_key: str = "answer"
    context_key: str = "context"
    default_context: str | None = None
    tarred: bool = False
    require_context: bool = False

    def digest(self) -> str:
        """A stable short digest of these settings (sha1, never ``hash()``)."""
        blob = json.dumps(self.__dict__, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


@dataclass
class Record:
    """One example read back from its manifest line, keys resolved."""

    audio: list[str]
    offset: list[float]
    duration: list[float]
    context: str | None
    answer: str
    extra: dict[str, Any]
    where: str
    sample_id: int
    shard_id: int = -1
    row: int = -1


@dataclass
class DatasetInfo:
    """One manifest of an Index."""

    path: str
    name: str
    source: str
    root: str
    num_lines: int
    drops: dict[str, int] = field(default_factory=dict)


def pack_sample_id(dataset: int, line_no: int) -> int:
    """Stable example id: dataset number in the high 32 bits, 1-based line number in the low."""
    return (int(dataset) << 32) | int(line_no)


def unpack_sample_id(sample_id: int) -> tuple[int, int]:
    """Inverse of :func:`pack_sample_id`."""
    return int(sample_id) >> 32, int(sample_id) & 0xFFFFFFFF


# ----------------------------------------------------------------------------- line parsing


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _number_list(value: Any, n: int, key: str, default: float | None) -> list[float] | None:
    if value is None:
        return None if default is None else [default] * n
    items = _as_list(value)
    if len(items) != n:
        raise ValueError(f"'{key}' has {len(items)} values but the line has {n} audios")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"'{key}' must be a number, got {v!r}"[:200])
        out.append(float(v))
    return out


def parse_line(
    obj: Any, keys: ManifestKeys
) -> tuple[list[str], list[float] | None, list[float], str | None, str]:
    """Resolve one decoded manifest line: ``(audio, duration|None, offset, context, answer)``.

    Raises ``ValueError`` with a short message for anything malformed (the caller adds file:line).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    audio_val = None
    for k in AUDIO_KEYS:
        if k in obj:
            audio_val = obj[k]
            break
    if audio_val is None:
        raise ValueError("no audio path (audio_filepath / audio_filename / audio_file)")
    audio = _as_list(audio_val)
    if not audio or not all(isinstance(a, str) and a for a in audio):
        raise ValueError("audio path must be a non-empty string or a list of them")
    if len(audio) > 255:
        raise ValueError(f"too many audios in one example ({len(audio)} > 255)")
    n = len(audio)
    dur = _number_list(obj.get("duration"), n, "duration", None)
    off = _number_list(obj.get("offset"), n, "offset", 0.0)
    assert off is not None
    if dur is not None:
        for d in dur:
            if not 0 < d < MAX_SECONDS:
                raise ValueError(f"duration must be a finite number > 0 and < {MAX_SECONDS:g} s, got {d}")
    for o in off:
        if not 0 <= o < MAX_SECONDS:
            raise ValueError(f"offset must be a finite number >= 0 and < {MAX_SECONDS:g} s, got {o}")
    answer = obj.get(keys.answer_key)
    if answer is None:
        answer = obj.get("text")
    if answer is None:
        raise ValueError(f"no answer ('{keys.answer_key}' or 'text')")
    if not isinstance(answer, str):
        raise ValueError(f"answer must be a string, got {type(answer).__name__}")
    context = obj.get(keys.context_key)
    if context is None:
        context = obj.get("question")
    if context is None:
        context = keys.default_context
    if context is not None and not isinstance(context, str):
        raise ValueError(f"context must be a string, got {type(context).__name__}")
    if context is None and keys.require_context:
        raise ValueError(f"no context ('{keys.context_key}' or 'question') and no default_context is set")
    return audio, dur, off, context, answer


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

    def where(self, i: int) -> str:
        """``path:line`` of row ``i``, for messages."""
        return f"{self.datasets[int(self.dataset[i])].path}:{int(self.line_no[i])}"

    def record(self, i: int) -> Record:
        """Read row ``i`` back from its manifest and resolve its keys."""
        i = int(i)
        ds = int(self.dataset[i])
        info = self.datasets[ds]
        where = self.where(i)
        try:
            obj = orjson.loads(self.line(i))
            audio, dur, off, context, answer = parse_line(obj, self.keys)
        except (orjson.JSONDecodeError, ValueError) as e:  # the file changed under us
            raise DataError("bad_line", where, f"{e} (was the manifest modified after indexing?)") from None
        if not self.keys.tarred:
            audio = [a if os.path.isabs(a) else os.path.join(info.root, a) for a in audio]
        if dur is None:
            d = float(self.duration[i])
            dur = [d] if len(audio) == 1 else _measure_cached(audio, off, self.keys, info.root, {}, where)
        used = {
            self.keys.answer_key,
            "text" if self.keys.answer_key not in obj else "",
            self.keys.context_key if self.keys.context_key in obj else "question",
        }
        extra = {k: v for k, v in obj.items() if k not in _RESERVED and k not in used}
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


def _read_manifest(path: Path, cache_dir: Path) -> tuple[bytes, str]:
    """The manifest's bytes, and the file that byte offsets refer to (a decompressed copy for .gz)."""
    if path.suffix != ".gz":
        return path.read_bytes(), str(path)
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise SpeechDataError(f"{path}: cannot decompress gzip manifest: {e}") from None
    plain = cache_dir / (path.name[:-3] + ".plain")
    _atomic_write(plain, data)
    return data, str(plain)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def build_one(path: str | Path, keys: ManifestKeys, on_error: str, cache_dir: Path) -> Index:
    """Index one manifest without the cache (see :func:`load_index`).

    Large manifests are split into byte ranges parsed by forked processes, one per core.
    """
    path = Path(path)
    data, source = _read_manifest(path, cache_dir)
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if len(data) and (not len(ends) or ends[-1] != len(data) - 1):
        ends = np.append(ends, len(data))
    starts = np.empty_like(ends)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    n = len(ends)
    root = str(path.parent.resolve())
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
    info = DatasetInfo(str(path), path.name.split(".")[0], source, root, n, drops.to_dict())
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
    loads = orjson.loads
    ak, ck = keys.answer_key, keys.context_key
    default_ctx, need_ctx = keys.default_context, keys.require_context
    max_seconds = MAX_SECONDS
    rows: list[int] = []
    dur: list[float] = []
    tl: list[int] = []
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
                DataError("bad_line", f"{name}:{first + j + 1}", f"not valid JSON ({err.msg})"),
                on_error,
                drops,
            )
            continue
        # Fast path: one audio path, a numeric duration, string texts, no shard id.
        if type(obj) is dict:
            a = obj.get("audio_filepath")
            d = obj.get("duration")
            ans = obj.get(ak)
            c = obj.get(ck)
            if c is None:
                c = default_ctx
            off = obj.get("offset", 0)
            if (
                type(a) is str
                and a
                and (type(d) is float or type(d) is int)
                and 0 < d < max_seconds
                and type(ans) is str
                and (type(c) is str or (c is None and not need_ctx))
                and (off == 0 or ((type(off) is float or type(off) is int) and 0 < off < max_seconds))
                and "shard_id" not in obj
                and "question" not in obj
            ):
                rows.append(j)
                dur.append(d)
                tl.append(len(ans) + len(c) if c else len(ans))
                continue
        where = f"{name}:{first + j + 1}"
        try:
            audio, ds, offs, context, answer = parse_line(obj, keys)
            if ds is None:
                ds = _measure_cached(audio, offs, keys, root, info_cache, where)
            shard = obj.get("shard_id", -1)
            if shard is None:
                shard = -1
            if isinstance(shard, bool) or not isinstance(shard, int) or not -1 <= shard < 2**31:
                raise ValueError(f"shard_id must be an integer >= 0, got {shard!r}")
        except ValueError as err:
            handle(DataError("bad_line", where, str(err)), on_error, drops)
            continue
        except DataError as err:
            handle(err, on_error, drops)
            continue
        slow[len(rows)] = (min(ds), max(ds), len(audio), shard)
        rows.append(j)
        dur.append(sum(ds))
        tl.append(len(answer) + (len(context) if context else 0))
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
    audio: list[str], off: list[float], keys: ManifestKeys, root: str, cache: dict[str, float], where: str
) -> list[float]:
    if keys.tarred:
        raise DataError("bad_line", where, "tarred manifests must give 'duration' for every entry")
    out = []
    for a, o in zip(audio, off, strict=True):
        p = a if os.path.isabs(a) else os.path.join(root, a)
        total = cache.get(p)
        if total is None:
            info = audio_info(p, where=f"{where}: {a}")
            _check_not_empty(info.frames, a, where)
            total = cache[p] = info.duration
        if total - o <= 0:
            raise DataError("decode_error", where, f"offset {o} s is past the end of {a} ({total:.3f} s)")
        out.append(total - o)
    return out


def default_cache_dir(manifest: Path) -> Path:
    """``<manifest folder>/.speechdata_cache`` if writable, else ``~/.cache/speechdata/<digest>``."""
    local = manifest.parent / ".speechdata_cache"
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    digest = hashlib.sha1(str(manifest.resolve()).encode()).hexdigest()[:16]
    home = Path(os.environ.get("SPEECHDATA_CACHE", Path.home() / ".cache" / "speechdata")) / digest
    home.mkdir(parents=True, exist_ok=True)
    return home


def _cache_path(path: Path, keys: ManifestKeys, on_error: str, cache_dir: Path) -> Path:
    return cache_dir / f"{path.name}.{keys.digest()}.{on_error}.v{CACHE_VERSION}.npz"


def _load_cached(path: Path, cache_file: Path, keys: ManifestKeys) -> Index | None:
    st = path.stat()
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta["size"] != st.st_size or meta["mtime_ns"] != st.st_mtime_ns:
                return None
            columns = {name: z[name] for name in (*_COLUMNS, "dataset")}
    except (OSError, KeyError, ValueError):
        return None
    if not os.path.exists(meta["info"]["source"]):
        return None
    drops = DropCounter()
    drops.merge(meta["drops"])
    drops.examples = meta.get("drop_examples", {})
    return Index(columns, [DatasetInfo(**meta["info"])], keys, drops)


def _save_cached(path: Path, cache_file: Path, index: Index) -> None:
    st = path.stat()
    info = index.datasets[0]
    meta = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "info": info.__dict__,
        "drops": index.drops.to_dict(),
        "drop_examples": index.drops.examples,
    }
    arrays = {name: getattr(index, name) for name in (*_COLUMNS, "dataset")}
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

    ``manifests`` is a path, a comma-separated string of paths, or a list. With ``on_error="raise"``
    the first bad line raises a one-line :class:`DataError` naming file and line; with ``"skip"``
    it is counted in ``index.drops`` under its reason. Each manifest's index is cached (see the
    module docstring) unless ``cache=False``.
    """
    if isinstance(manifests, (str, Path)):
        manifests = [p.strip() for p in str(manifests).split(",") if p.strip()]
    keys = keys or ManifestKeys()
    parts = []
    for m in manifests:
        path = Path(m)
        if not path.is_file():
            raise SpeechDataError(f"{path}: manifest not found")
        cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir(path)
        cdir.mkdir(parents=True, exist_ok=True)
        cfile = _cache_path(path, keys, on_error, cdir)
        part = _load_cached(path, cfile, keys) if cache else None
        if part is None:
            part = build_one(path, keys, on_error, cdir)
            if cache:
                _save_cached(path, cfile, part)
        part.datasets[0].path = str(m)
        parts.append(part)
    return parts[0] if len(parts) == 1 else Index.concat(parts)
