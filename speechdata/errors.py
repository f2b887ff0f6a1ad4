"""Errors and drop accounting shared by every stage.

Every user mistake surfaces as a :class:`SpeechDataError` whose message is one line naming the
place (file, line, tar member, config key) and what is wrong. Data errors carry a *reason* from
:data:`DROP_REASONS`; with ``on_error: skip`` they become counted drops instead of exceptions.

Example::

    >>> drops = DropCounter()
    >>> drops.add("bad_line", "train.jsonl:3: not valid JSON")
    >>> drops.to_dict()
    {'bad_line': 1}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

#: Every reason an example can be dropped for. Nothing is dropped without one of these.
DROP_REASONS: tuple[str, ...] = (
    "too_short_audio",
    "too_long_audio",
    "too_short_text",
    "too_long_text",
    "bad_line",
    "missing_audio",
    "decode_error",
)

#: Drops that ``on_error: skip`` may swallow (the rest are filters, always counted, never raised).
DATA_ERROR_REASONS: frozenset[str] = frozenset({"bad_line", "missing_audio", "decode_error"})


class SpeechDataError(Exception):
    """Base class of every error speechdata raises for a user mistake; its message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))


class ConfigError(SpeechDataError):
    """A configuration file, key or value is wrong."""


class WorkerDiedError(SpeechDataError):
    """A DataLoader worker process died (killed, out of memory) while preparing batches.

    Nothing is lost: the loader's ``state_dict()`` still holds the position of the last batch
    handed out, so iterating again (or a fresh loader given that state) continues from there.
    """


class DataError(SpeechDataError):
    """One example (a manifest line, an audio file, a tar member) is bad.

    ``where`` names the place (``path:line`` or ``shard.tar:member``); ``reason`` is one of
    :data:`DROP_REASONS` and is the bucket the example is counted under when skipped.
    """

    def __init__(self, reason: str, where: str, message: str) -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}")
        self.reason = reason
        self.where = where
        self.detail = message
        super().__init__(f"{where}: {message}" if where else message)

    def __reduce__(self) -> tuple[type[DataError], tuple[str, str, str]]:
        return (type(self), (self.reason, self.where, self.detail))


class DropCounter:
    """Counts dropped examples by reason and keeps the first few messages of each.

    Counters from DataLoader workers are merged with :meth:`merge`; :meth:`to_dict` gives the
    plain ``{reason: count}`` mapping the loader reports.
    """

    keep_examples = 5

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, message: str = "", n: int = 1) -> None:
        """Count ``n`` drops under ``reason``; ``message`` is kept if few are stored yet."""
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}")
        self.counts[reason] += n
        if message:
            kept = self.examples.setdefault(reason, [])
            if len(kept) < self.keep_examples:
                kept.append(message)

    def add_error(self, err: DataError) -> None:
        """Count a :class:`DataError` as one drop."""
        self.add(err.reason, str(err))

    def merge(self, other: DropCounter | Mapping[str, int]) -> None:
        """Add another counter (or a plain mapping of counts) into this one."""
        if isinstance(other, DropCounter):
            for reason, n in other.counts.items():
                self.counts[reason] += n
            for reason, msgs in other.examples.items():
                kept = self.examples.setdefault(reason, [])
                kept.extend(msgs[: max(0, self.keep_examples - len(kept))])
        else:
            for reason, n in other.items():
                self.add(reason, n=int(n))

    def total(self) -> int:
        """Number of dropped examples over all reasons."""
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, int]:
        """``{reason: count}`` for reasons with at least one drop, in :data:`DROP_REASONS` order."""
        return {r: self.counts[r] for r in DROP_REASONS if self.counts.get(r)}

    def summary(self) -> str:
        """One line such as ``"3 dropped: bad_line=1, too_long_audio=2"`` (or ``"none dropped"``)."""
        d = self.to_dict()
        if not d:
            return "none dropped"
        return f"{sum(d.values())} dropped: " + ", ".join(f"{k}={v}" for k, v in d.items())

    def __repr__(self) -> str:
        return f"DropCounter({self.to_dict()})"


def handle(err: DataError, on_error: str, drops: DropCounter) -> None:
    """Apply the ``on_error`` policy to one data error: raise it, or count it in ``drops``."""
    if on_error == "raise":
        raise err from None  # often called inside an except block: no chained library traceback
    drops.add_error(err)
