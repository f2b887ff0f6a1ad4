"""Audio decoding: a span of a file (or of bytes) to float32 mono at the wanted sample rate.

Only ``[offset, offset + duration]`` is read: the decoder seeks to the first frame and reads the
frames asked for, never the whole file. Multi-channel audio is downmixed (mean) or one channel is
picked; resampling uses soxr. Every failure is a :class:`~speechdata.errors.DataError` naming the
place: ``missing_audio`` for a file that is not there, ``decode_error`` for everything else.

Plain 16-bit PCM WAV (the format most speech corpora ship) is read without libsndfile: the header
is parsed here and the span's bytes are converted by numpy, giving bit-identical samples
(libsndfile scales by 1/32768 too) at a fraction of the cost. Everything else, and any WAV whose
header is not clean, goes through libsndfile. ``out=`` decodes straight into a caller's buffer
(the batch's shared-memory audio buffer), so a clip is written once.

libsndfile's frames are read with one ``sf_readf_float`` call (:func:`_read`), not through
``SoundFile.read``: that wrapper asks for the position before every read and seeks to it after,
and on FLAC a seek costs about as much as decoding a frame again (here about 100 µs per clip,
half the decode of a 0.5 s clip); the samples are the same.

Example::

    >>> x = load_audio("clip.flac", offset=1.5, duration=2.0, sample_rate=16000)
    >>> x.dtype, x.shape
    (dtype('float32'), (32000,))
"""

from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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


class PcmWav:
    """A clean little-endian 16-bit PCM WAV, read without libsndfile.

    Same surface as the part of :class:`soundfile.SoundFile` that :func:`load_audio` uses
    (``samplerate``, ``frames``, ``channels``, ``format``, ``seek``, ``read``); samples are
    ``int16 / 32768`` in float32, exactly what libsndfile returns. Made by :meth:`open`, which
    returns None for anything it does not fully understand.
    """

    format = "WAV"
    #: Header bytes read to find the ``data`` chunk (more chunks than fit: libsndfile reads it).
    HEAD = 4096

    def __init__(self, data: Any, fd: int | None, samplerate: int, channels: int, start: int, frames: int):
        self._data, self._fd = data, fd
        self.samplerate, self.channels, self.frames = samplerate, channels, frames
        self._start, self._pos = start, 0

    @classmethod
    def open(cls, source: AudioSource) -> PcmWav | None:
        """A reader for ``source`` (a ``.wav`` path or WAV bytes), or None when libsndfile must read it.

        Raises :class:`FileNotFoundError` for a missing path."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            head = memoryview(source)[: cls.HEAD].tobytes()
            found = parse_pcm16_wav(head, len(source))
            return None if found is None else cls(source, None, *found)
        if not isinstance(source, (str, os.PathLike)) or not os.fspath(source).lower().endswith(".wav"):
            return None
        try:
            fd = os.open(os.fspath(source), os.O_RDONLY)
        except FileNotFoundError:
            raise
        except OSError:  # unreadable, a folder, ...: libsndfile reports it
            return None
        try:
            found = parse_pcm16_wav(os.pread(fd, cls.HEAD, 0), os.fstat(fd).st_size)
        except OSError:
            found = None
        if found is None:
            os.close(fd)
            return None
        return cls(None, fd, *found)

    def seek(self, frame: int) -> int:
        """Move to ``frame`` (from the start)."""
        self._pos = min(max(int(frame), 0), self.frames)
        return self._pos

    def read(self, frames: int = -1, dtype: str = "float32", out: np.ndarray | None = None) -> np.ndarray:
        """Up to ``frames`` float32 frames from the current position (1-D when mono), into ``out``
        when given (mono, at least ``frames`` long)."""
        if dtype != "float32":
            raise ValueError("PcmWav reads float32")
        n = self.frames - self._pos if frames < 0 else min(int(frames), self.frames - self._pos)
        first = self._start + 2 * self.channels * self._pos
        size = 2 * self.channels * n
        if self._fd is not None:
            raw: Any = os.pread(self._fd, size, first)
        else:
            raw = memoryview(self._data)[first : first + size]
        pcm = np.frombuffer(raw, dtype="<i2")
        n = len(pcm) // self.channels
        self._pos += n
        if self.channels == 1 and out is not None:
            dst = out[:n]
        else:
            dst = np.empty(n * self.channels, dtype=np.float32)
        np.multiply(pcm[: n * self.channels], np.float32(1.0 / 32768.0), out=dst)
        return dst if self.channels == 1 else dst.reshape(n, self.channels)

    def close(self) -> None:
        """Release the file descriptor."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PcmWav:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_FMT = struct.Struct("<HHIIHH")
_WAVE_FORMAT_PCM, _WAVE_FORMAT_EXTENSIBLE = 0x0001, 0xFFFE


