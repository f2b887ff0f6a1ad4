"""URLs of remote objects and the fsspec filesystem that reads them, one per process.

Any ``scheme://`` URL other than ``file://`` is remote (``s3://``, ``gs://``, ``az://``,
``http(s)://``, ``ais://``, ...); ``pipe:`` commands are not URLs. The filesystem is fsspec's for
the scheme (s3fs, gcsfs, adlfs, aistore, or fsspec's own HTTP), configured the way each library
is configured (credentials from its usual places, ``AWS_ENDPOINT_URL``, fsspec's config files and
``FSSPEC_<PROTOCOL>_<KEY>`` variables); speechdata only adds timeouts and turns off the
libraries' own retries where it can, because :mod:`speechdata.storage.retry` retries instead.
Nothing here logs a credential: messages name the URL only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from speechdata.errors import ConfigError

__all__ = ["ObjectVersion", "filesystem", "is_remote", "object_version"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: Extras to install per scheme, for the message when fsspec has no implementation.
_EXTRAS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "ais": "aistore"}
_PER_PROCESS: dict[tuple[int, str], Any] = {}


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for a ``scheme://`` URL other than ``file://`` (``pipe:`` commands are not URLs)."""
    m = _SCHEME.match(os.fspath(path))
    return m is not None and m.group(1).lower() != "file"


def _protocol(url: str) -> str:
    m = _SCHEME.match(url)
    if m is None:
        raise ValueError(f"not a URL: {url}")
    return m.group(1).lower()


def _defaults(protocol: str, timeout: float) -> dict[str, Any]:
    """speechdata's additions to a filesystem's options: timeouts, and no retries of its own."""
    if protocol in ("s3", "s3a"):
        return {
            "retries": 1,
            "config_kwargs": {
                "connect_timeout": timeout,
                "read_timeout": timeout,
                "retries": {"max_attempts": 1, "mode": "standard"},
            },
        }
    if protocol in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=timeout, sock_connect=timeout)}}
    return {}


def filesystem(url: str, timeout: float = 30.0) -> tuple[Any, str]:
    """``(fsspec filesystem, path within it)`` of ``url``: one filesystem per scheme and process
    (a forked DataLoader worker makes its own). Options set in fsspec's configuration for the
    scheme win over speechdata's defaults."""
    import fsspec
    from fsspec.config import conf

    protocol = _protocol(url)
    key = (os.getpid(), protocol)
    fs = _PER_PROCESS.get(key)
    if fs is None:
        for k in [k for k in _PER_PROCESS if k[0] != os.getpid()]:
            del _PER_PROCESS[k]  # inherited from the parent process: never used here
        options = {**_defaults(protocol, timeout), **conf.get(protocol, {})}
        try:
            fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
        except (ImportError, ValueError) as e:
            extra = _EXTRAS.get(protocol)
            hint = f" (pip install {extra})" if extra else ""
            raise ConfigError(f"{url}: no filesystem for {protocol}://{hint}: {e}") from None
        _PER_PROCESS[key] = fs
    return fs, fs._strip_protocol(url) if protocol not in ("http", "https") else url


@dataclass(frozen=True)
class ObjectVersion:
    """What identifies one version of a remote object: its size and a tag (ETag, generation,
    version id or modification time, whichever the store gives)."""

    size: int
    tag: str

    def key(self) -> str:
        """A short string naming this version (for cache entry names)."""
        return f"{self.size}.{self.tag}"


def object_version(url: str, timeout: float = 30.0) -> ObjectVersion:
    """The size and version tag of the object at ``url`` (one metadata request); a missing object
    raises ``FileNotFoundError``."""
    fs, path = filesystem(url, timeout)
    info = fs.info(path)
    tag = ""
    for k in (
        "ETag",
        "etag",
        "generation",
        "VersionId",
        "version_id",
        "LastModified",
        "mtime",
        "last_modified",
    ):
        if info.get(k) not in (None, ""):
            tag = str(info[k])
            break
    size = info.get("size")
    if size is None:
        raise OSError(f"{url}: the store gives no size for this object")
    return ObjectVersion(int(size), re.sub(r"[^A-Za-z0-9_-]", "", tag)[:64])
