"""Metadata filters (docs/configuration.md): which examples of an Index take part in sampling.

Everything here reads numpy columns only; no audio or text is touched. Every example that a
filter removes is counted in a :class:`~speechdata.errors.DropCounter` under its reason, with
the setting that dropped it (``max_duration 1.0``) and the places (``train.jsonl:4``) of the first
few, so nothing disappears silently.

Example::

    >>> drops = DropCounter()
    >>> keep = filter_mask(index, cfg, drops)       # durations only
    >>> keep = filter_mask(index, cfg, drops, token_lengths=lengths)  # plus min_seq_length
    >>> drops.to_dict()
    {'too_short_audio': 12, 'too_long_audio': 3}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from speechdata.config import DatasetConfig
from speechdata.errors import DropCounter

__all__ = ["IndexColumns", "duration_mask", "filter_mask", "num_datasets"]


@runtime_checkable
class IndexColumns(Protocol):
    """The columns of an Index that sampling needs (``speechdata.manifest.Index`` has them).

    All arrays have one row per example: ``duration`` (float32, total seconds over the example's
    clips), ``min_clip`` / ``max_clip`` (float32, shortest / longest clip), ``num_audios`` (uint8),
    ``dataset`` (uint16, which manifest). ``num_datasets`` is the number of manifests, which may
    exceed ``dataset.max() + 1`` when a manifest has no rows.
    """

    duration: np.ndarray
    min_clip: np.ndarray
    max_clip: np.ndarray
    num_audios: np.ndarray
    dataset: np.ndarray
    num_datasets: int


def num_datasets(index: object) -> int:
    """Number of datasets (manifests) of ``index``.

    Uses ``index.num_datasets`` when present, else ``len(index.datasets)``, else one more than the
    largest value of the ``dataset`` column.
    """
    n = getattr(index, "num_datasets", None)
    if n is None:
        datasets = getattr(index, "datasets", None)
        if datasets is not None:
            n = len(datasets)
        else:
            col = np.asarray(index.dataset)  # type: ignore[attr-defined]
            n = int(col.max()) + 1 if col.size else 0
    return int(n)


def duration_mask(
    min_clip: np.ndarray,
    max_clip: np.ndarray,
    min_duration: float | None,
    max_duration: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The duration filter: ``(keep, too_short, too_long)`` boolean masks, one row per example.

    An example is kept when ``min_duration <= d <= max_duration`` holds for *every* clip, so the
    shortest clip (``min_clip``) is compared with ``min_duration`` and the longest (``max_clip``)
    with ``max_duration``; a ``None`` bound is not checked. Clips and bounds are compared in
    float32, the precision of the Index columns, so a clip whose manifest duration equals a bound
    (say ``16.7``) is kept; a text-only example (no clip) passes. ``too_long`` leaves out the
    examples already ``too_short`` (each dropped example has one reason). The loader (:func:`filter_mask`), ``speechdata shard
    --min-duration/--max-duration`` and ``speechdata inspect`` all filter with this function.
    """
    lo_clip = np.asarray(min_clip, dtype=np.float32)
    hi_clip = np.asarray(max_clip, dtype=np.float32)
    if lo_clip.shape != hi_clip.shape:
        raise ValueError(
            f"index columns differ in length: min_clip {lo_clip.shape}, max_clip {hi_clip.shape}"
        )
    too_short = np.zeros(lo_clip.shape, dtype=bool)
    too_long = np.zeros(lo_clip.shape, dtype=bool)
    if min_duration is not None:
        # a text-only example (no clip: its longest clip is 0 s, a real clip is > 0 s) has no
        # clip to be too short
        too_short = (lo_clip < np.float32(min_duration)) & (hi_clip > 0)
    if max_duration is not None:
        too_long = (hi_clip > np.float32(max_duration)) & ~too_short
    return ~(too_short | too_long), too_short, too_long


def filter_mask(
    index: IndexColumns,
    cfg: DatasetConfig,
    drops: DropCounter,
    token_lengths: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean mask of the examples that pass ``min_duration``/``max_duration``/``min_seq_length``.

    * Audio: :func:`duration_mask`: ``min_duration <= d <= max_duration`` must hold for *every*
      clip of an example, compared in float32 (a clip whose manifest duration equals a bound, say
      ``16.7``, is kept). A null bound is not checked.
    * Text: when ``token_lengths`` (formatted sequence lengths, one per example) is given, an
      example shorter than ``min_seq_length`` is dropped. Over-long text is not a filter: the
      text stage truncates it (or drops it as ``too_long_text`` when it cannot).

    Each dropped example is counted once, under the first failing reason in the order
    ``too_short_audio``, ``too_long_audio``, ``too_short_text``, with the bound as the drop's
    note. When ``index`` has ``where(i)`` (a :class:`~speechdata.manifest.Index` does), the place
    and value of the first :attr:`~speechdata.errors.DropCounter.keep_examples` drops of each
    reason are kept too.
    """
    min_clip = np.asarray(index.min_clip)
    max_clip = np.asarray(index.max_clip)
    n = len(min_clip)
    keep = np.ones(n, dtype=bool)
    _, short, long = duration_mask(min_clip, max_clip, cfg.min_duration, cfg.max_duration)
    where = getattr(index, "where", None)
    if cfg.min_duration is not None:
        note = f"min_duration {cfg.min_duration}"
        _drop(
            keep,
            short,
            "too_short_audio",
            drops,
            note,
            where,
            lambda i: f"clip of {min_clip[i]:.3f} s < {note} s",
        )
    if cfg.max_duration is not None:
        note_long = f"max_duration {cfg.max_duration}"
        _drop(
            keep,
            long,
            "too_long_audio",
            drops,
            note_long,
            where,
            lambda i: f"clip of {max_clip[i]:.3f} s > {note_long} s",
        )
    if token_lengths is not None:
        lengths = np.asarray(token_lengths)
        if lengths.shape != (n,):
            raise ValueError(f"token_lengths has shape {lengths.shape}, expected ({n},)")
        note = f"min_seq_length {cfg.min_seq_length}"
        _drop(
            keep,
            lengths < cfg.min_seq_length,
            "too_short_text",
            drops,
            note,
            where,
            lambda i: f"{lengths[i]} tokens < {note}",
        )
    return keep


def _drop(
    keep: np.ndarray,
    failed: np.ndarray,
    reason: str,
    drops: DropCounter,
    note: str,
    where: Callable[[int], str] | None,
    detail: Callable[[int], str],
) -> None:
    """Clear ``keep`` where ``failed`` and count the examples that were still kept; the first few
    are recorded with their place (``where(i)``) and ``detail(i)``."""
    newly = failed & keep
    count = int(np.count_nonzero(newly))
    if not count:
        return
    keep &= ~newly
    first = np.flatnonzero(newly)[: drops.keep_examples].tolist() if where is not None else []
    drops.add(reason, n=count - len(first), note=note)
    for i in first:
        place = where(i)  # type: ignore[misc]
        drops.add(reason, f"{place}: {detail(i)}", where=place)
