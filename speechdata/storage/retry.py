"""One byte range of a remote object, read with retries: exponential backoff with seeded jitter.

Retried: timeouts, HTTP 408/429/5xx (``SlowDown``, ``ServiceUnavailable``), connection errors and
resets, and bodies shorter than the range asked for (a connection cut mid-body). Not retried: a
missing object (404), refused access (401/403), any other 4xx, and a body longer than the range
(a server that ignores ``Range``). After the last attempt the read fails with one line naming the
URL, the member and the last error (``DataError("read_error")``; an object that is not there or
not readable is ``missing_audio``: counted as a drop with
``on_error: skip``).

The wait before retry ``k`` (``k = 0, 1, ...``) is ``min(max_backoff, backoff * 2**k)`` times a
factor in ``[0.5, 1)`` drawn from ``(seed, URL, offset, k)``: the same run waits the same, and
readers of different ranges do not retry in lockstep.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from speechdata.errors import DataError
from speechdata.storage.fs import filesystem
from speechdata.storage.options import RemoteOptions
from speechdata.storage.presign import refused, scrub, signed_url

__all__ = ["ShortRead", "backoff_delay", "call_with_retries", "read_range", "retryable"]

T = TypeVar("T")


class ShortRead(OSError):
    """A body with fewer bytes than the range asked for (retried)."""


class LongRead(ValueError):
    """A body with more bytes than the range asked for: the server ignores ``Range`` (not retried)."""


_NEVER = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, LongRead)


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an exception of aiohttp, botocore or a wrapper of either."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for attr in ("status", "status_code", "code"):
            v = getattr(e, attr, None)
            if isinstance(v, int) and 100 <= v < 600:
                return v
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            v = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(v, int):
                return v
        e = e.__cause__ or e.__context__
    return None


#: Parts of the type names of transport errors (a body cut short, a dropped or reset connection,
#: a timeout) in aiohttp, botocore and the other fsspec back ends: always retried, whatever code
#: they carry (aiohttp's ``ContentLengthError`` says 400 for a short body).
_TRANSPORT = (
    "Payload",
    "ContentLength",
    "IncompleteRead",
    "Streaming",
    "Disconnected",
    "Connection",
    "Timeout",
)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not x for x in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def retryable(exc: BaseException) -> bool:
    """Whether a failed read is worth another attempt (see the module docstring)."""
    if isinstance(exc, _NEVER):
        return False
    if any(part in type(e).__name__ for e in _chain(exc) for part in _TRANSPORT):
        return True
    status = _status(exc)
    if status is not None and 400 <= status < 500:
        return status in (408, 429)
    return True


def backoff_delay(options: RemoteOptions, seed: int, url: str, offset: int, attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based) of the range at ``offset`` of ``url``."""
    u = np.random.default_rng([int(seed), zlib.crc32(url.encode()), int(offset), int(attempt)]).random()
    return min(options.max_backoff, options.backoff * 2.0**attempt) * (0.5 + 0.5 * float(u))


def _describe(exc: BaseException) -> str:
    text = scrub(" ".join(str(exc).split())) or type(exc).__name__
    status = _status(exc)
    shown = f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text
    if status is not None and str(status) not in shown:
        shown = f"HTTP {status}: {shown}"
    return shown[:300]


def call_with_retries(
    call: Callable[[], T],
    options: RemoteOptions,
    *,
    seed: int,
    url: str,
    offset: int = 0,
    on_attempt: Callable[[int], None] | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> T:
    """``call()``, attempted again after :func:`backoff_delay` while it fails with a
    :func:`retryable` error, at most ``options.retries`` times; the last error is raised as it is
    (with the number of attempts in ``attempts`` on the exception when it can carry it)."""
    attempts = options.retries + 1
    for attempt in range(attempts):
        if attempt:
            sleep(backoff_delay(options, seed, url, offset, attempt - 1))
        if on_attempt is not None:
            on_attempt(attempt)
        try:
            return call()
        except Exception as e:
            if attempt + 1 == attempts or not retryable(e):
                raise
    raise AssertionError("unreachable")


def read_range(
    url: str,
    offset: int,
    size: int,
    options: RemoteOptions,
    *,
    seed: int = 0,
    where: str = "",
    on_attempt: Callable[[int], None] | None = None,
    sleep: Callable[[float], Any] = time.sleep,
    upto: bool = False,
) -> bytes:
    """Bytes ``[offset, offset + size)`` of the object at ``url``, retried per the module rules.

    ``where`` names what is read in the error (``URL:member``; the URL alone by default);
    ``on_attempt(k)`` is called before attempt ``k`` (to count requests). ``upto``: the object
    may end inside the range, and a shorter (complete) body is its end, not a short read; a body
    cut short is still retried, because the client libraries check it against the
    ``Content-Length`` the server announced.
    """
    where = where or url

    def once() -> bytes:
        signed = signed_url(url, options)
        if signed is not None:
            http, _ = filesystem(signed, options.timeout)
            try:
                data = http.cat_file(signed, start=offset, end=offset + size)
            except Exception as e:
                status = _status(e)
                if upto and offset == 0 and status == 416:  # an empty object
                    return b""
                if retryable(e) or not refused(url, status, options):
                    raise
                signed = None  # read through s3fs, which answers for itself
        if signed is None:
            fs, path = filesystem(url, options.timeout)
            data = fs.cat_file(path, start=offset, end=offset + size)
        if len(data) < size and not upto:
            raise ShortRead(f"{len(data)} of {size} bytes")
        if len(data) > size:
            raise LongRead(f"{len(data)} bytes for a range of {size}: the server does not honour Range")
        return bytes(data)

    try:
        return call_with_retries(
            once, options, seed=seed, url=url, offset=offset, on_attempt=on_attempt, sleep=sleep
        )
    except FileNotFoundError:
        raise DataError("missing_audio", where, "object not found") from None
    except PermissionError as e:
        raise DataError("missing_audio", where, f"access denied ({_describe(e)})") from None
    except Exception as e:
        tries = f"after {options.retries + 1} attempts" if retryable(e) else "(not retried)"
        raise DataError(
            "read_error", where, f"bytes {offset}-{offset + size} not read {tries}: {_describe(e)}"
        ) from None
