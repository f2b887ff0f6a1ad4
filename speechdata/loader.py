"""``build_dataloader``: config in, resumable loader of GPU-ready SALM/BESTOW batches out.

The loader assembles the one-way flow: Index (manifests or tarred shards) -> filters -> the
batch sampler (a pure per-epoch plan) -> DataLoader workers that read, decode and tokenize into
flat buffers (:func:`speechdata.collate.pack`) -> padding on the target device
(:func:`speechdata.collate.finalize`).

Its position is the number of batches *consumed* by the caller, not the number prefetched by the
workers, so ``state_dict()`` taken at any step and given to a fresh loader's
``load_state_dict()`` continues with exactly the batches an uninterrupted run would have seen.

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
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from speechdata.collate import AudioSources, Packed, finalize, pack
from speechdata.config import DatasetConfig, dataset_config, load_config
from speechdata.errors import (
    ConfigError,
    DataError,
    DropCounter,
    EmptyDatasetError,
    SpeechDataError,
    WorkerDiedError,
)
from speechdata.manifest import Index, ManifestKeys, Record, load_index
from speechdata.sampling.filters import filter_mask
from speechdata.sampling.plan import BatchSampler
from speechdata.text.prompt import PromptBuilder
from speechdata.text.tokenizer import Tokenizer

log = logging.getLogger("speechdata")


def manifest_keys(cfg: DatasetConfig, builder: PromptBuilder) -> ManifestKeys:
    """The manifest key settings implied by a dataset config and its prompt builder."""
    return ManifestKeys(
        answer_key=cfg.answer_key,
        context_key=cfg.context_key,
        default_context=cfg.default_context,
        tarred=cfg.is_tarred,
        require_context=builder.needs_context,
    )


def _file_sources(rec: Record) -> list[str]:
    """A plain manifest's clips are files on disk."""
    return rec.audio


class BatchDataset(torch.utils.data.Dataset[Packed]):
    """Map-style dataset whose item is a whole batch: ``ds.__getitems__(ids) -> Packed``."""

    def __init__(
        self, index: Index, read_audio: AudioSources, builder: PromptBuilder, sample_rate: int, on_error: str
    ) -> None:
        self.index = index
        self.read_audio = read_audio
        self.builder = builder
        self.sample_rate = sample_rate
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, ids: Sequence[int], read_audio: AudioSources | None = None) -> Packed:
        """Read, decode and tokenize the examples ``ids`` into one packed batch.

        A data error under ``on_error: raise`` (or a config error, such as a shard the config
        does not list) travels back inside the batch (``Packed.error``) so that the main process
        re-raises it as the original one-line error, not as a worker traceback. ``read_audio``
        replaces the dataset's audio sources for this batch (the streaming path passes bytes).
        """
        records = []
        drops = DropCounter()
        try:
            for i in ids:
                try:
                    records.append(self.index.record(i))
                except DataError as err:
                    if self.on_error == "raise":
                        raise
                    drops.add_error(err)
            packed = pack(
                records,
                read_audio or self.read_audio,
                self.builder,
                sample_rate=self.sample_rate,
                on_error=self.on_error,
            )
        except SpeechDataError as err:
            return Packed.empty(error=err)
        packed.drops.merge(drops)
        return packed

    def __getitem__(self, i: int) -> Packed:
        return self.__getitems__([i])


