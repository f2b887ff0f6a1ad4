"""Exact data position in checkpoints: a loader wrapper and the callback that saves/restores it.

Lightning fetches one batch ahead of the step it runs, so the loader's own ``state_dict()`` at
checkpoint time is one batch too far. :class:`ResumableLoader` takes the loader's
:class:`~speechdata.sampling.position.Position` right after each batch is produced;
:class:`LoaderStateCallback` marks it as *done* when the step that consumed its batch ends, and
writes the last done position into the checkpoint (``checkpoint["speechdata_loader"]``: one
position dict per data-parallel rank, in the format every ``state_dict()`` uses). On resume the
position is loaded into the loader before it is iterated again, so training continues with
exactly the batch after the last one trained on. A position in another epoch than the one the
trainer resumes in is not restored: that epoch starts fresh from ``set_epoch``. Checkpoints
written before positions had a version (``{"epoch", "batches", "epoch_complete", "state"}``) are
read too.

A checkpoint resumes on another number of devices (``trainer.devices``, nodes) too: every rank
saved the same step (data parallelism runs in lock step), so each new rank loads that position and
the loader deals the rest of the epoch to the new ranks (elastic resume, docs/architecture.md,
"Planning and resume").
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch

from speechdata.errors import ConfigError
from speechdata.sampling.position import Position

CHECKPOINT_KEY = "speechdata_loader"


class ResumableLoader:
    """Iterable that Lightning iterates in place of a speechdata loader.

    The wrapped loader provides ``__iter__``, ``state_dict()``, ``load_state_dict()`` and
    ``set_epoch(epoch)``, and ``__len__`` unless it streams. The wrapper deliberately has no
    ``state_dict`` itself, so Lightning does not save a (prefetch-shifted) loader state of its own.
    """

    def __init__(self, loader: Any, epoch_fn: Callable[[], int] | None = None) -> None:
        self.loader = loader
        self.epoch_fn = epoch_fn or (lambda: 0)
        self._pending: deque[Position] = deque()
        self.done: Position | None = None
        self._restore: Position | None = None
        self._full: tuple[int, int] | None = None  # (epoch, its full length) of a resumed epoch
        self._inner: Iterator[Any] | None = None  # the loader's iteration of the current epoch
        self._inner_done = False  # ... has handed out the epoch's last batch

    def _close_inner(self, finished_only: bool = False) -> None:
        """Close the loader's last iteration (with ``finished_only``, only once it has handed out
        its epoch's last batch). Lightning stops asking for batches once it has the epoch's length
        of them, so a loader that rolls over to the next epoch when its iteration ends
        (speechdata's does) is told here, before the next epoch is measured or started."""
        if finished_only and not self._inner_done:
            return
        inner, self._inner = self._inner, None
        close = getattr(inner, "close", None)
        if close is not None:
            close()

    def __len__(self) -> int:
        # Lightning asks at the start of every epoch (the trainer reloads its loader each epoch,
        # speechdata.train.run): the length of the trainer's epoch, not of the one before
        self._close_inner(finished_only=True)
        epoch = self.epoch_fn()
        if self._restore is not None and self._restore.epoch == epoch:
            self._start_epoch()
        elif getattr(self.loader, "epoch", epoch) < epoch and hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)  # a loader that rolls over only when asked for more
        n = len(self.loader)
        # Lightning reads the length once, when fit starts, and ends every epoch at that many
        # batches; after an elastic resume the resumed epoch (the steps taken before plus the rest
        # re-dealt) can be longer or shorter than a full one: report the longer, a shorter epoch
        # ends when the loader does
        if self._full is not None and self._full[0] == self.epoch_fn():
            n = max(n, self._full[1])
        return n

    def _start_epoch(self) -> None:
        """Put the loader at the start of the trainer's epoch, or at the position to restore
        when it lies in that epoch (a position in an epoch the trainer has left, or not reached,
        is not restored)."""
        epoch = self.epoch_fn()
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        restore, self._restore = self._restore, None
        if restore is not None and restore.epoch == epoch:
            try:
                full = len(self.loader)
            except TypeError:
                full = 0  # a stream: no length
            self.loader.load_state_dict(restore.to_dict())
            self._full = (epoch, full)

    def __iter__(self) -> Iterator[Any]:
        self._close_inner()
        epoch = self.epoch_fn()
        self._start_epoch()
        self._pending.clear()
        try:
            total: int | None = len(self.loader)
        except TypeError:
            total = None  # a stream: its length is not known in advance
        self._inner = inner = iter(self.loader)
        self._inner_done = False
        try:
            for batch in inner:
                pos = Position.from_dict(self.loader.state_dict(), "loader state")
                if pos.epoch == epoch and total is not None and pos.batch >= total:
                    pos = pos.next_epoch()  # a loader that rolls over only when asked for more
                self._inner_done = pos.epoch != epoch
                self._pending.append(pos)
                yield batch
        finally:  # this iteration dropped (the trainer stopped): the loader's with it
            if self._inner is inner:
                self._close_inner()

    def batch_done(self) -> None:
        """The oldest batch handed out has been trained on: its position becomes the resume point."""
        if self._pending:
            self.done = self._pending.popleft()

    def snapshot(self) -> dict[str, Any] | None:
        """The resume point to save, in the position dict format (``None`` before the first batch)."""
        return None if self.done is None else self.done.to_dict()

    def restore(self, snap: Any) -> None:
        """Resume from ``snap`` (a position in any format :meth:`Position.from_dict` reads, or
        ``None``) at the next iteration."""
        pos = None if snap is None else Position.from_dict(snap, "checkpoint loader position")
        self._restore = pos
        self.done = pos


