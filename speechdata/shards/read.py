"""Reading tarred datasets: shard path expansion, member lookup by offset, and streaming.

* :func:`expand_tar_paths` turns ``tarred_audio_filepaths`` into shard lists: brace expansion
  (``audio_{0..127}.tar``), NeMo's ``_OP_``/``_CL_`` spelling of ``{``/``}``, comma-separated lists,
  and a list of lists for pre-bucketed datasets. ``pipe:`` commands and URLs are kept as they are;
  they only ever come from the config, never from a manifest.
* :class:`TarredDataset` opens a tarred dataset from a :class:`~speechdata.config.DatasetConfig`.
  Local (or mounted) shards are read by byte offset with ``os.pread``, shards on object storage
  (``s3://``, ``gs://``, ``az://``, ``http(s)://``, ``ais://`` URLs) by byte-range requests
  through a :class:`~speechdata.storage.RangeReader` (read ahead, bounded, retried): from the entry's
  ``tar_offset``/``tar_size`` when speechdata wrote it, else from a header scan of the tar (done
  once, cached beside the tar keyed by its size and mtime) for datasets written by NeMo's script,
  whose entries name members by their flattened basename (``-subN`` suffixes of repeated entries
  are resolved to the member they repeat; a remote tar's headers are read front to back once and
  cached by the object's URL and version).
* :func:`tarred_dataset_folders` finds the dataset folders of a ``speechdata shard`` output
  folder: the folder itself, or its ``bucket*`` datasets (``speechdata validate`` and
  ``speechdata inspect`` both use it).
* :func:`stream_tarred` reads shards front to back (``pipe:`` commands through webdataset's
  openers, URLs as whole objects through fsspec), with a per-epoch shard order, shards dealt evenly to
  ranks and workers (repeating a few, never dropping any) and a ``shuffle_n`` sample buffer.

Example::

    >>> ds = TarredDataset(cfg)        # cfg.manifest_filepath = tarred_audio_manifest.json
    >>> rec = ds.index.record(0)
    >>> [len(b) for b in ds.read_audio_bytes(rec)]
    [96044]
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from braceexpand import braceexpand

from speechdata.cache import FileStamp, cache_folder, source_digest, touch
from speechdata.config import DatasetConfig, split_paths
from speechdata.errors import ConfigError, DataError
from speechdata.manifest import AUDIO_KEYS, Index, Record, load_index, manifest_keys, unpack_sample_id
from speechdata.openfiles import OpenFiles
from speechdata.shards.tarfmt import Member, scan_members
from speechdata.storage import (
    RangeReader,
    RemoteOptions,
    Span,
    call_with_retries,
    is_remote,
    local_copy,
    object_version,
    open_object,
)
from speechdata.storage.presign import scrub

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SHARD_NUMBER = re.compile(r"(\d+)\.tar(?![A-Za-z0-9])")
_SUB = re.compile(r"-sub\d+(?=\.[^./]*$|$)")
_CACHE_VERSION = 2
#: The manifest of every entry of a tarred dataset folder.
MANIFEST = "tarred_audio_manifest.json"


# ------------------------------------------------------------------------------ folders


def tarred_dataset_folders(root: str | Path) -> list[Path]:
    """The tarred dataset folders in ``root``: ``[root]`` when it holds :data:`MANIFEST`, else its
    ``bucket*`` subfolders that do, in bucket order (``bucket2`` before ``bucket10``); ``[]`` when
    there are none."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return [root]
    return sorted(
        (p for p in root.glob("bucket*") if (p / MANIFEST).is_file()), key=lambda p: _bucket_key(p.name)
    )


