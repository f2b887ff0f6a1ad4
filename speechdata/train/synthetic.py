"""Synthetic batches (docs/batch.md) for model tests and the learning check (no files, no tokenizer).

Each example is ``context + answer + [eos]`` over a small vocabulary; its audios are tones (with
silence before and after) whose pitch encodes a class, and the answer spells the classes of the
example's audios, so a model can only predict the answer well by listening. Every random choice
comes from ``seed``. The examples are handed to the loader's own collator
(:func:`speechdata.collate.finalize`, which builds the batch with
:func:`speechdata.batch.make_batch`), so a synthetic batch has exactly the layout, padding and
loss mask of a loader batch; only ``metadata`` differs (``{"synthetic", "seed", "index"}``).

Example::

    >>> batch = synthetic_batch(SyntheticSpec(vocab_size=32), batch_size=4, seed=0)
    >>> batch["tokens"].shape[1] % 8
    0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from speechdata.batch import Batch
from speechdata.collate import Packed, finalize


@dataclass
class SyntheticSpec:
    """Shape of the synthetic task. Ids ``0..3`` are pad/bos/eos/sep-like; classes use ``4..4+num_classes``."""

    vocab_size: int = 32
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    num_classes: int = 6
    sample_rate: int = 16000
    min_seconds: float = 0.2
    max_seconds: float = 0.6
    max_context: int = 6
    max_audios: int = 1
    pad_to_multiple: int = 8


def synthetic_batch(spec: SyntheticSpec, batch_size: int, seed: int) -> Batch:
    """One batch of ``batch_size`` examples (``A = num_audios.sum()`` audios), on the CPU."""
    rng = np.random.default_rng(seed)
    first_class = 4
    first_word = first_class + spec.num_classes
    if first_word >= spec.vocab_size:
        raise ValueError(f"vocab_size {spec.vocab_size} too small for {spec.num_classes} classes")
    audios: list[np.ndarray] = []
    positions: list[int] = []
    num_audios: list[int] = []
    ids: list[int] = []
    targets: list[int] = []
    ids_lengths: list[int] = []
    answer_start: list[int] = []
    for _ in range(batch_size):
        n_audio = int(rng.integers(1, spec.max_audios + 1))
        n_words = int(rng.integers(1, spec.max_context + 1))
        context = [spec.bos_id, *rng.integers(first_word, spec.vocab_size, n_words).tolist()]
        classes = rng.integers(0, spec.num_classes, n_audio)
        answer = [first_class + int(c) for c in classes for _ in range(2)]
        # inside the context, before its last token: the answer's first token can attend to the audio
        pos = np.sort(rng.integers(1, len(context), n_audio))
        for c, p in zip(classes, pos, strict=True):
            seconds = rng.uniform(spec.min_seconds, spec.max_seconds)
            t = np.arange(int(seconds * spec.sample_rate)) / spec.sample_rate
            freq = 200.0 * 2 ** (float(c) * 0.5)
            # the tone fills the middle of the clip: silence around it keeps it visible after
            # per-feature normalisation (a stationary tone would normalise to noise)
            envelope = ((t > 0.2 * seconds) & (t < 0.8 * seconds)).astype(np.float64)
            tone = 0.5 * envelope * np.sin(2 * math.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
            audios.append(tone.astype(np.float32))
            positions.append(int(p))
        example = context + answer + [spec.eos_id]
        num_audios.append(n_audio)
        ids += example
        targets += [0] * len(context) + [1] * (len(example) - len(context))
        ids_lengths.append(len(example))
        answer_start.append(len(context))
    packed = Packed(
        audio=torch.from_numpy(np.concatenate(audios) if audios else np.zeros(0, np.float32)),
        audio_lengths=torch.tensor([a.size for a in audios], dtype=torch.int64),
        num_audios=torch.tensor(num_audios, dtype=torch.int64),
        audio_positions=torch.tensor(positions, dtype=torch.int64),
        ids=torch.tensor(ids, dtype=torch.int64),
        ids_lengths=torch.tensor(ids_lengths, dtype=torch.int64),
        answer_start=torch.tensor(answer_start, dtype=torch.int64),
        sample_ids=torch.arange(batch_size, dtype=torch.int64) + seed * 1_000_003,
        targets=torch.tensor(targets, dtype=torch.uint8),
        metadata=[{"synthetic": True, "seed": seed, "index": i} for i in range(batch_size)],
    )
    return finalize(
        packed, pad_id=spec.pad_id, pad_to_multiple=spec.pad_to_multiple, sample_rate=spec.sample_rate
    )
