"""Low-level tar access: a deterministic writer that reports member offsets, and a header scan.

The writer emits POSIX headers (ustar, with a pax ``path`` record in UTF-8 only for a name over
100 bytes or with non-ASCII characters) built by :mod:`tarfile` with fixed metadata: mtime 0,
uid/gid 0, empty user and group names, mode ``0o644``. Member data is copied straight from the
source file (``os.sendfile``) or written from bytes, so a shard is a plain tar that ``tar``,
:mod:`tarfile` and webdataset read, and the same members in the same order give the same bytes.

Example::

    >>> with TarWriter("audio_0.tar.tmp") as tw:
    ...     where = tw.add_bytes("clip_1.flac", flac_bytes)
    >>> where.offset, where.size          # the member's data starts at byte ``offset``
    (512, 48213)
    >>> scan_members("audio_0.tar")["clip_1.flac"]
    Member(offset=512, size=48213)
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import NamedTuple

from speechdata.errors import DataError

BLOCK = tarfile.BLOCKSIZE
#: A finished archive is padded to a multiple of this (tar's default record size, 20 blocks).
RECORD = tarfile.RECORDSIZE


class Member(NamedTuple):
    """Where a member's data lies in its tar: byte ``offset`` of the first data byte, ``size``."""

    offset: int
    size: int


def member_header(name: str, size: int) -> bytes:
    """The header block(s) of a regular file member with speechdata's fixed metadata."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


class TarWriter:
    """Write a tar file member by member, remembering where each member's data starts.

    Use as a context manager; :meth:`close` writes the end-of-archive blocks, pads to
    :data:`RECORD`, and (with ``fsync=True``) flushes the file to disk. The file is created or
    truncated; renaming it into place is the caller's job.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = os.fspath(path)
        self.fsync = fsync
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pos = 0
        self._closed = False

    @property
    def position(self) -> int:
        """Bytes written so far."""
        return self._pos

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view.nbytes:
            n = os.write(self._fd, view)
            view = view[n:]
            self._pos += n

    def add_bytes(self, name: str, data: bytes) -> Member:
        """Append a member holding ``data``; returns where its data lies."""
        self._write(member_header(name, len(data)))
        where = Member(self._pos, len(data))
        self._write(data)
        self._write(_padding(len(data)))
        return where

    def add_file(self, name: str, source: str | os.PathLike[str], where: str = "") -> Member:
        """Append a member holding the bytes of file ``source`` (copied in the kernel when possible).

        ``where`` names the example in errors: a missing file is ``missing_audio``, a file that
        changes size while it is copied is ``decode_error``.
        """
        src = os.fspath(source)
        label = where or src
        try:
            in_fd = os.open(src, os.O_RDONLY)
        except FileNotFoundError:
            raise DataError("missing_audio", label, f"audio file not found: {src}") from None
        try:
            size = os.fstat(in_fd).st_size
            self._write(member_header(name, size))
            start = self._pos
            copied = self._copy(in_fd, size)
            if copied != size:
                raise DataError("decode_error", label, f"{src} changed size while it was copied")
            self._write(_padding(size))
        finally:
            os.close(in_fd)
        return Member(start, size)

    def _copy(self, in_fd: int, size: int) -> int:
        done = 0
        try:
            while done < size:
                n = os.sendfile(self._fd, in_fd, done, size - done)
                if n == 0:
                    break
                done += n
                self._pos += n
        except OSError:  # sendfile not possible between these files: copy through memory
            os.lseek(in_fd, done, os.SEEK_SET)
            while done < size:
                chunk = os.read(in_fd, min(1 << 20, size - done))
                if not chunk:
                    break
                self._write(chunk)
                done += len(chunk)
        return done

    def close(self) -> None:
        """Write the end-of-archive marker and padding, fsync if asked, and close the file."""
        if self._closed:
            return
        self._closed = True
        try:
            end = self._pos + 2 * BLOCK
            self._write(b"\0" * (2 * BLOCK + (-end % RECORD)))
            if self.fsync:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def abort(self) -> None:
        """Close without finishing the archive (the caller removes the file)."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def scan_members(path: str | os.PathLike[str], *, partial: bool = False) -> dict[str, Member]:
    """Read only the headers of a tar and return ``{member name: Member(offset, size)}``.

    Data blocks are skipped with seeks, so a 1 GB shard is scanned in milliseconds. Directories
    and links are ignored; a name that occurs twice keeps its last occurrence (what ``tar x``
    would leave on disk). A file that is not a readable tar raises ``DataError("decode_error")``.
    With ``partial=True`` a tar that breaks off (truncated, or a corrupted header after the
    first) gives the members whose data lies wholly before the break instead of an error.
    """
    p = os.fspath(path)
    if not Path(p).is_file():
        raise DataError("missing_audio", p, "tar shard not found")
    out: dict[str, Member] = {}
    try:
        end = os.path.getsize(p)
        with tarfile.open(p, mode="r:") as tf:
            for m in tf:
                if m.isfile():
                    out[m.name] = Member(m.offset_data, m.size)
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as e:
        if not (partial and out):
            raise DataError("decode_error", p, f"not a readable tar file: {_one_line(e)}") from None
        out = {name: m for name, m in out.items() if m.offset + m.size <= end}
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside folder ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through ``path.tmp`` + rename, so readers never see half a file."""
    p = os.fspath(path)
    tmp = p + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view.nbytes:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
