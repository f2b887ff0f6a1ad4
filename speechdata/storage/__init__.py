"""Reading from object storage (``s3://``, ``gs://``, ``az://``, ``http(s)://``, ``ais://``)
through fsspec: see ``docs/object-storage.md``.

* :mod:`~speechdata.storage.fs` — which paths are URLs, the filesystem of a URL (one per process);
* :mod:`~speechdata.storage.retry` — one byte range read with retries (seeded backoff);
* :mod:`~speechdata.storage.presign` — S3 ranges read through presigned URLs (signed once per
  object and process), never logged;
* :mod:`~speechdata.storage.ranges` — :class:`RangeReader`: ranges read ahead, bounded in flight
  and in bytes, neighbours coalesced;
* :mod:`~speechdata.storage.localcache` — the optional read-through local cache, size-bounded;
* :mod:`~speechdata.storage.objects` — local copies of remote manifests, objects opened whole or
  read whole (:func:`read_object`), object versions;
* :mod:`~speechdata.storage.options` — the knobs (``SPEECHDATA_REMOTE_*``).

Example::

    >>> reader = RangeReader(seed=0)
    >>> spans = [Span("s3://bucket/audio_0.tar", 512, 48213, "clip_1.flac")]
    >>> reader.schedule(spans)
    >>> len(reader.read(spans[0]))
    48213
"""

from __future__ import annotations

from speechdata.storage.fs import filesystem, is_remote, reset_filesystems
from speechdata.storage.localcache import ReadCache
from speechdata.storage.objects import (
    ObjectVersion,
    RangeFile,
    SeekableRaw,
    checked_version,
    clip_version,
    first_request,
    list_folder,
    local_copy,
    object_version,
    open_object,
    read_object,
)
from speechdata.storage.options import RemoteOptions
from speechdata.storage.ranges import HEAD, WHOLE, RangeReader, Span
from speechdata.storage.retry import backoff_delay, call_with_retries, read_range, retryable

__all__ = [
    "HEAD",
    "WHOLE",
    "ObjectVersion",
    "RangeFile",
    "RangeReader",
    "ReadCache",
    "RemoteOptions",
    "SeekableRaw",
    "Span",
    "backoff_delay",
    "call_with_retries",
    "checked_version",
    "clip_version",
    "filesystem",
    "first_request",
    "is_remote",
    "list_folder",
    "local_copy",
    "object_version",
    "open_object",
    "read_object",
    "read_range",
    "reset_filesystems",
    "retryable",
]