def remote_dataset_folders(url: str) -> list[str]:
    """:func:`tarred_dataset_folders` of a folder on object storage (listed through its fsspec
    filesystem): ``[url]`` when it holds :data:`MANIFEST`, else its ``bucket*`` subfolders that
    do, in bucket order; ``[]`` when there are none."""
    from speechdata.storage import list_folder

    url = url.rstrip("/")
    names = list_folder(url)
    if MANIFEST in names:
        return [url]
    buckets = [n for n in names if n.startswith("bucket") and MANIFEST in list_folder(f"{url}/{n}")]
    return [f"{url}/{n}" for n in sorted(buckets, key=_bucket_key)]


def _bucket_key(name: str) -> int:
    """The number of a ``bucketN`` folder (``bucket2`` sorts before ``bucket10``)."""
    return int(re.sub(r"\D", "", name) or 0)


# ------------------------------------------------------------------------------ expansion


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside braces."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _expand_one(spec: str) -> list[str]:
    spec = spec.replace("_OP_", "{").replace("_CL_", "}")
    items = [spec.strip()] if spec.lstrip().startswith("pipe:") else _split_top_level(spec)
    out: list[str] = []
    for item in items:
        if item.count("{") != item.count("}"):
            raise ConfigError(f"tarred_audio_filepaths: unbalanced braces in {item!r}")
        out.extend(braceexpand(item))
    return out


def expand_tar_paths(spec: str | Sequence[str] | Sequence[Sequence[str]]) -> list[str] | list[list[str]]:
    """Expand ``tarred_audio_filepaths`` into shard paths (or one list per bucket).

    >>> expand_tar_paths("d/audio__OP_0..2_CL_.tar")
    ['d/audio_0.tar', 'd/audio_1.tar', 'd/audio_2.tar']
    >>> expand_tar_paths([["b1/audio_{0..1}.tar"], ["b2/audio_0.tar"]])
    [['b1/audio_0.tar', 'b1/audio_1.tar'], ['b2/audio_0.tar']]
    """
    if isinstance(spec, str):
        return _expand_one(spec)
    items = list(spec)
    if items and all(not isinstance(x, str) for x in items):
        return [[p for s in inner for p in _expand_one(str(s))] for inner in items]
    if any(not isinstance(x, str) for x in items):
        raise ConfigError("tarred_audio_filepaths: mix of strings and lists; use one or the other")
    return [p for s in items for p in _expand_one(str(s))]


def paired_shards(manifest: str, shards: Any) -> list[tuple[str, str]] | None:
    """NeMo's pairing by position: when ``manifest`` is a pattern (``{0..N}`` or ``_OP_0..N_CL_``)
    naming several manifest shards, the ``(manifest i, tar i)`` pairs with the tars of
    ``shards`` (that manifest's ``tarred_audio_filepaths`` spec), as NeMo's tarred conversation
    reader zips them; ``None`` for a plain manifest path. Counts that differ are a one-line
    :class:`ConfigError`."""
    if "{" not in manifest and "_OP_" not in manifest:
        return None
    manifests = _expand_one(manifest)
    tars = expand_tar_paths(shards)
    if not tars or not all(isinstance(t, str) for t in tars):
        raise ConfigError(f"tarred_audio_filepaths: manifest {manifest} needs one list of tars to pair with")
    if len(manifests) != len(tars):
        raise ConfigError(
            f"manifest_filepath {manifest} names {len(manifests)} manifest(s) but tarred_audio_filepaths "
            f"names {len(tars)} tar(s); manifest i is read with tar i, so the counts must be equal"
        )
    return list(zip(manifests, tars, strict=True))  # type: ignore[arg-type]


def shard_ids(paths: Sequence[str]) -> list[int]:
    """Shard number of each path: the ``N`` of ``..._N.tar`` when every path has a distinct one
    (NeMo's ``audio_N.tar`` naming), else the position in the list."""
    found = [_SHARD_NUMBER.findall(p) for p in paths]
    nums = [int(f[-1]) if f else -1 for f in found]
    if all(n >= 0 for n in nums) and len(set(nums)) == len(nums):
        return nums
    return list(range(len(paths)))


