"""How a source's examples reach the DataLoader as packed batches: planned or streamed.

* :class:`BatchDataset` turns records into one :class:`~speechdata.collate.Packed` batch (text,
  decoding, packing: the same code for every source); given row ids, it reads the records by row.
* :class:`PlannedFeed` serves a seekable source: the :class:`~speechdata.sampling.plan.BatchSampler`
  deals each epoch's planned batches of row ids, and the workers read them by row. For a source
  that reads ahead (``read_ahead(rows)``: object storage), each batch also carries the rows of the
  batch the same worker gets next (:class:`ReadAhead`), so its requests go out while this batch
  decodes instead of after it.
* :class:`StreamedFeed` serves a :class:`~speechdata.sources.base.StreamSource`: each worker
  streams its slot's records and groups them with the planner's batch rules
  (:func:`~speechdata.sampling.stream.bucketed_stream`); resuming replays the epoch's
  deterministic stream and skips the batches already handed out.

The loader talks to either through the same five members: ``loader`` (the torch DataLoader),
``length(epoch, deal)`` (``None`` for a stream), ``start(epoch, consumed, deal)``,
``tail_drops(epoch, deal)`` and ``check_first_epoch(names)``; ``deal``
(:class:`~speechdata.sampling.position.EpochDeal`) holds the epoch's earlier deals after an
elastic resume and its deal rule, always a fresh deal for a stream (the loader refuses to
resume one on another world size).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from speechdata.audio import AudioSource
from speechdata.collate import AudioSources, Packed, pack
from speechdata.config import DatasetConfig
from speechdata.errors import DataError, DropCounter, EmptyDatasetError, SpeechDataError, handle
from speechdata.manifest import Record
from speechdata.sampling.plan import BatchSampler
from speechdata.sampling.position import FRESH_DEAL, EpochDeal, Position
from speechdata.sampling.stream import bucketed_stream
from speechdata.sources.base import Source, StreamSlot, StreamSource
from speechdata.text.prompt import PromptBuilder

log = logging.getLogger("speechdata")

__all__ = ["AheadBatch", "BatchDataset", "PlannedFeed", "ReadAhead", "StreamDataset", "StreamedFeed"]


class BatchDataset(torch.utils.data.Dataset[Packed]):
    """Map-style dataset whose item is a whole batch: ``ds.__getitems__(rows) -> Packed``.

    ``read_audio`` is the source's :meth:`~speechdata.sources.base.Source.audio` (replaceable,
    e.g. to observe reads). A data error under ``on_error: raise`` (or a config error, such as a
    shard the config does not list) travels back inside the batch (``Packed.error``) so that the
    main process re-raises it as the original one-line error, not as a worker traceback.
    Rows that come with an ``ahead`` list (:class:`AheadBatch`) have the source start loading
    those rows' audio (``source.read_ahead``) once this batch's records are read.
    """

    def __init__(self, source: Source, builder: PromptBuilder, sample_rate: int, on_error: str) -> None:
        self.source = source
        self.index = source.index
        self.read_audio: AudioSources = source.audio
        self.builder = builder
        self.sample_rate = sample_rate
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, rows: Sequence[int]) -> Packed:
        """Read the records of ``rows`` and pack them with the source's audio (a packed batch,
        :class:`~speechdata.sampling.packing.RowBatch`, keeps each record's row)."""
        drops = DropCounter()
        records = []
        row_of: list[int] | None = getattr(rows, "rows", None)
        kept_rows: list[int] = []
        try:
            for k, i in enumerate(rows):
                try:
                    records.append(self.source.record(i))
                except DataError as err:
                    handle(err, self.on_error, drops)
                    continue
                if row_of is not None:
                    kept_rows.append(row_of[k])
        except SpeechDataError as err:
            return Packed.empty(error=err)
        ahead: Sequence[int] | None = getattr(rows, "ahead", None)
        read_ahead = getattr(self.source, "read_ahead", None)
        if ahead and read_ahead is not None:
            read_ahead(ahead)
        return self.pack(records, self.read_audio, drops, kept_rows if row_of is not None else None)

    def __getitem__(self, i: int) -> Packed:
        return self.__getitems__([i])

    def pack(
        self,
        records: Sequence[Record],
        read_audio: AudioSources,
        drops: DropCounter,
        rows: Sequence[int] | None = None,
    ) -> Packed:
        """Decode and tokenize ``records`` (audio from ``read_audio``; ``rows``: their packed rows)
        into one batch; ``drops`` (examples already left out of it) are added to the batch's own."""
        try:
            packed = pack(
                records,
                read_audio,
                self.builder,
                sample_rate=self.sample_rate,
                on_error=self.on_error,
                rows=rows,
            )
        except SpeechDataError as err:
            return Packed.empty(error=err)
        packed.drops.merge(drops)
        return packed


