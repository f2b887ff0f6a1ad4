"""Checking every entry of a tarred dataset against its tars (the command is ``speechdata validate``,
:mod:`speechdata.commands.validate`).

For each entry of ``DIR/tarred_audio_manifest.json`` (or of every ``DIR/bucket*/`` dataset) and
each of its audios: the member is in its shard (``audio_{shard_id}.tar``; NeMo's ``-subN`` names
resolve to the member they repeat), ``tar_offset``/``tar_size`` (when present) point at it, the
span ``[offset, offset + duration]`` fits in the member by the loader's own rule
(:func:`~speechdata.shards.plan.check_span`: at most ``DURATION_TOLERANCE`` = 0.05 s past the
end) and decodes, and for datasets written with ``--slice-with-offset`` the member's length equals
the entry's duration within ``max(0.1 s, 1 %)``. Members that no entry uses are listed as
orphans. The tars' headers are scanned afresh (no cached index is trusted).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from tqdm import tqdm

from speechdata.audio import audio_info, load_audio
from speechdata.errors import ConfigError, DataError
from speechdata.shards.plan import check_span
from speechdata.shards.read import MANIFEST, entry_names, lookup_member, strip_sub, tarred_dataset_folders
from speechdata.shards.tarfmt import Member, scan_members

_SHARD = re.compile(r"^audio_(\d+)\.tar$")


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


def dataset_folders(root: str | Path) -> list[Path]:
    """The dataset folders under ``root`` (:func:`~speechdata.shards.read.tarred_dataset_folders`);
    :class:`ConfigError` when there is none."""
    folders = tarred_dataset_folders(root)
    if not folders:
        raise ConfigError(f"{root}: no {MANIFEST} here or in bucket*/ subfolders")
    return folders


def _as_list(v: Any, n: int, default: float | None) -> list[Any]:
    if v is None:
        return [default] * n
    return list(v) if isinstance(v, list) else [v]


def _sliced(folder: Path) -> bool:
    try:
        meta = yaml.safe_load((folder / "metadata.yaml").read_text())
        return bool(meta["dataset_config"]["slice_with_offset"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return False


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


def validate_folder(folder: Path, report: ValidationReport, bar: tqdm) -> None:
    """Check one NeMo tarred dataset folder, adding to ``report``."""
    tars = {
        int(m.group(1)): folder / p.name for p in folder.glob("audio_*.tar") if (m := _SHARD.match(p.name))
    }
    tables: dict[int, dict[str, Member]] = {}
    for sid, path in sorted(tars.items()):
        try:
            tables[sid] = scan_members(path)
        except DataError as e:
            report.problems.append(("decode", str(e)))
            tables[sid] = {}
    used: set[tuple[int, str]] = set()
    sliced = _sliced(folder)
    fds: dict[int, int] = {}
    manifest = folder / MANIFEST
    try:
        with open(manifest, "rb") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{manifest}:{line_no}"
                bar.update(1)
                report.entries += 1
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    report.problems.append(("bad_line", f"{where}: not valid JSON ({e.msg})"))
                    continue
                _check_entry(entry, where, tars, tables, fds, used, sliced, report)
    finally:
        for fd in fds.values():
            os.close(fd)
    for sid, table in sorted(tables.items()):
        for name in table:
            if (sid, name) not in used:
                report.problems.append(("orphan", f"{tars[sid]}:{name}: member used by no entry"))


def _check_entry(
    entry: dict[str, Any],
    where: str,
    tars: dict[int, Path],
    tables: dict[int, dict[str, Member]],
    fds: dict[int, int],
    used: set[tuple[int, str]],
    sliced: bool,
    report: ValidationReport,
) -> None:
    names = entry_names(entry)
    if not names:
        report.problems.append(("bad_line", f"{where}: no audio_filepath"))
        return
    n = len(names)
    sid = entry.get("shard_id")
    offsets = _as_list(entry.get("offset"), n, 0.0)
    durations = _as_list(entry.get("duration"), n, None)
    tar_offs = _as_list(entry.get("tar_offset"), n, None)
    tar_sizes = _as_list(entry.get("tar_size"), n, None)
    if not all(len(x) == n for x in (offsets, durations, tar_offs, tar_sizes)):
        report.problems.append(
            ("bad_line", f"{where}: offset/duration/tar_offset/tar_size lengths differ from the audios")
        )
        return
    shards = [sid] if isinstance(sid, int) else sorted(tables)
    for k, name in enumerate(names):
        found = next(
            ((s, m) for s in shards if s in tables and (m := lookup_member(tables[s], name)) is not None),
            None,
        )
        if found is None:
            shown = f"audio_{sid}.tar" if isinstance(sid, int) else "any shard"
            if isinstance(sid, int) and sid not in tars:
                report.problems.append(("missing", f"{where}: shard audio_{sid}.tar not found"))
            else:
                report.problems.append(("missing", f"{where}: member {name!r} not in {shown}"))
            continue
        s, m = found
        real = name if name in tables[s] else strip_sub(name)
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
        if s not in fds:
            fds[s] = os.open(tars[s], os.O_RDONLY)
        data = os.pread(fds[s], m.size, m.offset)
        dur = durations[k]
        _check_clip(
            data, float(offsets[k] or 0.0), None if dur is None else float(dur), sliced, label, report
        )


def validate(root: str | Path, *, progress: bool = True) -> ValidationReport:
    """Validate the tarred dataset(s) under ``root`` (see the module docstring)."""
    folders = dataset_folders(root)
    total = 0
    for folder in folders:
        with open(folder / MANIFEST, "rb") as f:
            total += sum(1 for line in f if line.strip())
    report = ValidationReport()
    with tqdm(total=total, unit="entry", desc="validate", disable=not progress, file=sys.stderr) as bar:
        for folder in folders:
            validate_folder(folder, report, bar)
    return report
