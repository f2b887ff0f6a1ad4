"""One data position for the planner, the loader and the trainer's checkpoint.

A :class:`Position` is where the next batch comes from: batch ``batch`` (0-based, counting the
batches *handed out*, not those prefetched) of epoch ``epoch``, for the run identified by
``seed``, ``rank`` and ``world_size`` (the plan of an epoch depends on nothing else). Its dict form,
written by every ``state_dict()`` and stored in checkpoints, is::

    {"version": 2, "epoch": 3, "batch": 117, "seed": 42, "rank": 0, "world_size": 8}

``seed``, ``rank`` and ``world_size`` may be ``None`` (a loader that does not know them); a
known seed must match the loader that loads the position (:meth:`Position.check`), and so must
the rank when the world size is the same. A position saved on another world size resumes
*elastically*: the steps already taken stay taken, and the rest of the epoch is dealt again to the
new ranks (:meth:`Position.deal_for`, :func:`speechdata.sampling.plan.plan_epoch`). Such an
epoch's position carries one more key, ``resized``: the world sizes of its earlier deals and the
step each one reached, oldest first::

    {"version": 2, "epoch": 3, "batch": 140, "seed": 42, "rank": 0, "world_size": 3,
     "resized": [[2, 117]]}

(steps 0..116 of epoch 3 ran on 2 ranks, steps 117.. on 3). A streamed loader's position also
carries ``readers``, its stream readers per rank (``num_workers``, 0 counting as 1), which a
stream's order depends on. Older formats keep loading
(:meth:`Position.from_dict` converts them): the sampler's ``{"epoch", "batch"}``, the loader's
``{"epoch", "batch", "seed", "rank", "world_size"}`` without a version, and the trainer's
checkpoint entry ``{"epoch", "batches", "epoch_complete", "state"}``.

Version 2 changed how ``synced_randomized`` deals each bucket's leftovers to the ranks
(:mod:`speechdata.sampling.plan`), so a position of version 1 (or of a format before versions)
inside an epoch names batches of the version-1 deal: such an epoch is finished by the version-1
rule (:attr:`Position.rule` 1, which the planner is given with the earlier deals as an
:class:`EpochDeal`), and written back as version 1 until it ends; the next epoch is dealt by the
current rule. A streamed loader's position (``readers``) has no deal and is read as it is.

Example::

    >>> pos = Position(epoch=1, batch=2, seed=42, rank=0, world_size=1)
    >>> Position.from_dict(pos.to_dict()) == pos
    True
    >>> Position.from_dict({"version": 2, "epoch": 1, "batch": 2})
    Position(epoch=1, batch=2, seed=None, rank=None, world_size=None, resized=(), readers=None, rule=2)
    >>> Position(1, 5, world_size=2).deal_for(3)
    EpochDeal(resized=((2, 5),), rule=2)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from speechdata.errors import ConfigError

__all__ = ["FRESH_DEAL", "POSITION_VERSION", "EpochDeal", "Position", "resolve_rank_world"]

#: The version written in :meth:`Position.to_dict`; a higher one is refused (a newer speechdata).
#: 2: ``synced_randomized`` groups the buckets' leftovers together (1: each bucket on its own).
POSITION_VERSION = 2
_KEYS = ("epoch", "batch", "seed", "rank", "world_size")
#: Keys written only when they hold something (so a position without them is the plain format).
_OPTIONAL = ("resized", "readers")

#: Earlier deals of an epoch: ``(world_size, step reached)`` pairs, oldest first.
Resized = tuple[tuple[int, int], ...]


class EpochDeal(NamedTuple):
    """How the rest of an epoch is dealt to the ranks: after the earlier deals ``resized``
    (``(world_size, step reached)`` pairs, oldest first; empty for an epoch dealt once) by the
    deal rule of position version ``rule`` (:data:`POSITION_VERSION`, or 1 for an epoch a
    version-1 position left unfinished; see the module docstring). What the planner is given."""

    resized: Resized = ()
    rule: int = POSITION_VERSION


#: An epoch dealt once, by the current rule (the deal of every epoch not resumed on another world size).
FRESH_DEAL = EpochDeal()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Position:
    """Where the next batch comes from: ``batch`` of ``epoch`` for (``seed``, ``rank``,
    ``world_size``). ``resized`` lists the epoch's earlier deals when it was resumed on another
    world size (``(world_size, step reached)``, oldest first; steps count over the whole epoch);
    ``rule`` is the position version whose deal rule deals the epoch (1 for an epoch a version-1
    position left unfinished). Immutable; build it from a state dict with :meth:`from_dict`."""

    epoch: int
    batch: int
    seed: int | None = None
    rank: int | None = None
    world_size: int | None = None
    resized: Resized = ()
    #: a streamed loader's readers per rank (``num_workers``, 0 counting as 1: its stream is
    #: dealt to them); ``None`` for a planned loader, whose batches do not depend on its workers
    readers: int | None = None
    #: the position version whose deal rule deals this epoch (written as the dict's ``version``)
    rule: int = POSITION_VERSION

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
        if self.readers is not None and (not _is_int(self.readers) or self.readers < 0):
            raise ConfigError(f"position: readers must be an integer >= 0 or absent, got {self.readers!r}")
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise ConfigError(f"position: rank {self.rank} is not below world_size {self.world_size}")
        if not _is_int(self.rule) or not 1 <= self.rule <= POSITION_VERSION:
            raise ConfigError(f"position: rule must be a version in 1..{POSITION_VERSION}, got {self.rule!r}")
        reached = 0
        deals = self.resized if isinstance(self.resized, tuple) else [None]
        for deal in deals:
            if (
                not isinstance(deal, tuple)
                or len(deal) != 2
                or not all(_is_int(v) for v in deal)
                or deal[0] < 1
                or not reached < deal[1] <= self.batch
            ):
                raise ConfigError(
                    f"position: resized must list [world_size >= 1, batch] pairs with batches rising "
                    f"from 1 to at most batch {self.batch}, got {_plain(deals if deal is not None else self.resized)!r}"
                )
            reached = deal[1]

    def to_dict(self) -> dict[str, Any]:
        """The documented dict form (``version`` first, then :data:`_KEYS`, then ``resized`` when
        the epoch was re-dealt); the version is :attr:`rule` (1 in an epoch dealt by the version-1
        rule)."""
        out: dict[str, Any] = {"version": self.rule, **{k: getattr(self, k) for k in _KEYS}}
        if self.resized:
            out["resized"] = _plain(self.resized)
        if self.readers is not None:
            out["readers"] = self.readers
        return out

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
                return replace(
                    inner, epoch=_int_of(state, "epoch", what) + 1, batch=0, resized=(), rule=POSITION_VERSION
                )
            return inner
        version = state.get("version", 1)  # the formats before versions were dealt as version 1's
        if not _is_int(version) or not 1 <= version <= POSITION_VERSION:
            raise ConfigError(
                f"{what}: version {version!r} is not one this speechdata reads (1..{POSITION_VERSION}); "
                "was it written by a newer speechdata?"
            )
        unknown = sorted(set(state) - {"version", *_KEYS, *_OPTIONAL})
        if unknown:
            raise ConfigError(
                f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; expected {list(_KEYS)}"
            )
        values: dict[str, Any] = {k: state.get(k) for k in _KEYS}
        for key in ("epoch", "batch"):
            values[key] = _int_of(state, key, what)
        resized = state.get("resized", ())
        if isinstance(resized, (list, tuple)):
            resized = tuple(tuple(d) if isinstance(d, (list, tuple)) else d for d in resized)
        values["readers"] = state.get("readers")
        # an epoch a version-1 position left unfinished is finished by the version-1 deal
        finish_v1 = version == 1 and values["batch"] > 0 and values["readers"] is None
        values["rule"] = 1 if finish_v1 else POSITION_VERSION
        values["resized"] = resized
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{what}: {str(e).removeprefix('position: ')}") from None

    def check(
        self,
        *,
        seed: int,
        rank: int,
        world_size: int,
        what: str = "position",
        fixed_world: str | None = None,
        readers: int | None = None,
    ) -> None:
        """A :class:`ConfigError` when a known ``seed`` differs from the loader's, or a known
        ``rank`` on the same ``world_size``: the saved position would then name other batches.
        Another world size is not an error (the rest of the epoch is re-dealt, see
        :meth:`deal_for`) unless ``fixed_world`` says why this loader cannot re-deal (a
        stream) and the position is inside an epoch; a position already re-dealt is refused then
        too, and so is one saved by a stream with other ``readers`` (workers per rank)."""

        def mismatch(name: str, saved: int, why: str) -> ConfigError:
            return ConfigError(f"{what}: saved {name}={saved} differs from this loader's {mine[name]}; {why}")

        mine = {"seed": seed, "rank": rank, "world_size": world_size}
        if self.seed is not None and self.seed != seed:
            raise mismatch("seed", self.seed, "the saved position would not match")
        other_world = self.world_size is not None and self.world_size != world_size
        if other_world and fixed_world is not None and self.batch > 0:
            raise mismatch("world_size", self.world_size, fixed_world)  # type: ignore[arg-type]
        if not other_world and self.rank is not None and self.rank != rank:
            raise mismatch("rank", self.rank, "the saved position would not match")
        if fixed_world is not None and self.resized:
            raise ConfigError(f"{what}: epoch {self.epoch} was re-dealt to another world size; {fixed_world}")
        known = self.readers is not None and readers is not None
        if fixed_world is not None and self.batch > 0 and known and self.readers != readers:
            raise ConfigError(
                f"{what}: saved by {self.readers} stream reader(s) per rank, this loader has {readers} "
                f"(num_workers, 0 counting as 1); {fixed_world}"
            )

    def deal_for(self, world_size: int) -> EpochDeal:
        """How this epoch is dealt to a loader of ``world_size`` ranks: after the saved earlier
        deals, plus the saved world size up to ``batch`` when it differs (and steps were taken on
        it), by this position's :attr:`rule`. A loader continues at ``batch`` with the rest of
        the epoch dealt to its ranks."""
        reached = self.resized[-1][1] if self.resized else 0
        if self.world_size is None or self.world_size == world_size or self.batch == reached:
            return EpochDeal(self.resized, self.rule)
        return EpochDeal((*self.resized, (self.world_size, self.batch)), self.rule)

    @property
    def deal(self) -> EpochDeal:
        """This epoch's deal as saved (its earlier deals and rule)."""
        return EpochDeal(self.resized, self.rule)

    def next_epoch(self) -> Position:
        """The start of the following epoch (same run; a fresh deal)."""
        return replace(self, epoch=self.epoch + 1, batch=0, resized=(), rule=POSITION_VERSION)

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
        deal: EpochDeal = FRESH_DEAL,
        readers: int | None = None,
    ) -> Position:
        """The position once ``consumed`` batches of ``epoch`` (dealt as ``deal``) were handed
        out: an epoch of known length (``epoch_length``; ``None`` for a stream) that is finished
        rolls over to batch 0 of the next one. ``readers``: a streamed loader's workers per rank."""
        pos = cls(epoch, consumed, seed, rank, world_size, deal.resized, readers, deal.rule)
        return pos.next_epoch() if epoch_length is not None and consumed >= epoch_length else pos


def _plain(resized: Any) -> Any:
    """``resized`` as JSON-like lists (the dict form; also what an error message shows)."""
    if isinstance(resized, tuple):
        return [list(d) if isinstance(d, tuple) else d for d in resized]
    return resized


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
