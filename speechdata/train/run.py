"""Training from a NeMo-shaped config: build everything and fit (the command is ``speechdata train``,
:mod:`speechdata.commands.train`).

:func:`train` reads the config's sections (see ``docs/training.md`` for every key):

* ``trainer`` -> ``lightning.pytorch.Trainer`` keyword arguments (:func:`trainer_kwargs`): precision
  names mapped to Lightning's, CPU fallback when a GPU is asked for but CUDA is absent,
  ``accumulate_grad_batches`` computed from the batch sizes, ``use_distributed_sampler=False``
  (speechdata deals data to ranks itself);
* ``exp_manager`` -> folder, loggers, checkpoints, resume and EMA (:mod:`.exp_manager`), and the
  data figures (:mod:`.observe`: waiting for data, rates, padding, drops, datasets);
* ``optim`` (top level or ``model.optim``) -> optimiser and schedule (:mod:`.optim`);
* ``model`` -> tokenizer (``model.tokenizer.model``), loaders (``model.train_ds``,
  ``model.validation_ds``) and the SALM / BESTOW architecture (:mod:`.models.config`).

The config is checked first (:func:`check_config`: dataset sections, batch sizes, tokenizer file,
model section, manifest files), before Lightning is imported or anything is built, so a mistake
is one line naming the key. The training loader is wrapped so that checkpoints hold its exact
position (:mod:`.data`).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from speechdata.config import DatasetConfig, dataset_config, find_section, has_section, suggest
from speechdata.errors import ConfigError

if TYPE_CHECKING:  # Lightning, torch and the models are imported once the config has been checked
    import lightning.pytorch as pl

    from speechdata.train.models import ModelConfig
    from speechdata.train.module import SpeechLMModule

log = logging.getLogger("speechdata")

#: NeMo / Lightning 1.x precision names -> Lightning 2 names.
PRECISIONS: dict[str, str] = {
    "16": "16-mixed",
    "16-mixed": "16-mixed",
    "16-true": "16-true",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "bf16-true": "bf16-true",
    "32": "32-true",
    "32-true": "32-true",
    "64": "64-true",
    "64-true": "64-true",
}
#: ``trainer`` keys handled here rather than passed through.
_HANDLED = {
    "resume_from_checkpoint",
    "logger",
    "enable_checkpointing",
    "accumulate_grad_batches",
    "replace_sampler_ddp",
}


@dataclass
class TrainerPlan:
    """Resolved Trainer arguments and the numbers derived on the way."""

    kwargs: dict[str, Any]
    data_parallel_size: int
    accumulate_grad_batches: int
    cpu_fallback: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    log_dir: str
    global_step: int
    consumed_samples: int
    best_model_path: str | None
    last_model_path: str | None
    metrics: dict[str, float]
    trainer: pl.Trainer
    module: SpeechLMModule


def accumulation(global_batch_size: int, micro_batch_size: int, data_parallel_size: int) -> int:
    """``global / (micro * data-parallel)``; a :class:`ConfigError` unless it is a positive integer."""
    per_step = micro_batch_size * data_parallel_size
    if per_step <= 0 or global_batch_size % per_step or global_batch_size < per_step:
        raise ConfigError(
            f"global_batch_size {global_batch_size} is not a multiple of micro_batch_size {micro_batch_size} "
            f"x data-parallel size {data_parallel_size}; gradient accumulation must be a whole number of steps"
        )
    return global_batch_size // per_step


def _count_devices(devices: Any, accelerator: str, cuda_count: int) -> int:
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if devices in ("auto", -1, None):
        return max(cuda_count, 1) if accelerator == "gpu" else 1
    if isinstance(devices, int) and devices >= 0:
        return max(devices, 1)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    raise ConfigError(f"trainer.devices: expected an int, a list of GPU ids or 'auto'; got {devices!r}")


def trainer_kwargs(
    cfg: DictConfig, *, global_batch_size: int, micro_batch_size: int, cuda_count: int | None = None
) -> TrainerPlan:
    """Map the ``trainer`` section to Lightning ``Trainer`` keyword arguments (see module docstring)."""
    import lightning.pytorch as pl
    import torch

    node = cfg.get("trainer") or {}
    tr = dict(OmegaConf.to_container(node, resolve=True)) if isinstance(node, DictConfig) else dict(node)
    known = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    for key in tr:
        if key not in known and key not in _HANDLED:
            raise ConfigError(f"trainer.{key}: not a Lightning Trainer argument{suggest(key, sorted(known))}")
    cuda_count = torch.cuda.device_count() if cuda_count is None else cuda_count
    notes: list[str] = []
    accelerator = str(tr.pop("accelerator", "auto"))
    devices = tr.pop("devices", "auto")
    precision = PRECISIONS.get(str(tr.pop("precision", "32")))
    if precision is None:
        raise ConfigError(
            f"trainer.precision: {node.get('precision')!r} is not one of {', '.join(PRECISIONS)}"
        )
    if accelerator in ("gpu", "cuda"):
        accelerator = "gpu"
    if devices == 0:  # NeMo: "0 for CPU"
        accelerator, devices = "cpu", 1
    if accelerator == "auto":
        accelerator = "gpu" if cuda_count > 0 else "cpu"
    fallback = False
    if accelerator == "gpu" and cuda_count == 0:
        fallback = True
        notes.append(
            f"trainer.accelerator=gpu (devices={devices}, precision={precision}) but no CUDA device is visible: "
            "running on the CPU with devices=1 and precision 32-true (mixed precision on CPU is slow or unsupported)"
        )
        accelerator, devices, precision = "cpu", 1, "32-true"
    if accelerator == "cpu" and precision in ("16-mixed", "16-true"):
        raise ConfigError(f"trainer.precision: {precision} needs a GPU; use bf16-mixed or 32 on the CPU")
    n_devices = _count_devices(devices, accelerator, cuda_count)
    num_nodes = int(tr.get("num_nodes", 1))
    model = cfg.get("model") or {}
    tp = int(model.get("tensor_model_parallel_size", 1) or 1)
    pp = int(model.get("pipeline_model_parallel_size", 1) or 1)
    if tp != 1 or pp != 1:
        raise ConfigError(
            "model.tensor/pipeline_model_parallel_size: the bundled trainer supports only 1 (data parallel)"
        )
    dp = n_devices * num_nodes
    accum = accumulation(global_batch_size, micro_batch_size, dp)
    given = tr.get("accumulate_grad_batches", 1)
    if given not in (1, accum):
        raise ConfigError(
            f"trainer.accumulate_grad_batches: {given} conflicts with global_batch_size / (micro_batch_size x "
            f"data-parallel size) = {accum}; leave it at 1 (it is computed)"
        )
    if tr.pop("logger", False) or tr.pop("enable_checkpointing", False):
        notes.append("trainer.logger / trainer.enable_checkpointing are provided by exp_manager; ignored")
    for key in _HANDLED:
        tr.pop(key, None)
    tr.update(
        accelerator=accelerator,
        devices=devices if accelerator == "gpu" else n_devices,
        precision=precision,
        accumulate_grad_batches=accum,
        use_distributed_sampler=False,
    )
    # Lightning reads the train loader's length once and ends every epoch at that many batches
    # unless it reloads the loader each epoch; with dynamic batches epochs differ in length, so a
    # longer epoch would lose its last batches: ask for the length every epoch (the same loader)
    if not tr.get("reload_dataloaders_every_n_epochs"):
        tr["reload_dataloaders_every_n_epochs"] = 1
    if dp > 1 and "strategy" not in tr:
        tr["strategy"] = "ddp"
    return TrainerPlan(tr, dp, accum, fallback, notes)


#: Epochs whose lengths :func:`schedule_steps` plans one by one (beyond, the first one's length
#: stands for each): planning one rank's epoch of 10M examples takes 3-5 s (docs/scale.md).
EXACT_SCHEDULE_EPOCHS = 16


def schedule_steps(loader: Any, epochs: int, accumulate: int) -> int:
    """Optimiser steps of ``epochs`` epochs of ``loader`` (``accumulate`` batches per step; an
    epoch's partial last step counts, as Lightning takes it). With dynamic batches
    (``batch_duration`` / ``batch_tokens``) epochs differ in length: each epoch's own length
    (``loader.epoch_length``), for at most :data:`EXACT_SCHEDULE_EPOCHS` epochs; otherwise
    ``epochs`` times the first epoch's length."""
    epochs = max(epochs, 1)
    cfg = getattr(loader, "cfg", None)
    dynamic = cfg is not None and (cfg.batch_duration is not None or cfg.batch_tokens is not None)
    length = getattr(loader, "epoch_length", None)
    if dynamic and length is not None and epochs <= EXACT_SCHEDULE_EPOCHS:
        lengths = [
            length(e) for e in reversed(range(epochs))
        ]  # epoch 0 last: its plan stays cached for the run
        if all(n is not None for n in lengths):
            return sum(math.ceil(n / accumulate) for n in lengths)  # type: ignore[operator]
    return epochs * math.ceil(len(loader) / accumulate)


def _optim_section(cfg: DictConfig) -> dict[str, Any]:
    top, inner = cfg.get("optim"), (cfg.get("model") or {}).get("optim")
    if top is not None and inner is not None:
        raise ConfigError("optim: given both at the top level and as model.optim; keep one")
    section = top if top is not None else inner
    if section is None:
        raise ConfigError("optim: missing (need at least optim.name and optim.lr)")
    return dict(OmegaConf.to_container(section, resolve=True))  # type: ignore[arg-type]


def _required(cfg: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=True)
    except MissingMandatoryValue:
        raise ConfigError(f"{key}: required value is missing (still '???')") from None
    if value is None:
        raise ConfigError(f"{key}: required value is missing")
    return value


@dataclass
class TrainSetup:
    """A config checked by :func:`check_config`: its dataset sections, tokenizer and model."""

    train_ds: DatasetConfig
    val_ds: DatasetConfig | None
    tokenizer: Any
    model: ModelConfig
    optim: dict[str, Any]


def check_config(
    cfg: DictConfig, *, tokenizer: Any = None, manifests_of: Sequence[str] = ("train_ds", "validation_ds")
) -> TrainSetup:
    """Check everything :func:`train` reads that needs neither Lightning nor data, in this order:

    the dataset sections (``train_ds``, optional ``validation_ds``; found as
    :func:`speechdata.config.find_section` says), ``model.micro_batch_size`` /
    ``model.global_batch_size`` against ``train_ds``, the tokenizer (``model.tokenizer.model``,
    loaded unless ``tokenizer`` is given), the ``model`` and ``optim`` sections (names and types;
    optimiser values are checked when it is built), and that every manifest file of
    the sections in ``manifests_of`` exists. The first problem is a one-line :class:`ConfigError`.
    """
    train_ds = dataset_config(cfg, "train_ds")
    val_ds = dataset_config(cfg, "validation_ds") if has_section(cfg, "validation_ds") else None
    model = cfg.get("model") or {}
    for key in ("global_batch_size", "micro_batch_size"):
        if key in model and model.get(key) != getattr(train_ds, key):
            raise ConfigError(
                f"model.{key}: {model.get(key)} differs from model.train_ds.{key} {getattr(train_ds, key)}"
            )
    if tokenizer is None:
        tokenizer = _load_tokenizer(cfg)
    if tokenizer.eos_id is None:
        raise ConfigError("model.tokenizer.model: the tokenizer has no EOS id (needed to stop generation)")
    from speechdata.train.models import model_config

    mcfg = model_config(
        cfg.model,
        vocab_size=tokenizer.vocab_size,
        pad_id=tokenizer.pad_id,
        eos_id=tokenizer.eos_id,
        bos_id=tokenizer.bos_id,
        sample_rate=train_ds.sample_rate,
    )
    if train_ds.features is not None and train_ds.features != mcfg.features:
        raise ConfigError(
            "model.train_ds.features differ from model.perception.preprocessor: the loader's features must be "
            "the ones the encoder expects"
        )
    optim = _optim_section(cfg)
    for name, ds in (("train_ds", train_ds), ("validation_ds", val_ds)):
        if ds is not None and name in manifests_of:
            _check_manifests(ds, find_section(cfg, name)[1])
    return TrainSetup(train_ds, val_ds, tokenizer, mcfg, optim)


def _load_tokenizer(cfg: DictConfig) -> Any:
    from speechdata.text.tokenizer import load_tokenizer

    key = "model.tokenizer.model"
    path = str(_required(cfg, key))
    if not Path(os.path.expanduser(path)).exists():
        raise ConfigError(f"{key}: tokenizer file not found: {path}")
    try:
        return load_tokenizer(path)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None


def _check_manifests(ds: DatasetConfig, path: str) -> None:
    """Every manifest of a dataset section exists (the loader reads them only later)."""
    if not ds.manifests:
        raise ConfigError(f"{path}.manifest_filepath: no manifest given")
    for m in ds.manifests:
        if not Path(os.path.expanduser(m)).is_file():
            raise ConfigError(f"{path}.manifest_filepath: manifest not found: {m}")


def build_module(cfg: DictConfig, setup: TrainSetup, *, max_steps: int) -> SpeechLMModule:
    """The LightningModule (model from the checked ``model`` section, optimiser from ``optim``)."""
    from speechdata.train.models import build_model
    from speechdata.train.module import SpeechLMModule

    return SpeechLMModule(
        build_model(setup.model),
        setup.optim,
        max_steps=max_steps,
        tokens_to_generate=setup.val_ds.tokens_to_generate if setup.val_ds is not None else 0,
        decode=setup.tokenizer.decode,
        config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
    )


def train(
    cfg: DictConfig,
    *,
    tokenizer: Any = None,
    train_loader: Any = None,
    val_loader: Any = None,
    callbacks: Sequence[pl.Callback] = (),
) -> TrainResult:
    """Train from a config and return where it ended.

    ``tokenizer`` (anything with ``vocab_size``, ``pad_id``, ``bos_id``, ``eos_id``, ``decode``) and
    the loaders may be given; otherwise they are built from ``model.tokenizer.model`` and the
    dataset sections with :func:`speechdata.build_dataloader`. ``callbacks`` are added to the
    Trainer's. The config is checked by :func:`check_config` before anything else.
    """
    to_build = [
        name for name, given in (("train_ds", train_loader), ("validation_ds", val_loader)) if given is None
    ]
    setup = check_config(cfg, tokenizer=tokenizer, manifests_of=to_build)
    train_ds = setup.train_ds

    import lightning.pytorch as pl
    import torch

    from speechdata.train.data import EvalLoader, LoaderStateCallback, ResumableLoader
    from speechdata.train.exp_manager import setup_experiment

    plan = trainer_kwargs(
        cfg, global_batch_size=train_ds.global_batch_size, micro_batch_size=train_ds.micro_batch_size
    )
    for note in plan.notes:
        log.warning("%s", note)
    model = cfg.get("model") or {}
    seed = int(model.get("seed", train_ds.seed) or 0)
    pl.seed_everything(seed, workers=True, verbose=False)

    exp = setup_experiment(cfg)
    raw_trainer = OmegaConf.select(cfg, "trainer.resume_from_checkpoint", default=None)
    ckpt_path = raw_trainer or exp.ckpt_path
    kwargs = dict(plan.kwargs)
    kwargs.update(logger=exp.loggers or False, enable_checkpointing=exp.checkpoint is not None)
    kwargs["default_root_dir"] = str(exp.log_dir)
    trainer = pl.Trainer(callbacks=[*exp.callbacks, *callbacks], **kwargs)

    device = trainer.strategy.root_device if plan.kwargs["accelerator"] == "gpu" else None
    if train_loader is None or (val_loader is None and setup.val_ds is not None):
        from speechdata.loader import build_dataloader

        if train_loader is None:
            train_loader = build_dataloader(
                train_ds,
                setup.tokenizer,
                device=device,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
            )
        if val_loader is None and setup.val_ds is not None:
            val_loader = build_dataloader(
                setup.val_ds,
                setup.tokenizer,
                device=device,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
            )
    if exp.data_log_every_n_steps > 0:  # the data figures (docs/training.md): waits, rates, padding, drops
        from speechdata.train.observe import DataFigures

        figures = DataFigures(
            train_loader,
            sample_rate=train_ds.sample_rate,
            every_n_steps=exp.data_log_every_n_steps,
            console=exp.data_log_console,
        )
        trainer.callbacks.insert(0, figures)  # before checkpointing, which must not count as step time
        train_loader = figures.loader  # a TimedLoader: counts the time spent waiting for batches
    wrapped = ResumableLoader(train_loader)
    if val_loader is not None:
        val_loader = EvalLoader(val_loader)
    trainer.callbacks.insert(0, LoaderStateCallback(wrapped))

    max_steps = int(plan.kwargs.get("max_steps", -1) or -1)
    if max_steps <= 0:  # the schedule's length: the optimiser steps of max_epochs epochs
        max_steps = schedule_steps(
            train_loader, int(plan.kwargs.get("max_epochs") or 1), plan.accumulate_grad_batches
        )
    module = build_module(cfg, setup, max_steps=max_steps)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(
            module,
            train_dataloaders=wrapped,
            val_dataloaders=val_loader,
            ckpt_path=ckpt_path,
            weights_only=True,
        )
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
    }
    ckpt = exp.checkpoint
    return TrainResult(
        log_dir=str(exp.log_dir),
        global_step=trainer.global_step,
        consumed_samples=module.consumed_samples,
        best_model_path=(ckpt.best_model_path or None) if ckpt else None,
        last_model_path=(ckpt.last_model_path or None) if ckpt else None,
        metrics=metrics,
        trainer=trainer,
        module=module,
    )
