"""Errors and drop accounting shared by every stage.

Every user mistake surfaces as a :class:`SpeechDataError` whose message is one line naming the
place (file, line, tar member, config key) and what is wrong. Data errors carry a *reason* from
:data:`DROP_REASONS`; with ``on_error: skip`` they become counted drops instead of exceptions.

Example::

    >>> drops = DropCounter()
    >>> drops.add("bad_line", "train.jsonl:3: not valid JSON")
    >>> drops.to_dict()
    {'bad_line': 1}
    >>> drops.add("too_long_audio", where="train.jsonl:9", note="max_duration 1.0")
    >>> drops.describe()
    '2 dropped: too_long_audio=1 (max_duration 1.0) e.g. train.jsonl:9; bad_line=1 e.g. train.jsonl:3: not valid JSON'
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
    "read_error",
    "drop_last_tail",
)

#: Drops that ``on_error: skip`` may swallow (the rest are filters and the planner's
#: ``drop_last_tail``: always counted, never raised).
DATA_ERROR_REASONS: frozenset[str] = frozenset({"bad_line", "missing_audio", "decode_error", "read_error"})


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


class EmptyDatasetError(SpeechDataError):
    """A loader would yield no batch: the manifests have no examples, every example was dropped
    (indexing, filters, ``drop_last``), or this rank's plan for the epoch is empty."""


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
    """Counts dropped examples by reason and keeps the first few places and messages of each.

    For every reason it keeps up to :attr:`keep_examples` messages (``examples``) and places
    (``places``: ``path:line`` or ``shard.tar:member``), plus one ``note`` naming the setting
    behind a filter or planner drop (``"max_duration 1.0"``). Counters from DataLoader workers are
    merged with :meth:`merge`; :meth:`to_dict` gives the plain ``{reason: count}`` mapping the
    loader reports and :meth:`describe` the one line it logs.
    """

    keep_examples = 5
    #: Places named per reason by :meth:`describe`.
    show_places = 3

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.places: dict[str, list[str]] = {}
        self.notes: dict[str, str] = {}

    def add(self, reason: str, message: str = "", n: int = 1, *, where: str = "", note: str = "") -> None:
        """Count ``n`` drops under ``reason``.

        ``message`` and ``where`` (the place of one dropped example) are kept while fewer than
        :attr:`keep_examples` are stored; ``note`` (the setting behind the drop) is kept once.
        """
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}")
        self.counts[reason] += n
        _keep(self.examples, reason, [message] if message else [], self.keep_examples)
        _keep(self.places, reason, [where] if where else [], self.keep_examples)
        if note:
            self.notes.setdefault(reason, note)

    def add_error(self, err: DataError) -> None:
        """Count a :class:`DataError` as one drop at its place."""
        self.add(err.reason, str(err), where=err.where)

    def merge(self, other: DropCounter | Mapping[str, int]) -> None:
        """Add another counter (or a plain mapping of counts) into this one."""
        if isinstance(other, DropCounter):
            for reason, n in other.counts.items():
                self.counts[reason] += n
            for reason, msgs in other.examples.items():
                _keep(self.examples, reason, msgs, self.keep_examples)
            # a counter restored from an older pickle or cache may lack places and notes
            for reason, places in getattr(other, "places", {}).items():
                _keep(self.places, reason, places, self.keep_examples)
            for reason, note in getattr(other, "notes", {}).items():
                self.notes.setdefault(reason, note)
        else:
            for reason, n in other.items():
                self.add(reason, n=int(n))

    def copy(self) -> DropCounter:
        """An independent counter with the same counts, examples, places and notes."""
        out = DropCounter()
        out.merge(self)
        return out

    def total(self) -> int:
        """Number of dropped examples over all reasons."""
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, int]:
        """``{reason: count}`` for reasons with at least one drop, in :data:`DROP_REASONS` order."""
        return {r: self.counts[r] for r in DROP_REASONS if self.counts.get(r)}

    def summary(self) -> str:
        """One line such as ``"3 dropped: too_long_audio=2, bad_line=1"`` (or ``"none dropped"``)."""
        d = self.to_dict()
        if not d:
            return "none dropped"
        return f"{sum(d.values())} dropped: " + ", ".join(f"{k}={v}" for k, v in d.items())

    def describe(self) -> str:
        """One line with the total and :meth:`by_reason`, e.g.
        ``"3 dropped: too_long_audio=3 (max_duration 1.0) e.g. train.jsonl:4, train.jsonl:9"``
        (``"none dropped"`` when empty)."""
        if not self.total():
            return "none dropped"
        return f"{self.total()} dropped: {self.by_reason()}"

    def by_reason(self) -> str:
        """Each reason's count, its note and its first places, reasons separated by ``"; "``:
        ``"too_long_audio=3 (max_duration 1.0) e.g. train.jsonl:4, train.jsonl:9"``. A reason
        counted without places (say, by a counter that kept only messages) shows its first
        message instead."""
        parts = []
        for reason, n in self.to_dict().items():
            text = f"{reason}={n}"
            if self.notes.get(reason):
                text += f" ({self.notes[reason]})"
            places = self.places.get(reason) or self.examples.get(reason, [])[:1]
            if places:
                text += " e.g. " + ", ".join(places[: self.show_places])
            parts.append(text)
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"DropCounter({self.to_dict()})"


def _keep(store: dict[str, list[str]], reason: str, items: list[str], limit: int) -> None:
    """Append ``items`` to ``store[reason]`` up to ``limit`` entries in all."""
    if not items:
        return
    kept = store.setdefault(reason, [])
    kept.extend(items[: max(0, limit - len(kept))])


def handle(err: DataError, on_error: str, drops: DropCounter) -> None:
    """Apply the ``on_error`` policy to one data error: raise it, or count it in ``drops``."""
    if on_error == "raise":
        raise err from None  # often called inside an except block: no chained library traceback
    drops.add_error(err)
