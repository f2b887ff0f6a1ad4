"""Tarred shards (docs/shards.md): writing (``speechdata shard``), reading by offset or streaming, validation.

The writer produces NeMo's layout (``audio_{i}.tar``, ``tarred_audio_manifest.json``,
``sharded_manifests/``, ``metadata.yaml``) with each entry's member byte offset and size
(``tar_offset``, ``tar_size``); the reader opens it, or a dataset written by NeMo's own script,
from a :class:`~speechdata.config.DatasetConfig`. See ``docs/shards.md``.

Example::

    >>> from speechdata.shards import ShardOptions, write_shards, TarredDataset
    >>> report = write_shards(["train.jsonl"], "train_tarred", ShardOptions(num_shards=4, codec="flac"))
    >>> ds = TarredDataset(cfg)   # manifest_filepath=train_tarred/tarred_audio_manifest.json
"""

from __future__ import annotations

from speechdata.shards.plan import ShardOptions
from speechdata.shards.read import (
    TarredDataset,
    deal_shards,
    entries_by_member,
    expand_tar_paths,
    member_table,
    stream_tarred,
)
from speechdata.shards.tarfmt import Member, TarWriter, scan_members
from speechdata.shards.validate import ValidationReport, validate
from speechdata.shards.write import ShardReport, write_shards

__all__ = [
    "Member",
    "ShardOptions",
    "ShardReport",
    "TarWriter",
    "TarredDataset",
    "ValidationReport",
    "deal_shards",
    "entries_by_member",
    "expand_tar_paths",
    "member_table",
    "scan_members",
    "stream_tarred",
    "validate",
    "write_shards",
]
