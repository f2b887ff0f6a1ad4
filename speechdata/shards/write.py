"""Writing manifests into NeMo-compatible tarred shards (the command is ``speechdata shard``,
:mod:`speechdata.commands.shard`).

Layout of the output folder (NeMo's, plus two keys per entry)::

    audio_0.tar ... audio_{N-1}.tar       the audio members
    sharded_manifests/manifest_{i}.json   the entries of shard i
    tarred_audio_manifest.json            every entry, shard by shard (written last but one)
    metadata.yaml                         settings, counts, hours, bytes, drops (written last)
    .speechdata/audio_{i}.done            per-shard completion markers (for resuming)
    .speechdata/index_cache/              the input manifests' index cache (nothing is written
                                          outside the output folder)

With ``--buckets K`` (or ``--bucket-bins``) each bucket is such a folder, ``bucket1`` (shortest)
to ``bucketK``, next to a top-level ``metadata.yaml`` whose paths are relative to the output
folder (``bucket1/tarred_audio_manifest.json``), not to the working directory.

Every entry keeps its manifest keys; ``audio_filepath`` becomes the member name (a list for
multi-audio entries), and ``shard_id``, ``tar_offset`` (byte offset of the member's data in its
tar) and ``tar_size`` (its length) are added, so a reader can ``pread`` the member without parsing
the tar. The manifest keys (``keys``: which keys hold the answer and context) are the loader's, so
whatever a loader with the same keys reads, ``shard`` reads too. Every clip's span is checked against its file's header before anything is written (the
loader's rule and message). Entries sharing a source file are kept together in one shard and the
file is stored once; shard sizes differ by at most one entry (nothing is dropped but by the
duration filters and, with ``--on-error skip``, bad entries, all counted). Each shard is written
to ``audio_i.tar.tmp``, fsynced and renamed, then its manifest and marker are written: a rerun
after a crash skips finished shards and produces the same bytes. An output folder that is an
object-storage URL is written to a local staging folder, then uploaded object by object, the
manifests and metadata last (:mod:`speechdata.shards.upload`).

Example::

    >>> report = write_shards(["train.jsonl"], "train_tarred", ShardOptions(num_shards=8, codec="flac"))
    >>> print(report.summary())
    speechdata shard: 12000 entries, 20.12 h in 8 shards (0 reused), 1.21 GB -> train_tarred; none dropped
"""

from __future__ import annotations

import io
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from tqdm import tqdm

from speechdata.errors import ConfigError, DataError, DropCounter
from speechdata.manifest import AUDIO_KEYS, ManifestKeys
from speechdata.shards.codec import encode_audio
from speechdata.shards.executors import open_executor
from speechdata.shards.plan import (
    FORMAT_VERSION,
    Entry,
    ShardJob,
    ShardOptions,
    Source,
    equal_duration_bins,
    member_codec,
    plan_dataset,
    read_entries,
)
from speechdata.shards.tarfmt import TarWriter, atomic_write_bytes, fsync_dir
from speechdata.shards.upload import staging_folder, upload_dataset
from speechdata.storage import read_object
from speechdata.storage.fs import is_remote

MARKER_DIR = ".speechdata"


@dataclass
class ShardReport:
    """What a job wrote: ``datasets`` are the NeMo dataset folders (one per bucket)."""

    out_dir: Path | str  # a URL when the output went to object storage
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


def _out_entry(e: Entry, job: ShardJob, where: dict[int, tuple[int, int]]) -> dict[str, Any]:
    names = [job.sources[s].name for s in e.sources]
    offs = [where[s][0] for s in e.sources]
    sizes = [where[s][1] for s in e.sources]
    one = (lambda v: v) if e.multi else (lambda v: v[0])
    out: dict[str, Any] = {}
    if "conversations" in e.raw:
        out.update(_conversation_entry(e.raw, names, e.duration))
    else:
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


