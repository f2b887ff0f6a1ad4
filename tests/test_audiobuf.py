"""The batch audio buffer: clips decoded in place, growth, roll-back, and the workers' slot pool."""

from __future__ import annotations

import pickle
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.multiprocessing  # registers the shared-memory reductions

from speechdata.audio import load_audio
from speechdata.audiobuf import AudioBuffer, SlotPool
from speechdata.collate import Packed


@pytest.fixture
def clips(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    paths = []
    for k, (sr, ext) in enumerate([(16000, "wav"), (16000, "flac"), (22050, "flac")]):
        path = tmp_path / f"c{k}.{ext}"
        sf.write(path, (rng.standard_normal(sr) * 0.1).astype(np.float32), sr, subtype="PCM_16")
        paths.append(path)
    return paths


def test_clips_back_to_back_equal_separate_decodes(clips: list[Path]) -> None:
    buf = AudioBuffer(3 * 8000, pool=None)
    lengths = [buf.decode(p, offset=0.25, duration=0.5, sample_rate=16000, where="t") for p in clips]
    want = [load_audio(p, offset=0.25, duration=0.5, sample_rate=16000) for p in clips]
    assert lengths == [len(w) for w in want]
    torch.testing.assert_close(buf.tensor(), torch.from_numpy(np.concatenate(want)), rtol=0, atol=0)


def test_grows_when_a_clip_does_not_fit_and_truncate_rolls_back(clips: list[Path]) -> None:
    buf = AudioBuffer(100, pool=None)  # far too small: every clip grows it
    first = buf.decode(clips[0], offset=0.0, duration=1.0, sample_rate=16000, where="t")
    mark = buf.size
    buf.decode(clips[2], offset=0.0, duration=1.0, sample_rate=16000, where="t")
    buf.truncate(mark)
    buf.decode(clips[1], offset=0.0, duration=1.0, sample_rate=16000, where="t")
    want = np.concatenate([load_audio(clips[0]), load_audio(clips[1])])
    assert first == 16000 and buf.size == 32000
    torch.testing.assert_close(buf.tensor(), torch.from_numpy(want), rtol=0, atol=0)


def test_pool_reuses_free_slots_and_never_blocks() -> None:
    pool = SlotPool(size=2)
    a = pool.acquire(1000)
    b = pool.acquire(500)
    assert a is not None and b is not None and b.capacity == 1000  # as large as the largest
    assert pool.acquire(10) is None  # all in use and the pool is full: the caller allocates
    b.flag[0] = 0  # the consumer is done with b
    assert pool.acquire(800) is b
    a.flag[0] = 0
    c = pool.acquire(5000)  # the free slot is too small: replaced by a larger one
    assert c is not None and c is not a and c.capacity == 5000 and len(pool.slots) == 2
    assert c.flat.is_shared() and c.flag.is_shared()


def test_pooled_buffer_is_released_by_whoever_ends_up_with_the_batch(clips: list[Path]) -> None:
    pool = SlotPool(size=1)
    buf = AudioBuffer(16000, pool=pool)
    buf.decode(clips[0], offset=0.0, duration=1.0, sample_rate=16000, where="t")
    assert buf.flag is not None and buf.tensor().is_shared()
    z = torch.zeros(1, dtype=torch.int64)
    packed = Packed(buf.tensor(), z, z, z, z, z, z, z, z, slot_flag=buf.flag)
    received = pickle.loads(ForkingPickler.dumps(packed))  # as a worker sends it: shared, not copied
    del packed  # the sender dropping its object releases nothing
    assert int(buf.flag[0]) == 1 and pool.acquire(10) is None
    del received  # the receiver dropping it unused does
    assert int(buf.flag[0]) == 0
    again = AudioBuffer(16000, pool=pool)
    assert again.flag is buf.flag  # the same slot, reused
    again.release()
    assert int(buf.flag[0]) == 0


def _received(packed: Packed) -> Packed:
    """``packed`` as the main process receives it from a worker."""
    return pickle.loads(ForkingPickler.dumps(packed))


def test_a_batch_crosses_with_two_descriptors_and_arrives_equal(
    clips: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing.reduction

    sent: list[int] = []
    dup = multiprocessing.reduction.DupFd

    def counting(fd: int) -> object:
        sent.append(fd)
        return dup(fd)

    monkeypatch.setattr(multiprocessing.reduction, "DupFd", counting)
    pool = SlotPool(size=1)
    buf = AudioBuffer(16000, pool=pool)
    buf.decode(clips[0], offset=0.0, duration=1.0, sample_rate=16000, where="t")
    ints = [torch.tensor(v, dtype=torch.int64) for v in ([16000], [1], [0], [5, 6, 7], [3], [1], [9])]
    packed = Packed(
        buf.tensor(), *ints, targets=torch.tensor([0, 1, 1], dtype=torch.uint8), slot_flag=buf.flag
    )
    got = _received(packed)
    assert len(sent) == 2  # the audio's storage (the flag inside it) and one buffer of every integer field
    for name in Packed._TENSORS:
        want, have = getattr(packed, name), getattr(got, name)
        assert have.dtype == want.dtype, name
        torch.testing.assert_close(have, want, rtol=0, atol=0, msg=name)
    assert got.slot_flag is not None and int(got.slot_flag[0]) == 1
    got.release()  # the main process's release reaches the worker's slot
    assert int(buf.flag[0]) == 0 and pool.acquire(10) is not None


def test_empty_and_unpooled_batches_cross_unchanged() -> None:
    got = _received(Packed.empty())
    assert len(got) == 0 and got.targets.dtype == torch.uint8 and got.slot_flag is None
    buf = AudioBuffer(4, pool=None)
    z = torch.zeros(1, dtype=torch.int64)
    got = _received(Packed(buf.tensor(), z, z, z, z, z, z, z, torch.ones(1, dtype=torch.uint8)))
    assert got.slot_flag is None and got.targets.tolist() == [1]


def test_reused_buffers_lend_memory_only_once_nothing_else_holds_it() -> None:
    from speechdata.audiobuf import ReusedBuffers

    bufs = ReusedBuffers(size=2)
    a = bufs.empty((2, 50))
    ptr = a.data_ptr()
    view = a[1]
    del a
    b = bufs.empty((2, 50))  # a's memory is still seen through `view`
    assert b.data_ptr() != ptr and len(bufs.storages) == 2
    c = bufs.empty((1, 10))  # both in use and the pool is full: a one-off tensor
    assert c.data_ptr() not in {ptr, b.data_ptr()} and len(bufs.storages) == 2
    del view
    d = bufs.empty((4, 20))  # 80 floats fit in a's 100
    assert d.data_ptr() == ptr and d.shape == (4, 20) and d.is_contiguous()
    del b
    e = bufs.empty((3, 100))  # too large for the free one: it is replaced by a larger one
    assert e.numel() == 300 and len(bufs.storages) == 2
    d.share_memory_()  # another process may read it now: never lent again
    del d
    f = bufs.empty((1, 10))
    assert len(bufs.storages) == 2 and all(not s.is_shared() for s in bufs.storages)
    assert f.data_ptr() != ptr
