"""Shared test setup: one torch thread (2-core machines), a bounded hypothesis profile, and a
cache folder of each test's own (never the user's ``~/.cache/speechdata``)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("fuzz", max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test indexes into a fresh cache folder (``SPEECHDATA_CACHE_DIR``), so no test sees
    another's entries and nothing is written to the home folder."""
    monkeypatch.setenv("SPEECHDATA_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
