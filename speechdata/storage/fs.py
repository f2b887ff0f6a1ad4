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
from collections.abc import Callable
from typing import Any, TypeVar

from speechdata.errors import ConfigError

__all__ = ["beside_filesystem", "filesystem", "is_remote", "protocol_of", "reset_filesystems"]

T = TypeVar("T")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: Extras to install per scheme, for the message when fsspec has no implementation.
_EXTRAS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "ais": "aistore"}
_PER_PROCESS: dict[tuple[int, str], Any] = {}
_BESIDE: dict[tuple[int, str, str], Any] = {}  # what other modules keep per filesystem: (pid, protocol, name)


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for a ``scheme://`` URL other than ``file://`` (``pipe:`` commands are not URLs)."""
    m = _SCHEME.match(os.fspath(path))
    return m is not None and m.group(1).lower() != "file"


def protocol_of(url: str) -> str:
    """The scheme of a URL, lower case (``s3`` for ``S3://b/k``); ``ValueError`` for a non-URL."""
    m = _SCHEME.match(url)
    if m is None:
        raise ValueError(f"not a URL: {url}")
    return m.group(1).lower()


def _defaults(protocol: str, timeout: float) -> dict[str, Any]:
    """speechdata's additions to a filesystem's options: timeouts, no retries of its own, and for
    S3 Signature Version 4 (botocore signs presigned URLs with version 2 unless told; AWS buckets
    made since 2020 refuse version 2: :mod:`speechdata.storage.presign`)."""
    if protocol in ("s3", "s3a"):
        return {
            "config_kwargs": {
                "signature_version": "s3v4",
                "connect_timeout": timeout,
                "read_timeout": timeout,
                "retries": {"total_max_attempts": 1, "mode": "standard"},
            },
        }
    if protocol in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=timeout, sock_connect=timeout)}}
    return {}


def filesystem(url: str, timeout: float = 30.0) -> tuple[Any, str]:
    """``(fsspec filesystem, path within it)`` of ``url``: one filesystem per scheme and process
    (a forked DataLoader worker makes its own; the parent's are left alone, never closed from the
    child, whose event loop is another). Options set in fsspec's configuration for the
    scheme win over speechdata's defaults."""
    import fsspec
    from fsspec.config import conf

    protocol = protocol_of(url)
    key = (os.getpid(), protocol)
    fs = _PER_PROCESS.get(key)
    if fs is None:
        options = {**_defaults(protocol, timeout), **conf.get(protocol, {})}
        try:
            fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
        except (ImportError, ValueError) as e:
            extra = _EXTRAS.get(protocol)
            hint = f" (pip install {extra})" if extra else ""
            raise ConfigError(f"{url}: no filesystem for {protocol}://{hint}: {e}") from None
        if protocol in ("s3", "s3a") and "retries" not in conf.get(protocol, {}):
            fs.retries = 1  # s3fs's own retry loop (a class attribute): one attempt, ours retry
        _PER_PROCESS[key] = fs
    return fs, fs._strip_protocol(url) if protocol not in ("http", "https") else url


def beside_filesystem(url: str, name: str, make: Callable[[], T]) -> T:
    """The object ``name`` kept beside the filesystem of ``url`` in this process (``make()`` on
    first use): state that lives and is forgotten with the filesystem (presigned URLs)."""
    key = (os.getpid(), protocol_of(url), name)
    found = _BESIDE.get(key)
    if found is None:  # setdefault: threads that race here all get the one object stored
        found = _BESIDE.setdefault(key, make())
    return found  # type: ignore[no-any-return]


def reset_filesystems() -> None:
    """Forget this process's filesystems (and what is kept beside them): the next use makes new
    ones, reading their configuration again (after credentials, an endpoint or fsspec's
    configuration changed)."""
    _PER_PROCESS.clear()
    _BESIDE.clear()
