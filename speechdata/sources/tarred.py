"""NeMo tarred datasets: read by byte offset (local shards or object storage), or streamed
(``pipe:`` commands, or any shards with ``streaming: true``).

Both wrap a :class:`~speechdata.shards.read.TarredDataset` (shard lists, the Index of the tarred
manifest(s)). :class:`TarredSource` reads each member at its offset: ``os.pread`` for a local
shard, a byte-range request for a shard on object storage (announced as the record is read, so
a batch's requests are in flight together while earlier clips decode);
:class:`StreamedTarSource` reads shards front to back with
:func:`~speechdata.shards.read.stream_tarred` and looks up the manifest entries of a shard just
before streaming it, so start-up reads no manifest line and each reader reads only the lines of
its own shards, once: the :class:`~speechdata.manifest.Record` read there is the one packed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from speechdata.config import DatasetConfig
from speechdata.errors import ConfigError, DataError
from speechdata.manifest import Index, Record
from speechdata.shards.read import TarredDataset, stream_tarred
from speechdata.sources.base import Streamed, StreamSlot

__all__ = ["StreamedTarSource", "TarredSource"]


class TarredSource:
    """A tarred dataset whose shards are local files or object-storage URLs (a seekable
    :class:`~speechdata.sources.base.Source`): a record's clips are the bytes of its members,
    read by offset; a pre-bucketed dataset gives each row its bucket."""

    seekable = True

    def __init__(self, tarred: TarredDataset) -> None:
        self.tarred = tarred
        self.index = tarred.index
        self.buckets = tarred.buckets

    def record(self, row: int) -> Record:
        """Row ``row``'s tarred manifest entry; its remote members start loading now (a batch's
        records are all read before the first clip is decoded)."""
        rec = self.index.record(row)
        self.tarred.prefetch(rec)
        return rec

    def read_ahead(self, rows: Sequence[int]) -> None:
        """Start loading the remote members of ``rows`` (the reader's next batch) while this
        batch decodes; a row that does not read back is left for :meth:`record` to report."""
        if not self.tarred.remote:
            return
        for row in rows:
            try:
                self.tarred.prefetch(self.index.record(row), ahead=True)
            except DataError:
                continue

    def audio(self, rec: Record) -> list[bytes]:
        """The bytes of each member of ``rec``, read by offset."""
        return self.tarred.read_audio_bytes(rec)


class StreamedTarSource:
    """A tarred dataset read front to back (a :class:`~speechdata.sources.base.StreamSource`):
    shards are dealt to (rank, worker) in a seeded per-epoch order, repeated never dropped, and
    members pass a ``shuffle_n`` buffer (:func:`~speechdata.shards.read.stream_tarred`)."""

    seekable = False
    buckets: np.ndarray | None = None

    def __init__(self, cfg: DatasetConfig, tarred: TarredDataset) -> None:
        if tarred.index.num_datasets != 1:
            raise ConfigError("streaming reads one tarred manifest at a time; give one manifest_filepath")
        self.cfg = cfg
        self.index = tarred.index
        self.urls = [tarred.shard_paths[0][k] for k in sorted(tarred.shard_paths[0])]

    def record(self, row: int) -> Record:
        """Row ``row``'s tarred manifest entry (read from the manifest, or its local copy)."""
        return self.index.record(row)

    def audio(self, rec: Record) -> list[bytes]:
        """Not available: a streamed shard's members come with :meth:`stream`."""
        raise ConfigError(
            "tarred_audio_filepaths: shards are streamed front to back; their members come with the stream"
        )

    def stream(self, keep: np.ndarray, slot: StreamSlot) -> Iterator[Streamed]:
        """``(record, [member bytes per clip])`` of the shards dealt to ``slot``; rows outside
        ``keep`` are not looked up, so their members are skipped. A manifest line that no longer
        reads back is yielded as its :class:`DataError`."""
        members = _MembersOfShard(self.index, keep)
        for item in stream_tarred(
            self.cfg,
            self.urls,
            members,
            epoch=slot.epoch,
            rank=slot.rank,
            world_size=slot.world_size,
            worker_id=slot.worker,
            num_workers=slot.num_workers,
        ):
            yield from members.take_errors()
            yield from members.take_text_only()
            if isinstance(item, DataError):  # a member of a looked-up row is not in its tar
                yield item
                continue
            rec, data = item
            assert isinstance(rec, Record)
            yield rec, data
        yield from members.take_errors()
        yield from members.take_text_only()


class _MembersOfShard:
    """``shard_id -> {member name: [records that use it]}``, from the Index when that shard is
    streamed: only the shard's own rows are read (rows without a ``shard_id`` once, for every
    shard). Rows the filters dropped (``keep`` false) are left out: their members are skipped.
    Rows that fail to read back are kept in :attr:`errors` until :meth:`take_errors`."""

    def __init__(self, index: Index, keep: np.ndarray) -> None:
        self.index = index
        self.keep = keep
        self.errors: list[DataError] = []
        self.text_only: list[Record] = []
        self._unsharded: dict[str, list[Record]] | None = None

    def _table(self, rows: np.ndarray, sharded: bool = True) -> dict[str, list[Record]]:
        table: dict[str, list[Record]] = {}
        for i in rows.tolist():
            try:
                rec = self.index.record(i)
            except DataError as err:
                self.errors.append(err)
                continue
            if not rec.audio and sharded:  # a text-only example of this shard: no member to wait for
                self.text_only.append(rec)
            for name in rec.audio:
                table.setdefault(name, []).append(rec)
        return table

    def __call__(self, shard_id: int) -> dict[str, list[Record]]:
        if self._unsharded is None:
            # text-only rows need a shard_id (as `speechdata shard` writes): they have no member
            # that would place them in one shard's stream
            self._unsharded = self._table(np.flatnonzero((self.index.shard_id < 0) & self.keep), False)
        table = self._table(np.flatnonzero((self.index.shard_id == shard_id) & self.keep))
        for name, records in self._unsharded.items():
            table[name] = [*table.get(name, ()), *records]
        return table

    def take_text_only(self) -> Iterator[Streamed]:
        """The text-only examples of the shards looked up since the last call, with no audio."""
        out, self.text_only = self.text_only, []
        for rec in out:
            yield rec, []

    def take_errors(self) -> Sequence[DataError]:
        """The read errors collected since the last call."""
        out, self.errors = self.errors, []
        return out