def local_path(url: str) -> str | None:
    """The file system path of a shard, or None for a ``pipe:`` command or a URL."""
    if url.startswith("file://"):
        return url[len("file://") :]
    if url.startswith("pipe:") or _SCHEME.match(url):
        return None
    return url


def strip_sub(name: str) -> str:
    """``x-sub2.wav`` -> ``x.wav``: NeMo's name for the 2nd repeat of member ``x.wav``."""
    return _SUB.sub("", name)


# ------------------------------------------------------------------------- member tables


def member_table(tar: str | os.PathLike[str], cache_dir: str | Path | None = None) -> dict[str, Member]:
    """``{member name: Member(offset, size)}`` of a tar, from a header scan that is cached.

    The cache entry (``<cache folder>/tar_members/<digest>.members.v2.json``, the folder as in
    ``docs/caching.md``; one entry per tar) is bound to the tar's real path and reused while the tar's stamp (size,
    mtime, ctime, inode) is unchanged and was not racy; otherwise the headers are scanned again.
    A truncated tar gives the members before the cut (see :func:`scan_members`), so entries whose
    members survived can still be read; the others are reported as missing members.
    """
    path = Path(tar)
    try:
        now = FileStamp.of(path)
    except FileNotFoundError:
        raise DataError("missing_audio", str(path), "tar shard not found") from None
    try:
        folder: Path | None = cache_folder("tar_members", cache_dir)
    except OSError:
        folder = None  # no writable cache: scan every time
    digest = source_digest(path)
    cfile = None if folder is None else folder / f"{digest}.members.v{_CACHE_VERSION}.json"
    if cfile is not None:
        try:
            cached = orjson.loads(cfile.read_bytes())
            if cached["real_path"] == os.path.realpath(path) and FileStamp.from_dict(
                cached["stamp"]
            ).same_file(now):
                touch(cfile)
                return {k: Member(v[0], v[1]) for k, v in cached["members"].items()}
        except (OSError, KeyError, TypeError, orjson.JSONDecodeError):
            pass
    table = scan_members(path, partial=True)
    if cfile is None or FileStamp.of(path) != now:  # changed while scanned: do not cache
        return table
    try:
        blob = orjson.dumps(
            {
                "real_path": os.path.realpath(path),
                "stamp": now.to_dict(),
                "members": {k: [m.offset, m.size] for k, m in table.items()},
            }
        )
    except TypeError:  # a member name that is not valid UTF-8 (kept as surrogates): not cached
        return table
    tmp = cfile.with_name(cfile.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_bytes(blob)
        os.replace(tmp, cfile)
    except OSError:
        tmp.unlink(missing_ok=True)
    return table


def remote_member_table(url: str, cache_dir: str | Path | None = None) -> dict[str, Member]:
    """:func:`member_table` of a tar on object storage: its headers read front to back once (data
    skipped in large read-ahead blocks), cached by the object's URL and version (size and ETag or
    equivalent) in the same folder as the local tables."""
    try:
        version = object_version(url).key()
    except FileNotFoundError:
        raise DataError("missing_audio", url, "tar shard not found") from None
    except Exception as e:
        raise DataError("missing_audio", url, f"cannot read tar shard ({type(e).__name__}: {e})") from None
    try:
        folder: Path | None = cache_folder("tar_members", cache_dir)
    except OSError:
        folder = None
    key = hashlib.sha1(f"{url}\0{version}".encode()).hexdigest()[:16]
    cfile = None if folder is None else folder / f"{key}.members.v{_CACHE_VERSION}.json"
    if cfile is not None:
        try:
            cached = orjson.loads(cfile.read_bytes())
            if cached["url"] == url and cached["version"] == version:
                touch(cfile)
                return {k: Member(v[0], v[1]) for k, v in cached["members"].items()}
        except (OSError, KeyError, TypeError, orjson.JSONDecodeError):
            pass
    table = scan_remote_members(url)
    if cfile is not None:
        blob = {"url": url, "version": version, "members": {k: [m.offset, m.size] for k, m in table.items()}}
        tmp = cfile.with_name(cfile.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_bytes(orjson.dumps(blob))
            os.replace(tmp, cfile)
        except (OSError, TypeError):
            tmp.unlink(missing_ok=True)
    return table


def scan_remote_members(url: str, options: RemoteOptions | None = None) -> dict[str, Member]:
    """``{member name: Member(offset, size)}`` of a tar on object storage, its headers read front
    to back now (data skipped in large read-ahead blocks; nothing cached). A read that fails on
    the way (a reset, a body cut short, a 5xx) starts the scan again, with the range reads' retry
    rules (:func:`~speechdata.storage.call_with_retries`); after the last attempt it is a
    ``read_error`` :class:`DataError` naming the URL. A tar cut short gives the members before
    the cut; a tar with none readable is a ``decode_error``."""
    options = options or RemoteOptions.from_env()

    def once() -> tuple[dict[str, Member], str | None]:
        table: dict[str, Member] = {}
        try:
            with open_object(url, options) as f, tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if m.isfile():
                        table[m.name] = Member(m.offset_data, m.size)
        except (tarfile.TarError, EOFError, ValueError, UnicodeError) as e:  # the tar itself
            return table, " ".join(str(e).split())
        return table, None

    try:
        table, broken = call_with_retries(once, options, seed=0, url=url)
    except FileNotFoundError:
        raise DataError("missing_audio", url, "tar shard not found") from None
    except Exception as e:  # the last attempt's error, as one line naming the URL
        raise DataError(
            "read_error",
            url,
            f"tar headers not read after {options.retries + 1} attempts: {type(e).__name__}: {scrub(str(e))}",
        ) from None
    if broken is not None and not table:
        raise DataError("decode_error", url, f"not a readable tar file: {broken}")
    return table


def find_member(table: Mapping[str, Member], name: str) -> tuple[str, Member] | None:
    """Find ``name`` in a member table: exactly, else without NeMo's ``-subN`` suffix; returns the
    name found and the member."""
    for key in (name, strip_sub(name)):
        m = table.get(key)
        if m is not None:
            return key, m
    return None


def lookup_member(table: Mapping[str, Member], name: str) -> Member | None:
    """The member ``name`` names in a member table (see :func:`find_member`), or None."""
    found = find_member(table, name)
    return None if found is None else found[1]


# --------------------------------------------------------------------------- random access


@dataclass(frozen=True)
class MemberPlace:
    """One audio of an entry inside a tarred dataset: the shard (as configured), the member's
    name in it and its byte range."""

    tar: str
    name: str
    member: Member


class TarredDataset:
    """A tarred dataset opened from a config: ``index`` (metadata rows knowing their shard),
    ``buckets`` (pre-bucket id per row for a list-of-lists ``tarred_audio_filepaths``, else None),
    ``seekable`` (every shard is a local file or an object-storage URL: no ``pipe:`` command),
    ``remote`` (some shard is a URL), and :meth:`read_audio_bytes`.

    ``manifest_filepath`` lists the tarred manifest(s). ``tarred_audio_filepaths`` is one spec for
    one manifest, one spec per manifest, or (pre-bucketed) one list per manifest, bucket order.
    File descriptors and the remote reader are made lazily per process, so the object can go to
    DataLoader workers. Remote members are read ahead: :meth:`prefetch` announces a record's
    members (the source calls it as each record of a batch is read), and :meth:`read_audio_bytes`
    then finds them fetched or in flight.
    """

    def __init__(
        self, cfg: DatasetConfig, *, cache_dir: str | Path | None = None, index: Index | None = None
    ):
        manifests = cfg.manifests or split_paths(cfg.manifest_filepath)
        if not manifests:
            raise ConfigError("manifest_filepath: a tarred dataset needs its tarred manifest(s)")
        if cfg.tarred_audio_filepaths is None:
            raise ConfigError("tarred_audio_filepaths: required when is_tarred is true")
        expanded = expand_tar_paths(cfg.tarred_audio_filepaths)
        prebucketed = bool(expanded) and isinstance(expanded[0], list)
        per_dataset: list[list[str]]
        if prebucketed:
            per_dataset = [list(x) for x in expanded]  # type: ignore[arg-type]
        elif len(manifests) == 1:
            per_dataset = [list(expanded)]  # type: ignore[arg-type]
        elif isinstance(cfg.tarred_audio_filepaths, list) and len(cfg.tarred_audio_filepaths) == len(
            manifests
        ):
            per_dataset = [expand_tar_paths(str(s)) for s in cfg.tarred_audio_filepaths]  # type: ignore[misc]
        else:
            raise ConfigError(
                f"tarred_audio_filepaths: {len(manifests)} manifests need one shard spec each "
                "(a list of the same length)"
            )
        if len(per_dataset) != len(manifests):
            raise ConfigError(
                f"tarred_audio_filepaths: {len(per_dataset)} shard lists for {len(manifests)} manifests; "
                "give one list per manifest (bucket)"
            )
        for k, paths in enumerate(per_dataset):
            if not paths:
                raise ConfigError(f"tarred_audio_filepaths: no shards for manifest {manifests[k]}")
        self.shard_paths: list[dict[int, str]] = [
            dict(zip(shard_ids(paths), paths, strict=True)) for paths in per_dataset
        ]
        every = [p for paths in per_dataset for p in paths]
        self.remote = any(is_remote(p) for p in every)
        self.seekable = all(is_remote(p) or local_path(p) is not None for p in every)
        if self.seekable:
            for p in every:
                local = local_path(p)
                if local is not None and not os.path.isfile(local):
                    raise ConfigError(f"tarred_audio_filepaths: shard not found: {local}")
        if index is None:
            keys = replace(manifest_keys(cfg), tarred=True)  # member names, whatever is_tarred says
            index = load_index(manifests, keys, on_error=cfg.on_error)
        self.index = index
        self.buckets: np.ndarray | None = self.index.dataset.copy() if prebucketed else None
        self.cache_dir = cache_dir if cache_dir is not None else cfg.cache_dir
        self._tables: dict[str, dict[str, Member]] = {}
        self._files = OpenFiles()
        self._reader = RangeReader(
            cfg.remote, seed=cfg.seed, cache_dir=None if self.cache_dir is None else str(self.cache_dir)
        )

    def shard_path(self, dataset: int, shard_id: int, where: str = "") -> str:
        """The shard file of ``shard_id`` in manifest ``dataset``.

        A ``shard_id`` that ``tarred_audio_filepaths`` does not list is a bad manifest entry:
        ``DataError("missing_audio")`` naming ``where`` (the entry's ``path:line``).
        """
        try:
            return self.shard_paths[dataset][shard_id]
        except (KeyError, IndexError):
            known = sorted(self.shard_paths[dataset]) if dataset < len(self.shard_paths) else []
            shown = f"{known[0]}..{known[-1]}" if known else "none"
            raise DataError(
                "missing_audio",
                where or self.index.datasets[dataset].path,
                f"shard_id {shard_id} names no shard of tarred_audio_filepaths (shard ids {shown})",
            ) from None

    def _fd(self, path: str) -> int:
        return self._files.fd(str(local_path(path)))

    def _table(self, path: str) -> dict[str, Member]:
        table = self._tables.get(path)
        if table is None:
            table = self._tables[path] = (
                remote_member_table(path, self.cache_dir)
                if is_remote(path)
                else member_table(str(local_path(path)), self.cache_dir)
            )
        return table

    def _locate(self, dataset: int, shard_id: int, name: str, where: str) -> MemberPlace:
        candidates = (
            [self.shard_path(dataset, shard_id, where)]
            if shard_id >= 0
            else [self.shard_paths[dataset][k] for k in sorted(self.shard_paths[dataset])]
        )
        for path in candidates:
            found = find_member(self._table(path), name)
            if found is not None:
                return MemberPlace(path, *found)
        shown = candidates[0] if len(candidates) == 1 else f"{len(candidates)} shards"
        raise DataError("missing_audio", where, f"member {name!r} not found in {shown}")

    def member_places(self, record: Record) -> list[MemberPlace]:
        """Where each audio of ``record`` lies: its shard, its member name and byte range. From the
        entry's ``tar_offset``/``tar_size`` when it has them (speechdata's layout), else from the
        shard's member table (NeMo's layout; ``-subN`` names resolved)."""
        dataset = unpack_sample_id(record.sample_id)[0]
        offs = record.extra.get("tar_offset")
        sizes = record.extra.get("tar_size")
        n = len(record.audio)
        if offs is not None and sizes is not None and record.shard_id >= 0:
            offs = offs if isinstance(offs, list) else [offs]
            sizes = sizes if isinstance(sizes, list) else [sizes]
            if len(offs) != n or len(sizes) != n:
                raise DataError(
                    "bad_line", record.where, f"tar_offset/tar_size need {n} values, one per audio"
                )
            if not all(_is_count(v) for v in (*offs, *sizes)):
                raise DataError("bad_line", record.where, "tar_offset/tar_size must be integers >= 0")
            path = self.shard_path(dataset, record.shard_id, record.where)
            return [
                MemberPlace(path, name, Member(int(o), int(sz)))
                for name, o, sz in zip(record.audio, offs, sizes, strict=True)
            ]
        return [self._locate(dataset, record.shard_id, name, record.where) for name in record.audio]

    def read_audio_bytes(self, record: Record) -> list[bytes]:
        """The bytes of each audio member of ``record`` (one per clip), read by offset."""
        if not self.seekable:
            raise ConfigError(
                "tarred_audio_filepaths: shards are pipe: commands; read them with stream_tarred"
            )
        return [self.read_member(place) for place in self.member_places(record)]

    def prefetch(self, record: Record, ahead: bool = False) -> None:
        """Start reading the remote members of ``record`` ahead of :meth:`read_audio_bytes`
        (records are announced in the order their audio will be read; ``ahead``: a record of the
        reader's next batch, see :meth:`RangeReader.schedule`). Nothing for local shards; an entry
        whose members cannot be placed is left for :meth:`read_audio_bytes` to report."""
        if not self.remote:
            return
        try:
            places = self.member_places(record)
        except DataError:
            return
        self._reader.schedule([_span(p) for p in places if is_remote(p.tar)], ahead)

    def read_member(self, place: MemberPlace) -> bytes:
        """The bytes of one member, read by offset; a range past the end of a local tar is a one-line
        ``decode_error`` checked before reading (a wrong ``tar_size`` allocates nothing). A remote
        member is one byte-range request (read ahead when :meth:`prefetch` announced it)."""
        path, name, m = place.tar, place.name, place.member
        if is_remote(path):
            data = self._reader.read(_span(place))
            if len(data) != m.size:
                raise DataError(
                    "decode_error", f"{path}:{name}", f"tar is truncated ({len(data)} of {m.size} bytes)"
                )
            return data
        fd = self._fd(path)
        end = os.fstat(fd).st_size
        if m.offset + m.size > end:
            raise DataError(
                "decode_error",
                f"{path}:{name}",
                f"member bytes {m.offset}-{m.offset + m.size} lie past the end of the tar ({end} bytes): "
                "the tar is truncated or tar_offset/tar_size are wrong",
            )
        data = os.pread(fd, m.size, m.offset)
        if len(data) != m.size:
            raise DataError(
                "decode_error", f"{path}:{name}", f"tar is truncated ({len(data)} of {m.size} bytes)"
            )
        return data

    def close(self) -> None:
        """Close shard file descriptors and stop remote reads (reopened on demand)."""
        self._files.close()
        self._reader.close()


def _span(place: MemberPlace) -> Span:
    return Span(place.tar, place.member.offset, place.member.size, place.name)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# ------------------------------------------------------------------------------- streaming


def entry_names(entry: Mapping[str, Any]) -> list[str]:
    """Member names of a tarred manifest entry (one per audio)."""
    for k in AUDIO_KEYS:
        if k in entry:
            v = entry[k]
            return [str(x) for x in v] if isinstance(v, list) else [str(v)]
    return []


def entries_by_member(manifests: str | Sequence[str | Path]) -> dict[str, list[dict[str, Any]]]:
    """Read tarred manifest(s) into ``{member name: [entries that use it]}`` for :func:`stream_tarred`."""
    paths = split_paths(manifests) if isinstance(manifests, str) else [str(m) for m in manifests]
    out: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        with open(local_copy(path) if is_remote(path) else path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise DataError("bad_line", f"{path}:{line_no}", f"not valid JSON ({e.msg})") from None
                for name in entry_names(entry):
                    out.setdefault(name, []).append(entry)
    return out


def deal_shards(
    num_shards: int,
    *,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    worker_id: int,
    num_workers: int,
    shuffle: bool = True,
) -> list[int]:
    """Shard positions read by one (rank, worker) in one epoch.

    The order is a permutation seeded by ``(seed, epoch)`` (identity without ``shuffle``); when the
    shards do not divide evenly among ``world_size * num_workers`` readers, the order is extended
    cyclically so that every reader gets the same number and no shard is left out.
    """
    slots = world_size * num_workers
    if not 0 <= rank < world_size or not 0 <= worker_id < num_workers:
        raise ValueError(f"rank {rank}/{world_size}, worker {worker_id}/{num_workers} out of range")
    order = (
        np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(num_shards).tolist()
        if shuffle
        else list(range(num_shards))
    )
    total = math.ceil(num_shards / slots) * slots
    order = [order[i % num_shards] for i in range(total)]
    return order[rank * num_workers + worker_id :: slots]


#: A tarred manifest entry: a decoded line (:func:`entries_by_member`) or its :class:`Record`.
Entry = Record | dict[str, Any]
#: Member name -> the tarred manifest entries that use it.
MemberTable = Mapping[str, Sequence[Entry]]


def _iter_members(url: str) -> Iterator[tuple[str, bytes]]:
    if is_remote(url):
        stream = open_object(url)
    else:
        from webdataset import gopen

        stream = gopen(url, "rb")
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tf:
            for m in tf:
                if m.isfile():
                    f = tf.extractfile(m)
                    if f is not None:
                        yield m.name, f.read()
    except tarfile.TarError as e:
        raise DataError("decode_error", url, f"not a readable tar stream: {e}") from None
    finally:
        stream.close()


def _place(entry: Entry) -> tuple[list[str], int | None]:
    """An entry's member names and the shard it names (``None``: whichever shard holds it)."""
    if isinstance(entry, Record):
        return entry.audio, (entry.shard_id if entry.shard_id >= 0 else None)
    sid = entry.get("shard_id")
    return entry_names(entry), (sid if isinstance(sid, int) else None)


def _stream_shard(
    url: str,
    shard_id: int,
    by_member: MemberTable,
    by_stripped: MemberTable,
    report_missing: bool = False,
) -> Iterator[tuple[Entry, list[bytes]] | DataError]:
    yielded: set[int] = set()
    kept: dict[str, bytes] = {}
    seen: set[str] = set()
    for name, data in _iter_members(url):
        seen.add(name)
        candidates = [*by_member.get(name, ()), *by_stripped.get(name, ())]
        for entry in candidates:
            names, sid = _place(entry)
            if (sid is not None and sid != shard_id) or id(entry) in yielded:
                continue
            if len(names) == 1:
                yielded.add(id(entry))
                yield entry, [data]
                continue
            kept[name] = data
            if all(n in kept for n in names):
                yielded.add(id(entry))
                yield entry, [kept[n] for n in names]
    if report_missing:  # a per-shard table: every record in it that names this shard was due here
        yield from _missing_members(url, shard_id, by_member, yielded, seen)


def _missing_members(
    url: str, shard_id: int, by_member: MemberTable, yielded: set[int], seen: set[str]
) -> Iterator[DataError]:
    """A ``missing_audio`` error for each record that names this shard (its ``shard_id``) but
    was not yielded when the shard ended: a member it names is not in the tar."""
    reported: set[int] = set()
    for entries in by_member.values():
        for rec in entries:
            if not isinstance(rec, Record) or rec.shard_id != shard_id or id(rec) in yielded | reported:
                continue
            reported.add(id(rec))
            absent = next((n for n in rec.audio if n not in seen and strip_sub(n) not in seen), rec.audio[0])
            yield DataError("missing_audio", rec.where, f"member {absent!r} not found in {url}")


def _stripped(by_member: MemberTable) -> dict[str, list[Entry]]:
    """The entries again under member names without their sub-extension (``a.x.wav`` -> ``a.wav``)."""
    out: dict[str, list[Entry]] = {}
    for name, entries in by_member.items():
        base = strip_sub(name)
        if base != name:
            out.setdefault(base, []).extend(entries)
    return out


def stream_tarred(
    cfg: DatasetConfig,
    shard_urls: Sequence[str],
    by_member: MemberTable | Callable[[int], MemberTable],
    *,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    worker_id: int = 0,
    num_workers: int = 1,
    seed: int | None = None,
) -> Iterator[tuple[Entry, list[bytes]] | DataError]:
    """Stream ``(entry, [member bytes per audio])`` from non-seekable shards.

    ``shard_urls`` come from the config (``pipe:`` commands, http(s) URLs or paths opened with
    ``webdataset.gopen``); ``by_member`` maps member names to tarred manifest entries (decoded
    lines from :func:`entries_by_member`, or their :class:`Record`), or is called with a shard's
    id to give that shard's map just before the shard is streamed (so a reader looks up only the
    entries of its own shards). This reader's shards are :func:`deal_shards` of the epoch; with
    ``cfg.shuffle`` the shard order is seeded by ``(seed, epoch)`` and samples pass through a
    ``cfg.shuffle_n`` buffer seeded by ``(seed, epoch, rank, worker_id)``. An entry is yielded by
    the shard its ``shard_id`` names (all shards when it has none), once per shard pass. With a
    per-shard ``by_member``, a :class:`~speechdata.manifest.Record` that names a shard whose tar
    lacks one of its members is yielded as its ``missing_audio`` :class:`DataError` when that
    shard ends.
    """
    seed = cfg.seed if seed is None else seed
    ids = shard_ids(list(shard_urls))
    fixed = None if callable(by_member) else (by_member, _stripped(by_member))
    mine = deal_shards(
        len(shard_urls),
        epoch=epoch,
        seed=seed,
        rank=rank,
        world_size=world_size,
        worker_id=worker_id,
        num_workers=num_workers,
        shuffle=cfg.shuffle,
    )

    def samples() -> Iterator[tuple[Entry, list[bytes]] | DataError]:
        for k in mine:
            if fixed is None:
                table = by_member(ids[k])  # type: ignore[operator]
                yield from _stream_shard(shard_urls[k], ids[k], table, _stripped(table), True)
            else:
                yield from _stream_shard(shard_urls[k], ids[k], *fixed)

    if cfg.shuffle and cfg.shuffle_n > 1:
        from speechdata.sampling.stream import shuffle_buffer

        rng = np.random.default_rng([int(seed), int(epoch), int(rank), int(worker_id), 0xB0F])
        yield from shuffle_buffer(samples(), cfg.shuffle_n, rng)
    else:
        yield from samples()
