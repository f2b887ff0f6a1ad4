"""One batch's audio, decoded clip after clip straight into one flat float32 tensor.

In a DataLoader worker the tensor lives in shared memory from the start, so a clip's samples are
written exactly once: the decoder writes them into the buffer (:func:`speechdata.audio.load_audio`
with ``out=``) and the buffer crosses to the main process by file descriptor, not by copy. Without
it, every sample would be written three times (the decoder's array, the flat batch, torch's copy
into shared memory), and at WAV speeds those writes and their page faults cost more than decoding.

Fresh shared memory is itself costly: the kernel zeroes and maps every page on first touch (about
30 ms per 600 s batch of 16 kHz audio here, more than the decode of a WAV batch). So a worker keeps
a small pool of shared buffers (:class:`SlotPool`) and reuses them: each buffer has a one-word
shared flag, set while the batch is in flight and cleared by the main process once the batch has
been padded (:meth:`~speechdata.collate.Packed.release`). A worker never waits for a buffer: when
none is free it allocates a fresh one, so a consumer that keeps batches only costs speed.

Example::

    >>> buf = AudioBuffer(capacity=32000, pool=None)
    >>> buf.decode("a.wav", offset=0.0, duration=1.0, sample_rate=16000, where="m.jsonl:1")
    16000
    >>> buf.tensor().shape
    torch.Size([16000])
"""

from __future__ import annotations

import os

import numpy as np
import torch

from speechdata.audio import AudioSource, load_audio
from speechdata.torchprivate import storage_use_count


def _empty(n: int, shared: bool) -> torch.Tensor:
    """``n`` uninitialised float32 values, in shared memory when ``shared``."""
    if not shared or n == 0:
        return torch.empty(n, dtype=torch.float32)
    try:
        # allocated in shared memory directly: share_memory_() would allocate, then copy
        storage = torch.UntypedStorage._new_shared(n * 4)
    except (AttributeError, RuntimeError):  # a torch without the private constructor
        return torch.empty(n, dtype=torch.float32).share_memory_()
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, (n,))


class Slot:
    """A pooled shared buffer and its in-use flag: a one-element int32 view of the word just past
    the samples, in the same shared storage (so a batch hands over one file descriptor for both)."""

    def __init__(self, capacity: int) -> None:
        whole = _empty(capacity + 1, shared=True)
        self.flat = whole[:capacity]
        self.flag = torch.empty(0, dtype=torch.int32).set_(whole.untyped_storage(), capacity, (1,))
        self.flag[0] = 1

    @property
    def capacity(self) -> int:
        """Samples it holds."""
        return int(self.flat.shape[0])

    @property
    def free(self) -> bool:
        """Whether no batch uses it (the main process clears the flag when done)."""
        return int(self.flag[0]) == 0

    def take(self) -> Slot:
        """Mark it in use and return it."""
        self.flag[0] = 1
        return self


class SlotPool:
    """At most ``size`` reusable shared buffers of one process (a DataLoader worker).

    :meth:`acquire` returns the smallest free slot that fits, else replaces a free slot that is
    too small, else adds a slot while there are fewer than ``size``, else returns None (the caller
    allocates a one-off buffer). New slots are as large as the largest one so far, so after the
    first few batches every slot fits every batch.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.slots: list[Slot] = []

    def acquire(self, need: int) -> Slot | None:
        """A slot of at least ``need`` samples, marked in use; None when all are in use."""
        free = [s for s in self.slots if s.free]
        fits = [s for s in free if s.capacity >= need]
        if fits:
            return min(fits, key=lambda s: s.capacity).take()
        if free:
            self.slots.remove(min(free, key=lambda s: s.capacity))
        elif len(self.slots) >= self.size:
            return None
        slot = Slot(max([need] + [s.capacity for s in self.slots]))
        self.slots.append(slot)
        return slot.take()


_pool: tuple[int, SlotPool] | None = None


def worker_pool() -> SlotPool:
    """This process's pool (a forked child starts with an empty one)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), SlotPool())
    return _pool[1]


