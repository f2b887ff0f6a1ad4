"""Audio for a planned corpus: one clip at a time, then each file's samples.

:func:`synthesize_clip` speaks one :class:`~speechdata.synth.plan.ClipPlan` at a sample rate (tone
alphabet or espeak-ng); :func:`render_file` puts a file's clips back to back, adds the second
channel of stereo files and converts to 16-bit PCM. Every random draw (noise, echo) is seeded
from the plan's seed and the clip's or file's number, so the same plan gives the same samples.

Example::

    >>> plan = plan_corpus(4, seed=0)
    >>> clip = synthesize_clip(plan, plan.clips[(0, 0)], 16000)
    >>> decode_tones(clip.audio, 16000) == clip.text
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechdata.synth import espeak
from speechdata.synth.plan import ClipPlan, CorpusPlan, FilePlan
from speechdata.synth.tones import NOISE, synthesize_tones


@dataclass
class SynthesizedClip:
    """A clip's float32 mono samples and the text they say (an espeak clip too long for
    ``max_duration`` says fewer words than planned)."""

    audio: np.ndarray
    text: str


def synthesize_clip(
    plan: CorpusPlan, clip: ClipPlan, sample_rate: int, *, workdir: Path | None = None
) -> SynthesizedClip:
    """Speak one planned clip at ``sample_rate``.

    Tones: :func:`~speechdata.synth.tones.synthesize_tones` with seeded noise. espeak (needs
    ``workdir`` for its WAV file): too long for ``max_duration``, the last word is dropped until it
    fits (the text must stay what is said); too short for ``min_duration``, silence is appended.
    """
    if plan.speech == "tones":
        noise_rng = np.random.default_rng([plan.seed, 0xA0D, clip.key[0], clip.key[1]])
        audio = synthesize_tones(clip.text, sample_rate, plan.seconds_per_char, rng=noise_rng)
        return SynthesizedClip(audio, clip.text)
    if workdir is None:
        raise ValueError("synthesize_clip: espeak needs a workdir")
    text = clip.text
    audio = espeak.speak(text, sample_rate, clip.speaker, workdir)
    while len(audio) > plan.max_duration * sample_rate and " " in text:
        text = text.rsplit(" ", 1)[0]
        audio = espeak.speak(text, sample_rate, clip.speaker, workdir)
    audio = np.pad(audio, (0, max(0, math.ceil(plan.min_duration * sample_rate) - len(audio))))
    return SynthesizedClip(audio, text)


@dataclass
class RenderedFile:
    """A file's 16-bit samples (``[T]`` or ``[T, 2]``) and each clip's (first sample, samples, text)."""

    pcm: np.ndarray
    spans: dict[tuple[int, int], tuple[int, int, str]]


def render_file(plan: CorpusPlan, number: int, *, workdir: Path | None = None) -> RenderedFile:
    """The samples of file ``plan.files[number]``: its clips back to back; a stereo file's right
    channel is the left at 0.8 plus seeded noise."""
    file: FilePlan = plan.files[number]
    rate = file.sample_rate
    pieces: list[np.ndarray] = []
    spans: dict[tuple[int, int], tuple[int, int, str]] = {}
    start = 0
    for key in file.clips:
        clip = synthesize_clip(plan, plan.clips[key], rate, workdir=workdir)
        spans[key] = (start, len(clip.audio), clip.text)
        pieces.append(clip.audio)
        start += len(clip.audio)
    signal = np.concatenate(pieces)
    if file.stereo:
        echo_rng = np.random.default_rng([plan.seed, 0x57E, number])
        right = 0.8 * signal + echo_rng.normal(0.0, NOISE, len(signal)).astype(np.float32)
        signal = np.stack([signal, right], axis=1)
    pcm = np.round(np.clip(signal, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    return RenderedFile(pcm, spans)
