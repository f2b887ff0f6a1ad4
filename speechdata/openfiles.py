"""Read-only file descriptors opened on first use, once per process.

Objects that read by byte offset (the manifest :class:`~speechdata.manifest.Index`, the tar
reader) travel to DataLoader workers by pickling or forking; a descriptor must never be shared
across processes, so :class:`OpenFiles` pickles empty and forgets inherited descriptors when it
finds itself in a new process.
"""

from __future__ import annotations

import os
from typing import Any


class OpenFiles:
    """``path -> fd`` for ``os.pread``, opened lazily and per process."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def fd(self, path: str) -> int:
        """The descriptor of ``path`` in this process (opened read-only on first use)."""
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def pread(self, path: str, size: int, offset: int) -> bytes:
        """``size`` bytes of ``path`` from ``offset`` (fewer at the end of the file)."""
        return os.pread(self.fd(path), size, offset)

    def close(self) -> None:
        """Close every descriptor this process opened (they reopen on demand)."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._fds, self._pid = {}, os.getpid()
