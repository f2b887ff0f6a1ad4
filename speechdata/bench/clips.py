"""The clip spans every peer of ``speechdata bench`` reads, and how a span is decoded.

A :class:`Clip` is one audio span of one example: a span of a plain audio file, or of a member of
a tarred dataset's tar (the member's byte offset and size in the tar are part of the clip, so the
decode floor reads exactly those bytes with ``os.pread``). The clips travel to the peers' child
processes as JSON (:func:`save_clips` / :func:`load_clips`); this module imports only numpy and
soundfile, so a child stays light.

Example::

    >>> clip = load_clips("clips.json")[0]
    >>> decode_span(clip.path, clip.start, clip.frames).shape
    (35200, 1)
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

from speechdata.errors import DataError

_WDS_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass
class Clip:
    """One audio span of one example: ``frames`` samples from sample ``start`` of its audio.

    The audio is the file ``path``, or, when ``member`` is set, the member ``member`` of the tar
    ``path``: ``member_size`` bytes from byte ``member_offset``. ``file_frames`` is the length of
    that audio, ``example`` the example's position among the kept examples and ``clip`` the span's
    position in its example.
    """

    path: str
    start: int
    frames: int
    sample_rate: int
    channels: int
    file_frames: int
    example: int
    clip: int
    text: str
    format: str
    member: str = ""
    member_offset: int = 0
    member_size: int = 0

    @property
    def seconds(self) -> float:
        """Length of the span in seconds."""
        return self.frames / self.sample_rate

    @property
    def source(self) -> str:
        """The audio as messages name it: ``path`` or ``tar:member``."""
        return f"{self.path}:{self.member}" if self.member else self.path


def save_clips(clips: Sequence[Clip], path: str | Path) -> None:
    """Write clip spans as JSON (for the child processes)."""
    Path(path).write_text(json.dumps([dataclasses.asdict(c) for c in clips]))


def load_clips(path: str | Path) -> list[Clip]:
    """Read clip spans written by :func:`save_clips`."""
    return [Clip(**c) for c in json.loads(Path(path).read_text())]


class TarReader:
    """The bytes of tar members by offset (``os.pread``), one descriptor per tar, opened on first
    use; :meth:`close` closes them."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def read(self, tar: str, offset: int, size: int, where: str) -> bytes:
        """``size`` bytes from byte ``offset`` of ``tar``; a short read is a ``decode_error`` naming
        ``where`` (``tar:member``)."""
        fd = self.fds.get(tar)
        if fd is None:
            fd = self.fds[tar] = os.open(tar, os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise DataError("decode_error", where, f"tar is truncated ({len(data)} of {size} bytes)")
        return data

    def clip(self, clip: Clip) -> bytes:
        """The bytes of a tar member clip's member."""
        return self.read(clip.path, clip.member_offset, clip.member_size, clip.source)

    def close(self) -> None:
        """Close every descriptor."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def decode_span(audio: str | BinaryIO, start: int, frames: int) -> np.ndarray:
    """``frames`` samples from sample ``start`` of an encoded audio file (a path, or its bytes in a
    file object), float32 ``[frames, channels]``: soundfile ``seek`` + ``read``, as the decode
    floor does."""
    with sf.SoundFile(audio) as f:
        if start:
            f.seek(start)
        return f.read(frames, dtype="float32", always_2d=True)


def to_mono(data: np.ndarray) -> np.ndarray:
    """A ``[frames, channels]`` array as contiguous float32 mono (the channel mean)."""
    return np.ascontiguousarray(data[:, 0] if data.shape[1] == 1 else data.mean(axis=1), dtype=np.float32)


def wds_name(member: str) -> tuple[str, str] | None:
    """How webdataset names a tar member: ``(key, extension)``, the key up to the first dot of the
    file name and the extension lower-cased (``None`` for a name without a dot, which webdataset
    skips)."""
    m = _WDS_NAME.match(member)
    return None if m is None else (m.group(1), m.group(2).lower())


# ------------------------------------------------------------------------- webdataset shards


def _span_bytes(clip: Clip) -> tuple[bytes, str]:
    """The encoded audio of exactly a plain file clip's span, and its extension (``flac``/``wav``)."""
    ext = "wav" if clip.format.upper() == "WAV" else "flac"
    if clip.start == 0 and clip.frames == clip.file_frames and clip.format.upper() in ("WAV", "FLAC"):
        return Path(clip.path).read_bytes(), ext
    with sf.SoundFile(clip.path) as f:
        f.seek(clip.start)
        data = f.read(clip.frames, dtype="int16", always_2d=True)
    buf = io.BytesIO()
    sf.write(buf, data, clip.sample_rate, subtype="PCM_16", format=ext.upper())
    return buf.getvalue(), ext


def write_wds_shards(clips: Sequence[Clip], out_dir: str | Path, num_shards: int, seed: int) -> list[str]:
    """Write every clip of plain audio files into ``num_shards`` webdataset-style tars
    (``key.flac|wav`` + ``key.json`` holding the text, example, clip and sample rate).

    The clips go in a seeded random order (as one prepares webdataset shards), dealt round-robin
    to the shards; the key is ``e{example}_c{clip}``. Returns the tar paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng([int(seed), 0x3D5]).permutation(len(clips))
    paths = [out / f"shard_{k:04d}.tar" for k in range(num_shards)]
    with contextlib.ExitStack() as stack:
        tars = [stack.enter_context(tarfile.open(p, "w")) for p in paths]
        for pos, i in enumerate(order):
            clip = clips[int(i)]
            key = f"e{clip.example:09d}_c{clip.clip}"
            audio, ext = _span_bytes(clip)
            meta: dict[str, Any] = {
                "text": clip.text,
                "example": clip.example,
                "clip": clip.clip,
                "sample_rate": clip.sample_rate,
            }
            for name, data in ((f"{key}.{ext}", audio), (f"{key}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tars[pos % num_shards].addfile(info, io.BytesIO(data))
    return [str(p) for p in paths]
