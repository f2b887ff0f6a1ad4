"""Sources: where examples come from (docs/architecture.md, "Sources").

A :class:`Source` is an Index (the metadata columns), a record by row, and the audio of a record;
a :class:`StreamSource` streams records with their audio instead. Three ship with speechdata, and
:func:`open_source` picks one from a dataset config:

* :class:`ManifestSource` — plain JSONL manifests, clips are files on disk or object-storage URLs;
* :class:`TarredSource` — NeMo tarred datasets on local (or mounted) storage, members read by
  byte offset;
* :class:`StreamedTarSource` — tarred datasets behind ``pipe:`` commands or URLs (or
  ``streaming: true``), read front to back.

Any other source (another storage, examples built in memory) plugs into
:class:`~speechdata.loader.SpeechDataLoader` through its ``source=`` argument.

Example::

    >>> source = open_source(cfg, manifest_keys(cfg))
    >>> source.seekable, len(source.index), source.audio(source.record(0))
    (True, 1200, ['/data/a.wav'])
"""

from __future__ import annotations

from speechdata.config import DatasetConfig
from speechdata.errors import ConfigError
from speechdata.manifest import ManifestKeys, load_index
from speechdata.shards.read import TarredDataset
from speechdata.sources.base import Source, Streamed, StreamSlot, StreamSource, index_from_clips
from speechdata.sources.converted import resolve_paired
from speechdata.sources.cuts import resolve_cuts
from speechdata.sources.files import ManifestSource
from speechdata.sources.shar import resolve_shar
from speechdata.sources.tarred import StreamedTarSource, TarredSource

__all__ = [
    "ManifestSource",
    "Source",
    "StreamSlot",
    "StreamSource",
    "Streamed",
    "StreamedTarSource",
    "TarredSource",
    "index_from_clips",
    "open_source",
]


def open_source(cfg: DatasetConfig, keys: ManifestKeys, *, cache: bool = True) -> Source:
    """The source a dataset config describes, its Index loaded (``keys`` resolve the manifest
    lines; ``cache=False`` neither reads nor writes index cache entries).

    Plain manifests unless ``is_tarred`` (a ``lhotse:<path>`` manifest is a lhotse CutSet, read
    through its converted NeMo manifest: :func:`~speechdata.sources.cuts.resolve_cuts`; a
    ``lhotse_shar:`` one a lhotse Shar dataset, read as a tarred dataset:
    :func:`~speechdata.sources.shar.resolve_shar`; a tarred manifest pattern naming several
    manifest shards is paired with its tars by position:
    :func:`~speechdata.sources.converted.resolve_paired`); a
    tarred dataset is streamed with ``streaming: true``, or with ``streaming: auto`` when a shard
    is not a local file, else read by offset.
    """
    if not cfg.manifests:
        raise ConfigError("manifest_filepath: no manifest given")
    cfg = resolve_cuts(cfg)  # lhotse CutSet manifests (lhotse:<path>) as NeMo manifests
    cfg = resolve_shar(cfg)  # lhotse Shar datasets (lhotse_shar:<shar_path>) as tarred manifests
    cfg = resolve_paired(cfg)  # NeMo's manifest shards paired with tars by position
    index = load_index(cfg.manifests, keys, on_error=cfg.on_error, cache=cache, cache_dir=cfg.cache_dir)
    if not cfg.is_tarred:
        if cfg.streaming is True:
            raise ConfigError("streaming: true needs a tarred dataset (is_tarred: true)")
        return ManifestSource(index, cfg.remote, seed=cfg.seed, cache_dir=cfg.cache_dir)
    tarred = TarredDataset(cfg, index=index)
    if cfg.streaming is True or (cfg.streaming == "auto" and not tarred.seekable):
        return StreamedTarSource(cfg, tarred)
    return TarredSource(tarred)
