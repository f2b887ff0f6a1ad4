"""Exact data position in checkpoints: a loader wrapper and the callback that saves/restores it.

Lightning fetches one batch ahead of the step it runs, so the loader's own ``state_dict()`` at
checkpoint time is one batch too far. :class:`ResumableLoader` snapshots the loader state right
after each batch is produced; :class:`LoaderStateCallback` marks a snapshot as *done* when the step
that consumed its batch ends, and writes the last done snapshot into the checkpoint
(``checkpoint["speechdata_loader"]``, one entry per data-parallel rank). On resume the snapshot is
loaded into the loader before it is iterated again, so training continues with exactly the batch
after the last one trained on. A snapshot taken at the end of an epoch (or from an epoch other
than the one the trainer resumes in) is not restored: that epoch starts fresh from ``set_epoch``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch

CHECKPOINT_KEY = "speechdata_loader"


class ResumableLoader:
    """Iterable that Lightning iterates in place of a speechdata loader.

    The wrapped loader provides ``__iter__``, ``__len__``, ``state_dict()``, ``load_state_dict()``
    and ``set_epoch(epoch)``. The wrapper deliberately has no ``state_dict`` itself, so Lightning
    does not save a (prefetch-shifted) loader state of its own.
    """

    def __init__(self, loader: Any, epoch_fn: Callable[[], int] | None = None) -> None:
        self.loader = loader
        self.epoch_fn = epoch_fn or (lambda: 0)
        self._pending: deque[dict[str, Any]] = deque()
        self.done: dict[str, Any] | None = None
        self._restore: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch_fn()
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        start = 0
        restore, self._restore = self._restore, None
        # a snapshot from the end of an epoch, or from an epoch the trainer has left, is not restored
        if restore is not None and not restore["epoch_complete"] and restore["epoch"] == epoch:
            self.loader.load_state_dict(restore["state"])
            start = restore["batches"]
        self._pending.clear()
        total = len(self.loader)
        for i, batch in enumerate(self.loader, start=start + 1):
            snap = {
                "epoch": epoch,
                "batches": i,
                "epoch_complete": i >= total,
                "state": self.loader.state_dict(),
            }
            self._pending.append(snap)
            yield batch

    def batch_done(self) -> None:
        """The oldest batch handed out has been trained on: its snapshot becomes the resume point."""
        if self._pending:
            self.done = self._pending.popleft()

    def snapshot(self) -> dict[str, Any] | None:
        """The resume point to save (``None`` before the first batch)."""
        return self.done

    def restore(self, snap: dict[str, Any] | None) -> None:
        """Resume from ``snap`` at the next iteration."""
        self._restore = snap
        self.done = snap


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
        """Hand this rank's resume point to the wrapper (ignored if the world size changed)."""
        snaps = checkpoint.get(CHECKPOINT_KEY)
        if not snaps:
            return
        if len(snaps) != trainer.world_size:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"the checkpoint holds loader positions for {len(snaps)} ranks but this run has "
                f"{trainer.world_size}; the data position is not restored (the epoch restarts)"
            )
            return
        self.loader.restore(snaps[trainer.global_rank])


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
