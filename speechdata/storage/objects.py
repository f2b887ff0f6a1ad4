"""Whole remote objects: local copies of manifests, and objects opened for reading front to back.

* :func:`local_copy` gives a remote manifest as a local file: downloaded once into
  ``<cache folder>/remote_manifests/`` and named by a digest of its URL and its version (size and
  ETag or equivalent), so the next start costs one metadata request, a changed object is
  downloaded again, and the copy's older versions are removed. Indexing then reads the copy like
  any local manifest (and caches its Index as usual); a record is read back from the copy by byte
  offset, so examples never wait on the store for their text.
* :func:`open_object` opens an object for sequential reading (streamed shards, member table scans);
  :class:`RangeFile` opens one for random reading by retried range requests (audio headers).
* :func:`object_version` names the version of an object (size and ETag or equivalent), retried
  like a range read; :func:`list_folder` names what a folder URL holds.
* :func:`read_object` reads a whole object of unknown size (an audio file named by URL): one
  range request of :func:`first_request` bytes (1 MiB), which is the whole object when it ends
  inside it; a larger object's size comes from one metadata request and the rest from further
  ranges of at most ``max_request`` bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from speechdata.cache import cache_folder, touch
from speechdata.errors import DataError, SpeechDataError
from speechdata.storage.fs import filesystem
from speechdata.storage.options import RemoteOptions
from speechdata.storage.presign import scrub
from speechdata.storage.retry import call_with_retries, read_range

__all__ = [
    "ObjectVersion",
    "RangeFile",
    "SeekableRaw",
    "checked_version",
    "clip_version",
    "first_request",
    "list_folder",
    "local_copy",
    "object_version",
    "open_object",
    "read_object",
]

#: Bytes per request when a whole object is downloaded.
CHUNK = 32 << 20


@dataclass(frozen=True)
class ObjectVersion:
    """What identifies one version of a remote object: its size and a tag (ETag, generation,
    version id or modification time, whichever the store gives)."""

    size: int
    tag: str

    def key(self) -> str:
        """A short string naming this version (for cache entry names)."""
        return f"{self.size}.{self.tag}"


_TAGS = ("ETag", "etag", "generation", "VersionId", "version_id", "LastModified", "Last-Modified", "mtime")


def object_version(url: str, options: RemoteOptions | None = None, *, seed: int = 0) -> ObjectVersion:
    """The size and version tag of the object at ``url``: one metadata request, retried like a
    range read; a missing object raises ``FileNotFoundError``, a failure after the last retry
    the last error."""
    options = options or RemoteOptions.from_env()
    fs, path = filesystem(url, options.timeout)
    info = call_with_retries(lambda: fs.info(path), options, seed=seed, url=url, offset=0)
    tag = next((str(info[k]) for k in _TAGS if info.get(k) not in (None, "")), "")
    size = info.get("size")
    if size is None:
        raise OSError(f"{url}: the store gives no size for this object")
    return ObjectVersion(int(size), re.sub(r"[^A-Za-z0-9_-]", "", tag)[:64])


def checked_version(url: str, what: str = "object", options: RemoteOptions | None = None) -> ObjectVersion:
    """:func:`object_version`, a missing or unreadable object as a one-line
    :class:`SpeechDataError` naming the URL and ``what`` it is (``s3://b/m.json: manifest not
    found``)."""
    try:
        return object_version(url, options)
    except FileNotFoundError:
        raise SpeechDataError(f"{url}: {what} not found") from None
    except Exception as e:  # any library's error, as one line naming the URL
        raise SpeechDataError(
            f"{url}: cannot read {what} ({type(e).__name__}: {' '.join(str(e).split())})"
        ) from None


def clip_version(url: str, options: RemoteOptions, where: str, *, seed: int = 0) -> ObjectVersion:
    """:func:`object_version` of an audio object, failures as the example's :class:`DataError`
    naming ``where``: a missing object is ``missing_audio``, any other ``read_error``."""
    try:
        return object_version(url, options, seed=seed)
    except FileNotFoundError:
        raise DataError("missing_audio", where, "object not found") from None
    except Exception as e:  # any library's error, as one line naming the place
        raise DataError(
            "read_error", where, f"size not read ({type(e).__name__}: {scrub(' '.join(str(e).split()))})"
        ) from None


def list_folder(url: str, options: RemoteOptions | None = None) -> list[str]:
    """The names directly in the folder ``url`` (objects and subfolders, sorted), listed through
    its fsspec filesystem and retried like a range read; ``[]`` for a folder that holds nothing
    or is not there. A failure after the last retry is a one-line :class:`SpeechDataError`
    naming the URL."""
    options = options or RemoteOptions.from_env()
    fs, path = filesystem(url, options.timeout)
    try:
        found = call_with_retries(lambda: fs.ls(path, detail=False), options, seed=0, url=url)
    except FileNotFoundError:
        return []
    except Exception as e:  # any library's error, as one line naming the URL
        raise SpeechDataError(
            f"{url}: cannot list ({type(e).__name__}: {' '.join(str(e).split())})"
        ) from None
    return sorted({str(p).rstrip("/").rsplit("/", 1)[-1] for p in found})


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def local_copy(
    url: str, cache_dir: str | os.PathLike[str] | None = None, options: RemoteOptions | None = None
) -> Path:
    """A local file with the content of the object at ``url`` (see the module docstring). A
    missing object or one that cannot be read is a one-line :class:`SpeechDataError` naming it."""
    options = options or RemoteOptions.from_env()
    version = checked_version(url, "manifest", options)
    try:
        folder = cache_folder("remote_manifests", cache_dir)
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="speechdata-"))
    base = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[-80:] or "manifest"
    mine = _digest(url)
    path = folder / f"{mine}.{_digest(version.key())}.{base}"
    if path.is_file() and path.stat().st_size == version.size:
        touch(path)
        return path
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for start in range(0, version.size, CHUNK):
                size = min(CHUNK, version.size - start)
                try:
                    f.write(read_range(url, start, size, options, where=url))
                except DataError as e:
                    raise SpeechDataError(f"{url}: cannot read manifest ({e.detail})") from None
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    for old in folder.glob(f"{mine}.*"):
        if old != path and not old.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                old.unlink()
    return path


class SeekableRaw(io.RawIOBase):
    """A read-only, seekable raw file of ``size`` bytes: the position arithmetic of
    :class:`RangeFile` and the loader's views of partly fetched objects; subclasses read."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos


class RangeFile(SeekableRaw):
    """The object at ``url`` (of ``size`` bytes) as a seekable binary file whose reads are range
    requests (:func:`~speechdata.storage.retry.read_range`, retried). For a reader that cannot
    pass an error on, as libsndfile's callbacks cannot: a read that fails after its retries is
    kept in :attr:`error` (a :class:`DataError` naming ``where``) and reads as the end of the
    object, and the caller must raise :attr:`error` when it is set. Wrap it in
    ``io.BufferedReader(f, block)`` to read ``block`` bytes per request."""

    def __init__(self, url: str, size: int, options: RemoteOptions | None = None, where: str = "") -> None:
        super().__init__(size)
        self.url, self.where = url, where or url
        self.options = options or RemoteOptions.from_env()
        self.error: DataError | None = None

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self._pos)
        if n <= 0:
            return 0
        try:
            data = read_range(self.url, self._pos, n, self.options, where=self.where)
        except DataError as e:
            self.error = e
            return 0  # the end, for a reader that cannot take the error: the caller raises it
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def open_object(url: str, options: RemoteOptions | None = None, block_size: int = 8 << 20) -> IO[Any]:
    """The object at ``url`` opened for reading (binary, seekable, read ahead ``block_size``
    bytes per request)."""
    options = options or RemoteOptions.from_env()
    fs, path = filesystem(url, options.timeout)
    return fs.open(path, "rb", block_size=block_size, cache_type="readahead")


#: Bytes of the first request of :func:`read_object` at most: most single utterances fit (30 s of
#: 16 kHz 16-bit WAV is 0.96 MB), and reads ahead are bounded by it while the size is unknown.
FIRST = 1 << 20
#: ... and at least (``max_request`` may be set lower for ranges of tars).
MIN_FIRST = 64 << 10


def first_request(options: RemoteOptions) -> int:
    """Bytes of the first range request of a whole object (:func:`read_object`): ``max_request``
    within ``[MIN_FIRST, FIRST]``."""
    return min(max(options.max_request, MIN_FIRST), FIRST)


def read_object(
    url: str,
    options: RemoteOptions | None = None,
    *,
    seed: int = 0,
    where: str = "",
    on_attempt: Callable[[int], None] | None = None,
) -> bytes:
    """The whole object at ``url`` (see the module docstring), every request retried like a
    range read (:func:`~speechdata.storage.retry.read_range`): a missing object is a
    ``missing_audio`` :class:`DataError` naming ``where`` (the URL by default), a failure after
    the last retry a ``read_error``."""
    options = options or RemoteOptions.from_env()
    where = where or url
    first = first_request(options)
    head = read_range(url, 0, first, options, seed=seed, where=where, on_attempt=on_attempt, upto=True)
    if len(head) < first:
        return head
    size = clip_version(url, options, where, seed=seed).size
    parts = [head]
    chunk = max(options.max_request, MIN_FIRST)
    for start in range(first, size, chunk):
        parts.append(
            read_range(
                url, start, min(chunk, size - start), options, seed=seed, where=where, on_attempt=on_attempt
            )
        )
    return b"".join(parts)
