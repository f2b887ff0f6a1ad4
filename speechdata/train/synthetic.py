"""Synthetic SPEC §6 batches for model tests and the learning check (no files, no tokenizer).

Each example is ``context + answer + [eos]`` over a small vocabulary; its audios are tones (with
silence before and after) whose pitch encodes a class, and the answer spells the classes of the example's audios, so a model can
only predict the answer well by listening. Every random choice comes from ``seed``.

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


def _pad(rows: list[list[int]], pad: int, multiple: int = 1) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    width = max(multiple, -(-width // multiple) * multiple)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def synthetic_batch(spec: SyntheticSpec, batch_size: int, seed: int) -> dict[str, object]:
    """One SPEC §6 batch of ``batch_size`` examples (``A = num_audios.sum()`` audios)."""
    rng = np.random.default_rng(seed)
    first_class = 4
    first_word = first_class + spec.num_classes
    if first_word >= spec.vocab_size:
        raise ValueError(f"vocab_size {spec.vocab_size} too small for {spec.num_classes} classes")
    audios: list[np.ndarray] = []
    positions: list[int] = []
    num_audios: list[int] = []
    ids_rows: list[list[int]] = []
    ctx_rows: list[list[int]] = []
    ans_rows: list[list[int]] = []
    mask_rows: list[list[float]] = []
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
        ids = context + answer + [spec.eos_id]
        num_audios.append(n_audio)
        ids_rows.append(ids)
        ctx_rows.append(context)
        ans_rows.append([*answer, spec.eos_id])
        # labels[j] = ids[j + 1]; the answer starts at index len(context) of ids
        mask_rows.append([1.0 if j + 1 >= len(context) else 0.0 for j in range(len(ids) - 1)])
    tokens = _pad([r[:-1] for r in ids_rows], spec.pad_id, spec.pad_to_multiple)
    labels = _pad([r[1:] for r in ids_rows], spec.pad_id, spec.pad_to_multiple)
    loss_mask = torch.zeros(tokens.shape, dtype=torch.float32)
    for i, m in enumerate(mask_rows):
        loss_mask[i, : len(m)] = torch.tensor(m)
    lengths = [a.size for a in audios]
    signal = torch.zeros(len(audios), max(lengths, default=1), dtype=torch.float32)
    for i, a in enumerate(audios):
        signal[i, : a.size] = torch.from_numpy(a)
    return {
        "audio_signal": signal,
        "audio_signal_length": torch.tensor(lengths, dtype=torch.long),
        "num_audios": torch.tensor(num_audios, dtype=torch.long),
        "audio_positions": torch.tensor(positions, dtype=torch.long),
        "tokens": tokens,
        "tokens_length": torch.tensor([len(r) - 1 for r in ids_rows], dtype=torch.long),
        "labels": labels,
        "loss_mask": loss_mask,
        "position_ids": torch.arange(tokens.shape[1]).expand_as(tokens).clone(),
        "contexts": _pad(ctx_rows, spec.pad_id),
        "context_lengths": torch.tensor([len(r) for r in ctx_rows], dtype=torch.long),
        "answers": _pad(ans_rows, spec.pad_id),
        "answer_lengths": torch.tensor([len(r) for r in ans_rows], dtype=torch.long),
        "sample_ids": torch.arange(batch_size, dtype=torch.long) + seed * 1_000_003,
        "metadata": [{"synthetic": True, "seed": seed, "index": i} for i in range(batch_size)],
    }