class AudioBuffer:
    """Clips decoded back to back into one float32 tensor of at least ``capacity`` samples.

    ``pool`` (default: the worker's pool when running in a DataLoader worker, else none) lends
    shared buffers; without a pool the buffer is private memory. The buffer grows (one copy of
    what is there) when a clip does not fit, e.g. after resampling rounds up; :meth:`truncate`
    rolls back clips of an example that was dropped part-way. :attr:`flag` is the lent slot's
    in-use flag (None for a private or one-off buffer): whoever ends up with the batch clears it;
    :meth:`release` does so here when the batch is not handed on.
    """

    def __init__(self, capacity: int, pool: SlotPool | bool | None = True) -> None:
        if pool is True:
            pool = worker_pool() if torch.utils.data.get_worker_info() is not None else None
        self.pool = pool or None
        self.flag: torch.Tensor | None = None
        self.size = 0
        self._flat = self._alloc(max(int(capacity), 0))
        self._view = self._flat.numpy()

    def _alloc(self, need: int) -> torch.Tensor:
        """A buffer of at least ``need`` samples (from the pool when there is one)."""
        if self.pool is None:
            return _empty(need, shared=False)
        slot = self.pool.acquire(need)
        if slot is None:
            self.flag = None
            return _empty(need, shared=True)
        self.flag = slot.flag
        return slot.flat

    def decode(
        self, source: AudioSource, *, offset: float, duration: float | None, sample_rate: int, where: str
    ) -> int:
        """Append the decoded span of ``source`` (see :func:`~speechdata.audio.load_audio`);
        returns its number of samples."""
        free = self._view[self.size :]
        x = load_audio(
            source, offset=offset, duration=duration, sample_rate=sample_rate, where=where, out=free
        )
        n = int(x.shape[0])
        if not np.may_share_memory(x, free):
            self._grow(self.size + n)
            self._view[self.size : self.size + n] = x
        self.size += n
        return n

    def truncate(self, size: int) -> None:
        """Forget everything after the first ``size`` samples."""
        self.size = min(self.size, max(int(size), 0))

    def tensor(self) -> torch.Tensor:
        """The samples decoded so far (a view of the buffer: no copy)."""
        return self._flat[: self.size]

    def release(self) -> None:
        """Give the lent slot back to the pool (the batch was not handed on)."""
        if self.flag is not None:
            self.flag[0] = 0
            self.flag = None

    def _grow(self, need: int) -> None:
        if need <= self._view.shape[0]:
            return
        old = self.flag
        flat = self._alloc(max(need, 2 * self._view.shape[0]))
        view = flat.numpy()
        view[: self.size] = self._view[: self.size]
        self._flat, self._view = flat, view
        if old is not None:
            old[0] = 0


class ReusedBuffers:
    """At most ``size`` float32 buffers of the main process, each reused once nothing but this
    pool references its memory (the caller dropped the batch that held it, and every view of it).

    Fresh memory for a padded batch costs a page fault (and the kernel's zeroing) per 4 KiB on
    first write, which for short clips was a large part of the main process's work per example;
    a reused buffer is written without faults. :meth:`empty` never waits: with every buffer still
    referenced (or a torch that cannot count references, or a buffer moved to shared memory, which
    another process may read) it allocates as ``torch.empty`` would.
    """

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self.storages: list[torch.UntypedStorage] = []

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised float32 tensor of ``shape`` (contiguous), in a reused buffer when one is free."""
        nbytes = 4 * int(np.prod(shape, dtype=np.int64))
        if nbytes == 0:
            return torch.empty(shape, dtype=torch.float32)
        free = []
        for s in list(self.storages):
            count = storage_use_count(s)
            if count is None:
                return torch.empty(shape, dtype=torch.float32)
            if s.is_shared():
                self.storages.remove(s)  # handed to another process: never write it again
            elif count == 1:
                free.append(s)
        fits = [s for s in free if s.nbytes() >= nbytes]
        if fits:
            storage = min(fits, key=lambda s: s.nbytes())
        else:
            if free:
                self.storages.remove(min(free, key=lambda s: s.nbytes()))
            elif len(self.storages) >= self.size:
                return torch.empty(shape, dtype=torch.float32)
            storage = torch.UntypedStorage(max([nbytes] + [s.nbytes() for s in self.storages]))
            self.storages.append(storage)
        return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)
