"""Byte ranges of remote objects read ahead: bounded requests in flight, neighbours coalesced,
a bounded number of bytes held.

A reader (one per process) is told which ranges will be needed, in the order they will be
consumed (:meth:`RangeReader.schedule`), and then asked for them in that order
(:meth:`RangeReader.read`). On the first read after scheduling, the queued ranges are grouped:
ranges of the same object at most ``coalesce`` bytes apart become one request of at most
``max_request`` bytes. Requests go out in consumption order, at most ``in_flight`` at a time,
and only while the bytes in flight plus the bytes fetched but not yet read stay within
``max_bytes`` (the range being waited for is always sent). A scheduled range that is skipped (its
example dropped before its audio was read) is forgotten when a later range is read, so skipped
ranges never pin memory; a range read without being scheduled (or after being forgotten) is
fetched on its own. Each request is read with :func:`~speechdata.storage.retry.read_range`
(retries with seeded backoff); a failure is the one-line error of every range it held, naming
its own member.

Counters (``requests``, ``attempts``, ``bytes``, ``cache_hits``) say what reading cost.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from speechdata.errors import DataError
from speechdata.storage.localcache import ReadCache
from speechdata.storage.objects import object_version
from speechdata.storage.options import RemoteOptions
from speechdata.storage.retry import read_range

__all__ = ["RangeReader", "Span"]


@dataclass(frozen=True)
class Span:
    """``size`` bytes at ``offset`` of the object at ``url``; ``name`` (the tar member) is for
    messages (``URL:name``)."""

    url: str
    offset: int
    size: int
    name: str = ""

    @property
    def where(self) -> str:
        """``URL:member`` for messages."""
        return f"{self.url}:{self.name}" if self.name else self.url


@dataclass
class _Request:
    url: str
    start: int
    end: int
    spans: list[Span]
    seq: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class _Entry:
    span: Span
    seq: int
    count: int = 1
    request: _Request | None = None
    done: bool = False
    data: bytes | None = None
    error: BaseException | None = None
    waiting: bool = field(default=True)


class RangeReader:
    """Reads scheduled byte ranges ahead of their use (see the module docstring). Safe to pickle
    and to fork: a copy in another process starts empty, with its own threads."""

    def __init__(
        self, options: RemoteOptions | None = None, *, seed: int = 0, cache_dir: str | None = None
    ) -> None:
        self.options = options or RemoteOptions.from_env()
        self.seed = seed
        self.cache_dir = cache_dir
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._entries: OrderedDict[Span, _Entry] = OrderedDict()
        self._queued: list[_Entry] = []
        self._waiting: deque[_Request] = deque()
        self._running = 0
        self._held = 0
        self._seq = 0
        self._pool: ThreadPoolExecutor | None = None
        self._cache: ReadCache | None = None
        self._versions: dict[str, str] = {}
        self.requests = 0
        self.attempts = 0
        self.bytes = 0
        self.cache_hits = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options, "seed": self.seed, "cache_dir": self.cache_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.options, self.seed, self.cache_dir = state["options"], state["seed"], state["cache_dir"]
        self._reset()

    def _here(self) -> None:
        if self._pid != os.getpid():
            self._reset()

    # -------------------------------------------------------------------------- public

    @property
    def held(self) -> int:
        """Bytes in flight plus bytes fetched and not yet read."""
        return self._held

    def schedule(self, spans: list[Span]) -> None:
        """Announce ranges that will be read, in the order they will be read."""
        self._here()
        found = {s: self._cached(s) for s in spans} if self.options.cache_bytes > 0 else {}
        with self._cond:
            for span in spans:
                entry = self._entries.get(span)
                if entry is not None:
                    entry.count += 1
                    continue
                self._seq += 1
                entry = self._entries[span] = _Entry(span, self._seq)
                cached = found.get(span)
                if cached is not None:
                    entry.done, entry.data, entry.waiting = True, cached, False
                    self._held += len(cached)
                else:
                    self._queued.append(entry)

    def read(self, span: Span) -> bytes:
        """The bytes of ``span``: from a scheduled read (waiting for it if needed) or fetched now.
        Raises the range's one-line :class:`DataError` when it cannot be read."""
        self._here()
        with self._cond:
            entry = self._entries.get(span)
            if entry is not None:
                self._forget_before(entry)
                self._group()
                if entry.request is not None and entry.waiting:
                    self._issue(entry.request, force=True)
                self._pump()
        if entry is None:
            return self._fetch_alone(span)
        deadline = self._deadline()
        with self._cond:
            if not self._cond.wait_for(lambda: entry.done, timeout=deadline):
                raise DataError("read_error", span.where, f"no answer within {deadline:.0f} s")
            entry.count -= 1
            if entry.count <= 0 and self._entries.get(span) is entry:
                del self._entries[span]
                if entry.data is not None:
                    self._held -= len(entry.data)
                self._pump()
            if entry.error is not None:
                raise entry.error
            assert entry.data is not None
            return entry.data

    def close(self) -> None:
        """Forget every scheduled range and stop the threads (they restart on demand)."""
        with self._cond:
            self._entries.clear()
            self._queued.clear()
            self._waiting.clear()
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------ internals

    def _deadline(self) -> float:
        o = self.options
        return (o.retries + 1) * (o.timeout + o.max_backoff) + 5.0

    def _forget_before(self, entry: _Entry) -> None:
        """Drop the entries scheduled before ``entry`` (their examples were skipped)."""
        for old in list(self._entries.values()):
            if old.seq >= entry.seq:
                break
            del self._entries[old.span]
            if old.done and old.data is not None:
                self._held -= len(old.data)
            elif old.request is not None and old.waiting:
                old.request.spans.remove(old.span)
                if not old.request.spans:
                    self._waiting.remove(old.request)
            elif old.request is None:
                self._queued.remove(old)

    def _group(self) -> None:
        """Turn the queued entries into requests: neighbours of one object coalesced."""
        if not self._queued:
            return
        o = self.options
        requests: list[_Request] = []
        cur: _Request | None = None
        for e in sorted(self._queued, key=lambda e: (e.span.url, e.span.offset)):
            s = e.span
            end = s.offset + s.size
            if (
                cur is not None
                and s.url == cur.url
                and s.offset - cur.end <= o.coalesce
                and max(end, cur.end) - cur.start <= o.max_request
            ):
                cur.end = max(cur.end, end)
                cur.spans.append(s)
                cur.seq = min(cur.seq, e.seq)
            else:
                cur = _Request(s.url, s.offset, end, [s], e.seq)
                requests.append(cur)
            e.request = cur
        self._queued.clear()
        self._waiting.extend(sorted(requests, key=lambda r: r.seq))

    def _pump(self) -> None:
        o = self.options
        while self._waiting and self._running < o.in_flight:
            req = self._waiting[0]
            if self._held > 0 and self._held + req.size > o.max_bytes:
                return
            self._issue(req)

    def _issue(self, req: _Request, force: bool = False) -> None:
        if req in self._waiting:
            self._waiting.remove(req)
        elif not force:
            return
        for s in req.spans:
            entry = self._entries.get(s)
            if entry is not None:
                entry.waiting = False
        self._running += 1
        self._held += req.size
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.options.in_flight + 1, thread_name_prefix="speechdata-range")
        self._pool.submit(self._run, req)

    def _count(self, attempt: int) -> None:
        with self._cond:
            self.attempts += 1
            if attempt == 0:
                self.requests += 1

    def _run(self, req: _Request) -> None:
        data: bytes | None = None
        error: DataError | None = None
        where = (
            req.spans[0].where
            if len(req.spans) == 1
            else f"{req.url}:{req.spans[0].name} (+{len(req.spans) - 1})"
        )
        try:
            data = read_range(
                req.url,
                req.start,
                req.size,
                self.options,
                seed=self.seed,
                where=where,
                on_attempt=self._count,
            )
        except DataError as e:
            error = e
        except Exception as e:  # reported as the range's error, never lost in a thread
            error = DataError("read_error", where, f"{type(e).__name__}: {e}")
        stored: list[tuple[Span, bytes]] = []
        with self._cond:
            self._running -= 1
            self._held -= req.size
            if data is not None:
                self.bytes += len(data)
            for s in req.spans:
                entry = self._entries.get(s)
                if entry is None or entry.request is not req:
                    continue
                if data is not None:
                    entry.data = data[s.offset - req.start : s.offset - req.start + s.size]
                    self._held += s.size
                    stored.append((s, entry.data))
                else:
                    assert error is not None
                    entry.error = DataError(error.reason, s.where, error.detail)
                entry.done = True
            self._pump()
            self._cond.notify_all()
        for s, d in stored:
            self._store(s, d)

    def _fetch_alone(self, span: Span) -> bytes:
        cached = self._cached(span)
        if cached is not None:
            return cached
        data = read_range(
            span.url,
            span.offset,
            span.size,
            self.options,
            seed=self.seed,
            where=span.where,
            on_attempt=self._count,
        )
        with self._cond:
            self.bytes += len(data)
        self._store(span, data)
        return data

    # ---------------------------------------------------------------------------- cache

    def _cache_key(self, span: Span) -> str | None:
        if self.options.cache_bytes <= 0:
            return None
        version = self._versions.get(span.url)
        if version is None:
            try:
                version = self._versions[span.url] = object_version(
                    span.url, self.options, seed=self.seed
                ).key()
            except Exception:  # no version, no cache: the range is read from the store
                return None
        return f"{span.url}\0{version}\0{span.offset}\0{span.size}"

    def _cached(self, span: Span) -> bytes | None:
        key = self._cache_key(span)
        if key is None:
            return None
        if self._cache is None:
            self._cache = ReadCache(self.options.cache_bytes, self.cache_dir)
        data = self._cache.get(key)
        if data is not None and len(data) == span.size:
            self.cache_hits += 1
            return data
        return None

    def _store(self, span: Span, data: bytes) -> None:
        key = self._cache_key(span)
        if key is None:
            return
        if self._cache is None:
            self._cache = ReadCache(self.options.cache_bytes, self.cache_dir)
        with contextlib.suppress(Exception):  # a cache that cannot be written: a miss next time
            self._cache.put(key, data)