class LoaderStateCallback(pl.Callback):
    """Saves the training loader's resume point in checkpoints and restores it on resume.

    Must run before ``ModelCheckpoint`` in ``on_train_batch_end`` (Lightning runs checkpoint
    callbacks last).
    """

    def __init__(self, loader: ResumableLoader) -> None:
        self.loader = loader

    @property
    def state_key(self) -> str:
        """Key of this callback's entry in the checkpoint's callback states."""
        return "LoaderStateCallback"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Let the wrapper read the trainer's epoch."""
        self.loader.epoch_fn = lambda: trainer.current_epoch

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Mark the batch as trained on."""
        self.loader.batch_done()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Store every rank's resume point (gathered when running distributed)."""
        snap = self.loader.snapshot()
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, snap)
            checkpoint[CHECKPOINT_KEY] = gathered
        else:
            checkpoint[CHECKPOINT_KEY] = [snap]

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Hand this rank's resume point to the wrapper; on another world size, the step every
        saved rank reached (the loader re-deals the rest of the epoch to the new ranks)."""
        snaps = checkpoint.get(CHECKPOINT_KEY)
        if not snaps:
            return
        if len(snaps) == trainer.world_size:
            self.loader.restore(snaps[trainer.global_rank])
            return
        self.loader.restore(_common_step(snaps, trainer.world_size))


def _common_step(snaps: list[Any], world_size: int) -> dict[str, Any] | None:
    """The one position that the ranks of a checkpoint saved (``snaps``, one per rank), for a run
    on ``world_size`` ranks; a :class:`ConfigError` when the ranks saved different steps (they
    cannot be re-dealt as one epoch)."""
    what = "checkpoint loader positions"
    known = [(r, Position.from_dict(s, what)) for r, s in enumerate(snaps) if s is not None]
    if not known:
        return None
    steps = {(p.epoch, p.batch, p.seed, p.world_size, p.deal) for _, p in known}
    if len(steps) > 1 or len(known) < len(snaps):
        shown = ", ".join(f"rank {r}: epoch {p.epoch} batch {p.batch}" for r, p in known[:4])
        raise ConfigError(
            f"{what}: the {len(snaps)} saved ranks are at different steps ({shown}); only a position "
            f"that every rank reached can be re-dealt to {world_size} ranks"
        )
    return snaps[known[0][0]]


class EvalLoader:
    """Validation loader wrapper: every pass starts from the loader's initial position.

    A validation run cut short by ``limit_val_batches`` would otherwise leave the loader mid-epoch
    and the next run would see different batches. The wrapper also hides the loader's ``sampler``
    attribute from Lightning's DataLoader heuristics.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self._start = loader.state_dict() if hasattr(loader, "state_dict") else None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        if self._start is not None:
            self.loader.load_state_dict(self._start)
        yield from self.loader
