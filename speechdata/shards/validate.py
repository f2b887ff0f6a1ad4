"""Checking every entry of a tarred dataset against its tars (the command is ``speechdata validate``,
:mod:`speechdata.commands.validate`).

Each entry of ``DIR/tarred_audio_manifest.json`` (or of every ``DIR/bucket*/`` dataset) is read
by the loader's rule (:func:`~speechdata.lines.parse_line`: a line the loader would refuse is a
``bad_line``), and for each of its audios: the member is in its shard (``audio_{shard_id}.tar``; NeMo's ``-subN`` names
resolve to the member they repeat), ``tar_offset``/``tar_size`` (when present) point at it, the
span ``[offset, offset + duration]`` fits in the member by the loader's own rule
(:func:`~speechdata.shards.plan.check_span`: at most ``DURATION_TOLERANCE`` = 0.05 s past the
end) and decodes, and for datasets written with ``--slice-with-offset`` the member's length equals
the entry's duration within ``max(0.1 s, 1 %)``. Members that no entry uses are listed as
orphans. The tars' headers are scanned afresh (no cached index is trusted).

``DIR`` may be a folder on object storage (``s3://bucket/ds``, as the loader takes it): the
manifest is read from a local copy (:func:`~speechdata.storage.local_copy`), each tar's headers
front to back (:func:`~speechdata.shards.read.scan_remote_members`) and each member by range;
messages name the URLs.

Every problem is one line of :attr:`ValidationReport.problems`; ``ok`` only when there is none.

Example::

    >>> report = validate("shards/")
    >>> report.problems[0][1]
    'shards/audio_3.tar:audio_000123.flac: cannot decode audio: ...'
    >>> print(report.summary())
    speechdata validate: 1200 entries, 1 problem (decode=1), 0 orphan members
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from tqdm import tqdm

from speechdata.audio import audio_info, load_audio
from speechdata.errors import ConfigError, DataError
from speechdata.lines import ManifestKeys, parse_line
from speechdata.shards.executors import Executor, LocalExecutor, check_executor, open_executor
from speechdata.shards.plan import check_span
from speechdata.shards.read import (
    MANIFEST,
    entry_names,
    lookup_member,
    remote_dataset_folders,
    scan_remote_members,
    strip_sub,
    tarred_dataset_folders,
)
from speechdata.shards.tarfmt import Member, scan_members
from speechdata.storage import RangeReader, Span, is_remote, list_folder, local_copy, read_object

_SHARD = re.compile(r"^audio_(\d+)\.tar$")

#: How validate reads lines by default: the loader's default keys, audio names are members.
TARRED_KEYS = ManifestKeys(tarred=True)


@dataclass
class ValidationReport:
    """Problems found: ``problems`` as ``(kind, message)``; ``kind`` is one of ``missing``,
    ``decode``, ``duration``, ``offset``, ``bad_line``, ``orphan``."""

    entries: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Problems per kind."""
        return dict(Counter(kind for kind, _ in self.problems))

    def summary(self) -> str:
        """One closing line."""
        counts = self.counts()
        orphans = counts.pop("orphan", 0)
        n = sum(counts.values())
        detail = f" ({', '.join(f'{k}={v}' for k, v in sorted(counts.items()))})" if counts else ""
        return (
            f"speechdata validate: {self.entries} entries, {n} problem{'s' if n != 1 else ''}{detail}, "
            f"{orphans} orphan member{'s' if orphans != 1 else ''}"
        )


def dataset_folders(root: str | Path) -> list[str]:
    """The dataset folders under ``root`` (:func:`~speechdata.shards.read.tarred_dataset_folders`,
    or :func:`~speechdata.shards.read.remote_dataset_folders` for a URL); :class:`ConfigError` when
    there is none."""
    if is_remote(str(root)):
        folders = remote_dataset_folders(str(root))
    else:
        folders = [str(f) for f in tarred_dataset_folders(root)]
    if not folders:
        raise ConfigError(f"{root}: no {MANIFEST} here or in bucket*/ subfolders")
    return folders