class StreamDataset(torch.utils.data.IterableDataset[Packed]):
    """Batches from tar shards that cannot be read by offset (``pipe:`` commands, URLs).

    The shards of the epoch are dealt to (rank, worker) by :func:`speechdata.shards.read.stream_tarred`
    (seeded order, repeated never dropped, ``shuffle_n`` sample buffer); rows are grouped into
    batches by :func:`speechdata.sampling.stream.bucketed_stream` with the planner's batch rules.
    Everything after that — decoding, text, packing — is shared with the random-access path.
    Rows outside ``keep`` (the filters' mask) are not streamed.
    """

    def __init__(
        self,
        batches: BatchDataset,
        tarred: Any,
        cfg: DatasetConfig,
        rank: int,
        world_size: int,
        keep: np.ndarray,
    ) -> None:
        self.batches = batches
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        index = batches.index
        self.urls = [tarred.shard_paths[0][k] for k in sorted(tarred.shard_paths[0])]
        if index.num_datasets != 1:
            raise ConfigError("streaming reads one tarred manifest at a time; give one manifest_filepath")
        self.members = _MembersOfShard(index, keep)

    def __iter__(self) -> Iterator[Packed]:
        from speechdata.sampling.stream import bucketed_stream
        from speechdata.shards.read import stream_tarred

        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        cfg, index = self.cfg, self.batches.index
        rows = stream_tarred(
            cfg,
            self.urls,
            self.members,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            worker_id=wid,
            num_workers=nw,
        )
        rng = np.random.default_rng([cfg.seed, self.epoch, self.rank, wid, 0xB7])
        duration = index.duration
        for group in bucketed_stream(
            rows, lambda r: float(duration[r[0]["_row"]]), cfg, rng, cfg.bucket_buffer_size
        ):
            # a row may come twice (a repeated shard): it stays twice, its bytes are kept once
            rows = [int(entry["_row"]) for entry, _ in group]
            blobs = {row: data for row, (_, data) in zip(rows, group, strict=True)}
            yield self.batches.__getitems__(rows, read_audio=_Blobs(blobs))


class _MembersOfShard:
    """``shard_id -> {member name: [entries that use it]}``, from the Index when that shard is
    streamed: only the shard's own rows are read (rows without a ``shard_id`` once, for every
    shard), so start-up reads no manifest line and each worker reads only its shards' lines.
    Rows the filters dropped (``keep`` false) are left out: their members are skipped."""

    def __init__(self, index: Index, keep: np.ndarray) -> None:
        self.index = index
        self.keep = keep
        self._unsharded: dict[str, list[dict[str, Any]]] | None = None

    def _table(self, rows: np.ndarray) -> dict[str, list[dict[str, Any]]]:
        table: dict[str, list[dict[str, Any]]] = {}
        for i in rows.tolist():
            rec = self.index.record(i)
            sid = rec.shard_id if rec.shard_id >= 0 else None  # None: found in whichever shard has it
            entry = {"audio_filepath": rec.audio, "shard_id": sid, "_row": i}
            for name in rec.audio:
                table.setdefault(name, []).append(entry)
        return table

    def __call__(self, shard_id: int) -> dict[str, list[dict[str, Any]]]:
        if self._unsharded is None:
            self._unsharded = self._table(np.flatnonzero((self.index.shard_id < 0) & self.keep))
        table = self._table(np.flatnonzero((self.index.shard_id == shard_id) & self.keep))
        for name, entries in self._unsharded.items():
            table[name] = [*table.get(name, ()), *entries]
        return table


class _Blobs:
    """Audio sources over member bytes already streamed, keyed by Index row."""

    def __init__(self, blobs: dict[int, list[bytes]]) -> None:
        self.blobs = blobs

    def __call__(self, rec: Record) -> list[bytes]:
        return self.blobs[rec.row]


def _identity(x: Packed) -> Packed:
    return x


def _synchronous_worker_checks(it: Any) -> None:
    """Let ``next()`` report a dead DataLoader worker, not torch's SIGCHLD handler.

    torch registers worker pids with a SIGCHLD handler that raises ``RuntimeError`` in whatever
    code the main thread runs when a worker dies (the training step, a logger, pytest's own
    code), and raises again at every later SIGCHLD. Unregistered, a death is found by the
    iterator itself (it polls worker liveness every few seconds while waiting for data) and
    surfaces from ``next()``, where :class:`SpeechDataLoader` turns it into a
    :class:`WorkerDiedError`. Uses private torch hooks; without them torch's default stays.
    """
    if not getattr(it, "_worker_pids_set", False):
        return
    try:
        from torch.utils.data._utils.signal_handling import _remove_worker_pids
    except ImportError:
        return
    _remove_worker_pids(id(it))
    it._worker_pids_set = False


