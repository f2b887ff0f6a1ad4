"""Data figures of a training run: does the step wait for data, what arrives, and from where.

Every ``every_n_steps`` optimiser steps, :class:`DataFigures` (a Lightning callback that
``speechdata train`` adds, docs/training.md "Data figures") writes these scalars to the trainer's
loggers (TensorBoard by default) and prints one line on the console:

* ``data/wait_fraction``: of the time the training loop spent on its batches (waiting for the
  next one + running the step), the share spent waiting for the loader; ``data/wait_ms_per_batch``
  and ``data/step_ms_per_batch`` are the two parts per batch. The wait is the time spent inside
  the loader's ``next()`` (:class:`TimedLoader`); the step is ``on_train_batch_start`` to
  ``on_train_batch_end``; validation and checkpoint writing count in neither.
* ``data/examples_per_s`` and ``data/audio_hours_per_s``: examples and hours of audio (valid
  samples, padding excluded) trained on per second of that time.
* ``data/audio_padding`` and ``data/token_padding``: padding's share of ``audio_signal``
  (``1 - sum(audio_signal_length) / (A x T)``) and of ``tokens``
  (``1 - sum(tokens_length) / (B x L)``) over the window's batches (docs/batch.md).
* ``data/drops/total`` and ``data/drops/<reason>``: the loader's ``report()`` so far.
* ``data/share/<dataset>`` and ``data/weight/<dataset>``: the share of the examples trained on so
  far (this run) that came from each manifest (``sample_ids`` name it: the high 32 bits,
  :func:`speechdata.manifest.unpack_sample_id`), and the share the config asks for
  (``concat_sampling_probabilities``, the temperature or round-robin weights, else natural
  proportions of the kept examples).

With several data-parallel ranks the counts are summed over ranks, the wait figures are the
largest of any rank (the rank that waits most holds up every step) and rates are per second of
the slowest rank's time. The pure functions below compute each figure; the callback only counts
and times.

Example::

    >>> figures = DataFigures(loader, sample_rate=16000, every_n_steps=50)
    >>> trainer = pl.Trainer(callbacks=[figures])
    >>> trainer.fit(module, train_dataloaders=figures.loader)
    data @ step 50: wait 71% of the loop (38.1 ms/batch, step 15.2 ms) DATA-BOUND | 412 examples/s, ...
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from speechdata.manifest import unpack_sample_id
from speechdata.sampling import mixing_weights

#: A window whose ``data/wait_fraction`` is at least this is marked ``DATA-BOUND`` on the console.
DATA_BOUND = 0.2

Clock = Callable[[], float]


# ------------------------------------------------------------------------------ pure figures


def padding_fraction(valid: float, slots: float) -> float:
    """Padding's share of ``slots`` positions of which ``valid`` hold data (0.0 when there are none)."""
    return 1.0 - valid / slots if slots > 0 else 0.0


def dataset_counts(sample_ids: Iterable[int], num_datasets: int) -> np.ndarray:
    """Examples per dataset (int64, ``num_datasets`` long) among ``sample_ids``; a ValueError for
    an id whose dataset number is not below ``num_datasets``."""
    counts = np.zeros(num_datasets, dtype=np.int64)
    for sample_id in sample_ids:
        dataset = unpack_sample_id(sample_id)[0]
        if dataset >= num_datasets:
            raise ValueError(
                f"sample id {sample_id}: dataset {dataset}, but there are {num_datasets} datasets"
            )
        counts[dataset] += 1
    return counts


def target_weights(
    kept_per_dataset: Sequence[int] | np.ndarray, cfg: Any, *, mixed: bool = True
) -> np.ndarray:
    """The share of examples each dataset should have: the planner's mixing weights
    (:func:`speechdata.sampling.mixing_weights`) when ``mixed`` (planned batches), else, and when the
    config sets none, the natural proportions of ``kept_per_dataset``."""
    counts = np.asarray(kept_per_dataset, dtype=np.float64)
    weights = mixing_weights(counts, cfg) if mixed else None
    if weights is None:
        total = counts.sum()
        weights = counts / total if total > 0 else counts
    return np.asarray(weights, dtype=np.float64)


