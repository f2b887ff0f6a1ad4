"""Sampling: metadata filters, duration buckets, the epoch planner and streaming buffers.

Everything here works on Index columns (durations, dataset ids), never on audio
(docs/architecture.md, "Planning and resume"):

* :func:`filter_mask` — ``min/max_duration`` and ``min_seq_length`` filters with counted drops;
* :func:`make_buckets` — duration bins (explicit, estimated, or a pre-bucketed dataset's; NeMo
  2.x 2D bins over seconds or tokens and output tokens) and per-bucket batch sizes;
* :func:`count_tokens`, :class:`Measures` — token counts per example from the prompt builder
  (cached) and what token-aware batching measures (``batch_tokens``, 2D bins, token filters);
* :func:`plan_epoch` — one rank's batches of example ids for one epoch, pure and vectorised;
* :func:`form_batches` — the batch rule (fixed or dynamic sizes per bucket) both of them use;
* :func:`pack_rows`, :func:`packing_cost`, :class:`RowBatch` — sequence packing: examples into rows
  of ``packed_sequence_size`` tokens, planned (docs/packing.md);
* :class:`BatchSampler` — a resumable DataLoader ``batch_sampler`` built on :func:`plan_epoch`;
* :class:`Position` — the one position format of the sampler, the loader and checkpoints;
* :func:`bucketed_stream`, :func:`shuffle_buffer` — the same batching for non-seekable streams.

Example::

    >>> drops = DropCounter()
    >>> keep = filter_mask(index, cfg, drops)
    >>> sampler = BatchSampler(index, keep, cfg)
    >>> next(iter(sampler))
    [40213, 99120, 5121, ...]
"""

from speechdata.sampling.batching import BatchTable, form_batches
from speechdata.sampling.buckets import (
    DEFAULT_NUM_BUCKETS,
    Buckets,
    assign_buckets,
    assign_buckets_2d,
    bucket_batch_sizes,
    effective_duration,
    estimate_bins,
    estimate_bins_2d,
    make_buckets,
)
from speechdata.sampling.filters import IndexColumns, filter_mask, num_datasets
from speechdata.sampling.packing import RowBatch, pack_rows, packing_cost
from speechdata.sampling.plan import (
    BatchSampler,
    Plan,
    epoch_entries,
    epoch_rng,
    mixing_weights,
    plan_epoch,
)
from speechdata.sampling.position import Position
from speechdata.sampling.stream import bucketed_stream, shuffle_buffer
from speechdata.sampling.tokens import Measures, TokenCounts, count_tokens, filter_tokens, needs_tokens

__all__ = [
    "DEFAULT_NUM_BUCKETS",
    "BatchSampler",
    "BatchTable",
    "Buckets",
    "IndexColumns",
    "Measures",
    "Plan",
    "Position",
    "RowBatch",
    "TokenCounts",
    "assign_buckets",
    "assign_buckets_2d",
    "bucket_batch_sizes",
    "bucketed_stream",
    "count_tokens",
    "effective_duration",
    "epoch_entries",
    "epoch_rng",
    "estimate_bins",
    "estimate_bins_2d",
    "filter_mask",
    "filter_tokens",
    "form_batches",
    "make_buckets",
    "mixing_weights",
    "needs_tokens",
    "num_datasets",
    "pack_rows",
    "packing_cost",
    "plan_epoch",
    "shuffle_buffer",
]
