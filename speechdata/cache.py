"""Where derived data (manifest indexes, tar member tables) is cached, and when it may be reused.

One rule for every cache speechdata keeps (see ``docs/caching.md``):

* **Location.** ``cache_root(cache_dir)``: the ``cache_dir`` given (the dataset key of that name),
  else the environment variable ``SPEECHDATA_CACHE_DIR`` (the command line's ``--cache-dir`` sets
  it), else ``$XDG_CACHE_HOME/speechdata``, else ``~/.cache/speechdata``. Nothing is written
  beside the data, so read-only dataset folders work and ``cp -a`` of a dataset copies no cache.
* **Binding.** An entry is named by a digest of the source file's *real absolute path* and of the
  settings that shaped it, so two files with the same name, size and mtime in different folders,
  a copied folder and a moved folder never share an entry.
* **Validity.** :class:`FileStamp` records the file's size, ``mtime_ns``, ``ctime_ns``, inode and
  device when the entry was made. An entry is reused without reading the file when all of them
  still match and the stamp was not *racy* (taken within :data:`RACY_SECONDS` of the file's last
  change, when a same-second edit could leave every field equal). Otherwise a caller that can
  afford it compares a CRC-32 of the whole file (manifests) or rebuilds (tar member tables).
  ``ctime`` cannot be set back by ``touch``/``os.utime``, so a same-size edit whose mtime was
  restored is caught by the stamp alone; the CRC catches any accidental edit but, being 32 bits,
  not a deliberately forged one.
* **Bound.** :func:`prune` keeps at most :data:`MAX_PER_SOURCE` entries per source file (one per
  key setting) and :data:`MAX_ENTRIES` in a cache folder, least recently used first out.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: A stamp taken within this many seconds of the file's last change is not trusted on its own
#: (file systems with coarse timestamps could hide an edit made in the same tick).
RACY_SECONDS = 2.0
#: Entries kept per source file (different key settings or ``on_error`` values).
MAX_PER_SOURCE = 4
#: Entries kept per cache folder.
MAX_ENTRIES = 256
ENV_VAR = "SPEECHDATA_CACHE_DIR"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$SPEECHDATA_CACHE_DIR``, else the user cache."""
    if cache_dir is not None and str(cache_dir):
        return Path(os.path.expanduser(os.fspath(cache_dir)))
    env = os.environ.get(ENV_VAR) or os.environ.get("SPEECHDATA_CACHE")
    if env:
        return Path(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(os.path.expanduser(xdg)) if xdg else Path.home() / ".cache"
    return base / "speechdata"


def cache_folder(kind: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<cache root>/<kind>``, created on demand (``kind``: ``index``, ``tar_members``)."""
    folder = cache_root(cache_dir) / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def source_digest(path: str | os.PathLike[str]) -> str:
    """16 hex digits of sha1 over the file's real absolute path (symlinks resolved)."""
    return hashlib.sha1(os.path.realpath(os.fspath(path)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FileStamp:
    """What a file looked like when a cache entry was made from it."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    racy: bool

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileStamp:
        """Stamp ``path`` now."""
        st = os.stat(path)
        changed = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
        racy = time.time() - changed < RACY_SECONDS
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, racy)

    def same_file(self, other: FileStamp) -> bool:
        """True when ``other`` (a fresh stamp) proves the file unchanged without reading it."""
        return (
            not self.racy
            and self.size == other.size
            and self.mtime_ns == other.mtime_ns
            and self.ctime_ns == other.ctime_ns
            and self.ino == other.ino
            and self.dev == other.dev
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileStamp:
        """Inverse of :meth:`to_dict`; raises ``KeyError``/``TypeError`` on a foreign dict."""
        return cls(**{k: d[k] for k in ("size", "mtime_ns", "ctime_ns", "ino", "dev", "racy")})


def crc32_of(data: bytes | memoryview | None = None, path: str | os.PathLike[str] | None = None) -> int:
    """CRC-32 of ``data``, or of the file at ``path`` read in 4 MiB blocks."""
    if data is not None:
        return zlib.crc32(data)
    assert path is not None
    crc = 0
    buf = bytearray(1 << 22)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return crc


def touch(entry: Path) -> None:
    """Mark an entry as just used (its mtime orders :func:`prune`)."""
    with contextlib.suppress(OSError):
        os.utime(entry)


def prune(folder: Path, source: str, keep: Path | None = None, keep_plain: Path | None = None) -> int:
    """Bound the cache: at most :data:`MAX_PER_SOURCE` entries whose name starts with ``source``
    (a :func:`source_digest`) and :data:`MAX_ENTRIES` in ``folder``, oldest used first out.
    ``keep`` is never removed. Companion ``.plain`` files (decompressed manifests) go when no
    entry of their source is left, and, when ``keep_plain`` is given, every other ``.plain`` of
    ``source`` goes (older contents). Returns the number of files removed."""

    def used(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    removed = 0
    entries = [p for p in folder.iterdir() if not p.name.endswith(".tmp")]
    mine = sorted((p for p in entries if p.name.startswith(source)), key=used, reverse=True)
    # a source's companion files (``.plain``) go with its last entry, not one by one
    stale = [p for p in mine if p.suffix != ".plain"][MAX_PER_SOURCE:]
    rest = sorted((p for p in entries if p not in stale), key=used, reverse=True)
    stale += [p for p in rest if p.suffix != ".plain"][MAX_ENTRIES:]
    for p in stale:
        if p == keep:
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed += 1
    alive = {p.name.split(".")[0] for p in folder.iterdir() if p.suffix != ".plain"}
    for p in folder.glob("*.plain"):
        if p.name.split(".")[0] not in alive or (
            keep_plain is not None and p.name.startswith(source) and p != keep_plain
        ):
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
    return removed