def _conversation_entry(raw: dict[str, Any], names: list[str], durations: list[float]) -> dict[str, Any]:
    """A conversation line with its audios renamed to their members, in order: a NeMo audio
    turn's ``value`` (its ``duration`` kept), or ShareGPT's ``sound`` (with ``duration``)."""
    out = dict(raw)
    if "sound" in raw or "ori_sound" in raw:  # ShareGPT (docs/conversations.md)
        out.pop("ori_sound", None)
        out["sound"] = names if isinstance(raw.get("sound", raw.get("ori_sound")), list) else names[0]
        out["duration"] = durations if isinstance(out["sound"], list) else durations[0]
        return out
    k = 0
    turns = []
    for turn in raw["conversations"]:
        if isinstance(turn, dict) and turn.get("type") == "audio":
            turn = {**turn, "value": names[k], "duration": durations[k]}
            k += 1
        turns.append(turn)
    out["conversations"] = turns
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
                    codec = member_codec(job, src)
                    remote = _remote_clip(src, e.where) if is_remote(src.path) else None
                    if codec is None:
                        if remote is None:
                            m = tw.add_file(src.name, src.path, where=e.where)
                        else:
                            m = tw.add_bytes(src.name, remote)
                    else:
                        off, dur = src.span if src.span else (0.0, None)
                        data = encode_audio(
                            src.path if remote is None else _named(remote, src.path),
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


def _remote_clip(src: Source, where: str) -> bytes:
    """The bytes of a clip on object storage (:func:`~speechdata.storage.read_object`), checked
    against the size the plan recorded: an object that changed since is ``decode_error``."""
    data = read_object(src.path, where=f"{where}: {src.path}")
    if len(data) != src.size:
        raise DataError(
            "decode_error",
            where,
            f"{src.path} changed since the plan was made ({src.size} bytes then, {len(data)} now)",
        )
    return data


def _named(data: bytes, name: str) -> io.BytesIO:
    """``data`` as an open file named ``name`` (for messages)."""
    f = io.BytesIO(data)
    f.name = name
    return f


def _write_task(shared: None, job: ShardJob, progress: Callable[[int], None]) -> dict[str, Any]:
    """:func:`write_shard` as an executor task (:mod:`speechdata.shards.executors`)."""
    return write_shard(job, progress)


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
            "format_version": FORMAT_VERSION,
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
    manifests: Sequence[str | Path],
    out_dir: str | Path | None = None,
    options: ShardOptions | None = None,
    *,
    keys: ManifestKeys | None = None,
) -> ShardReport:
    """Shard ``manifests`` into ``out_dir`` (default: ``<first manifest's stem>_tarred`` beside it,
    on object storage when the manifest is a URL). Manifests and the clips they name may be local
    files or object-storage URLs (each clip's header is read by range when the plan is made, and
    its bytes once when its shard is written).

    ``keys``: how the lines are read (default: the loader's default keys; build them from a
    config or the command-line flags with :func:`speechdata.manifest.manifest_keys`). See the
    module docstring for the layout. Rerunning the same job after a crash finishes it without
    rewriting completed shards; the same inputs and options give byte-identical tars.
    """
    opts = options or ShardOptions()
    opts.check()
    if not manifests:
        raise ConfigError("speechdata shard: give at least one manifest")
    first = Path(manifests[0])
    if out_dir is None and is_remote(str(manifests[0])):  # beside a manifest on object storage
        folder, name = str(manifests[0]).rstrip("/").rsplit("/", 1)
        out_dir = f"{folder}/{name.split('.')[0]}_tarred"
    url = str(out_dir) if out_dir is not None and is_remote(str(out_dir)) else None
    if url is not None and opts.executor != "local":
        raise ConfigError(
            f"speechdata shard: output {url} with --executor {opts.executor} is not supported yet (the "
            "staging folder is on this machine and the tasks may run on others); give --out a folder "
            "every node mounts, or shard with the local executor (--workers)"
        )
    if url is not None:  # written here, then uploaded (speechdata.shards.upload)
        out = staging_folder(url)
    else:
        out = Path(out_dir) if out_dir is not None else first.parent / f"{first.name.split('.')[0]}_tarred"
    drops = DropCounter()
    # the index cache goes under the output folder: a shard job writes nothing anywhere else
    entries, sources = read_entries(
        manifests, opts, drops, cache_dir=out / MARKER_DIR / "index_cache", keys=keys
    )
    if not entries:
        raise ConfigError(f"speechdata shard: no entries left to write ({drops.summary()})")
    bucketed = opts.buckets is not None or opts.bucket_bins is not None
    totals = np.array([sum(e.duration) for e in entries])
    bins = (
        list(opts.bucket_bins)
        if opts.bucket_bins is not None
        else equal_duration_bins(totals, opts.buckets or 1)
    )
    parts: list[tuple[Path, list[Entry]]] = []
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
    with (
        tqdm(
            total=len(entries), unit="entry", desc="shard", disable=not opts.progress, file=sys.stderr
        ) as bar,
        open_executor(opts.executor, opts.workers) as ex,
    ):
        all_stats = ex.map(
            _write_task, all_jobs, weights=[len(j.entries) for j in all_jobs], progress=bar.update
        )
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
            # relative to the output folder, so the dataset can be moved and read from any cwd
            "tarred_audio_filepaths": [[f"{f.name}/audio__OP_0..{len(j) - 1}_CL_.tar"] for f, j in plans],
            "manifest_filepath": [f"{f.name}/tarred_audio_manifest.json" for f, _ in plans],
            "entries": report.entries,
            "hours": round(report.seconds / 3600, 6),
            "bytes": report.bytes,
            "drops": drops.to_dict(),
        }
        atomic_write_bytes(out / "metadata.yaml", yaml.safe_dump(top, sort_keys=False).encode())
    if url is not None:
        total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and MARKER_DIR not in p.parts)
        with tqdm(
            total=total, unit="B", unit_scale=True, desc="upload", disable=not opts.progress, file=sys.stderr
        ) as bar:
            upload_dataset(out, url, skip=MARKER_DIR, progress=bar.update)
        report.out_dir = url
    return report
