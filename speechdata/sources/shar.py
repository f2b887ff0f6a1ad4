"""lhotse Shar datasets read as NeMo tarred datasets (``input_cfg`` type ``lhotse_shar``, a
section's ``shar_path``; docs/configuration.md, "NeMo 2.x keys").

A Shar dataset is a list of shards, each a CutSet manifest (``cuts.000000.jsonl.gz``) and, per
field, a tar of the cuts' data in the same order (``recording.000000.tar``: for every cut a
member ``<cut id>.<format>`` holding the cut's audio, then ``<cut id>.json``). ``shar_path``
names a folder written by lhotse's ``SharWriter`` / ``CutSet.to_shar`` (shards found as lhotse
finds them: the ``cuts.*`` and ``recording.*`` files, sorted by name), or a mapping of fields to
shard lists (``{cuts: [...], recording: [...]}``, lists or brace patterns); only ``cuts`` and
``recording`` are read. Folder and shards may be object-storage URLs: the folder is listed
through its fsspec filesystem, the cuts are downloaded once
(:func:`~speechdata.storage.local_copy`), the tars' member tables read remotely
(:func:`~speechdata.shards.read.remote_member_table`), and the conversion is bound to the
objects' versions.

:func:`resolve_shar` converts the cuts once into a NeMo tarred manifest in
``<cache root>/shar/`` (:func:`~speechdata.sources.converted.converted_manifest`, bound to every
cuts file and tar) and gives the recording tars as ``tarred_audio_filepaths``: from then on the
dataset is a tarred dataset read by offset (or streamed) by :mod:`speechdata.shards.read`. One
line per cut, as :mod:`speechdata.sources.cuts` writes it (``text``, ``lang``, plain custom
fields, the cut's place in its cuts file as the line's origin), with ``audio_filepath`` the
cut's member, ``duration`` the cut's, ``shard_id`` its tar, and the member's
``tar_offset``/``tar_size`` from the tar's headers (scanned once, cached as every member table
is). The member holds the cut's audio only, so it is read from its
start. Errors name the file: a missing or unreadable shard, a cuts line that is not a
``MonoCut`` with a recording, a cut whose member is not in its tar (a truncated tar keeps the
members before the break), and shard lists of different lengths.

Example::

    >>> cfg = resolve_shar(cfg)   # "lhotse_shar:/data/shar" -> a cached manifest + recording.*.tar
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import orjson

from speechdata.config import SHAR_PREFIX, DatasetConfig
from speechdata.errors import ConfigError, DataError, SpeechDataError
from speechdata.lines import ORIGIN_KEY
from speechdata.shards.read import expand_tar_paths, member_table, remote_member_table, shard_ids
from speechdata.sources.converted import converted_manifest
from speechdata.sources.cuts import cut_place, cut_text_fields, read_cuts
from speechdata.storage import is_remote, list_folder, local_copy

__all__ = ["resolve_shar", "shar_manifest", "shar_shards"]

#: Bump when the lines written for a Shar cut change.
CACHE_VERSION = 2
#: Tar members that are not a cut's data (lhotse's metadata and placeholders).
_NOT_DATA = (".json", ".nodata", ".nometa")


def resolve_shar(cfg: DatasetConfig) -> DatasetConfig:
    """``cfg`` with every ``lhotse_shar:<shar_path>`` manifest replaced by its converted NeMo
    manifest (:func:`shar_manifest`) and its shard spec by the recording tars; ``cfg`` itself when
    it names none."""
    if not any(m.startswith(SHAR_PREFIX) for m in cfg.manifests):
        return cfg
    specs = cfg.tarred_audio_filepaths
    if not isinstance(specs, list) or len(specs) != len(cfg.manifests):
        raise ConfigError("shar_path: a Shar source needs one shard spec per manifest (give it in input_cfg)")
    manifests, shards = list(cfg.manifests), list(specs)
    for k, m in enumerate(cfg.manifests):
        if m.startswith(SHAR_PREFIX):
            cuts, tars = shar_shards(m[len(SHAR_PREFIX) :])
            manifests[k] = str(shar_manifest(cuts, tars, cfg.cache_dir))
            shards[k] = ",".join(tars)
    return dataclasses.replace(
        cfg, manifest_filepath=manifests, manifests=manifests, tarred_audio_filepaths=shards
    )


def shar_shards(spec: str) -> tuple[list[str], list[str]]:
    """The cuts files and recording tars of a ``shar_path`` (a folder, or the JSON of a mapping of
    fields to shards), in shard order; one-line errors for a missing folder or shard and for
    shard lists of different lengths."""
    if spec.startswith("{"):
        fields = json.loads(spec)
        for name in ("cuts", "recording"):
            if name not in fields:
                raise ConfigError(f"shar_path: no {name!r} field (speechdata reads cuts and recording)")
        cuts = [p for s in fields["cuts"] for p in expand_tar_paths(s)]
        tars = [p for s in fields["recording"] for p in expand_tar_paths(s)]
        shown = "shar_path"
    else:
        names, base = _listing(spec)
        cuts = [base + n for n in names if n.split(".")[0] == "cuts" and ".jsonl" in n]
        tars = [base + n for n in names if n.split(".")[0] == "recording" and n.endswith(".tar")]
        shown = f"shar_path {spec}"
        if not cuts:
            raise ConfigError(f"{shown}: no cuts.*.jsonl(.gz) shards")
        if not tars:
            raise ConfigError(
                f"{shown}: no recording.*.tar shards (speechdata reads a Shar's recording field)"
            )
    if len(cuts) != len(tars):
        raise ConfigError(
            f"{shown}: {len(cuts)} cuts shard(s) but {len(tars)} recording tar(s); shard i of each "
            "field goes with shard i of the others, so the counts must be equal"
        )
    for path in (*cuts, *tars):
        if not is_remote(path) and not os.path.isfile(os.path.expanduser(path)):
            raise SpeechDataError(f"{path}: Shar shard not found")
    return cuts, tars


def _listing(spec: str) -> tuple[list[str], str]:
    """The names in the folder ``spec`` (a path, or a URL listed through its fsspec filesystem),
    sorted, and the prefix that makes a name a path or URL again."""
    if not is_remote(spec):
        folder = Path(os.path.expanduser(spec))
        if not folder.is_dir():
            raise ConfigError(f"shar_path: {spec}: not a folder")
        return sorted(p.name for p in folder.iterdir()), str(folder) + os.sep
    names = list_folder(spec)
    if not names:
        raise ConfigError(f"shar_path: {spec}: not a folder (nothing listed there)")
    return names, spec.rstrip("/") + "/"


def shar_manifest(cuts: list[str], tars: list[str], cache_dir: str | None = None) -> Path:
    """The NeMo tarred manifest of the Shar shards ``cuts`` / ``tars`` (see the module
    docstring), converted once and cached."""

    def convert() -> bytes:
        lines: list[bytes] = []
        for path, tar, sid in zip(cuts, tars, shard_ids(tars), strict=True):
            members = _data_members(tar, cache_dir)
            local = str(local_copy(path, cache_dir)) if is_remote(path) else os.path.expanduser(path)
            for cut, where in read_cuts(local, path):
                lines.append(orjson.dumps(_line(cut, where, members, tar, sid)))
        return b"\n".join(lines) + (b"\n" if lines else b"")

    # the cuts files as named are part of the binding: the lines name them so
    return converted_manifest(
        "shar", [*cuts, *tars], convert, version=CACHE_VERSION, settings=json.dumps(cuts), cache_dir=cache_dir
    )


def _data_members(tar: str, cache_dir: str | None) -> dict[str, tuple[str, int, int]]:
    """``{cut id: (member name, offset, size)}`` of a Shar tar's data members (its member table
    cached in ``cache_dir``'s folder, as every table is)."""
    try:
        if is_remote(tar):
            table = remote_member_table(tar, cache_dir)
        else:
            table = member_table(os.path.expanduser(tar), cache_dir)
    except DataError as e:
        raise SpeechDataError(f"{tar}: {e.detail}") from None
    out: dict[str, tuple[str, int, int]] = {}
    for name, m in table.items():
        stem, dot, _ = name.rpartition(".")
        if dot and not name.endswith(_NOT_DATA):
            out[stem] = (name, m.offset, m.size)
    return out


def _line(
    cut: Any, where: str, members: dict[str, tuple[str, int, int]], tar: str, sid: int
) -> dict[str, Any]:
    """One Shar cut as a tarred manifest line (see the module docstring)."""
    name = cut_place(cut, where)
    found = members.get(cut.id)
    if found is None:
        raise SpeechDataError(
            f"{name}: no audio member {cut.id}.* in {tar} (missing, or the tar is truncated)"
        )
    member, offset, size = found
    line: dict[str, Any] = {"audio_filepath": member, "duration": round(float(cut.duration), 6)}
    line = cut_text_fields(cut, line)
    line.update(shard_id=sid, tar_offset=offset, tar_size=size)
    line[ORIGIN_KEY] = name
    return line
