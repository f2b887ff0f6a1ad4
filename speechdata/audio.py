"""Audio decoding: a span of a file (or of bytes) to float32 mono at the wanted sample rate.

Only ``[offset, offset + duration]`` is read: the decoder seeks to the first frame and reads the
frames asked for, never the whole file. Multi-channel audio is downmixed (mean) or one channel is
picked; resampling uses soxr. Every failure is a :class:`~speechdata.errors.DataError` naming the
place: ``missing_audio`` for a file that is not there, ``decode_error`` for everything else.

Example::

    >>> x = load_audio("clip.flac", offset=1.5, duration=2.0, sample_rate=16000)
    >>> x.dtype, x.shape
    (dtype('float32'), (32000,))
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from speechdata.errors import DataError

AudioSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO

#: A clip may end this many seconds before ``offset + duration`` (manifests round durations).
DURATION_TOLERANCE = 0.05


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: sample rate, frame count, channels, duration in seconds."""

    sample_rate: int
    frames: int
    channels: int
    format: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _open(source: AudioSource, where: str) -> sf.SoundFile:
    name = where or _name(source)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return sf.SoundFile(io.BytesIO(bytes(source)))
        if isinstance(source, (str, os.PathLike)):
            return sf.SoundFile(os.fspath(source))
        return sf.SoundFile(source)
    except FileNotFoundError:
        raise DataError("missing_audio", name, "audio file not found") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        if isinstance(source, (str, os.PathLike)) and not Path(os.fspath(source)).exists():
            raise DataError("missing_audio", name, "audio file not found") from None
        raise DataError("decode_error", name, f"cannot decode audio: {_short(e)}") from None


def _name(source: AudioSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return (
        getattr(source, "name", "<bytes>")
        if not isinstance(source, (bytes, bytearray, memoryview))
        else "<bytes>"
    )


_OPENING = re.compile(r"^Error opening (?:<[^>]*>|'[^']*'|\S+): ")


def _short(e: BaseException) -> str:
    """The exception's text on one line, without libsndfile's ``Error opening <object at 0x..>:``
    prefix (the caller names the place; an object's address would make messages irreproducible)."""
    return _OPENING.sub("", " ".join(str(e).split())) or type(e).__name__


def audio_info(source: AudioSource, where: str = "") -> AudioInfo:
    """Read the header of an audio file or buffer (no samples are decoded)."""
    with _open(source, where) as f:
        return AudioInfo(int(f.samplerate), int(f.frames), int(f.channels), str(f.format))


def load_audio(
    source: AudioSource,
    *,
    offset: float = 0.0,
    duration: float | None = None,
    sample_rate: int | None = None,
    channel: int | None = None,
    where: str = "",
) -> np.ndarray:
    """Decode ``[offset, offset + duration]`` of ``source`` to a float32 mono array.

    ``source`` is a path, the bytes of a file, or a binary file object. ``channel=None`` averages
    the channels; an int picks one. ``sample_rate`` resamples (soxr, high quality) when it differs
    from the file's. ``where`` names the example in error messages (``manifest.jsonl:12``).
    """
    name = where or _name(source)
    if not np.isfinite(offset) or offset < 0:
        raise DataError("decode_error", name, f"offset must be a finite number >= 0, got {offset}")
    if duration is not None and (not np.isfinite(duration) or duration <= 0):
        raise DataError("decode_error", name, f"duration must be a finite number > 0, got {duration}")
    with _open(source, where) as f:
        sr = int(f.samplerate)
        total = int(f.frames)
        start = round(offset * sr)
        if total <= 0:
            raise DataError("decode_error", name, "audio is empty (0 samples)")
        if start >= total:
            raise DataError(
                "decode_error",
                name,
                f"offset {offset:.3f} s is past the end of the audio ({total / sr:.3f} s)",
            )
        want = total - start if duration is None else round(duration * sr)
        if duration is not None and start + want > total + round(DURATION_TOLERANCE * sr):
            raise DataError(
                "decode_error",
                name,
                f"offset {offset:.3f} s + duration {duration:.3f} s runs past the end of the audio "
                f"({total / sr:.3f} s)",
            )
        want = min(want, total - start)
        if channel is not None and not 0 <= channel < f.channels:
            raise DataError(
                "decode_error", name, f"channel {channel} requested but the audio has {f.channels}"
            )
        try:
            if start:
                f.seek(start)
            data = f.read(want, dtype="float32")  # 1-D for mono files: no strided copy later
        except (sf.LibsndfileError, RuntimeError) as e:
            raise DataError("decode_error", name, f"cannot decode audio: {_short(e)}") from None
    if data.shape[0] < want:
        missing = (want - data.shape[0]) / sr
        if missing > DURATION_TOLERANCE:
            raise DataError("decode_error", name, f"audio is truncated: {missing:.3f} s of samples missing")
    if data.shape[0] == 0:
        raise DataError("decode_error", name, "no samples decoded")
    if data.ndim == 1:
        mono = data
    elif channel is not None:
        mono = np.ascontiguousarray(data[:, channel])
    else:
        mono = data.mean(axis=1, dtype=np.float32)
    if sample_rate is not None and sample_rate != sr:
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return mono
