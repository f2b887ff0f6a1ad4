"""Re-encoding audio for shards: FLAC, WAV or Ogg Opus, optionally resampled or cut to a span.

Samples are read in the source's own integer width when it has one (PCM_16 as int16, PCM_24 and
PCM_32 as int32) and written back with the same bit depth, so ``flac`` and ``wav`` shards decode to
exactly the source's samples. Resampling (soxr, high quality) works in float32 and writes 16-bit
PCM. Ogg Opus only exists at 8, 12, 16, 24 and 48 kHz: other rates are resampled up to the next
one. libsndfile gives every Ogg stream a random serial number; it is replaced by a fixed one (and
the page checksums recomputed) so that Opus shards are byte-identical from run to run too.

Example::

    >>> data = encode_audio("a.wav", "flac", offset=1.0, duration=2.5)
    >>> load_audio(data).shape
    (40000,)
"""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from speechdata.errors import DataError

#: Codecs ``speechdata shard --codec`` accepts (``keep`` copies the source file's bytes).
CODECS = ("keep", "flac", "wav", "opus")
#: Member file extension of each re-encoding codec.
EXTENSIONS = {"flac": "flac", "wav": "wav", "opus": "opus"}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
#: The Ogg stream serial number written into every Opus member.
OGG_SERIAL = 0x53444154

_INT16_SOURCES = {"PCM_S8", "PCM_U8", "PCM_16"}
_INT32_SOURCES = {"PCM_24", "PCM_32"}
_WAV_SUBTYPES = {"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"}


def _read_dtype(subtype: str) -> str:
    if subtype in _INT16_SOURCES:
        return "int16"
    if subtype in _INT32_SOURCES:
        return "int32"
    if subtype == "DOUBLE":
        return "float64"
    return "float32"


def _target_subtype(codec: str, source_subtype: str, resampled: bool) -> str:
    if resampled:
        return "PCM_16"
    if codec == "wav":
        if source_subtype in _WAV_SUBTYPES:
            return source_subtype
        return "PCM_16" if source_subtype == "PCM_S8" else "FLOAT"
    # FLAC holds 8, 16 or 24-bit integers.
    if source_subtype in ("PCM_S8", "PCM_16", "PCM_24"):
        return source_subtype
    if source_subtype == "PCM_U8":
        return "PCM_16"
    return "PCM_24"


def encode_audio(
    source: str | os.PathLike[str] | BinaryIO,
    codec: str,
    *,
    sample_rate: int | None = None,
    offset: float = 0.0,
    duration: float | None = None,
    where: str = "",
) -> bytes:
    """Decode ``source`` (optionally only ``[offset, offset + duration]``) and encode it as ``codec``.

    Frame arithmetic matches :func:`speechdata.audio.load_audio` (``round(seconds * rate)``), so the
    encoded span decodes to the same samples that ``load_audio`` returns for that span. Channels
    are kept as they are. ``source`` is a path, or an open binary file (a clip read from object
    storage). Errors are :class:`DataError` naming ``where``.
    """
    if codec not in EXTENSIONS:
        raise ValueError(f"cannot encode to {codec!r}; choose one of {', '.join(EXTENSIONS)}")
    path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<bytes>")
    label = where or str(path)
    try:
        with sf.SoundFile(source if not isinstance(source, os.PathLike) else path) as f:
            sr = int(f.samplerate)
            subtype = str(f.subtype)
            start = round(offset * sr)
            total = int(f.frames)
            frames = total - start if duration is None else min(round(duration * sr), total - start)
            if start >= total or frames <= 0:
                raise DataError(
                    "decode_error", label, f"span offset={offset} duration={duration} is outside {path}"
                )
            if start:
                f.seek(start)
            data = f.read(frames, dtype=_read_dtype(subtype), always_2d=True)
    except FileNotFoundError:
        raise DataError("missing_audio", label, f"audio file not found: {path}") from None
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError("decode_error", label, f"cannot decode {path}: {' '.join(str(e).split())}") from None
    out_rate = sr if sample_rate is None else int(sample_rate)
    if codec == "opus" and out_rate not in OPUS_RATES:
        out_rate = next((r for r in OPUS_RATES if r >= out_rate), OPUS_RATES[-1])
    resampled = out_rate != sr
    if resampled:
        scale = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}.get(data.dtype, 1.0)
        x = data.astype(np.float32) / np.float32(scale)
        x = soxr.resample(x, sr, out_rate, quality="HQ")
        data = np.clip(x, -1.0, 32767.0 / 32768.0).astype(np.float32)
    if data.shape[1] == 1:
        data = data[:, 0]
    buf = io.BytesIO()
    try:
        if codec == "opus":
            sf.write(buf, data, out_rate, format="OGG", subtype="OPUS")
            return fix_ogg_serial(buf.getvalue())
        fmt = "FLAC" if codec == "flac" else "WAV"
        sf.write(buf, data, out_rate, format=fmt, subtype=_target_subtype(codec, subtype, resampled))
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise DataError("decode_error", label, f"cannot encode {path} as {codec}: {e}") from None
    return buf.getvalue()


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
            r &= 0xFFFFFFFF
        table.append(r)
    return tuple(table)


_CRC_TABLE = _crc_table()


def ogg_crc(data: bytes) -> int:
    """The Ogg page checksum (CRC-32, polynomial 0x04C11DB7, no reflection, zero init)."""
    crc = 0
    table = _CRC_TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[((crc >> 24) ^ b) & 0xFF]
    return crc


def fix_ogg_serial(data: bytes, serial: int = OGG_SERIAL) -> bytes:
    """Rewrite the stream serial number of every Ogg page to ``serial`` and recompute checksums."""
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos : pos + 4] != b"OggS" or pos + 27 > len(out):
            raise ValueError(f"not an Ogg page at byte {pos}")
        nseg = out[pos + 26]
        header = 27 + nseg
        body = sum(out[pos + 27 : pos + header])
        end = pos + header + body
        struct.pack_into("<I", out, pos + 14, serial)
        struct.pack_into("<I", out, pos + 22, 0)
        struct.pack_into("<I", out, pos + 22, ogg_crc(bytes(out[pos:end])))
        pos = end
    return bytes(out)
