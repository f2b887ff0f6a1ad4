"""Deterministic synthetic corpora (tone-alphabet or espeak speech) and ``speechdata demo``.

A corpus is made in three steps: :func:`plan_corpus` (every example, clip and file described,
all draws from the seed), :func:`synthesize_clip` (audio for one planned clip) and
:func:`write_corpus` (audio files and the JSONL manifest); :func:`make_corpus` runs all three.

* ``speech="tones"`` (default): every character is a sinusoid of its own frequency
  (:mod:`speechdata.synth.tones`), so :func:`decode_tones` reads the answer back from the audio.
* ``speech="espeak"``: the text is spoken by ``espeak-ng`` (:mod:`speechdata.synth.espeak`).
* ``speech="auto"``: espeak when ``espeak-ng`` is on ``PATH``, else tones.

The corpus mixes WAV (PCM16) and FLAC, several sample rates, mono and stereo files, multi-audio
examples (2-3 clips; the ``context`` holds one locator per clip and the answer is the clips'
texts joined by spaces) and long source files cut into segments that several entries share
through ``offset``/``duration``. Same arguments give byte-identical files. Tests import these
names from :mod:`speechdata.testing`.
"""

from speechdata.synth.corpus import Corpus, make_corpus, write_corpus, write_manifest
from speechdata.synth.durations import DURATION_MEDIAN, DURATION_SIGMA, librispeech_like_durations
from speechdata.synth.plan import ClipPlan, CorpusPlan, ExamplePlan, FilePlan, plan_corpus
from speechdata.synth.synthesize import SynthesizedClip, render_file, synthesize_clip
from speechdata.synth.tones import (
    ALPHABET,
    SECONDS_PER_CHAR,
    TONE_FREQUENCIES,
    TONE_PADDING,
    decode_tones,
    synthesize_tones,
)
from speechdata.synth.words import WORDS

__all__ = [
    "ALPHABET",
    "DURATION_MEDIAN",
    "DURATION_SIGMA",
    "SECONDS_PER_CHAR",
    "TONE_FREQUENCIES",
    "TONE_PADDING",
    "WORDS",
    "ClipPlan",
    "Corpus",
    "CorpusPlan",
    "ExamplePlan",
    "FilePlan",
    "SynthesizedClip",
    "decode_tones",
    "librispeech_like_durations",
    "make_corpus",
    "plan_corpus",
    "render_file",
    "synthesize_clip",
    "synthesize_tones",
    "write_corpus",
    "write_manifest",
]
