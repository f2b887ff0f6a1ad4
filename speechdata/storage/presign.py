"""Byte ranges of S3 objects read through presigned URLs, with fsspec's HTTP filesystem.

A range read through s3fs costs its client about twice the CPU of the same range over plain
HTTP: aiobotocore builds, signs and parses every request (docs/object-storage.md, "Measured": the
loader's CPU with ``presign: 0`` against the default). With many
requests per second, that CPU is taken from decoding in the same worker. So a process signs each
S3 object's GET once (s3fs's own :meth:`~s3fs.S3FileSystem.sign`, with the credentials s3fs finds
the usual way; Signature Version 4, speechdata's default for s3 in :mod:`speechdata.storage.fs`)
for ``presign`` seconds, signs it again when half of that has passed, and reads its ranges from
the URL. ``presign: 0`` (``SPEECHDATA_REMOTE_PRESIGN=0``) reads through s3fs.

A presigned URL holds a signature: it is never logged. Messages name the ``s3://`` URL, and
:func:`scrub` removes query strings from any URL in an error's text.

A store that refuses a presigned GET (HTTP 400 or 403: an object encrypted with a customer key,
a requester-pays bucket, a store that does not take query signatures, credentials that expired
under the URL) switches presigning off for the process with one warning, and the range is read
again through s3fs, which answers for itself: nothing is lost, only the saving.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from speechdata.storage.fs import beside_filesystem, filesystem, protocol_of
from speechdata.storage.options import RemoteOptions

__all__ = ["refused", "scrub", "signed_url"]

log = logging.getLogger("speechdata.storage")

#: Schemes whose objects are read through presigned URLs.
_SIGNED_SCHEMES = ("s3", "s3a")
#: How many signed URLs one filesystem keeps (one per object; the oldest half is forgotten past it).
_MAX_URLS = 65536
_QUERY = re.compile(r"(\w+://[^\s'\"?]*)\?[^\s'\"]*")


@dataclass
class _Signing:
    """What one S3 filesystem (one per process, :func:`~speechdata.storage.fs.filesystem`) has
    signed: URL -> (signed URL, sign again after), and whether its store refused one."""

    urls: dict[str, tuple[str, float]] = field(default_factory=dict)
    off: bool = False
    #: taken to switch presigning off: range reads run in many threads, one warns
    lock: threading.Lock = field(default_factory=threading.Lock)


def _signing(url: str, options: RemoteOptions) -> tuple[Any, str, _Signing]:
    fs, path = filesystem(url, options.timeout)
    return fs, path, beside_filesystem(url, "presign", _Signing)


def signed_url(url: str, options: RemoteOptions) -> str | None:
    """A presigned ``http(s)`` URL for GETs of the S3 object ``url``, or ``None`` when ranges of
    ``url`` are read through its filesystem (not S3, ``presign`` 0, or refused before)."""
    if not options.presign or protocol_of(url) not in _SIGNED_SCHEMES:
        return None
    fs, path, state = _signing(url, options)
    if state.off:
        return None
    now = time.monotonic()
    hit = state.urls.get(url)
    if hit is not None and now < hit[1]:
        return hit[0]
    signed = str(fs.sign(path, expiration=int(options.presign)))
    if len(state.urls) >= _MAX_URLS:
        for old in list(state.urls)[: _MAX_URLS // 2]:
            state.urls.pop(old, None)
    state.urls[url] = (signed, now + options.presign / 2)
    return signed


def refused(url: str, status: int | None, options: RemoteOptions) -> bool:
    """Whether a presigned GET of ``url`` that failed with HTTP ``status`` was refused (400 or
    403); if so, presigning is switched off for this process's S3 filesystem (one warning) and
    the caller reads the range through it instead."""
    if status not in (400, 403):
        return False
    _, _, state = _signing(url, options)
    with state.lock:
        first, state.off = not state.off, True
    if first:
        state.urls.clear()
        log.warning(
            "%s: the store refused a presigned GET (HTTP %s); this process reads S3 through s3fs from "
            "now on (remote: {presign: 0} says so from the start)",
            url,
            status,
        )
    return True


def scrub(text: str) -> str:
    """``text`` with the query string of every URL in it replaced by ``?...`` (a presigned URL's
    signature and credential never reach a message)."""
    return _QUERY.sub(r"\1?...", text)
