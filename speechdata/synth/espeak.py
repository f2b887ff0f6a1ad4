"""Speech from ``espeak-ng``: a text spoken by one of :data:`SPEAKERS` voices, at any sample rate.

Example::

    >>> audio = speak("hello world", 16000, speaker=3, workdir=Path("/tmp"))  # needs espeak-ng
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speechdata.errors import ConfigError

#: Distinct voices (pitches) a corpus draws its speakers from.
SPEAKERS = 8
#: espeak-ng's speaking rate at ``-s 170``, in characters per second (to size texts).
CHARS_PER_SECOND = 17.0


def available() -> bool:
    """Whether ``espeak-ng`` is on ``PATH``."""
    return shutil.which("espeak-ng") is not None


def speak(text: str, sample_rate: int, speaker: int, workdir: Path) -> np.ndarray:
    """Speak ``text`` with espeak-ng (pitch from ``speaker``) as float32 mono at ``sample_rate``
    (``workdir`` holds the intermediate WAV file)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ConfigError("speech='espeak': espeak-ng is not installed (not found on PATH)")
    wav = workdir / "espeak.wav"
    pitch = 20 + 60 * speaker // max(1, SPEAKERS - 1)
    cmd = [exe, "-v", "en-us", "-s", "170", "-p", str(pitch), "-w", str(wav), text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ConfigError(f"espeak-ng failed ({proc.returncode}): {err[0] if err else 'no message'}")
    audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)
