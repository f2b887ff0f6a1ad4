"""Token counts per example, for token-aware batching (docs/configuration.md, "Tokens and 2D buckets").

Every count comes from the prompt builder: the formatted example a batch will hold
(``builder.build_record(source.record(row))``, a :class:`~speechdata.text.prompt.Prompt`), so
conversations, templates and truncation count exactly as they are packed. Per Index row:

* ``text`` — ``len(prompt.input_ids)``; ``output`` — the answer part, ``text - answer_start``;
* ``audio`` — ``ceil(seconds / token_equivalent_duration)`` (0 without the key);
* ``tokens`` — ``text + audio``, what the LLM sees: the measure of ``batch_tokens``,
  ``min_tokens`` and ``max_tokens``, and of 1D buckets with ``use_multimodal_sampling``;
* the 2D bucket axes — (seconds, or input tokens ``audio + text - output`` with
  ``use_multimodal_sampling``; ``output``).

Counting reads every kept manifest line and tokenizes it once (tens of thousands of examples per
second), so the counts are cached in ``<cache root>/tokens/`` (:mod:`speechdata.cache`), bound
to the Index's manifests (real path, file stamp and the Index columns that locate each line), the
tokenizer (its serialised state) and the settings that shape a prompt; a later run with more
examples kept counts only the rows it lacks. An example whose prompt cannot be built is the
one-line error (``on_error: raise``) or a counted drop.

Example::

    >>> counts = count_tokens(source, builder, keep, cfg, drops)   # keep: rows to count
    >>> m = Measures.of(source.index.duration, counts, cfg)
    >>> m.tokens[:3]
    array([212, 187, 240], dtype=int64)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from speechdata.cache import FileStamp, cache_folder, prune, touch
from speechdata.config import DatasetConfig, bins_are_2d
from speechdata.errors import DataError, DropCounter
from speechdata.sampling.buckets import assign_buckets_2d
from speechdata.sampling.filters import _drop
from speechdata.sampling.packing import packing_cost

__all__ = ["Measures", "TokenCounts", "count_tokens", "filter_tokens", "needs_tokens"]

log = logging.getLogger("speechdata")

#: Bump when the meaning of a cached column changes.
CACHE_VERSION = 1
#: A row not counted yet, and a row whose prompt could not be built (in the cached columns).
NOT_COUNTED, FAILED = -1, -2
#: Dataset keys that do not shape an example's prompt (everything else is in the cache key, so
#: a new prompt key can only cause a miss, never a stale count).
_NOT_PROMPT_KEYS = frozenset(
    {
        "global_batch_size",
        "micro_batch_size",
        "shuffle",
        "num_workers",
        "pin_memory",
        "drop_last",
        "concat_sampling_probabilities",
        "concat_sampling_technique",
        "concat_sampling_temperature",
        "sample_rate",
        "max_duration",
        "min_duration",
        "is_tarred",
        "tarred_audio_filepaths",
        "manifest_filepath",
        "shuffle_n",
        "bucketing_strategy",
        "bucketing_batch_size",
        "seed",
        "batch_duration",
        "quadratic_duration",
        "num_buckets",
        "bucket_duration_bins",
        "tokens_to_generate",
        "pad_to_multiple",
        "on_error",
        "streaming",
        "bucket_buffer_size",
        "features",
        "cache_dir",
        "input_cfg",
        "token_equivalent_duration",
        "use_multimodal_sampling",
        "batch_tokens",
        "min_tokens",
        "max_tokens",
        "use_bucketing",
        "bucketing_2d_strict_mode",
        "packing",
        "packed_sequence_size",
        "packed_audio_duration",
    }
)


class _Builder(Protocol):
    def build_record(self, rec: Any) -> Any: ...


class _Source(Protocol):
    index: Any

    def record(self, row: int) -> Any: ...


def needs_tokens(cfg: DatasetConfig) -> bool:
    """Whether ``cfg`` batches, buckets or filters by tokens (then the loader counts them)."""
    return (
        cfg.batch_tokens is not None
        or cfg.min_tokens is not None
        or cfg.max_tokens is not None
        or cfg.use_multimodal_sampling
        or bins_are_2d(cfg.bucket_duration_bins)
        or cfg.packing
    )


@dataclass(frozen=True)
class TokenCounts:
    """Text tokens and output (answer) tokens of each Index row (int32; rows not counted hold 0)."""

    text: np.ndarray
    output: np.ndarray


@dataclass(frozen=True)
class Measures:
    """What token-aware sampling measures per Index row (see the module docstring)."""

    duration: np.ndarray
    text: np.ndarray
    output: np.ndarray
    audio: np.ndarray
    multimodal: bool

    @classmethod
    def of(cls, duration: np.ndarray, counts: TokenCounts, cfg: DatasetConfig) -> Measures:
        """The measures of rows of ``duration`` (seconds) and ``counts`` under ``cfg``."""
        d = np.asarray(duration, dtype=np.float64)
        ted = cfg.token_equivalent_duration
        # ceil(seconds / ted), forgiving the float32 rounding of the Index's seconds (0.08 s
        # stored as 0.0800000012 is 1 token, as NeMo counts the manifest's 0.08)
        audio = np.ceil(d / ted * (1 - 1e-6)).astype(np.int64) if ted else np.zeros(d.shape, dtype=np.int64)
        return cls(
            d,
            np.asarray(counts.text, dtype=np.int64),
            np.asarray(counts.output, dtype=np.int64),
            audio,
            bool(cfg.use_multimodal_sampling),
        )

    @property
    def tokens(self) -> np.ndarray:
        """Text tokens plus audio tokens (int64)."""
        return self.text + self.audio

    @property
    def length(self) -> np.ndarray:
        """The 1D bucketing measure: tokens with ``use_multimodal_sampling``, else seconds."""
        return self.tokens.astype(np.float64) if self.multimodal else self.duration

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """The 2D bucketing measures: (seconds, or input tokens with ``use_multimodal_sampling``;
        output tokens), as float64."""
        first = (
            (self.audio + self.text - self.output).astype(np.float64) if self.multimodal else self.duration
        )
        return first, self.output.astype(np.float64)


def count_tokens(
    source: _Source,
    builder: _Builder,
    keep: np.ndarray,
    cfg: DatasetConfig,
    drops: DropCounter,
    *,
    cache: bool = True,
    tokenizer: object | None = None,
) -> TokenCounts:
    """Count the tokens of the rows of ``keep`` (see the module docstring).

    A row whose record or prompt raises :class:`DataError` is raised (``on_error: raise``) or
    cleared from ``keep`` (in place) and counted in ``drops`` under its reason. ``tokenizer``
    (default ``builder.tokenizer``) and the prompt settings of ``cfg`` bind the cache entry;
    ``cache=False`` neither reads nor writes one.
    """
    index = source.index
    n = len(index.duration)
    keep_rows = np.flatnonzero(keep)
    tok = tokenizer if tokenizer is not None else getattr(builder, "tokenizer", None)
    entry = _entry(index, tok, cfg) if cache else None
    text = np.full(n, NOT_COUNTED, dtype=np.int32)
    output = np.zeros(n, dtype=np.int32)
    if entry is not None:
        loaded = _load(entry, n)
        if loaded is not None:
            text, output = loaded
    state = text[keep_rows]
    # rows that failed before are read again: their drop needs its message and place
    todo = keep_rows[(state == NOT_COUNTED) | (state == FAILED)]
    counted = int(np.count_nonzero(state == NOT_COUNTED))
    started = time.perf_counter()
    failed = _count_rows(source.record, builder.build_record, todo, text, output, cfg.on_error, drops)
    if failed.size:
        keep[failed] = False
    if counted:
        log.info("counted the tokens of %d examples in %.1f s", counted, time.perf_counter() - started)
        if entry is not None:
            _save(entry, text, output)
    text_out = np.where(text >= 0, text, 0).astype(np.int32)
    return TokenCounts(text_out, np.where(text >= 0, output, 0).astype(np.int32))


def _count_rows(
    record: Callable[[int], Any],
    build: Callable[[Any], Any],
    rows: np.ndarray,
    text: np.ndarray,
    output: np.ndarray,
    on_error: str,
    drops: DropCounter,
) -> np.ndarray:
    """Fill ``text``/``output`` for ``rows``; return the rows that failed (counted in ``drops``)."""
    failed: list[int] = []
    for row in rows.tolist():
        try:
            prompt = build(record(row))
        except DataError as e:
            if on_error == "raise":
                raise
            drops.add_error(e)
            text[row] = FAILED
            failed.append(row)
            continue
        total = len(prompt.input_ids)
        text[row] = total
        output[row] = total - int(prompt.answer_start)
    return np.asarray(failed, dtype=np.int64)


# ------------------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class _Entry:
    path: Path
    source: str


def _entry(index: Any, tokenizer: object, cfg: DatasetConfig) -> _Entry | None:
    """The cache file of these counts, or ``None`` when they cannot be bound (no file stamp)."""
    h = hashlib.sha1()
    try:
        for info in index.datasets:
            real = os.path.realpath(info.path)
            stamp = FileStamp.of(real)
            h.update(
                json.dumps([real, stamp.size, stamp.mtime_ns, stamp.ctime_ns, stamp.ino, stamp.dev]).encode()
            )
        folder = cache_folder("tokens", cfg.cache_dir)
    except (OSError, AttributeError):
        return None
    for name in ("dataset", "line_no", "line_offset", "line_length", "text_len", "duration", "num_audios"):
        col = getattr(index, name, None)
        if col is not None:
            h.update(name.encode())
            h.update(np.ascontiguousarray(col).tobytes())
    state = getattr(tokenizer, "__getstate__", None)
    try:
        h.update(pickle.dumps(state() if callable(state) else tokenizer, protocol=4))
    except (pickle.PicklingError, TypeError, AttributeError):
        return None
    prompt = {k: v for k, v in sorted(cfg.to_dict().items()) if k not in _NOT_PROMPT_KEYS}
    h.update(json.dumps(prompt, sort_keys=True, default=str).encode())
    source = hashlib.sha1(
        "|".join(os.path.realpath(info.path) for info in index.datasets).encode()
    ).hexdigest()[:16]
    return _Entry(folder / f"{source}.{h.hexdigest()[:24]}.v{CACHE_VERSION}.npz", source)


def _load(entry: _Entry, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(entry.path, allow_pickle=False) as z:
            text, output = z["text"], z["output"]
    except (OSError, KeyError, ValueError):
        return None
    if text.shape != (n,) or output.shape != (n,):
        return None
    touch(entry.path)
    return text.astype(np.int32), output.astype(np.int32)


def _save(entry: _Entry, text: np.ndarray, output: np.ndarray) -> None:
    tmp = entry.path.with_name(entry.path.name + f".{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, text=text, output=output)
        os.replace(tmp, entry.path)
        prune(entry.path.parent, entry.source, keep=entry.path)
    except OSError:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ filter


def filter_tokens(
    index: Any, keep: np.ndarray, measures: Measures, cfg: DatasetConfig, drops: DropCounter
) -> None:
    """Clear from ``keep`` (in place) the examples outside ``min_tokens``/``max_tokens`` and,
    with 2D ``bucket_duration_bins``, those that fit no bucket; each counted in ``drops``:
    ``too_short_text`` / ``too_long_text`` with the bound as note, a bucket misfit as
    ``too_long_audio`` (its first value exceeds every first bound) or ``too_long_text``
    (note ``bucket_duration_bins``); with ``packing``, those longer than a row: ``too_long_text``
    (more than ``packed_sequence_size`` tokens) or ``too_long_audio`` (more than
    ``packed_audio_duration`` seconds)."""
    where = getattr(index, "where", None)
    tokens = measures.tokens
    if cfg.min_tokens is not None:
        note = f"min_tokens {cfg.min_tokens}"
        _drop(
            keep,
            tokens < cfg.min_tokens,
            "too_short_text",
            drops,
            note,
            where,
            lambda i: f"{tokens[i]} tokens < {note}",
        )
    if cfg.max_tokens is not None:
        note = f"max_tokens {cfg.max_tokens}"
        _drop(
            keep,
            tokens > cfg.max_tokens,
            "too_long_text",
            drops,
            note,
            where,
            lambda i: f"{tokens[i]} tokens > {note}",
        )
    if cfg.packing and cfg.packed_sequence_size is not None:
        size, seconds = cfg.packed_sequence_size, cfg.packed_audio_duration
        cost = packing_cost(measures.duration, tokens, size, seconds)
        note = f"packed_sequence_size {size}"
        _drop(
            keep,
            tokens > size,
            "too_long_text",
            drops,
            note,
            where,
            lambda i: f"{tokens[i]} tokens > {note}",
        )
        if seconds is not None:
            note_s = f"packed_audio_duration {seconds:g}"
            _drop(
                keep,
                cost > size,
                "too_long_audio",
                drops,
                note_s,
                where,
                lambda i: f"{measures.duration[i]:g} s > {note_s}",
            )
    if not bins_are_2d(cfg.bucket_duration_bins):
        return
    first, second = measures.axes()
    edges = np.asarray(cfg.bucket_duration_bins, dtype=np.float64)
    assigned, too_long_first = assign_buckets_2d(first, second, edges, cfg.bucketing_2d_strict_mode)
    misfit = assigned < 0
    unit = "input tokens" if measures.multimodal else "s"
    note = "bucket_duration_bins"

    def detail(i: int) -> str:
        return f"({first[i]:g} {unit}, {second[i]:g} output tokens) fits no bucket of {note}"

    _drop(keep, misfit & too_long_first, "too_long_audio", drops, note, where, detail)
    _drop(keep, misfit & ~too_long_first, "too_long_text", drops, note, where, detail)