def dataset_names(names: Sequence[str]) -> list[str]:
    """Tag-safe names of the datasets, in order: each name, numbered (``0_train``, ``1_train``) when
    two datasets share one."""
    safe = ["".join(c if c.isalnum() or c in "-_." else "_" for c in n) or "dataset" for n in names]
    if len(set(safe)) == len(safe):
        return safe
    return [f"{i}_{n}" for i, n in enumerate(safe)]


@dataclass
class Window:
    """What one rank trained on between two logging points, and how long it took."""

    batches: int = 0
    examples: int = 0
    audio_samples: int = 0  # valid samples, sum of audio_signal_length
    audio_slots: int = 0  # A x T summed over batches
    tokens: int = 0  # sum of tokens_length
    token_slots: int = 0  # B x L summed over batches
    wait_s: float = 0.0
    step_s: float = 0.0

    def to_list(self) -> list[float]:
        """The fields in order (to gather over ranks)."""
        return [float(v) for v in dataclasses.astuple(self)]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> Window:
        """Inverse of :meth:`to_list`."""
        kinds = [f.type for f in dataclasses.fields(cls)]
        return cls(
            *(float(v) if kind == "float" else round(float(v)) for v, kind in zip(values, kinds, strict=True))
        )


@dataclass
class BatchSizes:
    """What one batch adds to a :class:`Window`: valid lengths and padded widths. The tensors stay
    where the batch is until :func:`count_batches` reads them (no device synchronisation per step)."""

    audio_lengths: torch.Tensor  # [A]
    audio_width: int  # T
    token_lengths: torch.Tensor  # [B]
    token_width: int  # L
    sample_ids: torch.Tensor  # [B]
    token_rows: int | None = None  # R of a packed batch (docs/packing.md); None: one row per example

    @classmethod
    def of(cls, batch: Mapping[str, Any]) -> BatchSizes:
        """The sizes of a batch of the docs/batch.md contract."""
        return cls(
            batch["audio_signal_length"],
            int(batch["audio_signal"].shape[1]),
            batch["tokens_length"],
            int(batch["tokens"].shape[1]),
            batch["sample_ids"],
            int(batch["tokens"].shape[0]),
        )


def count_batches(sizes: Sequence[BatchSizes], num_datasets: int = 0) -> tuple[Window, np.ndarray]:
    """The counts of a :class:`Window` (times left at 0) and the examples per dataset
    (:func:`dataset_counts`; empty when ``num_datasets`` is 0) over ``sizes``."""
    w = Window(batches=len(sizes))
    ids: list[int] = []
    for s in sizes:
        audio = s.audio_lengths.tolist()
        tokens = s.token_lengths.tolist()
        w.examples += len(tokens)
        w.audio_samples += int(sum(audio))
        w.audio_slots += len(audio) * s.audio_width
        w.tokens += int(sum(tokens))
        w.token_slots += (len(tokens) if s.token_rows is None else s.token_rows) * s.token_width
        if num_datasets:
            ids += s.sample_ids.tolist()
    return w, dataset_counts(ids, num_datasets)