def _as_list(v: Any, n: int, default: float | None) -> list[Any]:
    if v is None:
        return [default] * n
    return list(v) if isinstance(v, list) else [v]


def _in(folder: str, name: str) -> str:
    """The path (or URL) of ``name`` in ``folder``."""
    return f"{folder.rstrip('/')}/{name}" if is_remote(folder) else str(Path(folder) / name)


def _local(path: str) -> str:
    """A local file with the content of ``path`` (a URL's local copy)."""
    return str(local_copy(path)) if is_remote(path) else path


def _sliced(folder: str) -> bool:
    where = _in(folder, "metadata.yaml")
    try:
        text = read_object(where).decode() if is_remote(where) else Path(where).read_text()
        meta = yaml.safe_load(text)
        return bool(meta["dataset_config"]["slice_with_offset"])
    except (OSError, DataError, KeyError, TypeError, UnicodeError, yaml.YAMLError):
        return False


class _Members:
    """Reads member bytes of a task's tars: local ones by ``pread`` (one descriptor per tar),
    remote ones through a :class:`~speechdata.storage.RangeReader` to which :meth:`schedule`
    announced every member of the task's remote tables in tar order, so requests stay in flight
    while earlier members decode. :meth:`close` releases both."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._reader: RangeReader | None = None

    def schedule(self, tars: dict[int, str], tables: dict[int, dict[str, Member]]) -> None:
        spans = [
            Span(tars[sid], m.offset, m.size, name)
            for sid, table in sorted(tables.items())
            if sid in tars and is_remote(tars[sid])
            for name, m in table.items()
        ]
        if spans:
            self._reader = self._reader or RangeReader()
            self._reader.schedule(spans)

    def read(self, tar: str, name: str, m: Member) -> bytes:
        if is_remote(tar):
            self._reader = self._reader or RangeReader()
            return self._reader.read(Span(tar, m.offset, m.size, name))
        if tar not in self._fds:
            self._fds[tar] = os.open(tar, os.O_RDONLY)
        return os.pread(self._fds[tar], m.size, m.offset)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _check_clip(
    data: bytes, offset: float, duration: float | None, sliced: bool, where: str, report: ValidationReport
) -> None:
    try:
        info = audio_info(data, where=where)
        total = info.duration
        if duration is None:
            duration = total - offset
        try:
            check_span(info, offset, duration, where)
        except DataError as e:
            report.problems.append(("duration", str(e)))
            return
        if sliced and abs(total - duration) > max(0.1, 0.01 * duration):
            report.problems.append(
                ("duration", f"{where}: audio is {total:.3f} s but the entry says {duration:.3f} s")
            )
            return
        load_audio(data, offset=offset, duration=min(duration, total - offset), where=where)
    except DataError as e:
        report.problems.append(("decode", f"{e}"))


@dataclass
class _Shard:
    """What one shard's task found: the scan problem of its tar, its entries' problems as
    ``(line number, kind, message)``, and its members no entry of the task used (tar order)."""

    scan: tuple[str, str] | None
    problems: list[tuple[int, str, str]]
    unused: list[str]


@dataclass
class _Folder:
    """One dataset folder, as every shard task sees it."""

    manifest: str
    tars: dict[int, str]
    sliced: bool
    keys: ManifestKeys


def _scan(tars: dict[int, str], sid: int) -> tuple[dict[str, Member], tuple[str, str] | None]:
    tar = tars[sid]
    try:
        return (scan_remote_members(tar) if is_remote(tar) else scan_members(tar)), None
    except DataError as e:
        return {}, ("decode", str(e))


def _check_lines(
    folder: _Folder,
    lines: list[tuple[int, dict[str, Any]]],
    tables: dict[int, dict[str, Member]],
    progress: Callable[[int], None],
) -> tuple[list[tuple[int, str, str]], set[tuple[int, str]]]:
    """Check entries ``(line number, entry)`` against ``tables``; their problems and the members
    they use."""
    report = ValidationReport()
    problems: list[tuple[int, str, str]] = []
    used: set[tuple[int, str]] = set()
    members = _Members()
    members.schedule(folder.tars, tables)
    try:
        for line_no, entry in lines:
            seen = len(report.problems)
            where = f"{folder.manifest}:{line_no}"
            _check_entry(entry, folder.keys, where, folder.tars, tables, members, used, folder.sliced, report)
            problems.extend((line_no, kind, msg) for kind, msg in report.problems[seen:])
            progress(1)
    finally:
        members.close()
    return problems, used


def _check_shard(
    folder: _Folder, item: tuple[int, list[tuple[int, dict[str, Any]]]], progress: Callable[[int], None]
) -> _Shard:
    """The task of one shard (:mod:`speechdata.shards.executors`): scan its tar's headers and
    check the entries whose ``shard_id`` names it."""
    sid, lines = item
    table, scan = _scan(folder.tars, sid) if sid in folder.tars else ({}, None)
    problems, used = _check_lines(folder, lines, {sid: table} if sid in folder.tars else {}, progress)
    return _Shard(scan, problems, [name for name in table if (sid, name) not in used])


def validate_folder(
    folder: str | Path,
    report: ValidationReport,
    progress: Callable[[int], None] = lambda n: None,
    executor: Executor | None = None,
    keys: ManifestKeys = TARRED_KEYS,
) -> None:
    """Check one NeMo tarred dataset folder, adding to ``report``: one task per shard (the
    entries whose ``shard_id`` names it) on ``executor`` (default: this process); entries without
    a ``shard_id`` are looked up in every shard afterwards. Problems come in the same order
    whatever ran the tasks: tars that do not scan, then entries by line, then orphan members.
    ``folder`` may be a URL (see the module docstring)."""
    folder = str(folder)
    names = list_folder(folder) if is_remote(folder) else os.listdir(folder)
    tars = {int(m.group(1)): _in(folder, n) for n in names if (m := _SHARD.match(n))}
    manifest = _in(folder, MANIFEST)
    info = _Folder(manifest, tars, _sliced(folder), keys)
    groups: dict[int, list[tuple[int, dict[str, Any]]]] = {sid: [] for sid in tars}
    loose: list[tuple[int, dict[str, Any]]] = []
    problems: list[tuple[int, str, str]] = []
    with open(_local(manifest), "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            report.entries += 1
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                problems.append((line_no, "bad_line", f"{manifest}:{line_no}: not valid JSON ({e.msg})"))
                progress(1)
                continue
            sid = entry.get("shard_id") if isinstance(entry, dict) else None
            if isinstance(sid, int) and not isinstance(sid, bool):
                groups.setdefault(sid, []).append((line_no, entry))
            else:
                loose.append((line_no, entry))
    items = sorted(groups.items())
    ex = executor if executor is not None else LocalExecutor(1)
    shards = ex.map(_check_shard, items, shared=info, weights=[len(g) for _, g in items], progress=progress)
    unused = {sid: s.unused for (sid, _), s in zip(items, shards, strict=True)}
    for s in shards:
        problems.extend(s.problems)
    if loose:
        tables = {}
        for sid in sorted(tars):
            tables[sid] = _scan(tars, sid)[0]
        found, used = _check_lines(info, loose, tables, progress)
        problems.extend(found)
        unused = {sid: [n for n in names if (sid, n) not in used] for sid, names in unused.items()}
    report.problems.extend(s.scan for s in shards if s.scan is not None)
    report.problems.extend((kind, msg) for _, kind, msg in sorted(problems, key=lambda p: p[0]))
    for sid, names in sorted(unused.items()):
        report.problems.extend(("orphan", f"{tars[sid]}:{name}: member used by no entry") for name in names)


def _find(
    name: str, shards: list[int], tables: dict[int, dict[str, Member]]
) -> tuple[int, str, Member] | None:
    """``(shard, member name, member)`` of the audio ``name`` in the first of ``shards`` that holds
    it (NeMo's ``-subN`` names resolve to the member they repeat), or None."""
    for s in shards:
        if s in tables and (m := lookup_member(tables[s], name)) is not None:
            return s, name if name in tables[s] else strip_sub(name), m
    return None


def _check_entry(
    entry: dict[str, Any],
    keys: ManifestKeys,
    where: str,
    tars: dict[int, str],
    tables: dict[int, dict[str, Member]],
    members: _Members,
    used: set[tuple[int, str]],
    sliced: bool,
    report: ValidationReport,
) -> None:
    sid = entry.get("shard_id")
    shards = [sid] if isinstance(sid, int) else sorted(tables)
    try:  # the loader's rule for a line (conversation audio turns, ShareGPT sound, clip numbers, texts)
        line = parse_line(entry, keys)
    except ValueError as e:
        report.problems.append(("bad_line", f"{where}: {e}"))
        for name in entry_names(entry):  # its members are not orphans: the line is what is wrong
            if (found := _find(name, shards, tables)) is not None:
                used.add((found[0], found[1]))
        return
    names, n = line.audio, len(line.audio)
    if not n:
        return  # a text-only example: no member
    offsets: list[float] = list(line.offset)
    durations: list[float | None] = list(line.duration) if line.duration is not None else [None] * n
    tar_offs = _as_list(entry.get("tar_offset"), n, None)
    tar_sizes = _as_list(entry.get("tar_size"), n, None)
    if not all(len(x) == n for x in (offsets, durations, tar_offs, tar_sizes)):
        report.problems.append(
            ("bad_line", f"{where}: offset/duration/tar_offset/tar_size lengths differ from the audios")
        )
        return
    for k, name in enumerate(names):
        found = _find(name, shards, tables)
        if found is None:
            shown = f"audio_{sid}.tar" if isinstance(sid, int) else "any shard"
            if isinstance(sid, int) and sid not in tars:
                report.problems.append(("missing", f"{where}: shard audio_{sid}.tar not found"))
            else:
                report.problems.append(("missing", f"{where}: member {name!r} not in {shown}"))
            continue
        s, real, m = found
        used.add((s, real))
        label = f"{tars[s]}:{real}"
        if tar_offs[k] is not None and (tar_offs[k] != m.offset or tar_sizes[k] != m.size):
            report.problems.append(
                (
                    "offset",
                    f"{where}: tar_offset/tar_size {tar_offs[k]}/{tar_sizes[k]} but {label} is at {m.offset}/{m.size}",
                )
            )
            continue
        try:
            data = members.read(tars[s], real, m)
        except DataError as e:  # a remote member that does not read after the retries
            report.problems.append(("missing", str(e)))
            continue
        dur = durations[k]
        _check_clip(
            data, float(offsets[k] or 0.0), None if dur is None else float(dur), sliced, label, report
        )


def validate(
    root: str | Path,
    *,
    progress: bool = True,
    workers: int = 1,
    executor: str = "local",
    keys: ManifestKeys = TARRED_KEYS,
) -> ValidationReport:
    """Validate the tarred dataset(s) under ``root`` (see the module docstring): one task per
    shard, in ``workers`` local processes or as Ray tasks (``executor``: ``local``, ``ray`` or
    ``ray://ADDRESS``, :func:`~speechdata.shards.executors.open_executor`); the report is the
    same whatever ran the tasks. ``keys``: how lines are read, as the loader reads them
    (:func:`~speechdata.lines.parse_line`; default: the loader's default keys, audio names as
    members): a line the loader would refuse (no answer, a bad ``duration``) is a ``bad_line``."""
    check_executor(executor)
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    folders = dataset_folders(root)
    total = 0
    for folder in folders:
        with open(_local(_in(folder, MANIFEST)), "rb") as f:
            total += sum(1 for line in f if line.strip())
    report = ValidationReport()
    with (
        tqdm(total=total, unit="entry", desc="validate", disable=not progress, file=sys.stderr) as bar,
        open_executor(executor, workers) as ex,
    ):
        for folder in folders:
            validate_folder(folder, report, bar.update, ex, keys)
    return report
