"""Plain JSONL manifests: every clip is a file, read by path, or an object-storage URL read
through :mod:`speechdata.storage` (whole objects, read ahead, retried, optionally cached)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from speechdata.errors import DataError
from speechdata.manifest import Index, Record
from speechdata.storage import WHOLE, RangeReader, RemoteOptions, Span, is_remote

__all__ = ["ManifestSource"]


class ManifestSource:
    """The examples of NeMo JSONL manifests (a :class:`~speechdata.sources.base.Source`): records
    are read back from their manifest line by byte offset (:meth:`Index.record`); the decoder
    opens each local clip's file itself, and a clip named by URL (``s3://``, ``http(s)://``, ...)
    is read whole by a :class:`~speechdata.storage.RangeReader` (``remote`` options, backoff
    seeded by ``seed``, cache under ``cache_dir``): announced when its record is read, so a
    batch's objects are in flight together, and its next batch's while it decodes."""

    seekable = True
    buckets: np.ndarray | None = None

    def __init__(
        self,
        index: Index,
        remote: RemoteOptions | None = None,
        *,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        self.index = index
        self._reader = RangeReader(remote, seed=seed, cache_dir=cache_dir)
        self._urls = False  # a record with a URL was read (in this process): worth reading ahead

    def record(self, row: int) -> Record:
        """Row ``row``'s manifest line, keys resolved; its clips on object storage start loading."""
        rec = self.index.record(row)
        self._announce(rec, False)
        return rec

    def read_ahead(self, rows: Sequence[int]) -> None:
        """Start loading the remote clips of ``rows`` (the reader's next batch); nothing while
        no clip named by URL has been seen. A row that does not read back is left for
        :meth:`record` to report."""
        if not self._urls:
            return
        for row in rows:
            try:
                self._announce(self.index.record(row), True)
            except DataError:
                continue

    def audio(self, rec: Record) -> list[str | bytes]:
        """Each clip's file path (resolved against the manifest's folder when indexed), or the
        bytes of a clip on object storage; a clip that cannot be read raises the storage layer's
        one-line error naming the line and the URL."""
        out: list[str | bytes] = []
        for url in rec.audio:
            if not is_remote(url):
                out.append(url)
                continue
            try:
                out.append(self._reader.read(Span(url, 0, WHOLE)))
            except DataError as err:
                raise DataError(err.reason, f"{rec.where}: {url}", err.detail) from None
        return out

    def _announce(self, rec: Record, ahead: bool) -> None:
        spans = [Span(a, 0, WHOLE) for a in rec.audio if is_remote(a)]
        if spans:
            self._urls = True
            self._reader.schedule(spans, ahead)