def parse_pcm16_wav(head: bytes, size: int) -> tuple[int, int, int, int] | None:
    """``(sample_rate, channels, data_offset, frames)`` of a 16-bit PCM RIFF/WAVE file whose first
    bytes are ``head`` and whose length is ``size``; None for any other format, or when the
    ``data`` chunk is not complete (libsndfile then decides what the file holds)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(head):
        chunk, length = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            if length < 16 or body + min(length, 40) > len(head):
                return None
            tag, channels, rate, _, align, bits = _FMT.unpack_from(head, body)
            if tag == _WAVE_FORMAT_EXTENSIBLE and length >= 40:
                tag = int.from_bytes(head[body + 24 : body + 26], "little")  # the sub-format GUID
            if tag != _WAVE_FORMAT_PCM or bits != 16 or channels < 1 or align != 2 * channels or rate < 1:
                return None
            fmt = (rate, channels)
        elif chunk == b"data":
            if fmt is None or length == 0 or body + length > size:
                return None
            return fmt[0], fmt[1], body, length // (2 * fmt[1])
        pos = body + length + (length & 1)
    return None


def _open(source: AudioSource, where: str) -> sf.SoundFile | PcmWav:
    name = where or _name(source)
    try:
        fast = PcmWav.open(source)
        if fast is not None:
            return fast
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


#: libsndfile's C functions as soundfile binds them (private names: without them, SoundFile.read)
_SND, _FFI = getattr(sf, "_snd", None), getattr(sf, "_ffi", None)


def _read(f: sf.SoundFile | PcmWav, frames: int, out: np.ndarray | None) -> np.ndarray:
    """Up to ``frames`` float32 frames from ``f``'s position (1-D when mono, else
    ``[frames, channels]``), into ``out`` when given (mono, contiguous, ``frames`` long).

    A libsndfile file is read by one ``sf_readf_float`` call, without ``SoundFile.read``'s
    position query and seek after the read (the file is closed right after, its position unused)."""
    handle = getattr(f, "_file", None)
    if _SND is None or _FFI is None or handle is None or isinstance(f, PcmWav):
        return f.read(frames, dtype="float32", out=out)
    shape = (frames,) if f.channels == 1 else (frames, f.channels)
    dst = out if out is not None else np.empty(shape, dtype=np.float32)
    n = _SND.sf_readf_float(handle, _FFI.cast("float *", dst.ctypes.data), frames)
    err = _SND.sf_error(handle)
    if err:
        raise sf.LibsndfileError(err)
    return dst[:n]


def audio_info(source: AudioSource, where: str = "") -> AudioInfo:
    """Read the header of an audio file or buffer (no samples are decoded)."""
    with _open(source, where) as f:
        return AudioInfo(int(f.samplerate), int(f.frames), int(f.channels), str(f.format))


def check_span(
    sample_rate: int, frames: int, offset: float, duration: float | None, where: str
) -> tuple[int, int]:
    """``(first frame, frames to read)`` of ``[offset, offset + duration]`` in audio of ``frames``
    frames at ``sample_rate``, or the reader's one-line ``decode_error``: empty audio, an offset at
    or past the end, or a span running past the end by more than :data:`DURATION_TOLERANCE`.

    The one rule for spans: :func:`load_audio` applies it before decoding, ``speechdata shard``
    and ``speechdata validate`` apply it to headers, so all three accept and reject the same spans.
    """
    sr, total = sample_rate, frames
    if total <= 0:
        raise DataError("decode_error", where, "audio is empty (0 samples)")
    start = round(offset * sr)
    if start >= total:
        raise DataError(
            "decode_error", where, f"offset {offset:.3f} s is past the end of the audio ({total / sr:.3f} s)"
        )
    want = total - start if duration is None else round(duration * sr)
    if duration is not None and start + want > total + round(DURATION_TOLERANCE * sr):
        raise DataError(
            "decode_error",
            where,
            f"offset {offset:.3f} s + duration {duration:.3f} s runs past the end of the audio "
            f"({total / sr:.3f} s)",
        )
    return start, min(want, total - start)


def load_audio(
    source: AudioSource,
    *,
    offset: float = 0.0,
    duration: float | None = None,
    sample_rate: int | None = None,
    channel: int | None = None,
    where: str = "",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode ``[offset, offset + duration]`` of ``source`` to a float32 mono array.

    ``source`` is a path, the bytes of a file, or a binary file object. ``channel=None`` averages
    the channels; an int picks one. ``sample_rate`` resamples (soxr, high quality) when it differs
    from the file's. ``where`` names the example in error messages (``manifest.jsonl:12``).

    With ``out`` (a 1-D float32 array) the samples are written to its start and a view of it is
    returned, when they fit; otherwise a new array is returned (``np.may_share_memory(x, out)``
    tells which). Mono audio at the wanted rate is decoded straight into ``out``.
    """
    name = where or _name(source)
    if not np.isfinite(offset) or offset < 0:
        raise DataError("decode_error", name, f"offset must be a finite number >= 0, got {offset}")
    if duration is not None and (not np.isfinite(duration) or duration <= 0):
        raise DataError("decode_error", name, f"duration must be a finite number > 0, got {duration}")
    with _open(source, where) as f:
        sr = int(f.samplerate)
        total = int(f.frames)
        start, want = check_span(sr, total, offset, duration, name)
        if channel is not None and not 0 <= channel < f.channels:
            raise DataError(
                "decode_error", name, f"channel {channel} requested but the audio has {f.channels}"
            )
        direct = out is not None and f.channels == 1 and sample_rate in (None, sr) and want <= out.shape[0]
        try:
            if start:
                f.seek(start)
            # 1-D for mono files: no strided copy later
            data = _read(f, want, out[:want] if direct else None)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
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
    if out is not None and not direct and mono.shape[0] <= out.shape[0]:
        out[: mono.shape[0]] = mono
        mono = out[: mono.shape[0]]
    return mono
