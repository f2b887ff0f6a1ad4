"""``build_dataloader``: config in, resumable loader of GPU-ready SALM/BESTOW batches out.

The loader assembles the one-way flow: a source (:mod:`speechdata.sources`: manifests, tarred
shards, or any other) -> filters -> the batch sampler (a pure per-epoch plan) or a stream
(:mod:`speechdata.feed`) -> DataLoader workers that read, decode and tokenize into flat buffers
(:func:`speechdata.collate.pack`) -> padding on the target device
(:func:`speechdata.collate.finalize`).

Its position is the number of batches *consumed* by the caller, not the number prefetched by the
workers, so ``state_dict()`` taken at any step and given to a fresh loader's
``load_state_dict()`` continues with exactly the batches an uninterrupted run would have seen.
A position saved on another number of ranks resumes too (elastic resume): the rest of its epoch
is dealt again to this loader's ranks, so over the epoch every example is still delivered once
(docs/architecture.md, "Planning and resume"); a streamed dataset refuses it.

Example::

    >>> loader = build_dataloader("salm.yaml", tokenizer="tok/tokenizer.model", device="cuda")
    >>> for batch in loader:
    ...     loss = model(batch)
    >>> loader.report()
    {'too_long_audio': 12}

Nothing is dropped silently: every epoch with drops logs one WARNING line on the ``speechdata``
logger with the counts by reason and the first places, e.g.
``epoch 0: 3 dropped: too_long_audio=3 (max_duration 1.0) e.g. train.jsonl:4, train.jsonl:9``,
and a loader that would yield nothing is an :class:`~speechdata.errors.EmptyDatasetError` when
it is built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from omegaconf import DictConfig

from speechdata.audiobuf import ReusedBuffers
from speechdata.collate import Packed, finalize
from speechdata.config import DatasetConfig, dataset_config, load_config
from speechdata.errors import ConfigError, DropCounter, EmptyDatasetError, WorkerDiedError
from speechdata.feed import BatchDataset, PlannedFeed, StreamedFeed
from speechdata.manifest import Index, manifest_keys
from speechdata.sampling.filters import filter_mask
from speechdata.sampling.plan import BatchSampler
from speechdata.sampling.position import FRESH_DEAL, Position, resolve_rank_world
from speechdata.sampling.tokens import Measures, count_tokens, filter_tokens, needs_tokens
from speechdata.sources import Source, StreamSource, open_source
from speechdata.text.dialog import make_prompt_builder
from speechdata.text.tokenizer import TextTokenizer, load_tokenizer
from speechdata.torchprivate import drop_workers, synchronous_worker_checks, worker_death, worker_pids

log = logging.getLogger("speechdata")

#: Why a streamed position resumes only on the world size (and workers) it was saved with.
STREAM_FIXED_WORLD = (
    "a streamed dataset resumes only on as many ranks (and workers per rank) as it was saved with: "
    "its shards are dealt by rank and worker (elastic resume needs shards read by offset)"
)


class SpeechDataLoader:
    """Iterable of batch dicts (docs/batch.md); one ``iter()`` is the rest of the current epoch.

    It composes a :class:`~speechdata.sources.base.Source` (``source``, else the one the config
    describes: :func:`~speechdata.sources.open_source`), the filters, the planner, the dataset
    and the collator. ``state_dict()`` / ``load_state_dict()`` save and restore the exact
    position (a :class:`~speechdata.sampling.position.Position`; one saved on another world size
    re-deals the rest of its epoch to this loader's ranks), ``set_epoch()`` jumps to the start of
    an epoch, ``report()`` returns the dropped examples by reason (indexing, filters and workers
    together).
    """

    def __init__(
        self,
        cfg: DatasetConfig,
        tokenizer: TextTokenizer,
        *,
        device: torch.device | str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        cache: bool = True,
        source: Source | None = None,
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.builder = make_prompt_builder(cfg, tokenizer)
        if source is None:
            source = open_source(cfg, manifest_keys(cfg, self.builder.needs_context), cache=cache)
        self.source = source
        self.index: Index = source.index
        self.names = _names([d.path for d in self.index.datasets])
        self.filter_drops = DropCounter()
        self.keep = filter_mask(self.index, cfg, self.filter_drops)
        _check_text_only(self.index, self.keep, cfg)
        self.measures = self._measure_tokens(cache)  # token counts, when batching needs them
        empty = _nothing_kept(self.names, self.index, self.keep, self.filter_drops)
        if empty is not None:
            raise EmptyDatasetError(empty)
        self._rank, self._world_size = resolve_rank_world(rank, world_size)
        self.dataset = BatchDataset(source, self.builder, cfg.sample_rate, cfg.on_error)
        self._pin = bool(cfg.pin_memory and self.device.type == "cuda" and torch.cuda.is_available())
        self.sampler: BatchSampler | None = None
        self.feed: PlannedFeed | StreamedFeed
        if source.seekable:  # the one capability check: planned batches of rows, or a stream
            self.sampler = BatchSampler(
                self.index,
                self.keep,
                cfg,
                rank=self._rank,
                world_size=self._world_size,
                buckets=source.buckets,
                measures=self.measures,
            )
            self.feed = PlannedFeed(self.dataset, self.sampler, cfg, self._pin)
        else:
            if not callable(getattr(source, "stream", None)):
                raise TypeError(f"{type(source).__name__}: a source with seekable false needs stream()")
            stream = cast(StreamSource, source)
            self.feed = StreamedFeed(
                self.dataset, stream, cfg, self._rank, self._world_size, self.keep, self._pin
            )
        self.feed.check_first_epoch(self.names)
        self.worker_drops = DropCounter()
        self.plan_drops = DropCounter()  # drop_last_tail of every epoch iterated
        self._tails_counted: set[int] = set()
        self._epoch = 0
        self._consumed = 0
        self._deal = FRESH_DEAL  # how the current epoch is dealt (earlier deals: elastic resume)
        self._live: Any = None  # the DataLoader iterator of the pass in progress
        self._buffers = ReusedBuffers()  # padded audio memory, reused once the caller drops a batch

    def _measure_tokens(self, cache: bool) -> Measures | None:
        """Each example's token counts (cached; :mod:`speechdata.sampling.tokens`) and the token
        filters, when the config batches, buckets or filters by tokens; else ``None``."""
        cfg = self.cfg
        if not needs_tokens(cfg):
            return None
        if not self.source.seekable:
            raise ConfigError(
                "batch_tokens, min_tokens/max_tokens, use_multimodal_sampling, 2D bucket_duration_bins and "
                "packing need token counts per example, which a streamed dataset does not have before it is read; "
                "read the shards by offset (local files, streaming: false)"
            )
        counts = count_tokens(
            self.source,
            self.builder,
            self.keep,
            cfg,
            self.filter_drops,
            cache=cache,
            tokenizer=self.tokenizer,
        )
        close = getattr(self.index, "close", None)
        if callable(close):
            close()  # the counting pass opened the manifests in this process
        measures = Measures.of(self.index.duration, counts, cfg)
        filter_tokens(self.index, self.keep, measures, cfg, self.filter_drops)
        return measures

    @property
    def streaming(self) -> bool:
        """Whether batches are streamed (the source cannot be read by row)."""
        return not self.source.seekable

    @property
    def rank(self) -> int:
        """This loader's data-parallel rank."""
        return self._rank

    @property
    def world_size(self) -> int:
        """The data-parallel world size the plan was dealt for."""
        return self._world_size

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from."""
        return self._epoch

    def __len__(self) -> int:
        n = self.feed.length(self._epoch, self._deal)
        if n is None:
            raise TypeError("a streamed dataset has no length known in advance")
        return n

    def epoch_length(self, epoch: int) -> int | None:
        """This rank's batches in ``epoch`` dealt once (as a run that reaches it without a resize
        has it); ``None`` for a streamed dataset. Epochs of dynamic batches differ in length."""
        return self.feed.length(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (no-op when it is the current epoch)."""
        if epoch != self._epoch:
            self._epoch, self._consumed, self._deal = int(epoch), 0, FRESH_DEAL

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, start, deal = self._epoch, self._consumed, self._deal
        skip = self.feed.start(epoch, start, deal)  # batches the DataLoader replays before `start`
        self._consumed = start - skip
        tail = self.feed.tail_drops(epoch, deal)
        if epoch not in self._tails_counted:
            self._tails_counted.add(epoch)
            self.plan_drops.merge(tail)
        epoch_drops = DropCounter()  # this pass's worker drops
        yielded = 0
        try:
            for packed in self._batches():
                if packed.error is not None:
                    packed.release()
                    drop_workers(self.feed.loader)  # in this process, before a later fork could inherit them
                    raise packed.error
                self._consumed += 1
                if self._consumed > skip:
                    self.worker_drops.merge(packed.drops)
                    epoch_drops.merge(packed.drops)
                if self._consumed <= skip or len(packed) == 0:
                    packed.release()
                    continue
                batch = self.finalize(packed)
                packed.release()  # the padded batch holds copies: the worker may reuse the buffer
                del packed
                yielded += 1
                yield batch
                del batch  # held only by the caller now: its memory is reused once the caller drops it
        except GeneratorExit:
            # the caller closed the iteration: mid-epoch (a break, a trainer's max_steps) or after
            # the last batch without asking for more (a trainer that knows the length); either
            # way, say what this epoch dropped
            n = self.feed.length(epoch, deal)
            complete = n is not None and self._consumed >= n
            self._log_epoch(epoch, epoch_drops, tail, stopped=not complete)
            if complete:
                self._epoch, self._consumed, self._deal = epoch + 1, 0, FRESH_DEAL
            raise
        line = self._log_epoch(epoch, epoch_drops, tail, stopped=False)
        self._epoch, self._consumed, self._deal = epoch + 1, 0, FRESH_DEAL
        if yielded == 0 and start == 0:
            raise EmptyDatasetError(f"{self.names}: epoch {epoch} yielded no batch: {line}")

    def _log_epoch(self, epoch: int, worker_drops: DropCounter, tail: DropCounter, *, stopped: bool) -> str:
        """Log the epoch's one WARNING line (when anything was dropped) and return its summary:
        indexing and filter drops (the whole dataset's), ``tail`` (``drop_last_tail`` of the
        global plan) and ``worker_drops`` (what this rank's workers dropped in this pass)."""
        drops = DropCounter()
        for part in (self.index.drops, self.filter_drops, tail, worker_drops):
            drops.merge(part)
        line = drops.describe()
        if drops.total():
            when = f"epoch {epoch}"
            if stopped:
                n = self.feed.length(epoch, self._deal)
                total = "" if n is None else f" of {n}"
                when += f" (stopped after {self._consumed}{total} batches)"
            log.warning("%s: %s", when, line)
        return line

    def _batches(self) -> Iterator[Packed]:
        """The DataLoader's packed batches; a dead worker becomes a one-line :class:`WorkerDiedError`."""
        it = self._live = iter(self.feed.loader)
        synchronous_worker_checks(it)
        while True:
            try:
                packed = next(it)
            except StopIteration:
                self._live = None
                return
            except (RuntimeError, ConnectionError, EOFError) as e:
                detail = worker_death(e, self.cfg.num_workers)
                if detail is None:
                    raise
                drop_workers(self.feed.loader)
                raise WorkerDiedError(
                    f"{detail}; epoch {self._epoch}, {self._consumed} batches consumed, nothing lost: "
                    "iterate again, or pass loader.state_dict() to a new loader's load_state_dict(), "
                    "to continue with the next batch"
                ) from None
            yield packed

    def worker_pids(self) -> list[int]:
        """The pids of the live DataLoader worker processes of the current (or last stopped) pass:
        empty without workers or once the pass has ended."""
        return worker_pids(self._live)

    def finalize(self, packed: Packed) -> dict[str, Any]:
        """Pad one packed batch on this loader's device."""
        cfg = self.cfg
        return finalize(
            packed,
            device=self.device,
            pad_id=self.tokenizer.pad_id,
            pad_to_multiple=cfg.pad_to_multiple,
            features=cfg.features,
            sample_rate=cfg.sample_rate,
            buffers=self._buffers,
        )

    def position(self) -> Position:
        """Where the next batch comes from (batches handed out, not prefetched, count)."""
        return Position.after(
            self._epoch,
            self._consumed,
            self.feed.length(self._epoch, self._deal),
            seed=self.cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
            deal=self._deal,
            readers=None if self.source.seekable else max(1, self.cfg.num_workers),
        )

    def state_dict(self) -> dict[str, Any]:
        """The exact position in the dict form of :class:`~speechdata.sampling.position.Position`:
        ``{"version", "epoch", "batch", "seed", "rank", "world_size"}``, and ``resized`` in an
        epoch re-dealt after an elastic resume."""
        return self.position().to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (same config and seed; older formats are read too,
        :meth:`Position.from_dict`). A state saved on another world size (any of its ranks': they
        hold the same step) continues with the rest of its epoch dealt to this loader's ranks; a
        streamed dataset refuses it (:data:`STREAM_FIXED_WORLD`)."""
        what = "loader state"
        pos = Position.from_dict(state, what)
        fixed = None if self.source.seekable else STREAM_FIXED_WORLD
        pos.check(
            seed=self.cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
            what=what,
            fixed_world=fixed,
            readers=None if self.source.seekable else max(1, self.cfg.num_workers),
        )
        deal = pos.deal_for(self.world_size)
        try:
            n = self.feed.length(pos.epoch, deal)
        except ConfigError as e:  # an earlier deal that does not reach its step
            raise ConfigError(f"{what}: {e}") from None
        if n is not None and pos.batch > n:
            raise ConfigError(f"{what}: batch {pos.batch} is past the end of epoch {pos.epoch} ({n} batches)")
        self._epoch, self._consumed, self._deal = pos.epoch, pos.batch, deal

    def report(self) -> dict[str, int]:
        """Dropped examples so far by reason: indexing and filters (counted once, they are the
        same every epoch), ``drop_last_tail`` and the workers' drops (counted for every epoch
        iterated) together. Indexing, filter and ``drop_last_tail`` counts are the whole
        dataset's, the same on every rank; worker drops are this rank's."""
        total = DropCounter()
        for part in (self.index.drops, self.filter_drops, self.plan_drops, self.worker_drops):
            total.merge(part)
        return total.to_dict()


def _names(paths: Sequence[str]) -> str:
    """The manifests of a message: up to three paths, then how many more."""
    shown = ", ".join(str(p) for p in paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _nothing_kept(names: str, index: Index, keep: np.ndarray, filter_drops: DropCounter) -> str | None:
    """Why no example is left after indexing and filtering (one line), or ``None`` if some are."""
    if keep.any():
        return None
    dropped = index.drops.copy()
    dropped.merge(filter_drops)
    if dropped.total() == 0:
        return f"{names}: {'manifest has' if index.num_datasets == 1 else 'manifests have'} no examples"
    return f"{names}: all {len(index) + index.drops.total()} examples dropped: {dropped.by_reason()}"


def _check_text_only(index: Index, keep: np.ndarray, cfg: DatasetConfig) -> None:
    """Text-only examples (no audio) weigh nothing in a budget of seconds: with ``batch_duration``
    they need ``batch_tokens`` too (docs/conversations.md), else one batch would take them all."""
    if cfg.batch_duration is None or cfg.batch_tokens is not None:
        return
    text_only = keep & (index.num_audios == 0)
    if text_only.any():
        first = index.where(int(np.flatnonzero(text_only)[0]))
        raise ConfigError(
            f"{int(text_only.sum())} text-only examples (no audio; the first at {first}) weigh 0 s in "
            "batch_duration: set batch_tokens as well, so that batches are sized by tokens too"
        )


def build_dataloader(
    cfg: DatasetConfig | DictConfig | Mapping[str, Any] | str | Path,
    tokenizer: TextTokenizer | str | Path | None = None,
    *,
    name: str = "train_ds",
    overrides: Sequence[str] = (),
    device: torch.device | str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    source: Source | None = None,
) -> SpeechDataLoader:
    """Build the loader for one dataset section.

    ``cfg`` is a :class:`DatasetConfig`, a whole config (YAML path, DictConfig or mapping; the
    section ``name`` is found under ``model.`` or at the top level) or the section itself.
    ``tokenizer`` is a tokenizer of either kind or its path (see :func:`~speechdata.text.tokenizer.load_tokenizer`); when omitted, the
    config's ``model.tokenizer.model`` is used. ``rank``/``world_size`` default to
    torch.distributed's when it is initialised. ``source`` replaces the source the config
    describes (its manifests and shards) with another
    :class:`~speechdata.sources.base.Source`.
    """
    whole: DictConfig | None = None
    if isinstance(cfg, DatasetConfig):
        ds = cfg
    else:
        whole = load_config(cfg, overrides)
        ds = dataset_config(whole, name)
    if tokenizer is None:
        path = None
        if whole is not None:
            from omegaconf import OmegaConf

            path = OmegaConf.select(whole, "model.tokenizer.model", default=None)
        if path is None:
            raise ConfigError("no tokenizer: pass tokenizer= or set model.tokenizer.model in the config")
        tokenizer = path
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)  # a SentencePiece model, or a tokenizer.json (or its folder)
    return SpeechDataLoader(ds, tokenizer, device=device, rank=rank, world_size=world_size, source=source)
