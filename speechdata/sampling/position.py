"""One data position for the planner, the loader and the trainer's checkpoint.

A :class:`Position` is where the next batch comes from: batch ``batch`` (0-based, counting the
batches *handed out*, not those prefetched) of epoch ``epoch``, for the run identified by
``seed``, ``rank`` and ``world_size`` (the plan of an epoch depends on nothing else). Its dict form,
written by every ``state_dict()`` and stored in checkpoints, is::

    {"version": 1, "epoch": 3, "batch": 117, "seed": 42, "rank": 0, "world_size": 8}

``seed``, ``rank`` and ``world_size`` may be ``None`` (a loader that does not know them); a
known value must match the loader that loads the position (:meth:`Position.check`). Older
formats keep loading (:meth:`Position.from_dict` converts them): the sampler's ``{"epoch",
"batch"}``, the loader's ``{"epoch", "batch", "seed", "rank", "world_size"}`` without a version,
and the trainer's checkpoint entry ``{"epoch", "batches", "epoch_complete", "state"}``.

Example::

    >>> pos = Position(epoch=1, batch=2, seed=42, rank=0, world_size=1)
    >>> Position.from_dict(pos.to_dict()) == pos
    True
    >>> Position.from_dict({"epoch": 1, "batch": 2})
    Position(epoch=1, batch=2, seed=None, rank=None, world_size=None)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from speechdata.errors import ConfigError

__all__ = ["POSITION_VERSION", "Position", "resolve_rank_world"]

#: The version written in :meth:`Position.to_dict`; a higher one is refused (a newer speechdata).
POSITION_VERSION = 1
_KEYS = ("epoch", "batch", "seed", "rank", "world_size")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Position:
    """Where the next batch comes from: ``batch`` of ``epoch`` for (``seed``, ``rank``,
    ``world_size``). Immutable; build it from a state dict with :meth:`from_dict`."""

    epoch: int
    batch: int
    seed: int | None = None
    rank: int | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("epoch", "batch"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise ConfigError(f"position: {name} must be an integer >= 0, got {v!r}")
        for name in ("seed", "rank", "world_size"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < (1 if name == "world_size" else 0)):
                low = 1 if name == "world_size" else 0
                raise ConfigError(f"position: {name} must be an integer >= {low} or null, got {v!r}")
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise ConfigError(f"position: rank {self.rank} is not below world_size {self.world_size}")

    def to_dict(self) -> dict[str, Any]:
        """The documented dict form (``version`` first, then :data:`_KEYS`)."""
        return {"version": POSITION_VERSION, **{k: getattr(self, k) for k in _KEYS}}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], what: str = "position") -> Position:
        """Read a position from any format speechdata has written (see the module docstring).

        ``what`` names the state in the one-line :class:`ConfigError` a malformed one raises
        (``"loader state"``, ``"sampler state"``, ...).
        """
        if not isinstance(state, Mapping):
            raise ConfigError(
                f"{what}: expected a mapping with 'epoch' and 'batch', got {type(state).__name__}"
            )
        if "state" in state and "batches" in state:  # the trainer's checkpoint entry before version 1
            inner = cls.from_dict(state["state"], what)
            if state.get("epoch_complete"):
                return replace(inner, epoch=_int_of(state, "epoch", what) + 1, batch=0)
            return inner
        version = state.get("version", POSITION_VERSION)
        if not _is_int(version) or not 1 <= version <= POSITION_VERSION:
            raise ConfigError(
                f"{what}: version {version!r} is not one this speechdata reads (1..{POSITION_VERSION}); "
                "was it written by a newer speechdata?"
            )
        unknown = sorted(set(state) - {"version", *_KEYS})
        if unknown:
            raise ConfigError(
                f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; expected {list(_KEYS)}"
            )
        values = {k: state.get(k) for k in _KEYS}
        for key in ("epoch", "batch"):
            values[key] = _int_of(state, key, what)
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{what}: {str(e).removeprefix('position: ')}") from None

    def check(self, *, seed: int, rank: int, world_size: int, what: str = "position") -> None:
        """A :class:`ConfigError` when a known ``seed``/``rank``/``world_size`` differs from the
        loader's: the saved position would then name other batches."""
        mine = {"seed": seed, "rank": rank, "world_size": world_size}
        for f in fields(self):
            if f.name in mine:
                saved = getattr(self, f.name)
                if saved is not None and saved != mine[f.name]:
                    raise ConfigError(
                        f"{what}: saved {f.name}={saved} differs from this loader's {mine[f.name]}; "
                        "the saved position would not match"
                    )

    def next_epoch(self) -> Position:
        """The start of the following epoch (same run)."""
        return replace(self, epoch=self.epoch + 1, batch=0)

    @classmethod
    def after(
        cls,
        epoch: int,
        consumed: int,
        epoch_length: int | None,
        *,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Position:
        """The position once ``consumed`` batches of ``epoch`` were handed out: an epoch of known
        length (``epoch_length``; ``None`` for a stream) that is finished rolls over to batch 0
        of the next one."""
        pos = cls(epoch, consumed, seed, rank, world_size)
        return pos.next_epoch() if epoch_length is not None and consumed >= epoch_length else pos


def _int_of(state: Mapping[str, Any], key: str, what: str) -> int:
    v = state.get(key)
    if not _is_int(v) or v < 0:
        raise ConfigError(
            f"{what}: expected {{'epoch': int, 'batch': int, ...}} with {key!r} >= 0, got {dict(state)!r}"
        )
    return int(v)


def resolve_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Fill a missing rank / world size from torch.distributed when initialised, else 0 / 1;
    a :class:`ValueError` for an impossible pair."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return rank, world_size