def _identity(x: Packed) -> Packed:
    return x


def _loader_options(cfg: DatasetConfig, pin_memory: bool) -> dict[str, Any]:
    workers = cfg.num_workers
    return {
        "num_workers": workers,
        "collate_fn": _identity,
        "pin_memory": pin_memory,
        "prefetch_factor": 4 if workers > 0 else None,
        "multiprocessing_context": "fork" if workers > 0 and os.name == "posix" else None,
    }


class AheadBatch(list):  # type: ignore[type-arg]
    """A planned batch (the example ids, a plain ``list``; ``rows`` as in
    :class:`~speechdata.sampling.packing.RowBatch` for a packed one, else ``None``) with
    ``ahead``: the ids of the next batch the same reader will get (empty at the end of the
    epoch). ``ahead`` is a hint for reading ahead only: nothing is delivered or counted from it."""

    def __init__(self, ids: list[int], ahead: list[int], rows: list[int] | None = None) -> None:
        super().__init__(ids)
        self.ahead = ahead
        self.rows = rows

    def __reduce__(self) -> tuple[Any, ...]:
        return (AheadBatch, (list(self), self.ahead, self.rows))


class ReadAhead:
    """``sampler`` as a DataLoader ``batch_sampler`` whose batches carry the next batch of the
    same reader (:class:`AheadBatch`). The DataLoader deals batches to its ``readers`` workers
    in turn (one reader without workers), so batch ``k``'s reader gets batch ``k + readers``
    next; the sampler is iterated that many batches early. Its position, length and seeking
    are the sampler's own."""

    def __init__(self, sampler: BatchSampler, readers: int) -> None:
        self.sampler = sampler
        self.readers = max(1, readers)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[AheadBatch]:
        batches = iter(self.sampler)
        window: deque[list[int]] = deque()
        for batch in batches:
            window.append(batch)
            if len(window) > self.readers:
                yield self._with_next(window)
        while window:
            yield self._with_next(window)

    def _with_next(self, window: deque[list[int]]) -> AheadBatch:
        batch = window.popleft()
        after = list(window[self.readers - 1]) if len(window) >= self.readers else []
        return AheadBatch(list(batch), after, getattr(batch, "rows", None))


class PlannedFeed:
    """Planned batches of row ids (``sampler``), read by row in the workers (persistent); a
    source with ``read_ahead`` gets its batches through :class:`ReadAhead`."""

    def __init__(
        self, dataset: BatchDataset, sampler: BatchSampler, cfg: DatasetConfig, pin_memory: bool
    ) -> None:
        self.sampler = sampler
        self.where: Callable[[int], str] = dataset.index.where
        reads_ahead = getattr(dataset.source, "read_ahead", None) is not None
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=ReadAhead(sampler, cfg.num_workers) if reads_ahead else sampler,
            persistent_workers=cfg.num_workers > 0,
            **_loader_options(cfg, pin_memory),
        )

    def length(self, epoch: int, deal: EpochDeal = FRESH_DEAL) -> int | None:
        """This rank's batches in ``epoch`` (dealt as ``deal``: after its earlier deals)."""
        return len(self.sampler.plan(epoch, deal))

    def start(self, epoch: int, consumed: int, deal: EpochDeal = FRESH_DEAL) -> int:
        """Make the next ``iter(loader)`` start after ``consumed`` batches of ``epoch``; returns
        the batches it replays before that point (none: the plan is sliced)."""
        self.sampler.seek(Position(epoch, consumed, resized=deal.resized, rule=deal.rule))
        return 0

    def tail_drops(self, epoch: int, deal: EpochDeal = FRESH_DEAL) -> DropCounter:
        """The examples ``drop_last`` left out of ``epoch``'s global plan (the same on every
        rank), as ``drop_last_tail`` drops with the places of the first few."""
        drops = DropCounter()
        plan = self.sampler.plan(epoch, deal)
        if plan.dropped:
            world = self.sampler.world_size
            note = "drop_last" if world == 1 else f"drop_last, over {world} ranks"
            first = plan.dropped_ids[: drops.keep_examples].tolist()
            drops.add("drop_last_tail", n=plan.dropped - len(first), note=note)
            for i in first:
                drops.add("drop_last_tail", where=self.where(i))
        return drops

    def check_first_epoch(self, names: str) -> None:
        """Epoch 0 must give this rank a batch; warn (once) when the data is too small to fill
        the buckets' batches."""
        plan = self.sampler.plan(0)
        if len(plan) == 0:
            kept = int(np.count_nonzero(self.sampler.keep_mask))
            raise EmptyDatasetError(
                f"{names}: epoch 0 has no batch for rank {self.sampler.rank} of "
                f"{self.sampler.world_size}: drop_last left out all {kept} kept examples (the {plan.formed} "
                f"batch(es) formed were incomplete, or fewer than the ranks); set drop_last: false "
                f"or give more data"
            )
        warning = self.sampler.small_data_warning(0)
        if warning is not None:
            log.warning("%s: %s", names, warning)


