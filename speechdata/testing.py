"""Synthetic corpora for tests and benchmarks: the test-facing names of :mod:`speechdata.synth`.

Tests and benchmarks import from here; the generator itself lives in :mod:`speechdata.synth`
(plan, synthesize, write). :func:`make_corpus` writes a folder of audio files plus a NeMo-style
JSONL manifest whose answers can be recovered from the audio with :func:`decode_tones`.

The example in :mod:`speechdata.synth.corpus` shows a corpus written and one clip decoded back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from speechdata.synth import (
    ALPHABET,
    DURATION_MEDIAN,
    DURATION_SIGMA,
    SECONDS_PER_CHAR,
    TONE_FREQUENCIES,
    TONE_PADDING,
    WORDS,
    Corpus,
    decode_tones,
    librispeech_like_durations,
    make_corpus,
    plan_corpus,
    synthesize_tones,
    write_manifest,
)

__all__ = [
    "ALPHABET",
    "DURATION_MEDIAN",
    "DURATION_SIGMA",
    "SECONDS_PER_CHAR",
    "TINY_MODEL",
    "TONE_FREQUENCIES",
    "TONE_PADDING",
    "WORDS",
    "Corpus",
    "decode_tones",
    "librispeech_like_durations",
    "make_corpus",
    "plan_corpus",
    "run_speechdata",
    "synthesize_tones",
    "write_manifest",
]


#: Config overrides that shrink the bundled configs' model to a few-second CPU training run (tests).
TINY_MODEL = (
    "model.llm.hidden_size=32",
    "model.llm.num_layers=1",
    "model.perception.encoder.d_model=32",
    "model.perception.encoder.num_layers=1",
)


def run_speechdata(
    args: Sequence[str], cwd: str | Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m speechdata ARGS`` in a fresh process (as a user would, e.g. for DDP runs that
    spawn ranks) with one torch thread and warnings off; returns the completed process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "speechdata", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )
