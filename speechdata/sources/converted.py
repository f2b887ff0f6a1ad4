"""Manifests that speechdata writes from other inputs, cached (lhotse cuts, lhotse Shar, NeMo's
conversation shards paired by position), and that pairing itself.

:func:`converted_manifest` is the one cache rule of such a manifest: it lives in
``<cache root>/<kind>/``, is named by the inputs' real paths and file stamps (the rules of
:mod:`speechdata.cache`), and is written again when any input changed. From then on it is
indexed and read like any manifest.

:func:`resolve_paired` handles NeMo's tarred conversation layout: ``manifest_filepath`` is a
pattern of manifest shards (``manifest__OP_0..N_CL_.jsonl``) whose lines carry no ``shard_id``,
and manifest shard ``i`` goes with tar ``i`` of ``tarred_audio_filepaths``, by position. The
shards are written as one manifest whose lines carry the ``shard_id`` of their tar, so each
audio turn (its ``value`` is a member name) is looked up in its own tar only.

Every line speechdata writes into a converted manifest names where it came from under
:data:`~speechdata.lines.ORIGIN_KEY` (``manifest_3.jsonl:17``; the converters of lhotse cuts name
the cuts file's line and the cut), so messages about it name the user's file and line
(:func:`~speechdata.lines.line_where`), never the cached manifest's.

Example::

    >>> cfg = resolve_paired(cfg)   # manifest__OP_0..3_CL_.jsonl -> ~/.cache/speechdata/paired/....jsonl
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from speechdata.cache import FileStamp, cache_folder, prune, source_digest, touch
from speechdata.config import DatasetConfig
from speechdata.errors import SpeechDataError
from speechdata.lines import INVALID_KEY, ORIGIN_KEY, ManifestKeys, json_error, parse_line
from speechdata.shards.read import paired_shards, shard_ids
from speechdata.storage import checked_version, is_remote, local_copy

__all__ = ["converted_manifest", "paired_manifest", "resolve_paired"]

#: Bump when the lines written for paired shards change.
PAIRED_VERSION = 2
_BOM = b"\xef\xbb\xbf"


def converted_manifest(
    kind: str,
    inputs: Sequence[str],
    convert: Callable[[], bytes],
    *,
    version: int,
    settings: str = "",
    cache_dir: str | None = None,
) -> Path:
    """The manifest ``convert()`` writes from the files ``inputs`` (existing paths, or URLs of
    objects), cached in ``<cache root>/<kind>/`` and bound to their real paths and file stamps
    (an object's URL and version) and to ``settings``
    (whatever else shapes the lines): reused while none changed (and no stamp was racy),
    written again otherwise. ``version`` names the format of the lines (bump it when
    ``convert`` changes)."""
    files: list[list[object]] = []
    racy = False
    for p in inputs:
        if is_remote(p):  # an object: its URL and version (size and ETag or equivalent)
            files.append([p, checked_version(p).key()])
        else:
            real = os.path.realpath(os.path.expanduser(p))
            st = FileStamp.of(real)
            racy = racy or st.racy
            files.append([real, st.size, st.mtime_ns, st.ctime_ns, st.ino, st.dev])
    folder = cache_folder(kind, cache_dir)
    first = str(files[0][0])
    source = hashlib.sha1(first.encode()).hexdigest()[:16] if is_remote(first) else source_digest(first)
    bound = json.dumps([files, settings])
    out = folder / f"{source}.{hashlib.sha1(bound.encode()).hexdigest()[:16]}.v{version}.jsonl"
    if out.is_file() and not racy:
        touch(out)
        return out
    data = convert()
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    prune(folder, source, keep=out)
    return out


def read_lines(path: str) -> list[bytes]:
    """The lines of a JSONL file (``.gz`` decompressed), split at ``\\n`` only and numbered as
    the indexer numbers them (line ``k`` is item ``k - 1``; a UTF-8 byte order mark at the start
    is skipped); a missing or unreadable file is a one-line :class:`SpeechDataError` naming it."""
    if not os.path.isfile(path):
        raise SpeechDataError(f"{path}: manifest not found")
    try:
        with open(path, "rb") as f:
            data = f.read()
        if path.endswith(".gz"):
            data = gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise SpeechDataError(
            f"{path}: cannot read ({' '.join(str(e).split()) or type(e).__name__})"
        ) from None
    lines = data.removeprefix(_BOM).split(b"\n")
    return lines[:-1] if lines and not lines[-1] else lines


def paired_manifest(pairs: Sequence[tuple[str, str]], cache_dir: str | None = None) -> Path:
    """One manifest of the manifest shards of ``pairs`` (``(manifest i, tar i)``), in order, each
    line given the ``shard_id`` of its tar (a line with its own ``shard_id`` keeps it) and its
    origin (``manifest:line``, :data:`~speechdata.lines.ORIGIN_KEY`). A line that is not a JSON
    object is written as its origin and why (:data:`~speechdata.lines.INVALID_KEY`), for the
    indexer to report as a ``bad_line`` of the manifest shard; blank lines are left out."""
    ids = shard_ids([tar for _, tar in pairs])
    manifests = [m for m, _ in pairs]
    for m in manifests:
        if not is_remote(m) and not os.path.isfile(os.path.expanduser(m)):
            raise SpeechDataError(f"{m}: manifest not found (manifest shard of a tarred dataset)")

    def convert() -> bytes:
        out: list[bytes] = []
        for m, sid in zip(manifests, ids, strict=True):
            local = str(local_copy(m, cache_dir)) if is_remote(m) else os.path.expanduser(m)
            for number, raw in enumerate(read_lines(local), start=1):
                if not raw.strip():
                    continue
                try:
                    obj = orjson.loads(raw)
                    if type(obj) is not dict:
                        parse_line(obj, ManifestKeys())  # raises the rule's message
                    obj.setdefault("shard_id", sid)
                except orjson.JSONDecodeError as e:
                    obj = {INVALID_KEY: json_error(raw, e)}
                except ValueError as e:
                    obj = {INVALID_KEY: str(e)}
                obj[ORIGIN_KEY] = f"{m}:{number}"
                out.append(orjson.dumps(obj))
        return b"\n".join(out) + (b"\n" if out else b"")

    # the manifests as named are part of the binding: the lines name them so
    settings = json.dumps([ids, manifests])
    return converted_manifest(
        "paired", manifests, convert, version=PAIRED_VERSION, settings=settings, cache_dir=cache_dir
    )


def resolve_paired(cfg: DatasetConfig) -> DatasetConfig:
    """``cfg`` with every tarred manifest pattern that names several manifest shards (NeMo's
    layout, see the module docstring) replaced by its :func:`paired_manifest`; ``cfg`` itself
    when there is none."""
    if not cfg.is_tarred or cfg.tarred_audio_filepaths is None:
        return cfg
    specs = cfg.tarred_audio_filepaths
    if isinstance(specs, str):
        per_manifest = [specs] if len(cfg.manifests) == 1 else None
    else:
        items = list(specs)
        if any(not isinstance(x, str) for x in items):
            return cfg  # pre-bucketed: one list of tars per bucket manifest
        per_manifest = [items] if len(cfg.manifests) == 1 else items
    if per_manifest is None or len(per_manifest) != len(cfg.manifests):
        return cfg  # TarredDataset names the mismatch
    manifests = list(cfg.manifests)
    changed = False
    for k, (m, shards) in enumerate(zip(cfg.manifests, per_manifest, strict=True)):
        pairs = paired_shards(m, shards)
        if pairs is not None:
            manifests[k] = str(paired_manifest(pairs, cfg.cache_dir))
            changed = True
    if not changed:
        return cfg
    return dataclasses.replace(cfg, manifest_filepath=manifests, manifests=manifests)
