"""Duration buckets (docs/configuration.md): bins, per-bucket batch sizes, and assignment of examples.

Buckets group examples of similar duration so that a batch wastes little padding. Bins are
*boundaries* between buckets, as in lhotse's ``duration_bins``: ``K - 1`` increasing values give
``K`` buckets, bucket ``0`` the shortest, and an example of duration ``d`` goes to bucket
``searchsorted(bins, d, side="right")`` (a duration equal to a boundary belongs to the upper one).

Bins come from, in order of precedence:

1. a ``bucket`` column given by the caller (a pre-bucketed tarred dataset: ``tarred_audio_filepaths``
   is a list of lists, one per bucket, in NeMo's layout);
2. ``bucket_duration_bins``;
3. ``num_buckets`` bins estimated from the kept durations with equal *total* duration per bucket
   (:func:`estimate_bins`, the estimator ``speechdata shard --buckets`` and ``inspect`` use too);
4. 30 estimated bins when ``batch_duration`` or ``batch_tokens`` (dynamic batches) is set,
   ``use_bucketing`` is true, or ``bucketing_batch_size`` is given (its length when it is a list);
5. otherwise (or with ``use_bucketing: false``) no bucketing: one bucket.

With ``use_multimodal_sampling`` the 1D measure is an example's tokens (text plus audio tokens,
:class:`~speechdata.sampling.tokens.Measures`), not its seconds.

**2D bins** (``bucket_duration_bins`` as ``[first, second]`` pairs, NeMo 2.x) are one bucket per
pair, each an inclusive upper bound on (seconds, or input tokens with ``use_multimodal_sampling``;
output tokens), sorted ascending. An example goes to the first pair it fits; in strict mode
(``bucketing_2d_strict_mode``, NeMo's default) only the pairs sharing the smallest first bound at
or above its first value are tried. An example that fits no pair has no bucket: the loader drops
it (:func:`speechdata.sampling.tokens.filter_tokens`). See :func:`assign_buckets_2d`.

Batch sizes for fixed-size batching come from ``bucketing_batch_size``: an int ``b`` gives the
bucket numbered ``i`` counting from the longest (``1`` = longest) the size ``i * b`` (NeMo's
linear scaling: the longest bucket gets ``b``, the shortest ``K * b``); a list gives one size per
bucket, shortest bucket first (for a pre-bucketed dataset: in the order of
``tarred_audio_filepaths``). Without it every bucket uses ``micro_batch_size``.

Example::

    >>> b = make_buckets(index, keep, cfg)          # Buckets(num_buckets=30, ...)
    >>> b.assignment[:5]
    array([12,  3, 29,  0,  7], dtype=uint16)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from speechdata.config import DatasetConfig, bins_are_2d
from speechdata.errors import ConfigError
from speechdata.sampling.filters import IndexColumns

if TYPE_CHECKING:
    from speechdata.sampling.tokens import Measures

__all__ = [
    "DEFAULT_NUM_BUCKETS",
    "Buckets",
    "assign_buckets",
    "assign_buckets_2d",
    "bucket_batch_sizes",
    "configured_num_buckets",
    "effective_duration",
    "estimate_bins",
    "estimate_bins_2d",
    "make_buckets",
]

#: Buckets estimated for dynamic batches when neither bins nor ``num_buckets`` are configured.
DEFAULT_NUM_BUCKETS = 30


@dataclass(frozen=True)
class Buckets:
    """Bucket of every Index row plus what batching needs to know about the buckets.

    ``assignment`` has one entry per Index row (rows that are filtered out get a bucket too; the
    planner ignores them). ``bins`` are the duration boundaries (``None`` for a pre-bucketed
    dataset or when there is a single bucket), or the ``(K, 2)`` upper bounds of 2D buckets. ``sizes`` are the per-bucket batch sizes for
    fixed-size batching (``None`` in dynamic ``batch_duration`` mode).
    """

    assignment: np.ndarray
    num_buckets: int
    bins: np.ndarray | None
    sizes: np.ndarray | None
    pre_bucketed: bool = False

    def counts(self, keep_mask: np.ndarray | None = None) -> np.ndarray:
        """Number of (kept) examples per bucket."""
        a = self.assignment if keep_mask is None else self.assignment[keep_mask]
        return np.bincount(a, minlength=self.num_buckets)


def effective_duration(duration: np.ndarray, quadratic_duration: float | None = None) -> np.ndarray:
    """Batch cost of each duration in seconds: ``d + d**2 / quadratic_duration`` (or ``d``).

    The quadratic term models self-attention cost: a ``d`` equal to ``quadratic_duration`` counts
    double. Returns float64.
    """
    d = np.asarray(duration, dtype=np.float64)
    if quadratic_duration is None:
        return d
    return d + d * d / float(quadratic_duration)


def estimate_bins(durations: np.ndarray, num_buckets: int) -> np.ndarray:
    """``num_buckets - 1`` boundaries that split ``durations`` into buckets of equal total duration.

    The definition (docs/configuration.md, ``num_buckets``): sort the durations; a cut may go
    between two different durations (equal ones stay together, as a duration equal to a
    boundary goes to the upper bucket, see :func:`assign_buckets`). Cut ``j`` (``j = 1 .. K-1``)
    is the one where the total of the durations below it is nearest to ``j / K`` of the grand
    total (on a tie, the higher cut), and boundary ``j`` is the first duration above it. With
    distinct durations every cut is within half an example of its share. On the durations
    1..8 s with ``K = 4`` (shares of 9 s) the bins are ``[5, 7, 8]`` (bucket totals 10, 11, 7,
    8 s). Boundaries repeat when there are fewer cuts than buckets (a bucket then has no
    examples); with a single distinct duration every boundary is that duration, and without
    durations every boundary is 0.

    This is the one estimator: the loader's ``num_buckets`` (and its 30 default buckets),
    ``speechdata shard --buckets`` and the bins ``speechdata inspect`` suggests all call it, on
    the total duration of each (kept) example.
    """
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    if num_buckets == 1:
        return np.zeros(0, dtype=np.float64)
    values, counts = np.unique(np.asarray(durations, dtype=np.float64), return_counts=True)
    if values.size == 0:
        return np.zeros(num_buckets - 1, dtype=np.float64)
    if values.size == 1:
        return np.full(num_buckets - 1, values[0])
    grouped = np.cumsum(values * counts)
    below = grouped[:-1]  # below[c]: the total under the cut after the c-th distinct duration
    targets = grouped[-1] * np.arange(1, num_buckets, dtype=np.float64) / num_buckets
    first = np.searchsorted(below, targets, side="left")  # first cut at or above each share
    up = np.minimum(first, below.size - 1)
    down = np.maximum(first - 1, 0)
    cut = np.where(below[up] - targets <= targets - below[down], up, down)
    return values[cut + 1]


def estimate_bins_2d(
    first: np.ndarray, second: np.ndarray, num_buckets: int, num_subbuckets: int
) -> np.ndarray:
    """2D bins (``(K, 2)`` inclusive upper bounds, sorted ascending) that fit every example.

    The first values are split by :func:`estimate_bins` into ``num_buckets`` of equal total; the
    examples of each are split by their second values (output tokens) into ``num_subbuckets`` of
    equal total the same way. Each part's pair is (the largest first value of its bucket, the
    largest second value of its part), so every example fits the pair of its own part, in strict
    mode too (parts that got no example give no pair). This is the estimator ``speechdata
    inspect`` suggests 2D ``bucket_duration_bins`` with.
    """
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    outer = assign_buckets(a, estimate_bins(a, num_buckets)).astype(np.int64)
    pairs: list[tuple[float, float]] = []
    for g in np.unique(outer).tolist():
        mine = outer == g
        top = float(a[mine].max())
        inner = b[mine]
        sub = assign_buckets(inner, estimate_bins(inner, num_subbuckets)).astype(np.int64)
        maxima = np.full(int(sub.max()) + 1, -np.inf)
        np.maximum.at(maxima, sub, inner)
        pairs += [(top, float(m)) for m in maxima if np.isfinite(m)]
    return np.asarray(pairs, dtype=np.float64)


def assign_buckets(durations: np.ndarray, bins: np.ndarray | None) -> np.ndarray:
    """Bucket of each duration (uint16): ``searchsorted(bins, d, side="right")``."""
    d = np.asarray(durations)
    if bins is None or len(bins) == 0:
        return np.zeros(d.shape, dtype=np.uint16)
    # Compare in the precision of the durations so that a duration equal to a configured boundary
    # (e.g. 16.7 stored as float32) lands in the upper bucket as documented.
    edges = np.asarray(bins, dtype=d.dtype if d.dtype.kind == "f" else np.float64)
    return np.searchsorted(edges, d, side="right").astype(np.uint16)


def assign_buckets_2d(
    first: np.ndarray, second: np.ndarray, bins: np.ndarray, strict: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """2D bucket of each example (int64, ``-1``: fits no bucket) and why one fits none.

    ``bins`` is a ``(K, 2)`` array of inclusive upper bounds sorted ascending (see the module
    docstring). Strict: the pairs sharing the smallest first bound ``>= first`` are tried, in
    order, for ``second <= bound``; lenient: every pair in order, for both bounds. The second
    array is ``True`` where an example fits no bucket because its first value exceeds every first
    bound (``False`` elsewhere: its second value was the problem, or it fits).
    """
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    edges = np.asarray(bins, dtype=np.float64).reshape(-1, 2)
    out = np.full(a.shape, -1, dtype=np.int64)
    too_long_first = a > edges[:, 0].max() if edges.size else np.ones(a.shape, dtype=bool)
    if not edges.size:
        return out, too_long_first
    if strict:
        groups, starts = np.unique(edges[:, 0], return_index=True)
        ends = np.append(starts[1:], edges.shape[0])
        g = np.searchsorted(groups, a, side="left")
        for k in range(groups.size):
            mine = np.flatnonzero(g == k)
            if not mine.size:
                continue
            lo, hi = int(starts[k]), int(ends[k])
            j = np.searchsorted(edges[lo:hi, 1], b[mine], side="left")
            ok = j < hi - lo
            out[mine[ok]] = lo + j[ok]
        return out, too_long_first
    for k in range(edges.shape[0]):  # lenient: the first pair that fits, in order
        free = out < 0
        fits = free & (a <= edges[k, 0]) & (b <= edges[k, 1])
        out[fits] = k
    return out, too_long_first


def bucket_batch_sizes(cfg: DatasetConfig, num_buckets: int) -> np.ndarray | None:
    """Per-bucket batch sizes for fixed-size batching (bucket 0 = shortest), or ``None`` for
    dynamic ``batch_duration`` / ``batch_tokens`` batching. See the module docstring for the rules."""
    if cfg.batch_duration is not None or cfg.batch_tokens is not None:
        if cfg.bucketing_batch_size is not None:
            budget = "batch_duration" if cfg.batch_duration is not None else "batch_tokens"
            raise ConfigError(
                f"bucketing_batch_size and {budget} are both set: use {budget} for dynamic "
                "batches or bucketing_batch_size for fixed per-bucket sizes, not both"
            )
        return None
    b = cfg.bucketing_batch_size
    if b is None:
        return np.full(num_buckets, cfg.micro_batch_size, dtype=np.int64)
    if isinstance(b, int):
        if b <= 0:
            raise ConfigError(f"bucketing_batch_size: must be positive; got {b}")
        return b * np.arange(num_buckets, 0, -1, dtype=np.int64)
    sizes = np.asarray(list(b), dtype=np.int64)
    if sizes.size != num_buckets:
        raise ConfigError(
            f"bucketing_batch_size: {sizes.size} sizes given for {num_buckets} buckets; give one per bucket "
            f"(shortest first) or an int for linear scaling"
        )
    if (sizes <= 0).any():
        raise ConfigError(f"bucketing_batch_size: every size must be positive; got {list(b)}")
    return sizes


def configured_num_buckets(cfg: DatasetConfig) -> int | None:
    """How many buckets to estimate from data (rules 3-5 of the module docstring), or ``None``
    when the config asks for no bucketing."""
    if cfg.use_bucketing is False:
        return None
    if cfg.num_buckets is not None:
        return int(cfg.num_buckets)
    if isinstance(cfg.bucketing_batch_size, list):
        return len(cfg.bucketing_batch_size)
    dynamic = cfg.batch_duration is not None or cfg.batch_tokens is not None
    if dynamic or cfg.bucketing_batch_size is not None or cfg.use_bucketing:
        return DEFAULT_NUM_BUCKETS
    return None


def make_buckets(
    index: IndexColumns,
    keep_mask: np.ndarray | None,
    cfg: DatasetConfig,
    bucket_column: np.ndarray | None = None,
    measures: Measures | None = None,
) -> Buckets:
    """Decide the buckets for ``index`` under ``cfg`` (see the module docstring for precedence).

    ``bucket_column`` (one int per row, 0-based, in the order of ``tarred_audio_filepaths``)
    marks a pre-bucketed dataset and overrides duration bins. Estimated bins use only the rows of
    ``keep_mask``. ``measures`` (token counts) are needed by 2D bins and by
    ``use_multimodal_sampling``; rows that fit no 2D bucket get bucket 0 (the loader's filter
    has dropped them).
    """
    duration = np.asarray(index.duration)
    n = duration.shape[0]
    two_d = bins_are_2d(cfg.bucket_duration_bins)
    if (two_d or cfg.use_multimodal_sampling) and measures is None and bucket_column is None:
        what = "2D bucket_duration_bins" if two_d else "use_multimodal_sampling"
        raise ConfigError(f"{what}: needs each example's token counts (a seekable source read by the loader)")
    if two_d and bucket_column is None:
        assert measures is not None and cfg.bucket_duration_bins is not None
        edges = np.asarray(cfg.bucket_duration_bins, dtype=np.float64)
        if edges.shape[0] >= np.iinfo(np.uint16).max:
            raise ConfigError(f"bucket_duration_bins: too many bins ({edges.shape[0]})")
        k = int(edges.shape[0])
        assigned, _ = assign_buckets_2d(*measures.axes(), edges, cfg.bucketing_2d_strict_mode)
        return Buckets(np.maximum(assigned, 0).astype(np.uint16), k, edges, bucket_batch_sizes(cfg, k))
    if measures is not None and cfg.use_multimodal_sampling:
        duration = measures.length  # the 1D measure is tokens
    if bucket_column is not None:
        col = np.asarray(bucket_column)
        if col.shape != (n,):
            raise ValueError(f"bucket column has shape {col.shape}, expected ({n},)")
        if n and (col.min() < 0 or col.max() >= np.iinfo(np.uint16).max):
            raise ValueError("bucket column values must be in [0, 65535)")
        k = int(col.max()) + 1 if n else 1
        if isinstance(cfg.bucketing_batch_size, list):
            k = max(k, len(cfg.bucketing_batch_size))
        return Buckets(col.astype(np.uint16), k, None, bucket_batch_sizes(cfg, k), pre_bucketed=True)
    if cfg.bucket_duration_bins is not None:
        bins = np.asarray(cfg.bucket_duration_bins, dtype=np.float64)
        if bins.size and np.any(np.diff(bins) < 0):
            raise ConfigError(
                f"bucket_duration_bins: must be increasing; got {list(cfg.bucket_duration_bins)}"
            )
        if bins.size + 1 >= np.iinfo(np.uint16).max:
            raise ConfigError(f"bucket_duration_bins: too many bins ({bins.size})")
    else:
        k = configured_num_buckets(cfg)
        if k is None or k == 1:
            sizes = bucket_batch_sizes(cfg, 1)
            return Buckets(np.zeros(n, dtype=np.uint16), 1, None, sizes)
        if k >= np.iinfo(np.uint16).max:
            raise ConfigError(f"num_buckets: too many buckets ({k})")
        kept = duration if keep_mask is None else duration[np.asarray(keep_mask, dtype=bool)]
        bins = estimate_bins(kept, k)
    k = int(bins.size) + 1
    return Buckets(assign_buckets(duration, bins), k, bins, bucket_batch_sizes(cfg, k))