def window_figures(ranks: Sequence[Window], sample_rate: int) -> dict[str, float]:
    """The ``data/*`` rate, wait and padding figures of one window, from each rank's :class:`Window`
    (one without data parallelism): counts summed over ranks, wait figures the largest of any
    rank, rates per second of the slowest rank's loop time (wait + step)."""
    if not ranks:
        raise ValueError("window_figures: no rank's window given")
    loop = max(r.wait_s + r.step_s for r in ranks)
    examples = sum(r.examples for r in ranks)
    audio_seconds = sum(r.audio_samples for r in ranks) / sample_rate
    return {
        "data/wait_fraction": max(
            r.wait_s / (r.wait_s + r.step_s) if r.wait_s + r.step_s > 0 else 0.0 for r in ranks
        ),
        "data/wait_ms_per_batch": max(1000.0 * r.wait_s / r.batches if r.batches else 0.0 for r in ranks),
        "data/step_ms_per_batch": max(1000.0 * r.step_s / r.batches if r.batches else 0.0 for r in ranks),
        "data/examples_per_s": examples / loop if loop > 0 else 0.0,
        "data/audio_hours_per_s": audio_seconds / 3600.0 / loop if loop > 0 else 0.0,
        "data/audio_padding": padding_fraction(
            sum(r.audio_samples for r in ranks), sum(r.audio_slots for r in ranks)
        ),
        "data/token_padding": padding_fraction(
            sum(r.tokens for r in ranks), sum(r.token_slots for r in ranks)
        ),
    }


