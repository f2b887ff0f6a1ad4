"""One batch's audio, decoded clip after clip straight into one flat float32 tensor.

In a DataLoader worker the tensor lives in shared memory from the start, so a clip's samples are
written exactly once: the decoder writes them into the buffer (:func:`speechdata.audio.load_audio`
with ``out=``) and the buffer crosses to the main process by file descriptor, not by copy. Without
it, every sample would be written three times (the decoder's array, the flat batch, torch's copy
into shared memory), and at WAV speeds those writes and their page faults cost more than decoding.

Example::

    >>> buf = AudioBuffer(capacity=32000)
    >>> buf.decode("a.wav", offset=0.0, duration=1.0, sample_rate=16000, where="m.jsonl:1")
    16000
    >>> buf.tensor().shape
    torch.Size([16000])
"""

from __future__ import annotations

import numpy as np
import torch

from speechdata.audio import AudioSource, load_audio


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


class AudioBuffer:
    """Clips decoded back to back into one float32 tensor of at least ``capacity`` samples.

    ``shared=None`` means shared memory exactly when running in a DataLoader worker. The buffer
    grows (one copy of what is there) when a clip does not fit, e.g. after resampling rounds up;
    :meth:`truncate` rolls back clips of an example that was dropped part-way.
    """

    def __init__(self, capacity: int, shared: bool | None = None) -> None:
        if shared is None:
            shared = torch.utils.data.get_worker_info() is not None
        self.shared = shared
        self._flat = _empty(max(int(capacity), 0), shared)
        self._view = self._flat.numpy()
        self.size = 0

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

    def _grow(self, need: int) -> None:
        if need <= self._view.shape[0]:
            return
        flat = _empty(max(need, 2 * self._view.shape[0]), self.shared)
        view = flat.numpy()
        view[: self.size] = self._view[: self.size]
        self._flat, self._view = flat, view
