"""Index columns for planner tests, built straight from arrays (no manifest)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class FakeIndex:
    """The Index columns sampling reads, built straight from arrays."""

    duration: np.ndarray
    min_clip: np.ndarray
    max_clip: np.ndarray
    num_audios: np.ndarray
    dataset: np.ndarray
    num_datasets: int


def make_index(durations: Any, datasets: Any = None, num_datasets: int | None = None) -> FakeIndex:
    """One single-clip example per duration; ``datasets``: each example's dataset (default 0)."""
    d = np.asarray(durations, dtype=np.float32)
    ds = np.zeros(d.size, np.uint16) if datasets is None else np.asarray(datasets, dtype=np.uint16)
    nd = num_datasets if num_datasets is not None else (int(ds.max()) + 1 if ds.size else 1)
    return FakeIndex(d, d.copy(), d.copy(), np.ones(d.size, np.uint8), ds, nd)


def libri_like(n: int, seed: int = 0) -> np.ndarray:
    """Gamma-shaped durations in [1, 35] s with a mean near 12 s (LibriSpeech-like spread)."""
    return np.clip(np.random.default_rng(seed).gamma(6.0, 2.0, n), 1.0, 35.0)
