"""Where the tasks of ``speechdata shard`` and ``speechdata validate`` run: in this process, in a
pool of local processes, or as Ray tasks (``--executor ray`` or ``ray://ADDRESS``).

A task is a module-level function ``fn(shared, item, progress) -> result``: ``shared`` is the same
object for every item (sent once per process, or put once in Ray's object store), ``item`` one
unit of work (a shard), ``progress(n)`` counts finished entries for the progress bar. Every
executor returns the results in the order of the items, so what is written afterwards does not
depend on where or in which order the tasks ran; the first task that fails stops the job and its
error is raised as the task raised it (a one-line :class:`~speechdata.errors.SpeechDataError`).

Ray is imported only when a Ray executor is opened; a missing ``ray`` is a one-line
:class:`~speechdata.errors.ConfigError`. Ray tasks read and write the paths they are given, so on
a cluster the inputs and the output folder must be on a file system every node mounts.

Example::

    >>> with open_executor("local", workers=4) as ex:
    ...     results = ex.map(write_one, jobs, shared=None, weights=[len(j.entries) for j in jobs])
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any, Protocol

from speechdata.errors import ConfigError

#: ``progress(n)``: ``n`` more entries are done.
Progress = Callable[[int], None]
#: A task: ``fn(shared, item, progress) -> result`` (module-level, so that it can be pickled).
Task = Callable[[Any, Any, Progress], Any]


def _no_progress(n: int) -> None:
    pass


class Executor(Protocol):
    """Runs one task per item and returns the results in item order."""

    def map(
        self,
        fn: Task,
        items: Sequence[Any],
        *,
        shared: Any = None,
        weights: Sequence[int] | None = None,
        progress: Progress = _no_progress,
    ) -> list[Any]:
        """``[fn(shared, item, ...) for item in items]``; ``progress`` receives the finished
        entries (``weights[k]`` per item when the executor cannot report finer steps)."""
        ...

    def close(self) -> None:
        """Release what the executor started (a Ray instance it started itself)."""
        ...


class LocalExecutor:
    """Tasks in this process (``workers=1``) or in ``workers`` forked processes."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, int(workers))

    def map(
        self,
        fn: Task,
        items: Sequence[Any],
        *,
        shared: Any = None,
        weights: Sequence[int] | None = None,
        progress: Progress = _no_progress,
    ) -> list[Any]:
        """See :meth:`Executor.map`; ``shared`` reaches forked workers without being pickled."""
        if self.workers <= 1 or len(items) <= 1:
            return [fn(shared, item, progress) for item in items]
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        q = ctx.Queue()
        results: dict[int, Any] = {}
        with ProcessPoolExecutor(
            min(self.workers, len(items)), mp_context=ctx, initializer=_init_worker, initargs=(q, fn, shared)
        ) as ex:
            futures = {ex.submit(_run_in_worker, item): k for k, item in enumerate(items)}
            pending = set(futures)
            try:
                while pending:
                    finished, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                    _drain(q, progress)
                    for f in finished:
                        results[futures[f]] = f.result()
            except BaseException:
                ex.shutdown(wait=True, cancel_futures=True)
                raise
        _drain(q, progress)
        return [results[k] for k in range(len(items))]

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_WORKER: dict[str, Any] = {}


def _init_worker(q: Any, fn: Task, shared: Any) -> None:
    _WORKER.update(queue=q, fn=fn, shared=shared)


def _run_in_worker(item: Any) -> Any:
    q = _WORKER["queue"]
    pending = [0, time.monotonic()]

    def report(n: int) -> None:
        pending[0] += n
        if time.monotonic() - pending[1] > 0.2:
            q.put(pending[0])
            pending[0], pending[1] = 0, time.monotonic()

    result = _WORKER["fn"](_WORKER["shared"], item, report)
    if pending[0]:
        q.put(pending[0])
    return result


def _drain(q: Any, progress: Progress) -> None:
    while True:
        try:
            progress(q.get_nowait())
        except queue.Empty:
            return


def _ray_call(fn: Task, shared: Any, item: Any) -> Any:
    """The body of every Ray task (no progress inside a task: the driver counts finished items)."""
    return fn(shared, item, _no_progress)


class RayExecutor:
    """One Ray task per item, on the Ray instance already initialised in this process, else on
    ``address`` (``ray://HOST:PORT``), else where ``ray.init()`` finds one (``RAY_ADDRESS``, or
    the cluster ``ray start`` started on this machine), else on a new local instance. The
    connection the executor opened is closed by :meth:`close` (a local instance it started is
    shut down)."""

    def __init__(self, address: str | None = None, *, num_cpus: float = 1) -> None:
        ray = import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
            self._started = True
        self.num_cpus = num_cpus
        self._remote = ray.remote(num_cpus=num_cpus)(_ray_call)

    def map(
        self,
        fn: Task,
        items: Sequence[Any],
        *,
        shared: Any = None,
        weights: Sequence[int] | None = None,
        progress: Progress = _no_progress,
    ) -> list[Any]:
        """See :meth:`Executor.map`: ``shared`` goes to the object store once; ``progress``
        receives ``weights[k]`` when item ``k`` finishes."""
        ray = self._ray
        if not items:
            return []
        shared_ref = ray.put(shared)
        refs = [self._remote.remote(fn, shared_ref, item) for item in items]
        where = {ref: k for k, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        pending = list(refs)
        try:
            while pending:
                # every task finished by now (one call per half second, not one per task)
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
                for ref in done:
                    k = where[ref]
                    results[k] = _ray_get(ray, ref)
                    progress(weights[k] if weights is not None else 1)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return [results[k] for k in range(len(items))]

    def close(self) -> None:
        """Shut down the Ray instance if this executor started it."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ray_get(ray: Any, ref: Any) -> Any:
    """``ray.get(ref)``, with a task's own exception raised as itself (not wrapped in Ray's
    ``RayTaskError`` with a remote traceback), so user errors stay one line."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def import_ray() -> Any:
    """``import ray``, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray: the ray package is not installed; install speechdata's 'ray' extra "
            "(pip install 'speechdata[ray]') or use --executor local"
        ) from None
    return ray


def check_executor(spec: str) -> None:
    """A :class:`ConfigError` unless ``spec`` names an executor (``local``, ``ray``, ``ray://ADDRESS``)."""
    if spec not in ("local", "ray") and not (spec.startswith("ray://") and len(spec) > len("ray://")):
        raise ConfigError(f"--executor: must be local, ray or ray://ADDRESS, got {spec!r}")


def open_executor(spec: str = "local", workers: int = 1) -> LocalExecutor | RayExecutor:
    """The executor named by ``--executor``: ``local`` (``workers`` processes), ``ray`` (the Ray
    instance of this process, else the cluster ``ray.init()`` finds, else a new local one) or
    ``ray://ADDRESS``."""
    check_executor(spec)
    if spec == "local":
        return LocalExecutor(workers)
    return RayExecutor(None if spec == "ray" else spec)
