"""The knobs of remote reading, from environment variables (one place for their names and defaults).

Until the dataset config has keys for them, each knob is an environment variable read when a
reader is created (so DataLoader workers see what the main process set):

=================================  =========  ==========================================================
variable                           default    meaning
=================================  =========  ==========================================================
``SPEECHDATA_REMOTE_IN_FLIGHT``    16         range requests one process keeps in flight
``SPEECHDATA_REMOTE_MAX_BYTES``    64 MiB     bytes one process holds (in flight + fetched, not yet decoded)
``SPEECHDATA_REMOTE_COALESCE``     64 KiB     neighbouring members this close are fetched by one request
``SPEECHDATA_REMOTE_MAX_REQUEST``  8 MiB      largest coalesced request
``SPEECHDATA_REMOTE_RETRIES``      5          retries after the first attempt (timeouts, 429, 5xx, resets, short bodies)
``SPEECHDATA_REMOTE_BACKOFF``      0.1        first backoff in seconds (doubled per retry, at most 5 s, jittered)
``SPEECHDATA_REMOTE_TIMEOUT``      30         seconds one request may take (connect and read)
``SPEECHDATA_REMOTE_CACHE_BYTES``  0          size bound of the read-through local cache (0: no cache)
=================================  =========  ==========================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from speechdata.errors import ConfigError

__all__ = ["RemoteOptions"]

_PREFIX = "SPEECHDATA_REMOTE_"


@dataclass(frozen=True)
class RemoteOptions:
    """How one process reads byte ranges of remote objects (see the module docstring)."""

    in_flight: int = 16
    max_bytes: int = 64 << 20
    coalesce: int = 64 << 10
    max_request: int = 8 << 20
    retries: int = 5
    backoff: float = 0.1
    max_backoff: float = 5.0
    timeout: float = 30.0
    cache_bytes: int = 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RemoteOptions:
        """The options with every ``SPEECHDATA_REMOTE_<NAME>`` variable applied; a value that is
        not a number >= 0 (>= 1 for ``IN_FLIGHT``) is a one-line :class:`ConfigError`."""
        env = os.environ if environ is None else environ
        values: dict[str, int | float] = {}
        for f in fields(cls):
            name = _PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is None or f.name == "max_backoff":
                continue
            kind = float if f.type in ("float", float) else int
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"{name}: must be a number; got {raw!r}") from None
            if value < (1 if f.name == "in_flight" else 0):
                raise ConfigError(f"{name}: must be >= {1 if f.name == 'in_flight' else 0}; got {raw!r}")
            values[f.name] = value
        return cls(**values)  # type: ignore[arg-type]