def consumption_figures(consumed: np.ndarray, weights: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """``data/share/<name>`` (each dataset's share of the ``consumed`` examples) and
    ``data/weight/<name>`` (its share in ``weights``)."""
    total = float(np.sum(consumed))
    out: dict[str, float] = {}
    for name, count, weight in zip(names, consumed, weights, strict=True):
        out[f"data/share/{name}"] = float(count) / total if total > 0 else 0.0
        out[f"data/weight/{name}"] = float(weight)
    return out


def drop_figures(report: Mapping[str, int]) -> dict[str, float]:
    """``data/drops/total`` and ``data/drops/<reason>`` from a loader's ``report()``."""
    out = {"data/drops/total": float(sum(report.values()))}
    out.update({f"data/drops/{reason}": float(n) for reason, n in report.items()})
    return out


def summary_line(step: int, figures: Mapping[str, float]) -> str:
    """The console line of a window, from its figures (those of :func:`window_figures`, and the
    drop and consumption figures when present)."""
    wait = figures["data/wait_fraction"]
    parts = [
        f"data @ step {step}: wait {wait:.0%} of the loop ({figures['data/wait_ms_per_batch']:.1f} ms/batch, "
        f"step {figures['data/step_ms_per_batch']:.1f} ms)" + (" DATA-BOUND" if wait >= DATA_BOUND else ""),
        f"{figures['data/examples_per_s']:.4g} examples/s, {figures['data/audio_hours_per_s']:.4g} audio h/s",
        f"padding audio {figures['data/audio_padding']:.1%}, tokens {figures['data/token_padding']:.1%}",
    ]
    if "data/drops/total" in figures:
        reasons = [
            f"{k.rsplit('/', 1)[1]}={v:.0f}"
            for k, v in figures.items()
            if k.startswith("data/drops/") and k != "data/drops/total" and v
        ]
        parts.append("drops " + (", ".join(reasons) if reasons else "none"))
    shares = [
        f"{k[len('data/share/') :]} {v:.0%}/{figures['data/weight/' + k[len('data/share/') :]]:.0%}"
        for k, v in figures.items()
        if k.startswith("data/share/")
    ]
    if shares:
        parts.append("datasets (share/weight) " + ", ".join(shares))
    return " | ".join(parts)


# ------------------------------------------------------------------------ loader and callback


class TimedLoader:
    """A training loader whose iteration counts the time spent waiting for each batch.

    ``wait_s`` (seconds inside the loader's ``next()``, start-up included) and ``batches`` grow
    over the run. Everything else (``len``, ``set_epoch``, ``state_dict``, ``report``, ...) is the
    wrapped loader's. Closing the iteration early closes the loader's own iteration at once.
    """

    def __init__(self, loader: Any, clock: Clock = time.perf_counter) -> None:
        self.loader = loader
        self.clock = clock
        self.wait_s = 0.0
        self.batches = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        try:
            while True:
                start = self.clock()
                try:
                    batch = next(it)
                except StopIteration:
                    return
                finally:
                    self.wait_s += self.clock() - start
                self.batches += 1
                yield batch
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()


class DataFigures(pl.Callback):
    """Logs the figures of the module docstring every ``every_n_steps`` optimiser steps.

    ``loader`` is the training loader; iterate :attr:`loader` (a :class:`TimedLoader` around it)
    in its place. Drops come from ``loader.report()`` and the datasets and their weights from
    ``loader.index``, ``loader.keep`` and ``loader.cfg`` when the loader has them (a speechdata
    loader does). ``console`` prints :func:`summary_line` (rank zero, through the module's
    ``print``). :attr:`last` holds the last figures logged.
    """

    def __init__(
        self,
        loader: Any,
        *,
        sample_rate: int,
        every_n_steps: int,
        console: bool = True,
        clock: Clock = time.perf_counter,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.loader = TimedLoader(loader, clock)
        self.sample_rate = int(sample_rate)
        self.every_n_steps = int(every_n_steps)
        self.console = console
        self.clock = clock
        self.names, self.weights = _datasets(loader)
        self.consumed = np.zeros(len(self.names), dtype=np.int64)
        self.last: dict[str, float] = {}
        self._sizes: list[BatchSizes] = []
        self._step_s = 0.0
        self._started: float | None = None
        self._wait_mark = 0.0
        self._logged_step = -1

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Note the batch's sizes and when its step starts."""
        self._sizes.append(BatchSizes.of(batch))
        self._started = self.clock()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Add the step's time; log when an optimiser step that is a multiple of ``every_n_steps`` ends."""
        if self._started is not None:
            self._step_s += self.clock() - self._started
            self._started = None
        step = trainer.global_step
        if step > 0 and step != self._logged_step and step % self.every_n_steps == 0:
            self._logged_step = step
            self._log(trainer, pl_module, step)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        window, counts = count_batches(self._sizes, len(self.names))
        window.wait_s, self._wait_mark = self.loader.wait_s - self._wait_mark, self.loader.wait_s
        window.step_s = self._step_s
        self._sizes, self._step_s = [], 0.0
        rows = _gather(trainer, pl_module, [*window.to_list(), *counts.tolist()])
        n = len(window.to_list())
        figures = window_figures([Window.from_list(r[:n]) for r in rows], self.sample_rate)
        report = getattr(self.loader.loader, "report", None)
        if callable(report):
            figures.update(drop_figures(report()))
        if self.names:
            self.consumed += np.rint(np.sum([r[n:] for r in rows], axis=0)).astype(np.int64)
            figures.update(consumption_figures(self.consumed, self.weights, self.names))
        self.last = figures
        for logger in trainer.loggers:
            logger.log_metrics(figures, step=step)
        if self.console:
            pl_module.print(summary_line(step, figures))


def _datasets(loader: Any) -> tuple[list[str], np.ndarray]:
    """The dataset names and target weights of a speechdata loader; none for another loader."""
    index, keep, cfg = (getattr(loader, k, None) for k in ("index", "keep", "cfg"))
    if index is None or keep is None or cfg is None:
        return [], np.zeros(0)
    kept = np.bincount(np.asarray(index.dataset)[np.asarray(keep)], minlength=index.num_datasets)
    mixed = getattr(loader, "sampler", None) is not None  # a stream does not mix by weights
    return dataset_names([d.name for d in index.datasets]), target_weights(kept, cfg, mixed=mixed)


def _gather(trainer: pl.Trainer, pl_module: pl.LightningModule, values: list[float]) -> list[list[float]]:
    """``values`` of every data-parallel rank (each rank calls this at the same step)."""
    if trainer.world_size <= 1:
        return [values]
    t = torch.tensor(values, dtype=torch.float64, device=pl_module.device)
    gathered = trainer.strategy.all_gather(t)
    return gathered.reshape(trainer.world_size, len(values)).tolist()
