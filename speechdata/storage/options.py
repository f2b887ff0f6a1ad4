"""The knobs of remote reading (one place for their names and defaults).

A dataset section sets them under ``remote:`` (``remote: {in_flight: 32, cache_bytes: 1e9}``);
a knob the section does not set comes from its environment variable, read when the config is
built (readers carry the options to DataLoader workers), else from the default:

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
``SPEECHDATA_REMOTE_PRESIGN``      3600       seconds an S3 object's presigned URL is valid (0: ranges through s3fs)
=================================  =========  ==========================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

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
    #: seconds an S3 object's presigned URL is valid (:mod:`speechdata.storage.presign`); 0: off
    presign: float = 3600.0

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

    @classmethod
    def from_config(cls, values: Mapping[str, Any], path: str = "remote") -> RemoteOptions:
        """The options of a config section's ``remote:`` mapping, over :meth:`from_env`: keys
        are the field names (an unknown one is an error with a suggestion), values are checked
        by :meth:`check`."""
        from speechdata.config import check_section

        given = check_section(values, cls, path)
        chosen = {f.name: getattr(given, f.name) for f in fields(cls) if f.name in values}
        return replace(cls.from_env(), **chosen)

    def check(self, path: str) -> None:
        """Every knob >= 0, ``in_flight`` >= 1 (``check_section`` calls it)."""
        for f in fields(self):
            value = getattr(self, f.name)
            low = 1 if f.name == "in_flight" else 0
            if value < low:
                raise ConfigError(f"{path}.{f.name}: must be >= {low}; got {value}")
