"""Plain JSONL manifests: every clip is a file, read by path, or an object-storage URL read
through :mod:`speechdata.storage` (read ahead, retried, optionally cached).

A clip named by URL is read whole, except a clip of a long 16-bit PCM WAV (an object larger
than :func:`~speechdata.storage.first_request`, 1 MiB): once its header is known, only the
clip's own samples are fetched, by one byte range, and decoded through a view of the file that
holds the header and those bytes (:class:`_ClipOfWav`). A ``.wav`` URL is first read by its head
(the whole object when it is small); a larger one's size comes from one metadata request, and
its layout is kept for the later clips of the same object (one process's memory: a few numbers
per long WAV).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from speechdata.audio import PcmWav, check_span, parse_pcm16_wav
from speechdata.errors import DataError
from speechdata.manifest import Index, Record
from speechdata.storage import (
    HEAD,
    WHOLE,
    RangeReader,
    RemoteOptions,
    SeekableRaw,
    Span,
    first_request,
    is_remote,
    object_version,
)

__all__ = ["ManifestSource"]


@dataclass(frozen=True)
class _WavLayout:
    """Where the samples of a 16-bit PCM WAV object lie: its header bytes (up to the samples),
    rate, channels and frames."""

    header: bytes
    rate: int
    channels: int
    frames: int

    def clip(self, url: str, offset: float, duration: float, where: str) -> Span:
        """The byte range of the samples of ``[offset, offset + duration]`` (the decoder's own
        span rule, :func:`~speechdata.audio.check_span`, whose one-line error it raises)."""
        start, want = check_span(self.rate, self.frames, offset, duration, where)
        align = 2 * self.channels
        return Span(url, len(self.header) + start * align, want * align)


class _ClipOfWav(SeekableRaw):
    """A read-only view of a WAV object of which only the header and one clip's samples were
    fetched: reads there give those bytes, other sample positions read as silence (the decoder,
    seeking to the clip by the same span rule, reads none), and the file ends with its samples."""

    def __init__(self, layout: _WavLayout, clip: Span, data: bytes) -> None:
        super().__init__(len(layout.header) + layout.frames * 2 * layout.channels)
        self._header, self._start, self._data = layout.header, clip.offset, data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), self.size - self._pos))
        done = 0
        while done < n:
            pos = self._pos + done
            if pos < len(self._header):
                part = self._header[pos : pos + n - done]
            elif self._start <= pos < self._start + len(self._data):
                part = self._data[pos - self._start : pos - self._start + n - done]
            else:  # samples outside the clip: silence up to the clip (or the end)
                stop = self._start if pos < self._start else self.size
                part = bytes(min(n - done, stop - pos))
            out[done : done + len(part)] = part
            done += len(part)
        self._pos += n
        return n


class ManifestSource:
    """The examples of NeMo JSONL manifests (a :class:`~speechdata.sources.base.Source`): records
    are read back from their manifest line by byte offset (:meth:`Index.record`); the decoder
    opens each local clip's file itself, and a clip named by URL (``s3://``, ``http(s)://``, ...)
    is read by a :class:`~speechdata.storage.RangeReader` (``remote`` options, backoff seeded by
    ``seed``, cache under ``cache_dir``; see the module docstring): announced when its record is
    read, so a batch's objects are in flight together, and its next batch's while it decodes."""

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
        self._wavs: dict[str, _WavLayout | None] = {}  # long .wav objects: layout, None if not 16-bit PCM
        self._ahead: dict[int, Record] = {}  # records of the next batch, read by read_ahead

    def record(self, row: int) -> Record:
        """Row ``row``'s manifest line, keys resolved; its clips on object storage start loading."""
        rec = self._ahead.pop(row, None)
        if rec is None:
            rec = self.index.record(row)
        self._announce(rec, False)
        return rec

    def read_ahead(self, rows: Sequence[int]) -> None:
        """Start loading the remote clips of ``rows`` (the reader's next batch); nothing while
        no clip named by URL has been seen. A row that does not read back is left for
        :meth:`record` to report."""
        if not self._urls:
            return
        self._ahead.clear()  # what the batch before announced and did not use (a drop, a resume)
        for row in rows:
            try:
                rec = self.index.record(row)
            except DataError:
                continue
            self._ahead[row] = rec  # read once: record() takes it when the batch comes
            self._announce(rec, True)

    def audio(self, rec: Record) -> list[str | bytes | io.RawIOBase]:
        """Each clip's file path (resolved against the manifest's folder when indexed), or for a
        clip on object storage its bytes (or a view of a long WAV holding its samples); a clip
        that cannot be read raises the storage layer's one-line error naming the line and URL."""
        out: list[str | bytes | io.RawIOBase] = []
        for url, offset, duration in zip(rec.audio, rec.offset, rec.duration, strict=True):
            if not is_remote(url):
                out.append(url)
                continue
            try:
                out.append(self._clip(url, offset, duration))
            except DataError as err:
                raise DataError(err.reason, f"{rec.where}: {url}", err.detail) from None
        return out

    def _span(self, url: str, offset: float, duration: float) -> Span:
        """What the clip is read by: the clip's samples of a known long WAV, the head of another
        ``.wav``, else the whole object."""
        if url in self._wavs:
            layout = self._wavs[url]
            return Span(url, 0, WHOLE) if layout is None else layout.clip(url, offset, duration, url)
        return Span(url, 0, HEAD if url.lower().endswith(".wav") else WHOLE)

    def _clip(self, url: str, offset: float, duration: float) -> bytes | io.RawIOBase:
        span = self._span(url, offset, duration)
        data = self._reader.read(span)
        if span.size == HEAD:
            if len(data) < first_request(self._reader.options):
                return data  # the whole object
            self._wavs[url] = self._layout(url, data)
            span = self._span(url, offset, duration)
            data = self._reader.read(span)
        layout = self._wavs.get(url)
        return _ClipOfWav(layout, span, data) if layout is not None and span.size >= 0 else data

    def _layout(self, url: str, head: bytes) -> _WavLayout | None:
        """The layout of the long WAV at ``url`` whose first bytes are ``head`` (its size: one
        metadata request), or None when it is not a 16-bit PCM WAV."""
        options = self._reader.options
        try:
            size = object_version(url, options, seed=self._reader.seed).size
        except FileNotFoundError:
            raise DataError("missing_audio", url, "object not found") from None
        except Exception as e:  # any library's error, as one line
            raise DataError("read_error", url, f"size not read ({type(e).__name__}: {e})") from None
        found = parse_pcm16_wav(head[: PcmWav.HEAD], size)
        if found is None:
            return None
        rate, channels, start, frames = found
        return _WavLayout(head[:start], rate, channels, frames)

    def _announce(self, rec: Record, ahead: bool) -> None:
        spans = []
        for url, offset, duration in zip(rec.audio, rec.offset, rec.duration, strict=True):
            if is_remote(url):
                try:
                    spans.append(self._span(url, offset, duration))
                except DataError:  # a span the audio does not have: reported when decoded
                    continue
        if spans:
            self._urls = True
            self._reader.schedule(spans, ahead)
