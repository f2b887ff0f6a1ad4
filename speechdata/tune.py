"""Memory-profiled per-bucket batch sizes (``speechdata tune``; docs/tuning.md).

For each duration bucket of a config's ``train_ds`` the largest batch whose training step fits a
memory budget is found by measurement, not guessed:

1. **Worst-case shapes** (:func:`bucket_shapes`): the bucket's longest audio (its upper bin
   boundary; ``max_duration`` for the last bucket) as one clip, and the longest token sequence the
   prompt builder lets through (``max_seq_length``). A 2D bucket (a ``[first, second]`` pair of
   ``bucket_duration_bins``) bounds the audio by its first value and the tokens by its second
   (output tokens) plus the longest prompt the data puts in it (:func:`bucket_prompt_tokens`);
   with ``use_multimodal_sampling`` by the sum of both (see :func:`bucket_shapes`).
2. **One training step** (:class:`StepRunner`): the model and optimiser are built from the config
   exactly as ``speechdata train`` builds them (:func:`speechdata.train.run.check_config`,
   :func:`~speechdata.train.run.build_module`, the module's ``configure_optimizers``), a
   synthetic batch of those shapes goes through the loader's own collator
   (:func:`speechdata.collate.finalize`, features included when the dataset computes them), and
   forward, backward and the optimiser step run under the trainer's precision. A warm-up step
   first creates the optimiser state, so every measured step holds it.
3. **Peak memory** of the step comes from an injected *measure*: on CUDA
   (:func:`cuda_measure`) ``torch.cuda.reset_peak_memory_stats`` then
   ``torch.cuda.max_memory_allocated``, with ``torch.cuda.OutOfMemoryError`` meaning "does not fit"
   (:func:`guarded`: the step is abandoned, gradients dropped, the cache emptied, the search goes
   on); on the CPU an estimate (:func:`estimate_measure`: parameters, gradients, optimiser state,
   the batch and every tensor autograd saves for backward, each storage counted once).
4. **The search** (:func:`largest_fitting`): batch sizes double from 1 until a step does not fit
   (or ``max_batch``), then bisect; a step fits when its peak plus the :func:`margin_bytes` (one
   copy of the trainable gradients for DDP's gradient buckets, one of the trainable weights for an
   on-device EMA) is within the budget. Memory must grow with the batch size (it does: every
   activation has the batch dimension).

The result is written as YAML at the dataset section's path (:func:`tuned_yaml`):
``bucket_duration_bins`` and ``bucketing_batch_size`` (one size per bucket, shortest first; one
per 2D pair, in the pairs' order), the keys :mod:`speechdata.sampling.buckets` reads; merged
into the config or passed as overrides (:func:`tuned_overrides`), the loader batches each bucket
with its measured size.
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from speechdata.config import DatasetConfig, bins_are_2d, find_section
from speechdata.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from speechdata.batch import Batch
    from speechdata.loader import SpeechDataLoader
    from speechdata.sampling.tokens import Measures
    from speechdata.train.run import TrainSetup

#: A probe: run one training step of ``batch_size`` examples of ``shape`` and return its peak bytes,
#: or ``None`` when it ran out of memory.
Measure = Callable[["BucketShape", int], "int | None"]
#: Called with one line per probe (the command prints them on stderr).
Progress = Callable[[str], None]

DEFAULT_FRACTION = 0.9
DEFAULT_MAX_BATCH = 4096
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3}
_UNITS.update({"kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "t": 1000**4, "tb": 1000**4})


# ---------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class BucketShape:
    """The worst-case example of one bucket: ``seconds`` of audio in one clip (bucket ``low`` to
    ``seconds``) and ``tokens`` input ids (BOS to EOS), at ``sample_rate``. ``bin`` names a 2D
    bucket's two bounds in the tables (``4s/30t``: seconds and output tokens; ``120t/30t`` with
    ``use_multimodal_sampling``: input and output tokens); ``None`` for a 1D bucket."""

    bucket: int
    low: float
    seconds: float
    tokens: int
    sample_rate: int
    bin: str | None = None

    @property
    def samples(self) -> int:
        """Audio samples of the clip."""
        return max(1, round(self.seconds * self.sample_rate))

    @property
    def key(self) -> tuple[float, int]:
        """What the measured memory depends on (buckets with equal keys are measured once)."""
        return (self.seconds, self.tokens)


def bucket_bins(
    ds: DatasetConfig, path: str, estimate: Callable[[], np.ndarray | None] | None = None
) -> list[float] | list[tuple[float, float]]:
    """The boundaries of ``ds``'s buckets, as the loader decides them
    (:mod:`speechdata.sampling.buckets`): ``bucket_duration_bins`` (1D seconds, or 2D
    ``(first, second)`` pairs, one per bucket); else none when the config asks for no bucketing;
    else the bins the loader estimates from the data (``estimate``, which returns ``None`` for a
    pre-bucketed dataset). ``path`` names the section in errors."""
    from speechdata.sampling.buckets import configured_num_buckets

    if ds.bucket_duration_bins is not None:
        if bins_are_2d(ds.bucket_duration_bins):
            return [(float(a), float(b)) for a, b in ds.bucket_duration_bins]  # type: ignore[misc]
        return [float(b) for b in ds.bucket_duration_bins]  # type: ignore[arg-type]
    k = configured_num_buckets(ds)
    if k is None or k == 1:
        return []
    if estimate is None or not ds.manifests:
        raise ConfigError(
            f"{path}: {k} buckets are estimated from the data, but manifest_filepath is not set; set it, "
            "or give bucket_duration_bins"
        )
    bins = estimate()
    if bins is None:
        raise ConfigError(
            f"{path}: a pre-bucketed (or streamed) dataset has no duration bins to tune; give bucket_duration_bins"
        )
    return [float(b) for b in bins]


def bucket_shapes(
    ds: DatasetConfig,
    bins: Sequence[float] | Sequence[tuple[float, float]],
    path: str = "train_ds",
    prompt_tokens: Sequence[int | None] | None = None,
) -> list[BucketShape]:
    """One :class:`BucketShape` per bucket; a bucket's audio never exceeds ``max_duration``.

    1D ``bins``: bucket ``i`` holds durations in ``[bins[i-1], bins[i])``, the last one up to
    ``max_duration``; every bucket's tokens are ``max_seq_length``. With
    ``use_multimodal_sampling`` the bins bound an example's tokens ``u`` (text tokens plus one
    audio token per ``token_equivalent_duration`` seconds): the audio is
    ``min(max_duration, u * token_equivalent_duration)`` and the tokens
    ``min(max_seq_length, u)`` (the last bucket: ``max_duration`` and ``max_seq_length``).

    2D ``bins`` (``(b1, b2)`` pairs, one bucket each, inclusive upper bounds): without
    ``use_multimodal_sampling`` the audio is ``min(b1, max_duration)`` seconds (``low``: the
    largest smaller first bound, or ``min_duration``) and the tokens
    ``min(max_seq_length, b2 + prompt_tokens[k])``: the output tokens plus the longest
    non-output part (prompt, context, BOS) of the bucket's examples, from
    :func:`bucket_prompt_tokens`; where that is unknown (``prompt_tokens`` ``None``, or a
    bucket's entry ``None``: no example in it) the tokens are ``max_seq_length``, the
    conservative bound. With ``use_multimodal_sampling`` ``b1`` bounds the input tokens (text
    input plus one audio token per ``token_equivalent_duration`` seconds): the audio is
    ``min(max_duration, b1 * token_equivalent_duration)`` (``low``: ``min_duration``, as text
    can fill the input tokens) and the tokens ``min(max_seq_length, b1 + b2)``, which bounds
    text + output together (a safe bound: the worst case's audio and text cannot both reach
    theirs). Tokens are at least 2, as for 1D buckets.
    """
    if ds.max_duration is None:
        raise ConfigError(f"{path}.max_duration: null leaves the longest bucket unbounded; set it to tune")
    top = float(ds.max_duration)
    low0 = float(ds.min_duration or 0.0)
    if bins_are_2d(bins):
        return _bucket_shapes_2d(ds, [(float(a), float(b)) for a, b in bins], top, low0, prompt_tokens)  # type: ignore[misc]
    tokens = max(int(ds.max_seq_length), 2)
    if ds.use_multimodal_sampling:  # the bins bound an example's tokens (text + audio tokens)
        ted = float(ds.token_equivalent_duration or 0.0)
        bounds = [*(float(b) for b in bins), math.inf]  # type: ignore[arg-type]
        lows = [0.0, *bounds[:-1]]
        return [
            BucketShape(
                i,
                low0,
                top if math.isinf(u) else min(top, u * ted),
                tokens if math.isinf(u) else max(min(tokens, math.floor(u)), 2),
                ds.sample_rate,
                f"{lo:g}-{u:g}t",
            )
            for i, (lo, u) in enumerate(zip(lows, bounds, strict=True))
        ]
    edges = [low0, *bins, top]
    return [
        BucketShape(i, min(edges[i], top), min(max(edges[i + 1], low0), top), tokens, ds.sample_rate)
        for i in range(len(edges) - 1)
    ]


def _bucket_shapes_2d(
    ds: DatasetConfig,
    pairs: Sequence[tuple[float, float]],
    top: float,
    low0: float,
    prompt_tokens: Sequence[int | None] | None,
) -> list[BucketShape]:
    """:func:`bucket_shapes` of 2D ``pairs`` (already checked: sorted ascending)."""
    msl = int(ds.max_seq_length)
    if prompt_tokens is not None and len(prompt_tokens) != len(pairs):
        raise ValueError(f"prompt_tokens: {len(prompt_tokens)} values for {len(pairs)} buckets")
    shapes = []
    for k, (b1, b2) in enumerate(pairs):
        if ds.use_multimodal_sampling:
            ted = float(ds.token_equivalent_duration or 0.0)
            seconds = min(top, b1 * ted)
            low = low0
            tokens = min(msl, math.floor(b1) + math.floor(b2))
            label = f"{b1:g}t/{b2:g}t"
        else:
            seconds = min(b1, top)
            low = max((a for a, _ in pairs if a < b1), default=low0)
            extra = prompt_tokens[k] if prompt_tokens is not None else None
            tokens = msl if extra is None else min(msl, math.floor(b2) + int(extra))
            label = f"{b1:g}s/{b2:g}t"
        shapes.append(BucketShape(k, min(low, seconds), seconds, max(tokens, 2), ds.sample_rate, label))
    return shapes


def bucket_prompt_tokens(
    measures: Measures, assignment: np.ndarray, keep: np.ndarray, num_buckets: int
) -> list[int | None]:
    """Per bucket, the largest number of input ids that are not output tokens (``text - output``:
    prompt, context, BOS) over the kept examples in it, or ``None`` for a bucket without one.
    ``measures``, ``assignment`` (bucket per Index row) and ``keep`` are a loader's
    (:attr:`SpeechDataLoader.measures`, its sampler's ``buckets.assignment``, ``keep``)."""
    extra = (measures.text - measures.output)[np.asarray(keep, dtype=bool)]
    bucket = np.asarray(assignment)[np.asarray(keep, dtype=bool)].astype(np.int64)
    out: list[int | None] = []
    for k in range(num_buckets):
        mine = extra[bucket == k]
        out.append(int(mine.max()) if mine.size else None)
    return out


def loader_prompt_tokens(loader: SpeechDataLoader) -> list[int | None]:
    """:func:`bucket_prompt_tokens` of a built loader of 2D buckets (its token measures and the
    bucket its sampler puts each example in)."""
    if loader.sampler is None or loader.measures is None:
        raise ConfigError(f"{loader.names}: 2D buckets need a dataset read by offset (not streamed)")
    buckets = loader.sampler.buckets
    if buckets.pre_bucketed:
        raise ConfigError(f"{loader.names}: a pre-bucketed dataset's buckets are its shards, not 2D bins")
    return bucket_prompt_tokens(loader.measures, buckets.assignment, loader.keep, buckets.num_buckets)


def shape_note(
    ds: DatasetConfig, shapes: Sequence[BucketShape], prompt_tokens: Sequence[int | None] | None
) -> str | None:
    """The one line the tables need under 2D buckets whose tokens are the conservative
    ``max_seq_length`` (no manifests, or buckets without an example); ``None`` otherwise."""
    if not shapes or shapes[0].bin is None or ds.use_multimodal_sampling:
        return None
    msl = int(ds.max_seq_length)
    if prompt_tokens is None:
        return (
            f"without manifests, every 2D bucket's tokens are max_seq_length ({msl}), the conservative bound; "
            "set manifest_filepath to bound each bucket's prompt tokens by the data"
        )
    empty = [str(k) for k, e in enumerate(prompt_tokens) if e is None]
    if not empty:
        return None
    many = len(empty) > 1
    return (
        f"{'buckets' if many else 'bucket'} {', '.join(empty)} {'hold' if many else 'holds'} no example of the "
        f"manifests: {'their' if many else 'its'} tokens are max_seq_length ({msl}), the conservative bound"
    )


def audio_frames(shape: BucketShape, model: Any) -> int:
    """Encoder frames of the shape's clip for ``model``'s front end (what SALM splices into the LM)."""
    import torch

    from speechdata.features import frame_params, num_frames
    from speechdata.train.models.encoder import subsampled_lengths

    _, hop, _ = frame_params(shape.sample_rate, model.cfg.features)
    return int(subsampled_lengths(num_frames(torch.tensor([shape.samples]), hop))[0])


def lm_positions(shape: BucketShape, model: Any) -> int:
    """LM sequence length of the worst-case example: text tokens, plus the audio frames for SALM."""
    text = shape.tokens - 1
    return text + audio_frames(shape, model) if model.cfg.arch == "salm" else text


# ------------------------------------------------------------------------------------ the step


def worst_case_batch(
    shape: BucketShape,
    batch_size: int,
    *,
    ds: DatasetConfig,
    vocab_size: int,
    pad_id: int,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> Batch:
    """A batch of ``batch_size`` copies of the shape's worst case, collated by the loader's
    :func:`~speechdata.collate.finalize` on ``device``: one clip of noise (from ``seed``) placed
    after the first token, random token ids, the second half of each sequence a loss target."""
    import torch

    from speechdata.collate import Packed, finalize

    rng = np.random.default_rng(seed)
    n, t = shape.samples, shape.tokens
    clip = torch.from_numpy((0.1 * rng.standard_normal(n)).astype(np.float32))
    ids = torch.from_numpy(rng.integers(0, vocab_size, (batch_size, t), dtype=np.int64))
    targets = torch.zeros(batch_size, t, dtype=torch.uint8)
    targets[:, t // 2 :] = 1
    b = torch.ones(batch_size, dtype=torch.int64)
    packed = Packed(
        audio=clip.repeat(batch_size),
        audio_lengths=b * n,
        num_audios=b.clone(),
        audio_positions=b.clone(),
        ids=ids.reshape(-1),
        ids_lengths=b * t,
        answer_start=b * (t // 2),
        sample_ids=torch.arange(batch_size, dtype=torch.int64),
        targets=targets.reshape(-1),
        metadata=[{"tune": True, "seconds": shape.seconds, "tokens": t} for _ in range(batch_size)],
    )
    return finalize(
        packed,
        device=device,
        pad_id=pad_id,
        pad_to_multiple=ds.pad_to_multiple,
        features=ds.features,
        sample_rate=ds.sample_rate,
    )


def _nbytes(tensors: Iterator[torch.Tensor]) -> int:
    return sum(int(t.numel()) * t.element_size() for t in tensors)


class StepRunner:
    """The config's model and optimiser on one device, running training steps on worst-case batches.

    Built as ``speechdata train`` builds them (``check_config``'s :class:`TrainSetup`,
    ``build_module``, ``configure_optimizers``); ``precision`` is a Lightning precision name
    (``bf16-mixed``, ``16-mixed``, ``32-true``, ``bf16-true``, ...): ``-mixed`` runs under autocast,
    ``-true`` converts the weights and the batch's floating tensors.
    """

    def __init__(
        self, cfg: DictConfig, setup: TrainSetup, device: torch.device | str, precision: str = "32-true"
    ) -> None:
        import torch

        from speechdata.train.run import build_module

        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # memory calls need the index
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.setup = setup
        self.precision = precision
        module = build_module(
            cfg, setup, max_steps=max(int(OmegaConf.select(cfg, "trainer.max_steps") or 1), 1)
        )
        dtype = {"bf16": torch.bfloat16, "16": torch.float16, "64": torch.float64}.get(
            precision.split("-")[0], torch.float32
        )
        self.autocast = dtype if precision.endswith("-mixed") else None
        self.dtype = torch.float32 if self.autocast is not None else dtype
        module.to(device=self.device, dtype=self.dtype)
        self.module = module
        self.model = module.model
        self.model.train()
        opt = module.configure_optimizers()
        self.optimizer: torch.optim.Optimizer = opt["optimizer"] if isinstance(opt, dict) else opt

    def batch(self, shape: BucketShape, batch_size: int) -> Batch:
        """A worst-case batch of ``shape`` on the runner's device (floating tensors in the weights' dtype)."""
        batch = worst_case_batch(
            shape,
            batch_size,
            ds=self.setup.train_ds,
            vocab_size=self.setup.model.vocab_size,
            pad_id=self.setup.model.pad_id,
            device=self.device,
        )
        import torch

        if self.dtype != torch.float32:  # '-true' precisions: the batch follows the weights, as in Lightning
            for key, value in list(batch.items()):
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    batch[key] = value.to(self.dtype)  # type: ignore[literal-required]
        return batch

    def loss(self, batch: Batch) -> torch.Tensor:
        """The training loss of ``batch`` under the runner's precision."""
        import torch

        ctx = (
            torch.autocast(self.device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        with ctx:
            loss, _ = self.model.loss(batch)
        return loss

    def step(self, batch: Batch) -> None:
        """Forward, backward and one optimiser step (gradients are left in place: :meth:`clear`)."""
        self.loss(batch).backward()
        self.optimizer.step()

    def clear(self) -> None:
        """Drop the gradients (``set_to_none``), as between training steps."""
        self.optimizer.zero_grad(set_to_none=True)

    def parameter_bytes(self, trainable_only: bool = False) -> int:
        """Bytes of the (trainable) weights; the gradients take as many as the trainable weights."""
        return _nbytes(p for p in self.model.parameters() if p.requires_grad or not trainable_only)

    def optimizer_bytes(self) -> int:
        """Bytes of the optimiser's state tensors (after a step has created them)."""
        import torch

        return _nbytes(
            v
            for state in self.optimizer.state.values()
            for v in state.values()
            if isinstance(v, torch.Tensor)
        )

    def gradient_bytes(self) -> int:
        """Bytes of the gradients held now."""
        return _nbytes(p.grad for p in self.model.parameters() if p.grad is not None)


def guarded(step: Callable[[BucketShape, int], int], cleanup: Callable[[], None]) -> Measure:
    """A :data:`Measure` from ``step`` (returns peak bytes): ``torch.cuda.OutOfMemoryError`` means
    "does not fit" (``None``); ``cleanup`` runs after every probe, once the error and the frames it
    holds are released, so their memory can be returned."""
    import torch

    def measure(shape: BucketShape, batch_size: int) -> int | None:
        peak: int | None = None
        try:
            peak = step(shape, batch_size)
        except torch.cuda.OutOfMemoryError:
            peak = None
        cleanup()
        return peak

    return measure


def cuda_measure(runner: StepRunner) -> Measure:
    """The CUDA probe: peak ``max_memory_allocated`` of one step (see the module docstring)."""
    import torch

    dev = runner.device

    def step(shape: BucketShape, batch_size: int) -> int:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        batch = runner.batch(shape, batch_size)
        runner.step(batch)
        del batch
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev))

    def cleanup() -> None:
        runner.clear()
        gc.collect()
        torch.cuda.empty_cache()

    return guarded(step, cleanup)


def estimate_measure(runner: StepRunner) -> Measure:
    """The CPU estimate of a step's memory: weights + gradients + optimiser state + the batch + the
    tensors autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``; each storage
    once, weights excluded). It leaves out temporaries freed within the step and allocator
    overhead, and counts the saved activations and all gradients together though backward frees
    the first as it makes the second: an estimate for planning, not a GPU measurement."""
    import torch

    def step(shape: BucketShape, batch_size: int) -> int:
        weights = {p.untyped_storage().data_ptr() for p in runner.model.parameters()}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in weights:
                saved[ptr] = storage.nbytes()
            return t

        batch = runner.batch(shape, batch_size)
        inputs = _nbytes(v for v in batch.values() if isinstance(v, torch.Tensor))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = runner.loss(batch)
        loss.backward()
        runner.optimizer.step()
        held = runner.parameter_bytes() + runner.gradient_bytes() + runner.optimizer_bytes()
        return held + inputs + sum(saved.values())

    return guarded(step, runner.clear)


def margin_bytes(runner: StepRunner, cfg: DictConfig, *, ddp: bool = True) -> dict[str, int]:
    """What a training run holds beyond one measured step, by name: ``ddp`` (DDP's gradient buckets,
    one copy of the trainable gradients; with ``ddp``) and ``ema`` (the EMA copy of the trainable
    weights when ``exp_manager.ema`` is enabled without ``cpu_offload``)."""
    out: dict[str, int] = {}
    trainable = runner.parameter_bytes(trainable_only=True)
    if ddp:
        out["ddp"] = trainable
    if OmegaConf.select(cfg, "exp_manager.ema.enable", default=False) and not OmegaConf.select(
        cfg, "exp_manager.ema.cpu_offload", default=False
    ):
        out["ema"] = trainable
    return out


# ---------------------------------------------------------------------------------------- search


@dataclass
class Trial:
    """One probe: the batch size, its peak bytes (``None``: out of memory) and whether it fit."""

    batch_size: int
    peak: int | None
    fits: bool


@dataclass
class BucketResult:
    """The search of one bucket: its shape, every probe in order, and the chosen size (0: none fit)."""

    shape: BucketShape
    trials: list[Trial] = field(default_factory=list)
    batch_size: int = 0

    @property
    def chosen(self) -> Trial | None:
        """The probe of the chosen size."""
        return next((t for t in self.trials if t.batch_size == self.batch_size and t.fits), None)


def largest_fitting(
    probe: Callable[[int], int | None], budget: int, margin: int = 0, max_batch: int = DEFAULT_MAX_BATCH
) -> tuple[int, list[Trial]]:
    """The largest batch size ``b <= max_batch`` with ``probe(b) + margin <= budget`` (0 when even 1
    does not fit), assuming memory grows with ``b``: sizes double from 1 until one does not fit,
    then the gap is bisected. Returns it with the probes in the order they ran."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    trials: list[Trial] = []

    def fits(b: int) -> bool:
        peak = probe(b)
        ok = peak is not None and peak + margin <= budget
        trials.append(Trial(b, peak, ok))
        return ok

    if not fits(1):
        return 0, trials
    good, bad = 1, None
    while bad is None and good < max_batch:
        b = min(2 * good, max_batch)
        if fits(b):
            good = b
        else:
            bad = b
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good, trials


def search_buckets(
    shapes: Sequence[BucketShape],
    measure: Measure,
    budget: int,
    margin: int = 0,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: Progress | None = None,
) -> list[BucketResult]:
    """:func:`largest_fitting` for every bucket, longest first (a bucket whose shape equals one
    already searched reuses its result); ``progress`` gets one line per probe."""
    done: dict[tuple[float, int], BucketResult] = {}
    results: dict[int, BucketResult] = {}
    for shape in sorted(shapes, key=lambda s: (-s.seconds, -s.tokens, s.bucket)):
        if shape.key in done:
            earlier = done[shape.key]
            results[shape.bucket] = BucketResult(shape, list(earlier.trials), earlier.batch_size)
            continue

        def probe(b: int, shape: BucketShape = shape) -> int | None:
            peak = measure(shape, b)
            if progress is not None:
                state = "out of memory" if peak is None else f"peak {human_bytes(peak)}"
                verdict = "fits" if peak is not None and peak + margin <= budget else "does not fit"
                progress(
                    f"bucket {shape.bucket} ({shape.seconds:g} s, {shape.tokens} tokens): batch {b}: {state}: {verdict}"
                )
            return peak

        size, trials = largest_fitting(probe, budget, margin, max_batch)
        results[shape.bucket] = done[shape.key] = BucketResult(shape, trials, size)
    return [results[s.bucket] for s in shapes]


# --------------------------------------------------------------------------------------- reports


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.50 KiB`` (three significant digits, bytes whole)."""
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            break
        n /= 1024
    digits = 0 if unit == "B" or abs(n) >= 100 else 1 if abs(n) >= 10 else 2
    return f"{n:.{digits}f} {unit}"


def parse_bytes(text: str) -> int:
    """``"80GiB"``, ``"512 MiB"``, ``"2e9"`` -> bytes; a :class:`ConfigError` for anything else."""
    s = text.strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num) :]
    try:
        value = float(num) * _UNITS[unit]
    except (ValueError, KeyError):
        raise ConfigError(
            f"memory size {text!r}: expected a number with an optional unit, e.g. 80GiB or 512MiB"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"memory size {text!r}: must be positive")
    return int(value)


def _bin_column(shapes: Sequence[BucketShape]) -> Callable[[BucketShape | None], str]:
    """The ``bin`` column of 2D buckets after the bucket number (``""`` when no shape has a 2D bin,
    so 1D tables are unchanged): the header for ``None``, else the shape's cell."""
    labels = [s.bin for s in shapes if s.bin is not None]
    if not labels:
        return lambda s: ""
    width = max(3, *(len(x) for x in labels))
    return lambda s: f"  {'bin' if s is None else s.bin or '-':>{width}}"


def shape_table(shapes: Sequence[BucketShape], model: Any) -> str:
    """The shapes a tune would try, one line per bucket (the dry run's table; 2D buckets get a
    ``bin`` column with their two bounds)."""
    col = _bin_column(shapes)
    lines = [
        f"{'bucket':>6}{col(None)}  {'seconds':>13}  {'samples':>9}  {'tokens':>6}  {'audio frames':>12}  "
        f"{'LM positions':>12}"
    ]
    for s in shapes:
        lines.append(
            f"{s.bucket:>6}{col(s)}  {f'{s.low:g}-{s.seconds:g}':>13}  {s.samples:>9}  {s.tokens:>6}  "
            f"{audio_frames(s, model):>12}  {lm_positions(s, model):>12}"
        )
    return "\n".join(lines)


def result_table(results: Sequence[BucketResult], model: Any) -> str:
    """Per bucket: the worst-case shape (2D buckets: a ``bin`` column with their two bounds), the
    chosen size and its peak, and every probe."""
    col = _bin_column([r.shape for r in results])
    lines = [
        f"{'bucket':>6}{col(None)}  {'seconds':>13}  {'tokens':>6}  {'LM positions':>12}  {'batch':>6}  "
        f"{'peak':>10}  probes",
    ]
    for r in results:
        s = r.shape
        chosen = r.chosen
        peak = human_bytes(chosen.peak) if chosen is not None and chosen.peak is not None else "-"
        probes = " ".join(
            f"{t.batch_size}:{'OOM' if t.peak is None else human_bytes(t.peak).replace(' ', '')}{'' if t.fits else 'x'}"
            for t in r.trials
        )
        lines.append(
            f"{s.bucket:>6}{col(s)}  {f'{s.low:g}-{s.seconds:g}':>13}  {s.tokens:>6}  "
            f"{lm_positions(s, model):>12}  {r.batch_size:>6}  {peak:>10}  {probes}"
        )
    lines.append("probes: batch:peak, 'x' = over the budget, OOM = out of memory")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- output


def tuned_values(
    bins: Sequence[float] | Sequence[tuple[float, float]], results: Sequence[BucketResult], ds: DatasetConfig
) -> dict[str, Any]:
    """The dataset keys of a tune: ``bucket_duration_bins`` (2D bins as the same pairs) and
    ``bucketing_batch_size`` (one size per bucket in the loader's order: shortest bucket first,
    2D buckets in the pairs' order), plus ``batch_duration: null`` when the config had dynamic
    batches (the two cannot be combined)."""
    values: dict[str, Any] = {
        "bucket_duration_bins": (
            [[float(a), float(b)] for a, b in bins]  # type: ignore[misc]
            if bins_are_2d(bins)
            else [float(b) for b in bins]  # type: ignore[arg-type]
        ),
        "bucketing_batch_size": [int(r.batch_size) for r in results],
    }
    if ds.batch_duration is not None:
        values["batch_duration"] = None
    return values


def tuned_overrides(path: str, values: Mapping[str, Any]) -> list[str]:
    """``values`` as dotted ``key=value`` overrides under the section ``path``."""
    return [f"{path}.{k}={'null' if v is None else v}".replace(" ", "") for k, v in values.items()]


def tuned_yaml(path: str, values: Mapping[str, Any], header: Sequence[str] = ()) -> str:
    """YAML with ``values`` nested at the dotted section ``path`` (``model.train_ds``), so that
    ``OmegaConf.merge(config, tuned)`` sets them; ``header`` lines become comments."""
    node: dict[str, Any] = dict(values)
    for part in reversed(path.split(".")):
        node = {part: node}
    comments = "".join(f"# {line}\n" for line in header)
    return comments + yaml.safe_dump(node, sort_keys=False, default_flow_style=None)


# ------------------------------------------------------------------------------------ the plan


@dataclass
class TunePlan:
    """What a tune needs before anything runs: the checked config, the section, bins and shapes,
    and ``note``, one line the tables need (:func:`shape_note`) or ``None``."""

    cfg: DictConfig
    setup: TrainSetup
    path: str
    bins: list[float] | list[tuple[float, float]]
    shapes: list[BucketShape]
    precision: str
    note: str | None = None


def prepare(cfg: DictConfig, *, tokenizer: Any = None) -> TunePlan:
    """Check ``cfg`` as ``speechdata train`` does (manifests are not required; a dataset section's
    ``manifest_filepath`` left ``???`` counts as unset) and find the buckets' worst-case shapes.
    Bins estimated from data are the loader's (it indexes the manifests); so are, with 2D bins and
    manifests, the prompt tokens of each bucket (:func:`loader_prompt_tokens`)."""
    from speechdata.train.run import PRECISIONS, check_config

    cfg = cfg.copy()
    for name in ("train_ds", "validation_ds"):
        try:
            node, _ = find_section(cfg, name)
        except ConfigError:
            continue
        if OmegaConf.is_missing(node, "manifest_filepath"):
            node.manifest_filepath = None
    setup = check_config(cfg, tokenizer=tokenizer, manifests_of=())
    path = find_section(cfg, "train_ds")[1]
    raw_precision = OmegaConf.select(cfg, "trainer.precision", default="32")
    precision = PRECISIONS.get(str(raw_precision))
    if precision is None:
        raise ConfigError(f"trainer.precision: {raw_precision!r} is not one of {', '.join(PRECISIONS)}")

    built: list[SpeechDataLoader] = []

    def loader() -> SpeechDataLoader:
        if not built:
            from speechdata.loader import build_dataloader

            built.append(build_dataloader(setup.train_ds, setup.tokenizer))
        return built[0]

    def estimate() -> np.ndarray | None:
        sampler = loader().sampler
        if sampler is None or sampler.buckets.bins is None:
            return None
        return np.asarray(sampler.buckets.bins)

    ds = setup.train_ds
    bins = bucket_bins(ds, path, estimate)
    prompt = None
    if bins_are_2d(bins) and not ds.use_multimodal_sampling and ds.manifests:
        prompt = loader_prompt_tokens(loader())
    shapes = bucket_shapes(ds, bins, path, prompt)
    return TunePlan(cfg, setup, path, bins, shapes, precision, shape_note(ds, shapes, prompt))


def stderr_progress(line: str) -> None:
    """Progress to stderr (flushed)."""
    print(line, file=sys.stderr, flush=True)
