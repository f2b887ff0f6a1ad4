"""Byte ranges of remote objects read ahead: bounded requests in flight, neighbours coalesced,
a bounded number of bytes held.

A reader (one per process) is told which ranges will be needed, in the order they will be
consumed (:meth:`RangeReader.schedule`), and then asked for them in that order
(:meth:`RangeReader.read`). Ranges may be announced *ahead* (``schedule(spans, ahead=True)``:
the reader's next batch, while the current one decodes); the later plain ``schedule`` of the
same ranges confirms those uses instead of adding new ones, so requests stay in flight across
batch boundaries and each use is counted once. A range announced ahead that is never read is
forgotten like a skipped one. On the first read after scheduling, the queued ranges are grouped:
ranges of the same object at most ``coalesce`` bytes apart become one request of at most
``max_request`` bytes. Requests go out in consumption order, at most ``in_flight`` at a time,
and only while the bytes in flight plus the bytes fetched but not yet read stay within
``max_bytes`` (the range being waited for is always sent). Each announcement is one use of its
range, at its place in the order; a use that is skipped (its example dropped before its audio
was read) is forgotten when a later use is read, and a range left without uses is dropped, so
skipped ranges never pin memory; a range read without being scheduled (or after being
forgotten) is fetched on its own. Each request is read with :func:`~speechdata.storage.retry.read_range`
(retries with seeded backoff); a failure is the one-line error of every range it held, naming
its own member.

A span of size :data:`WHOLE` is a whole object of unknown size (an audio file named by URL in a
plain manifest), read by :func:`~speechdata.storage.objects.read_object`; a span of size
:data:`HEAD` is the object's first :func:`~speechdata.storage.objects.first_request` bytes (1
MiB), or all of it when it is smaller (a WAV's header, to find where a clip's samples lie). Both
are never coalesced, and count while in flight as the bytes of that first request and as their
real size once read.

Counters (``requests``, ``attempts``, ``bytes``, ``cache_hits``) say what reading cost, and
``waited`` the seconds :meth:`RangeReader.read` spent waiting for bytes not yet there (the
latency that reading ahead did not hide).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from speechdata.errors import DataError
from speechdata.storage.localcache import ReadCache
from speechdata.storage.objects import first_request, object_version, read_object
from speechdata.storage.options import RemoteOptions
from speechdata.storage.presign import scrub
from speechdata.storage.retry import read_range

__all__ = ["HEAD", "WHOLE", "RangeReader", "Span"]

#: :attr:`Span.size` of a whole object whose size is not known in advance.
WHOLE = -1
#: :attr:`Span.size` of an object's first bytes (all of it when it is smaller), see the module docstring.
HEAD = -2


@dataclass(frozen=True)
class Span:
    """``size`` bytes at ``offset`` of the object at ``url`` (or, with ``size`` :data:`WHOLE` or
    :data:`HEAD`, the whole object or its head); ``name`` (the tar member) is for messages
    (``URL:name``)."""

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
    kind: int = 0  # WHOLE or HEAD for those spans' requests, 0 for a byte range

    @property
    def size(self) -> int:
        """Bytes this request reads (for a whole object: at most this many per range request)."""
        return self.end - self.start


@dataclass
class _Entry:
    span: Span
    uses: deque[int] = field(default_factory=deque)  # the positions of its uses not yet read
    ahead: int = 0  # uses announced ahead and not yet confirmed by a plain schedule()
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
        self._entries: dict[Span, _Entry] = {}
        self._uses: OrderedDict[int, _Entry] = OrderedDict()  # every use not yet read, in order
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
        self.waited = 0.0

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

    def schedule(self, spans: list[Span], ahead: bool = False) -> None:
        """Announce ranges that will be read, in the order they will be read. ``ahead``: uses
        announced early (the next batch's); a later plain call for the same range confirms one
        such use rather than adding one."""
        self._here()
        found = {s: self._cached(s) for s in spans} if self.options.cache_bytes > 0 else {}
        with self._cond:
            for span in spans:
                entry = self._entries.get(span)
                if entry is not None and not ahead and entry.ahead > 0:
                    entry.ahead -= 1  # this use was announced ahead: confirmed, not added
                    continue
                self._seq += 1
                if entry is None:
                    entry = self._entries[span] = _Entry(span)
                    cached = found.get(span)
                    if cached is not None:
                        entry.done, entry.data, entry.waiting = True, cached, False
                        self._held += len(cached)
                    else:
                        self._queued.append(entry)
                entry.uses.append(self._seq)
                entry.ahead += ahead
                self._uses[self._seq] = entry

    def read(self, span: Span) -> bytes:
        """The bytes of ``span``: from a scheduled read (waiting for it if needed) or fetched now.
        Raises the range's one-line :class:`DataError` when it cannot be read."""
        self._here()
        with self._cond:
            entry = self._entries.get(span)
            if entry is not None:
                use = entry.uses[0]
                self._forget_before(use)
                self._group()
                del self._uses[use]
                entry.uses.popleft()
                entry.ahead = min(entry.ahead, len(entry.uses))
                if entry.request is not None and entry.waiting:
                    self._issue(entry.request, force=True)
                self._pump()
        if entry is None:
            t = time.perf_counter()
            try:
                return self._fetch_alone(span)
            finally:
                self.waited += time.perf_counter() - t
        deadline = self._deadline()
        with self._cond:
            if not entry.done:
                t = time.perf_counter()
                self._cond.wait_for(lambda: entry.done, timeout=deadline)
                self.waited += time.perf_counter() - t
            if not entry.uses and self._entries.get(span) is entry:
                del self._entries[span]
                if entry.data is not None:
                    self._held -= len(entry.data)
                self._pump()
            if not entry.done:  # forgotten above (no use left): it never pins memory
                raise DataError("read_error", span.where, f"no answer within {deadline:.0f} s")
            if entry.error is not None:
                raise entry.error
            assert entry.data is not None
            return entry.data

    def close(self) -> None:
        """Forget every scheduled range and stop the threads (they restart on demand)."""
        with self._cond:
            self._entries.clear()
            self._uses.clear()
            self._queued.clear()
            self._waiting.clear()
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------ internals

    def _deadline(self) -> float:
        o = self.options
        return (o.retries + 1) * (o.timeout + o.max_backoff) + 5.0

    def _forget_before(self, use: int) -> None:
        """Drop the uses scheduled before ``use`` (their examples were skipped, or announced
        ahead for a batch that did not come), and the entries left without one."""
        while self._uses:
            first, old = next(iter(self._uses.items()))
            if first >= use:
                break
            del self._uses[first]
            old.uses.popleft()
            old.ahead = min(old.ahead, len(old.uses))
            if old.uses:
                continue
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
            if s.size < 0:
                e.request = _Request(s.url, 0, first_request(o), [s], e.uses[0], kind=s.size)
                requests.append(e.request)
                continue
            end = s.offset + s.size
            if (
                cur is not None
                and s.url == cur.url
                and s.offset - cur.end <= o.coalesce
                and max(end, cur.end) - cur.start <= o.max_request
            ):
                cur.end = max(cur.end, end)
                cur.spans.append(s)
                cur.seq = min(cur.seq, e.uses[0])
            else:
                cur = _Request(s.url, s.offset, end, [s], e.uses[0])
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
            data = self._get(req.url, req.start, req.size, req.kind, where)
        except DataError as e:
            error = e
        except Exception as e:  # reported as the range's error, never lost in a thread
            error = DataError("read_error", where, f"{type(e).__name__}: {scrub(str(e))}")
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
                    entry.data = (
                        data if req.kind else data[s.offset - req.start : s.offset - req.start + s.size]
                    )
                    self._held += len(entry.data)
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
        data = self._get(span.url, span.offset, span.size, min(span.size, 0), span.where)
        with self._cond:
            self.bytes += len(data)
        self._store(span, data)
        return data

    def _get(self, url: str, start: int, size: int, kind: int, where: str) -> bytes:
        """One request's bytes (a whole object: its ranges of at most ``max_request``; a head:
        up to its first request's bytes)."""
        if kind == HEAD:
            return read_range(
                url,
                0,
                first_request(self.options),
                self.options,
                seed=self.seed,
                where=where,
                on_attempt=self._count,
                upto=True,
            )
        if kind == WHOLE:
            return read_object(url, self.options, seed=self.seed, where=where, on_attempt=self._count)
        return read_range(url, start, size, self.options, seed=self.seed, where=where, on_attempt=self._count)

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
        kind = {WHOLE: "whole", HEAD: "head"}.get(span.size, f"{span.offset}\0{span.size}")
        return f"{span.url}\0{version}\0{kind}"

    def _cached(self, span: Span) -> bytes | None:
        key = self._cache_key(span)
        if key is None:
            return None
        if self._cache is None:
            self._cache = ReadCache(self.options.cache_bytes, self.cache_dir)
        data = self._cache.get(key)
        if data is not None and (span.size < 0 or len(data) == span.size):
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
