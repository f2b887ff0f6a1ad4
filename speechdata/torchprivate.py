"""The only module that touches torch's private DataLoader internals.

The loader needs five things torch has no public API for: to stop torch's SIGCHLD handler from
raising in unrelated code when a worker dies (worker pid registration in
``torch.utils.data._utils.signal_handling``), to shut down the surviving workers of a broken
iterator (``DataLoader._iterator``, ``_shutdown_workers``), to recognise the error torch raises
for a dead worker, the pids of the live workers (``_workers``, for memory measurements), and
whether anything besides the loader still references a storage (``torch._C._storage_Use_Count``,
to reuse a padded batch's memory once the caller has dropped the batch). Every use goes through a function here, and each one degrades to
torch's default behaviour when the private name is gone.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["drop_workers", "storage_use_count", "synchronous_worker_checks", "worker_death", "worker_pids"]


def synchronous_worker_checks(it: Any) -> None:
    """Let ``next()`` report a dead DataLoader worker, not torch's SIGCHLD handler.

    torch registers worker pids with a SIGCHLD handler that raises ``RuntimeError`` in whatever
    code the main thread runs when a worker dies (the training step, a logger, pytest's own
    code), and raises again at every later SIGCHLD. Unregistered, a death is found by the
    iterator itself (it polls worker liveness every few seconds while waiting for data) and
    surfaces from ``next()``. Without the private hooks torch's default stays.
    """
    if not getattr(it, "_worker_pids_set", False):
        return
    try:
        from torch.utils.data._utils.signal_handling import _remove_worker_pids
    except ImportError:
        return
    _remove_worker_pids(id(it))
    it._worker_pids_set = False


def drop_workers(loader: torch.utils.data.DataLoader[Any]) -> None:
    """Shut down the surviving workers of ``loader``'s current iterator so that the next
    ``iter()`` starts fresh ones (persistent workers would otherwise be reused)."""
    it = getattr(loader, "_iterator", None)
    if it is None:
        return
    synchronous_worker_checks(it)
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    loader._iterator = None


def worker_death(err: BaseException, num_workers: int) -> str | None:
    """The one-line detail when ``err`` (raised by ``next()`` on a DataLoader iterator) means a
    worker died, else ``None``: torch's ``RuntimeError`` naming the worker pid(s), or, with
    workers, the broken pipe of a worker that died while handing over a batch whose shared
    memory it still owned."""
    if isinstance(err, RuntimeError):
        if "DataLoader worker (pid" not in str(err):
            return None
        return (str(err).splitlines() or [type(err).__name__])[0].rstrip(". ")
    if isinstance(err, (ConnectionError, EOFError)) and num_workers > 0:
        return f"a DataLoader worker died while handing over a batch ({type(err).__name__})"
    return None


def worker_pids(it: Any) -> list[int]:
    """The pids of the live worker processes of DataLoader iterator ``it`` (none without workers)."""
    return [w.pid for w in getattr(it, "_workers", []) if w.pid is not None and w.is_alive()]


def storage_use_count(storage: torch.UntypedStorage) -> int | None:
    """How many references hold ``storage``'s memory (tensors viewing it, storage objects; a
    Python storage object counts once), or ``None`` when this torch cannot say."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None
    try:
        return int(count(storage._cdata))
    except (AttributeError, RuntimeError, TypeError):
        return None