class SpeechDataLoader:
    """Iterable of SPEC §6 batch dicts; one ``iter()`` is the rest of the current epoch.

    ``state_dict()`` / ``load_state_dict()`` save and restore the exact position (epoch and
    batches consumed), ``set_epoch()`` jumps to the start of an epoch, ``report()`` returns the
    dropped examples by reason (indexing, filters and workers together).
    """

    def __init__(
        self,
        cfg: DatasetConfig,
        tokenizer: Tokenizer,
        *,
        device: torch.device | str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        cache: bool = True,
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if not cfg.manifests:
            raise ConfigError("manifest_filepath: no manifest given")
        self.builder = PromptBuilder(cfg, tokenizer)
        self.index = load_index(
            cfg.manifests,
            manifest_keys(cfg, self.builder),
            on_error=cfg.on_error,
            cache=cache,
            cache_dir=cfg.cache_dir,
        )
        buckets = None
        if cfg.is_tarred:
            from speechdata.shards.read import TarredDataset

            self.tarred = TarredDataset(cfg, index=self.index)
            buckets = self.tarred.buckets
            # a tarred dataset's clips are member bytes read from the shards by byte offset
            reader: AudioSources = self.tarred.read_audio_bytes
        else:
            self.tarred = None
            reader = _file_sources
        self.filter_drops = DropCounter()
        self.keep = filter_mask(self.index, cfg, self.filter_drops)
        empty = _nothing_kept(cfg.manifests, self.index, self.keep, self.filter_drops)
        if empty is not None:
            raise EmptyDatasetError(empty)
        self.sampler = BatchSampler(
            self.index, self.keep, cfg, rank=rank, world_size=world_size, buckets=buckets
        )
        self.dataset = BatchDataset(self.index, reader, self.builder, cfg.sample_rate, cfg.on_error)
        self.worker_drops = DropCounter()
        self.plan_drops = DropCounter()  # drop_last_tail of every epoch iterated
        self._tails_counted: set[int] = set()
        self._epoch = 0
        self._consumed = 0
        self.streaming = cfg.streaming is True or (
            cfg.streaming == "auto" and self.tarred is not None and not self.tarred.seekable
        )
        if self.streaming and self.tarred is None:
            raise ConfigError("streaming: true needs a tarred dataset (is_tarred: true)")
        if not self.streaming:
            self._check_first_plan()
        workers = cfg.num_workers
        self._pin = bool(cfg.pin_memory and self.device.type == "cuda" and torch.cuda.is_available())
        common: dict[str, Any] = {
            "num_workers": workers,
            "collate_fn": _identity,
            "pin_memory": self._pin,
            "prefetch_factor": 4 if workers > 0 else None,
            "multiprocessing_context": "fork" if workers > 0 and os.name == "posix" else None,
        }
        if self.streaming:
            self.stream = StreamDataset(self.dataset, self.tarred, cfg, self.rank, self.world_size, self.keep)
            # not persistent: each epoch's workers receive the dataset with its new epoch number
            self._loader = torch.utils.data.DataLoader(self.stream, batch_size=None, **common)
        else:
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self.sampler, persistent_workers=workers > 0, **common
            )

    def _check_first_plan(self) -> None:
        """Epoch 0 must give this rank a batch; warn (once) when the data is too small to fill
        the buckets' batches."""
        plan = self.sampler.plan(0)
        if len(plan) == 0:
            kept = int(np.count_nonzero(self.keep))
            raise EmptyDatasetError(
                f"{_names(self.cfg.manifests)}: epoch 0 has no batch for rank {self.rank} of "
                f"{self.world_size}: drop_last left out all {kept} kept examples (the {plan.formed} "
                f"batch(es) formed were incomplete, or fewer than the ranks); set drop_last: false "
                f"or give more data"
            )
        warning = self.sampler.small_data_warning(0)
        if warning is not None:
            log.warning("%s: %s", _names(self.cfg.manifests), warning)

    def _epoch_plan_drops(self, epoch: int) -> DropCounter:
        """The examples ``drop_last`` left out of ``epoch``'s global plan (the same on every rank),
        as ``drop_last_tail`` drops with the places of the first few."""
        drops = DropCounter()
        if self.streaming:
            return drops  # a stream drops no tail: every row is yielded
        plan = self.sampler.plan(epoch)
        if plan.dropped:
            note = "drop_last" if self.world_size == 1 else f"drop_last, over {self.world_size} ranks"
            first = plan.dropped_ids[: drops.keep_examples].tolist()
            drops.add("drop_last_tail", n=plan.dropped - len(first), note=note)
            for i in first:
                drops.add("drop_last_tail", where=self.index.where(i))
        return drops

    @property
    def rank(self) -> int:
        """This loader's data-parallel rank."""
        return self.sampler.rank

    @property
    def world_size(self) -> int:
        """The data-parallel world size the plan was dealt for."""
        return self.sampler.world_size

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from."""
        return self._epoch

    def __len__(self) -> int:
        if self.streaming:
            raise TypeError("a streamed dataset has no length known in advance")
        return len(self.sampler.plan(self._epoch))

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (no-op when it is the current epoch)."""
        if epoch != self._epoch:
            self._epoch, self._consumed = int(epoch), 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        skip = 0
        epoch, start = self._epoch, self._consumed
        if self.streaming:
            # the stream is deterministic for a given (seed, epoch, rank, workers): resuming
            # replays the epoch and skips the batches already consumed
            self.stream.epoch, skip = epoch, self._consumed
            self._consumed = 0
        else:
            self.sampler.load_state_dict({"epoch": epoch, "batch": self._consumed})
        tail = self._epoch_plan_drops(epoch)
        if epoch not in self._tails_counted:
            self._tails_counted.add(epoch)
            self.plan_drops.merge(tail)
        epoch_drops = DropCounter()  # this pass's worker drops
        yielded = 0
        try:
            for packed in self._batches():
                if packed.error is not None:
                    packed.release()
                    self._drop_workers()  # in this process, before a later fork could inherit them
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
        except GeneratorExit:
            # the caller closed the iteration: mid-epoch (a break, a trainer's max_steps) or after
            # the last batch without asking for more (a trainer that knows the length); either
            # way, say what this epoch dropped
            complete = not self.streaming and self._consumed >= len(self.sampler.plan(epoch))
            self._log_epoch(epoch, epoch_drops, tail, stopped=not complete)
            if complete:
                self._epoch, self._consumed = epoch + 1, 0
            raise
        line = self._log_epoch(epoch, epoch_drops, tail, stopped=False)
        self._epoch, self._consumed = epoch + 1, 0
        if yielded == 0 and start == 0:
            raise EmptyDatasetError(f"{_names(self.cfg.manifests)}: epoch {epoch} yielded no batch: {line}")

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
                total = "" if self.streaming else f" of {len(self.sampler.plan(epoch))}"
                when += f" (stopped after {self._consumed}{total} batches)"
            log.warning("%s: %s", when, line)
        return line

    def _batches(self) -> Iterator[Packed]:
        """The DataLoader's packed batches; a dead worker becomes a one-line :class:`WorkerDiedError`."""
        it = iter(self._loader)
        _synchronous_worker_checks(it)
        while True:
            try:
                packed = next(it)
            except StopIteration:
                return
            except (RuntimeError, ConnectionError, EOFError) as e:
                if isinstance(e, RuntimeError) and "DataLoader worker (pid" not in str(e):
                    raise
                if not isinstance(e, RuntimeError) and self.cfg.num_workers == 0:
                    raise
                self._drop_workers()
                if isinstance(e, RuntimeError):
                    detail = (str(e).splitlines() or [type(e).__name__])[0].rstrip(". ")
                else:
                    # the worker died after queueing a batch whose shared memory it still owned
                    detail = f"a DataLoader worker died while handing over a batch ({type(e).__name__})"
                raise WorkerDiedError(
                    f"{detail}; epoch {self._epoch}, {self._consumed} batches consumed, nothing lost: "
                    "iterate again, or pass loader.state_dict() to a new loader's load_state_dict(), "
                    "to continue with the next batch"
                ) from None
            yield packed

    def _drop_workers(self) -> None:
        """Shut down the surviving workers of a broken DataLoader iterator so the next ``iter()``
        starts fresh ones (persistent workers would otherwise be reused)."""
        it = getattr(self._loader, "_iterator", None)
        if it is None:
            return
        _synchronous_worker_checks(it)
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._loader._iterator = None

    def finalize(self, packed: Packed) -> dict[str, Any]:
        """Pad one packed batch on this loader's device."""
        cfg = self.cfg
        return finalize(
            packed,
            device=self.device,
            pad_id=self.tokenizer.pad_id,
            pad_to_multiple=cfg.pad_to_multiple,
            answer_only_loss=cfg.answer_only_loss,
            features=cfg.features,
            sample_rate=cfg.sample_rate,
        )

    def state_dict(self) -> dict[str, Any]:
        """The exact position: ``{"epoch", "batch", "seed", "rank", "world_size"}``."""
        if self.streaming:
            pos = {"epoch": self._epoch, "batch": self._consumed}
        else:
            pos = self.sampler.position_state(self._epoch, self._consumed)
        return {**pos, "seed": self.cfg.seed, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (same config, seed and world size)."""
        for key in ("seed", "world_size"):
            if key in state and state[key] != getattr(self.cfg if key == "seed" else self, key):
                raise ConfigError(
                    f"loader state: saved {key}={state[key]} differs from this loader's "
                    f"{getattr(self.cfg if key == 'seed' else self, key)}; the saved position would not match"
                )
        if not self.streaming:
            self.sampler.load_state_dict(state)
        self._epoch, self._consumed = int(state["epoch"]), int(state["batch"])

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


def _nothing_kept(
    paths: Sequence[str], index: Index, keep: np.ndarray, filter_drops: DropCounter
) -> str | None:
    """Why no example is left after indexing and filtering (one line), or ``None`` if some are."""
    if keep.any():
        return None
    dropped = index.drops.copy()
    dropped.merge(filter_drops)
    if dropped.total() == 0:
        return f"{_names(paths)}: {'manifest has' if len(paths) == 1 else 'manifests have'} no examples"
    return f"{_names(paths)}: all {len(index) + index.drops.total()} examples dropped: {dropped.by_reason()}"


def build_dataloader(
    cfg: DatasetConfig | DictConfig | Mapping[str, Any] | str | Path,
    tokenizer: Tokenizer | str | Path | None = None,
    *,
    name: str = "train_ds",
    overrides: Sequence[str] = (),
    device: torch.device | str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> SpeechDataLoader:
    """Build the loader for one dataset section.

    ``cfg`` is a :class:`DatasetConfig`, a whole config (YAML path, DictConfig or mapping; the
    section ``name`` is found under ``model.`` or at the top level) or the section itself.
    ``tokenizer`` is a :class:`Tokenizer` or the path of a SentencePiece model; when omitted, the
    config's ``model.tokenizer.model`` is used. ``rank``/``world_size`` default to
    torch.distributed's when it is initialised.
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
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.load(tokenizer)
    return SpeechDataLoader(ds, tokenizer, device=device, rank=rank, world_size=world_size)
