"""The seam between "where examples come from" and everything after it.

A :class:`Source` gives the loader an :class:`~speechdata.manifest.Index` (the metadata columns
that filters and the planner read), optionally a pre-assigned bucket per row, one example's
:class:`~speechdata.manifest.Record` by row, and the audio of a record for the decoder (a path or
the bytes of each clip). A source that cannot be read by row (``seekable`` false) is a
:class:`StreamSource`: it streams records with their audio bytes per (epoch, rank, worker), and
the loader groups them into batches itself. Nothing else in the loader knows which source it has.

Example (an in-memory source; ``tests/test_sources.py`` has a complete one)::

    >>> index = index_from_clips("memory", [[1.5], [2.0, 0.5]], text_lengths=[12, 30])
    >>> loader = SpeechDataLoader(cfg, tokenizer, source=MySource(index, records, wavs))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from speechdata.audio import AudioSource
from speechdata.errors import DataError, DropCounter
from speechdata.manifest import DatasetInfo, Index, ManifestKeys, Record

__all__ = ["Source", "StreamSlot", "StreamSource", "Streamed", "index_from_clips"]

#: One streamed example: its record and the audio of each clip (bytes, or a path), or the
#: :class:`DataError` of an example that could not be read (raised or counted per ``on_error``).
Streamed = tuple[Record, Sequence[AudioSource]] | DataError


@dataclass(frozen=True)
class StreamSlot:
    """Which part of an epoch's stream one reader yields: reader ``worker`` of ``num_workers``
    DataLoader workers on data-parallel ``rank`` of ``world_size``."""

    epoch: int
    rank: int
    world_size: int
    worker: int
    num_workers: int


@runtime_checkable
class Source(Protocol):
    """Where examples come from (see the module docstring).

    * ``index``: one row per example; ``record(row)`` must give back that row's example with
      ``Record.row == row`` and ``Record.sample_id`` its stable id (dataset << 32 | line);
    * ``buckets``: a bucket id per row for a pre-bucketed dataset, else ``None``;
    * ``seekable``: ``record`` and ``audio`` work for any row in any order (the planner deals
      rows to workers); false means the loader calls :meth:`StreamSource.stream` instead;
    * ``record(row)``: the example, keys resolved; a bad one raises :class:`DataError`;
    * ``audio(rec)``: one decodable source per clip of ``rec`` (a path or the bytes); a missing
      or unreadable clip raises :class:`DataError`.

    A source is sent to DataLoader workers: keep file handles lazy (opened per process).
    """

    index: Index
    buckets: np.ndarray | None
    seekable: bool

    def record(self, row: int) -> Record:
        """The example of Index row ``row``."""
        ...

    def audio(self, rec: Record) -> Sequence[AudioSource]:
        """One decodable audio source per clip of ``rec``."""
        ...


@runtime_checkable
class StreamSource(Source, Protocol):
    """A source read front to back (``seekable`` false)."""

    def stream(self, keep: np.ndarray, slot: StreamSlot) -> Iterator[Streamed]:
        """The examples of ``slot`` in a deterministic order for (seed, ``slot``), each with its
        audio; only rows with ``keep[row]`` true (the filters' mask). Every kept row is yielded
        at least once per epoch over all slots (repeats are allowed, drops are not)."""
        ...


def index_from_clips(
    name: str,
    clips: Sequence[Sequence[float]],
    text_lengths: Sequence[int],
    *,
    keys: ManifestKeys | None = None,
    drops: DropCounter | None = None,
) -> Index:
    """An :class:`Index` over examples held in memory: one row per entry of ``clips`` (each
    example's clip durations in seconds), ``text_lengths`` characters of context + answer per
    example. Row ``i`` is line ``i + 1`` of dataset ``name`` (messages name it ``name:i+1``).
    ``drops`` counts examples the source left out before indexing. Such an Index has no file
    behind it: its source's :meth:`Source.record` builds the records."""
    n = len(clips)
    if len(text_lengths) != n:
        raise ValueError(f"{len(text_lengths)} text lengths for {n} examples")
    if any(len(c) == 0 or len(c) > 255 or min(c) <= 0 for c in clips):
        raise ValueError("every example needs 1 to 255 clips, each longer than 0 s")
    columns = {
        "duration": np.asarray([sum(c) for c in clips], dtype=np.float32),
        "min_clip": np.asarray([min(c) for c in clips], dtype=np.float32),
        "max_clip": np.asarray([max(c) for c in clips], dtype=np.float32),
        "num_audios": np.asarray([len(c) for c in clips], dtype=np.uint8),
        "dataset": np.zeros(n, dtype=np.uint16),
        "line_no": np.arange(1, n + 1, dtype=np.uint32),
        "line_offset": np.zeros(n, dtype=np.int64),
        "line_length": np.zeros(n, dtype=np.uint32),
        "text_len": np.asarray(text_lengths, dtype=np.uint32),
        "shard_id": np.full(n, -1, dtype=np.int32),
    }
    info = DatasetInfo(path=name, name=name, source="", root="", num_lines=n)
    return Index(columns, [info], keys or ManifestKeys(), drops or DropCounter())
