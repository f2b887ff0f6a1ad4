"""The optional read-through local cache of remote byte ranges, bounded in size.

Entries live in ``<cache folder>/remote_ranges/`` (the folder of :mod:`speechdata.cache`), one
file per range, named by a digest of the object's URL, its version (size and ETag or equivalent,
so a replaced object is never served from the cache), and the range. Reading an entry marks it
used; when the folder grows past the bound, the least recently used entries go first. Several
processes may share the folder: each writes atomically (a temporary name, then a rename) and
prunes by what it finds on disk, so the bound holds up to the writes in progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from speechdata.cache import cache_folder, touch

__all__ = ["ReadCache"]


class ReadCache:
    """``key -> bytes`` on local disk, at most ``max_bytes`` in all (see the module docstring)."""

    def __init__(self, max_bytes: int, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.max_bytes = int(max_bytes)
        self.folder: Path | None
        try:
            self.folder = cache_folder("remote_ranges", cache_dir)
        except OSError:
            self.folder = None  # no writable cache folder: nothing is cached
        self._total: int | None = None  # bytes in the folder as this process last knew them

    def _path(self, key: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / (hashlib.sha1(key.encode()).hexdigest() + ".bin")

    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None."""
        path = self._path(key)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        touch(path)
        return data

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (nothing when it alone exceeds the bound), then prune."""
        path = self._path(key)
        if path is None or len(data) > self.max_bytes:
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)
            return
        if self._total is None:
            self._total = self.size()
        else:
            self._total += len(data)
        if self._total > self.max_bytes:
            self.prune()

    def size(self) -> int:
        """Bytes stored in the folder now."""
        return sum(size for _, size, _ in self._scan())

    def _scan(self) -> list[tuple[float, int, Path]]:
        if self.folder is None:
            return []
        out = []
        with os.scandir(self.folder) as it:
            for e in it:
                if e.name.endswith(".bin"):
                    with contextlib.suppress(OSError):
                        st = e.stat()
                        out.append((st.st_mtime, st.st_size, Path(e.path)))
        return out

    def prune(self) -> int:
        """Remove least recently used entries until the folder holds at most ``max_bytes``;
        returns the number removed."""
        entries = sorted(self._scan())
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
            total -= size
        self._total = total
        return removed
