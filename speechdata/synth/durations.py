"""Duration models of synthetic corpora: a truncated log-normal, and LibriSpeech-like durations.

Example::

    >>> rng = np.random.default_rng(0)
    >>> d = truncated_lognormal(rng, 1000, 0.5, 30.0, DURATION_MEDIAN, DURATION_SIGMA)
    >>> bool(0.5 <= d.min() and d.max() <= 30.0)
    True
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

# The clip duration model of make_corpus: log-normal with median 6 s and sigma 0.6 (about 90 % of
# clips between 2 and 15 s), truncated to [min_duration, max_duration] by inverse-CDF sampling.
DURATION_MEDIAN = 6.0
DURATION_SIGMA = 0.6


def truncated_lognormal(
    rng: np.random.Generator, n: int, lo: float, hi: float, median: float, sigma: float
) -> np.ndarray:
    """``n`` draws of a log-normal (``median``, ``sigma``) restricted to ``[lo, hi]`` (inverse CDF)."""
    dist = NormalDist(math.log(median), sigma)
    c_lo, c_hi = dist.cdf(math.log(lo)), dist.cdf(math.log(hi))
    u = c_lo + rng.random(n) * (c_hi - c_lo)
    u = np.clip(u, 1e-12, 1 - 1e-12)
    z = np.array([dist.inv_cdf(float(p)) for p in u])
    return np.clip(np.exp(z), lo, hi)


def librispeech_like_durations(n: int, seed: int = 0) -> np.ndarray:
    """``n`` utterance durations (float32 seconds) spread like LibriSpeech's training sets.

    An approximation, not fitted data: LibriSpeech segments cluster just below its ~16-17 s
    segmentation target with a long tail of short utterances and a thin tail up to ~35 s. This is
    modelled as a mixture of 70 % normal(14.8 s, 1.4 s), 24 % log-normal (median 6 s, sigma 0.6)
    and 6 % 17 s + exponential(4 s), clipped to [1, 35] s: mostly 10-17 s, mean about 12.5 s.
    """
    rng = np.random.default_rng([int(seed), 0x11B5])
    part = rng.choice(3, size=n, p=[0.70, 0.24, 0.06])
    main = rng.normal(14.8, 1.4, n)
    short = np.exp(rng.normal(math.log(6.0), 0.6, n))
    tail = 17.0 + rng.exponential(4.0, n)
    out = np.where(part == 0, main, np.where(part == 1, short, tail))
    return np.clip(out, 1.0, 35.0).astype(np.float32)
