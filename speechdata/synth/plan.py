"""The plan of a synthetic corpus: what every example, clip and file will be, before any audio.

:func:`plan_corpus` draws everything random about a corpus from its seed: which examples have
several clips, which share a long source file, each file's format, sample rate and channels, each
clip's duration, text and speaker, and each example's prompt. The plan is plain data
(:class:`CorpusPlan`); :mod:`speechdata.synth.synthesize` turns one planned clip into audio and
:mod:`speechdata.synth.corpus` writes the files and the manifest.

Example::

    >>> plan = plan_corpus(20, seed=1)
    >>> plan.files[0].path, plan.files[0].sample_rate
    ('audio/000000.wav', 22050)
    >>> plan.clips[plan.examples[0].clips[0]].text[:20]
    'out even example stu'
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from speechdata.errors import ConfigError
from speechdata.synth import espeak
from speechdata.synth.durations import DURATION_MEDIAN, DURATION_SIGMA, truncated_lognormal
from speechdata.synth.tones import MIN_TONE_RATE, SECONDS_PER_CHAR, TONE_PADDING
from speechdata.synth.words import make_context, make_text

#: A clip's key: (example number, clip number within the example).
ClipKey = tuple[int, int]
SPEECH = ("tones", "espeak", "auto")
FORMATS = ("wav", "flac")


@dataclass(frozen=True)
class ClipPlan:
    """One clip: the text it says, the duration it was sized for and its speaker."""

    key: ClipKey
    text: str
    target_duration: float
    speaker: int


@dataclass(frozen=True)
class FilePlan:
    """One audio file: its path (relative to the corpus folder), format, rate, channels and the
    clips it holds back to back (one, or several segments of a shared source)."""

    path: str
    format: str
    sample_rate: int
    stereo: bool
    clips: tuple[ClipKey, ...]


@dataclass(frozen=True)
class ExamplePlan:
    """One manifest line: its clips in order, its prompt and its speaker."""

    clips: tuple[ClipKey, ...]
    context: str
    speaker: int


@dataclass(frozen=True)
class CorpusPlan:
    """Everything :func:`~speechdata.synth.corpus.write_corpus` needs; a pure function of the
    arguments of :func:`plan_corpus`."""

    seed: int
    speech: str
    seconds_per_char: float
    min_duration: float
    max_duration: float
    with_duration: bool
    manifest_name: str
    audio_subdir: str
    clips: Mapping[ClipKey, ClipPlan]
    files: tuple[FilePlan, ...]
    examples: tuple[ExamplePlan, ...]


def _check_args(
    n: int,
    formats: Sequence[str],
    sample_rates: Sequence[int],
    fractions: Mapping[str, float],
    min_duration: float,
    max_duration: float,
    speech: str,
    locator: str | None,
    seconds_per_char: float,
) -> str:
    """Check the arguments; returns the speech kind (``auto`` resolved)."""
    if n < 0:
        raise ConfigError(f"make_corpus: n must be >= 0, got {n}")
    if not formats or any(f not in FORMATS for f in formats):
        raise ConfigError(f"make_corpus: formats must be a non-empty list of 'wav'/'flac', got {formats!r}")
    if not sample_rates or any(int(r) <= 0 for r in sample_rates):
        raise ConfigError(f"make_corpus: sample_rates must be positive, got {sample_rates!r}")
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"make_corpus: {name} must be in [0, 1], got {value}")
    if not 0 < min_duration <= max_duration:
        raise ConfigError(
            f"make_corpus: need 0 < min_duration <= max_duration, got {min_duration}, {max_duration}"
        )
    if seconds_per_char <= 0:
        raise ConfigError(f"make_corpus: seconds_per_char must be positive, got {seconds_per_char}")
    if fractions["multi_audio_fraction"] > 0 and not locator:
        raise ConfigError("make_corpus: multi_audio_fraction > 0 needs a locator (e.g. '|audio|')")
    if speech == "auto":
        speech = "espeak" if shutil.which("espeak-ng") else "tones"
    if speech not in ("tones", "espeak"):
        raise ConfigError(f"make_corpus: speech must be 'tones', 'espeak' or 'auto', got {speech!r}")
    if speech == "tones" and min(sample_rates) < MIN_TONE_RATE:
        raise ConfigError(f"make_corpus: tones need sample rates >= 8000, got {min(sample_rates)}")
    if speech == "espeak" and shutil.which("espeak-ng") is None:
        raise ConfigError("make_corpus: speech='espeak' needs espeak-ng on PATH")
    return speech


def _spread(rng: np.random.Generator, values: Sequence[Any], n: int) -> list[Any]:
    """``n`` items cycling through ``values`` (each occurs when ``n >= len(values)``), shuffled."""
    items = [values[i % len(values)] for i in range(n)]
    return [items[i] for i in rng.permutation(n)]


def _ceil_fraction(fraction: float, n: int) -> int:
    """``ceil(fraction * n)`` (a hair of rounding error does not add one), at most ``n``."""
    return min(n, math.ceil(fraction * n - 1e-9))


def _shared_groups(
    rng: np.random.Generator, singles: list[int], fraction: float, with_duration: bool
) -> list[list[int]]:
    """Groups of 2-4 single-audio examples that are segments of one source file."""
    n_shared = _ceil_fraction(fraction, len(singles))
    if not with_duration or n_shared < 2:
        n_shared = 0
    shared = [singles[j] for j in rng.permutation(len(singles))[:n_shared]]
    groups: list[list[int]] = []
    while shared:
        size = min(len(shared), int(rng.integers(2, 5)))
        if len(shared) - size == 1:
            size += 1
        groups.append(shared[:size])
        shared = shared[size:]
    return groups


def plan_corpus(
    n: int = 200,
    *,
    seed: int = 0,
    formats: Sequence[str] = FORMATS,
    sample_rates: Sequence[int] = (8000, 16000, 22050, 44100),
    stereo_fraction: float = 0.1,
    multi_audio_fraction: float = 0.1,
    shared_source_fraction: float = 0.1,
    min_duration: float = 0.5,
    max_duration: float = 30.0,
    speech: str = "tones",
    locator: str | None = "|audio|",
    seconds_per_char: float = SECONDS_PER_CHAR,
    with_duration: bool = True,
    manifest_name: str = "manifest.jsonl",
    audio_subdir: str = "audio",
    gzip: bool = False,
) -> CorpusPlan:
    """Plan ``n`` examples; the same arguments give the same plan (all draws come from ``seed``).

    Clip durations follow a log-normal with median :data:`DURATION_MEDIAN` s and sigma
    :data:`DURATION_SIGMA` truncated to ``[min_duration, max_duration]`` (most clips 2-15 s); a
    tone clip's text length is chosen to meet its duration (``len(text) * seconds_per_char`` plus
    ``2 * TONE_PADDING``), an espeak clip's from espeak's speaking rate. Each audio file gets a
    format, a sample rate (both cycled so that every value occurs once there are enough files)
    and mono or stereo (``stereo_fraction`` of the files, rounded up).

    ``multi_audio_fraction`` of the examples (rounded up) have 2-3 clips (each at most half of
    ``max_duration`` when that still leaves room above ``min_duration``), their context holds one
    ``locator`` per clip. About ``shared_source_fraction`` of the single-audio examples are
    segments of long source files (2-4 segments per file, back to back); those need a duration,
    so there are none when ``with_duration`` is false. ``speech``: ``tones`` (the tone alphabet),
    ``espeak`` (``espeak-ng`` on ``PATH``) or ``auto`` (espeak when installed, else tones).
    ``gzip`` appends ``.gz`` to ``manifest_name``. Files are named by number under ``audio_subdir``.
    Bad arguments are a :class:`ConfigError`.
    """
    fractions = {
        "stereo_fraction": stereo_fraction,
        "multi_audio_fraction": multi_audio_fraction,
        "shared_source_fraction": shared_source_fraction,
    }
    speech = _check_args(
        n, formats, sample_rates, fractions, min_duration, max_duration, speech, locator, seconds_per_char
    )
    rng = np.random.default_rng([int(seed), 0x5D])

    # Clips per example, and which single-audio examples share a source file.
    n_multi = _ceil_fraction(multi_audio_fraction, n)
    multi = set(rng.choice(n, size=n_multi, replace=False).tolist()) if n_multi else set()
    clips_per = [int(rng.integers(2, 4)) if i in multi else 1 for i in range(n)]
    singles = [i for i in range(n) if i not in multi]
    groups = _shared_groups(rng, singles, shared_source_fraction, with_duration)
    group_of = {i: g for g, members in enumerate(groups) for i in members}

    # Files, each the clips it holds back to back: one per group, else one per clip.
    file_clips: list[tuple[ClipKey, ...]] = []
    for i in range(n):
        if i in group_of:
            if groups[group_of[i]][0] == i:
                file_clips.append(tuple((m, 0) for m in groups[group_of[i]]))
        else:
            file_clips.extend(((i, c),) for c in range(clips_per[i]))
    n_files = len(file_clips)
    file_format = _spread(rng, list(formats), n_files)
    file_rate = _spread(rng, [int(r) for r in sample_rates], n_files)
    stereo = set(rng.permutation(n_files)[: _ceil_fraction(stereo_fraction, n_files)].tolist())
    files = tuple(
        FilePlan(f"{audio_subdir}/{f:06d}.{file_format[f]}", file_format[f], file_rate[f], f in stereo, keys)
        for f, keys in enumerate(file_clips)
    )

    # Durations, texts and speakers per clip.
    hi_multi = max_duration / 2 if max_duration / 2 >= min_duration else max_duration
    speakers = [int(s) for s in rng.integers(espeak.SPEAKERS, size=n)]
    durations: dict[ClipKey, float] = {}
    for i in range(n):
        hi = hi_multi if clips_per[i] > 1 else max_duration
        d = truncated_lognormal(rng, clips_per[i], min_duration, hi, DURATION_MEDIAN, DURATION_SIGMA)
        for c in range(clips_per[i]):
            durations[(i, c)] = float(d[c])
    chars_per_second = 1 / seconds_per_char if speech == "tones" else espeak.CHARS_PER_SECOND
    pad = 2 * TONE_PADDING if speech == "tones" else 0.0
    lo_chars = max(1, math.ceil((min_duration - pad) * chars_per_second - 1e-9))
    hi_chars = max(lo_chars, math.floor((max_duration - pad) * chars_per_second + 1e-9))
    clips = {
        key: ClipPlan(
            key,
            make_text(rng, int(np.clip(round((d - pad) * chars_per_second), lo_chars, hi_chars))),
            d,
            speakers[key[0]],
        )
        for key, d in durations.items()
    }
    examples = tuple(
        ExamplePlan(
            tuple((i, c) for c in range(clips_per[i])), make_context(rng, locator, clips_per[i]), speakers[i]
        )
        for i in range(n)
    )
    return CorpusPlan(
        seed=int(seed),
        speech=speech,
        seconds_per_char=seconds_per_char,
        min_duration=min_duration,
        max_duration=max_duration,
        with_duration=with_duration,
        manifest_name=manifest_name + ".gz" if gzip and not manifest_name.endswith(".gz") else manifest_name,
        audio_subdir=audio_subdir,
        clips=clips,
        files=files,
        examples=examples,
    )
