"""The tone alphabet: text spelled as one sinusoid per character, and read back from the audio.

Every character of :data:`ALPHABET` is a sinusoid of its own frequency (:data:`TONE_FREQUENCIES`,
evenly spaced on the mel scale between 300 and 3500 Hz, so it survives 8 kHz files and log-mel
features alike) lasting ``seconds_per_char`` seconds with 5 ms fades. A clip has
:data:`TONE_PADDING` seconds of silence on both sides; :func:`decode_tones` reads the text back
(one windowed DFT per character).

Example::

    >>> audio = synthesize_tones("hello world", 16000)
    >>> decode_tones(audio, 16000)
    'hello world'
"""

from __future__ import annotations

import functools

import numpy as np

#: Characters the tone alphabet can spell (index = tone number).
ALPHABET = " abcdefghijklmnopqrstuvwxyz"


def _mel_spaced(lo: float, hi: float, n: int) -> np.ndarray:
    mel = np.linspace(2595.0 * np.log10(1 + lo / 700.0), 2595.0 * np.log10(1 + hi / 700.0), n)
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


#: Frequency (Hz) of each character of :data:`ALPHABET`.
TONE_FREQUENCIES: np.ndarray = _mel_spaced(300.0, 3500.0, len(ALPHABET))
#: Default seconds per character (12.5 characters per second, close to read speech).
SECONDS_PER_CHAR = 0.08
#: Silence before and after the characters of a tone clip, in seconds.
TONE_PADDING = 0.05
#: Lowest sample rate for tones: twice the highest tone frequency plus 10 % (about 7700 Hz).
MIN_TONE_RATE = 2 * float(TONE_FREQUENCIES[-1]) * 1.1
#: Standard deviation of the noise added to synthetic audio.
NOISE = 0.002
_FADE = 0.005
_AMPLITUDE = 0.3
_CHAR_INDEX = {c: i for i, c in enumerate(ALPHABET)}


@functools.lru_cache(maxsize=64)
def _tone_table(sample_rate: int, length: int) -> np.ndarray:
    """``[len(ALPHABET), length]`` float32: every character's tone with its fades (read-only)."""
    t = np.arange(length)
    fade = max(1.0, _FADE * sample_rate)
    env = np.minimum(1.0, np.minimum(t + 1, length - t) / fade)
    table = _AMPLITUDE * env * np.sin((2 * np.pi / sample_rate) * TONE_FREQUENCIES[:, None] * t)
    table = table.astype(np.float32)
    table.flags.writeable = False
    return table


def synthesize_tones(
    text: str,
    sample_rate: int,
    seconds_per_char: float = SECONDS_PER_CHAR,
    *,
    rng: np.random.Generator | None = None,
    noise: float = NOISE,
) -> np.ndarray:
    """Float32 mono signal spelling ``text`` in the tone alphabet.

    Length: ``round((2 * TONE_PADDING + len(text) * seconds_per_char) * sample_rate)`` samples.
    Character ``i`` spans samples ``round((TONE_PADDING + i * seconds_per_char) * sample_rate)``
    up to the start of the next one. Gaussian noise of std ``noise`` is added when ``rng`` is given.
    """
    try:
        codes = np.fromiter((_CHAR_INDEX[c] for c in text), dtype=np.int64, count=len(text))
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the tone alphabet {ALPHABET!r}") from None
    total = round((2 * TONE_PADDING + len(text) * seconds_per_char) * sample_rate)
    bounds = np.round((TONE_PADDING + np.arange(len(text) + 1) * seconds_per_char) * sample_rate).astype(
        np.int64
    )
    out = np.zeros(total, dtype=np.float32)
    if len(text):
        lengths = np.diff(bounds)
        tables = {int(n): _tone_table(sample_rate, int(n)) for n in np.unique(lengths)}
        if len(tables) == 1:
            body = next(iter(tables.values()))[codes].ravel()
        else:
            body = np.concatenate(
                [tables[n][c] for c, n in zip(codes.tolist(), lengths.tolist(), strict=True)]
            )
        out[bounds[0] : bounds[-1]] = body
    if rng is not None and noise > 0:
        out += noise * rng.standard_normal(total, dtype=np.float32)
    return out


def decode_tones(audio: np.ndarray, sample_rate: int, seconds_per_char: float = SECONDS_PER_CHAR) -> str:
    """Read back the text of a tone clip (mono ``[T]`` or ``[T, channels]``, any sample rate).

    The number of characters follows from the length (``TONE_PADDING`` silence on both sides);
    each character's middle 80 % is projected onto every alphabet frequency through a Hann window
    and the strongest one wins.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    n = round((len(x) / sample_rate - 2 * TONE_PADDING) / seconds_per_char)
    if n <= 0:
        return ""
    starts = np.round((TONE_PADDING + np.arange(n) * seconds_per_char) * sample_rate).astype(np.int64)
    width = max(4, int(0.8 * seconds_per_char * sample_rate))
    first = starts + int(0.1 * seconds_per_char * sample_rate)
    first = np.clip(first, 0, max(0, len(x) - width))
    x = np.pad(x, (0, max(0, width - len(x))))
    segments = x[first[:, None] + np.arange(width)] * np.hanning(width)
    t = np.arange(width) / sample_rate
    basis = np.exp(-2j * np.pi * t[:, None] * TONE_FREQUENCIES[None, :])
    best = np.abs(segments @ basis).argmax(axis=1)
    return "".join(ALPHABET[i] for i in best)