class StreamDataset(torch.utils.data.IterableDataset[Packed]):
    """Batches of a :class:`~speechdata.sources.base.StreamSource`: each DataLoader worker
    streams its :class:`~speechdata.sources.base.StreamSlot` of the epoch (rows outside ``keep``
    are not streamed), groups the records with the planner's batch rules and packs them with the
    audio that came with them. A record that failed to read is raised or counted per
    ``on_error``; its count travels with the next batch."""

    def __init__(
        self,
        batches: BatchDataset,
        source: StreamSource,
        cfg: DatasetConfig,
        rank: int,
        world_size: int,
        keep: np.ndarray,
    ) -> None:
        self.batches = batches
        self.source = source
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.keep = keep
        self.epoch = 0

    def __iter__(self) -> Iterator[Packed]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        cfg = self.cfg
        slot = StreamSlot(self.epoch, self.rank, self.world_size, wid, nw)
        rng = np.random.default_rng([cfg.seed, self.epoch, self.rank, wid, 0xB7])
        duration = self.batches.index.duration
        pending = DropCounter()  # read errors counted since the last batch

        def examples() -> Iterator[tuple[Record, Sequence[AudioSource]]]:
            for item in self.source.stream(self.keep, slot):
                if isinstance(item, DataError):
                    handle(item, cfg.on_error, pending)
                else:
                    yield item

        try:
            for group in bucketed_stream(
                examples(), lambda ex: float(duration[ex[0].row]), cfg, rng, cfg.bucket_buffer_size
            ):
                drops, pending = pending, DropCounter()
                yield self.batches.pack([rec for rec, _ in group], _carried_audio(group), drops)
        except SpeechDataError as err:
            yield Packed.empty(error=err)
            return
        if pending.total():
            last = Packed.empty()
            last.drops.merge(pending)
            yield last


def _carried_audio(group: Sequence[tuple[Record, Sequence[AudioSource]]]) -> AudioSources:
    """The audio that came with each streamed record (a record streamed twice, from a repeated
    shard, stays twice in its batch: both carry the same member bytes)."""
    carried = {id(rec): audio for rec, audio in group}
    return lambda rec: carried[id(rec)]


class StreamedFeed:
    """Streamed batches (:class:`StreamDataset`); workers are not persistent, so each epoch's
    workers receive the dataset with its new epoch number."""

    def __init__(
        self,
        dataset: BatchDataset,
        source: StreamSource,
        cfg: DatasetConfig,
        rank: int,
        world_size: int,
        keep: np.ndarray,
        pin_memory: bool,
    ) -> None:
        self.stream = StreamDataset(dataset, source, cfg, rank, world_size, keep)
        self.loader = torch.utils.data.DataLoader(
            self.stream, batch_size=None, **_loader_options(cfg, pin_memory)
        )

    def length(self, epoch: int, deal: EpochDeal = FRESH_DEAL) -> int | None:
        """Unknown before the stream ends: ``None``."""
        return None

    def start(self, epoch: int, consumed: int, deal: EpochDeal = FRESH_DEAL) -> int:
        """Make the next ``iter(loader)`` stream ``epoch``; the stream is deterministic for
        (seed, epoch, rank, workers), so the ``consumed`` batches are replayed and skipped."""
        self.stream.epoch = epoch
        return consumed

    def tail_drops(self, epoch: int, deal: EpochDeal = FRESH_DEAL) -> DropCounter:
        """None: a stream drops no tail, every row is yielded."""
        return DropCounter()

    def check_first_epoch(self, names: str) -> None:
        """Nothing to check before streaming (an empty stream is found at the end of the epoch)."""
