"""NeMo-style experiment manager: experiment folder, loggers, checkpoints, resume, EMA.

Layout (as NeMo): ``exp_dir/name/version/`` with ``checkpoints/``, the TensorBoard event files and
``hparams.yaml`` (the resolved config). ``exp_dir`` defaults to ``./nemo_experiments``, ``name`` to
``default``. ``version`` is ``exp_manager.version`` if set; else, with ``resume_if_exists``, there is
no version folder (so a rerun finds the previous run's checkpoints, as NeMo); else a
``YYYY-mm-dd_HH-MM-SS`` timestamp (suffixed ``_1``, ``_2``... if that folder exists).

Checkpoints: ``ModelCheckpoint`` in ``checkpoints/`` named by ``checkpoint_callback_params.filename``
(metrics such as ``{consumed_samples}`` or ``{reduced_train_loss:.2f}`` filled in), the last one
also saved as ``<filename>-last.ckpt``; ``save_top_k`` / ``monitor`` / ``mode``,
``every_n_train_steps`` / ``every_n_epochs`` (at most one of them > 0).

Resume: ``resume_from_checkpoint`` (a path) wins; else with ``resume_if_exists`` the newest
``*-last.ckpt`` in ``checkpoints/`` is resumed; none found is an error unless
``resume_ignore_no_checkpoint``.

Data figures (:mod:`.observe`, added by :func:`speechdata.train.run.train`): every
``data_log_every_n_steps`` steps (default ``trainer.log_every_n_steps``; 0: off), printed on the
console too unless ``data_log_console: false``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from speechdata.config import check_keys, coerce
from speechdata.errors import ConfigError
from speechdata.train.ema import EMA

EXP_KEYS = (
    "exp_dir",
    "name",
    "version",
    "use_datetime_version",
    "explicit_log_dir",
    "create_tensorboard_logger",
    "summary_writer_kwargs",
    "create_wandb_logger",
    "wandb_logger_kwargs",
    "create_checkpoint_callback",
    "checkpoint_callback_params",
    "resume_if_exists",
    "resume_ignore_no_checkpoint",
    "resume_from_checkpoint",
    "ema",
    "log_step_timing",
    "log_local_rank_0_only",
    "log_global_rank_0_only",
    "data_log_every_n_steps",
    "data_log_console",
)
CKPT_KEYS = (
    "monitor",
    "save_top_k",
    "mode",
    "every_n_epochs",
    "every_n_train_steps",
    "filename",
    "save_last",
    "save_weights_only",
    "train_time_interval",
    "save_on_train_epoch_end",
    "verbose",
    "dirpath",
    # NeMo-only keys, accepted and ignored (no .nemo archives here)
    "always_save_nemo",
    "save_nemo_on_train_end",
    "save_best_model",
    "model_parallel_size",
)
_NEMO_ONLY = {"always_save_nemo", "save_nemo_on_train_end", "save_best_model", "model_parallel_size"}
EMA_KEYS = ("enable", "decay", "validate_original_weights", "every_n_steps", "cpu_offload")
LAST_SUFFIX = "-last"
#: Lightning's ``log_every_n_steps`` when the trainer section does not set it.
LIGHTNING_LOG_EVERY = 50


@dataclass
class Experiment:
    """What :func:`setup_experiment` prepared for the Trainer."""

    log_dir: Path
    loggers: list[Logger] = field(default_factory=list)
    callbacks: list[pl.Callback] = field(default_factory=list)
    ckpt_path: str | None = None
    checkpoint: ModelCheckpoint | None = None
    ema: EMA | None = None
    data_log_every_n_steps: int = 0
    data_log_console: bool = True


class SpeechCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose last checkpoint is named ``<filename template>-last``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.CHECKPOINT_NAME_LAST = (self.filename or "{epoch}-{step}") + LAST_SUFFIX


def _section(cfg: DictConfig | Mapping[str, Any] | None, known: tuple[str, ...], path: str) -> dict[str, Any]:
    if cfg is None:
        return {}
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    check_keys(data, known, path)
    return data


def resolve_log_dir(exp: Mapping[str, Any]) -> Path:
    """``exp_dir/name/version`` following NeMo's rules (see the module docstring)."""
    if exp.get("explicit_log_dir"):
        return Path(exp["explicit_log_dir"])
    base = Path(exp.get("exp_dir") or "./nemo_experiments") / str(exp.get("name") or "default")
    version = exp.get("version")
    if version:
        return base / str(version)
    if exp.get("resume_if_exists", False):
        return base
    if not exp.get("use_datetime_version", True):
        n = 0
        while (base / f"version_{n}").exists():
            n += 1
        return base / f"version_{n}"
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    path, n = base / stamp, 0
    while path.exists():
        n += 1
        path = base / f"{stamp}_{n}"
    return path


def find_last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest ``*-last*.ckpt`` in ``ckpt_dir`` (``None`` if there is none)."""
    if not ckpt_dir.is_dir():
        return None
    found = [p for p in ckpt_dir.glob("*.ckpt") if LAST_SUFFIX in p.stem]
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name)) if found else None


def _checkpoint_callback(params: dict[str, Any], ckpt_dir: Path, name: str) -> SpeechCheckpoint:
    ignored = sorted(_NEMO_ONLY & set(params))
    if ignored:
        warnings.warn(
            f"exp_manager.checkpoint_callback_params: {', '.join(ignored)} ignored (no .nemo files)",
            stacklevel=3,
        )
    kwargs = {k: v for k, v in params.items() if k not in _NEMO_ONLY}
    kwargs.setdefault("monitor", "val_loss")
    kwargs.setdefault("save_top_k", 3)
    kwargs.setdefault("save_last", True)
    kwargs.setdefault("filename", f"{name}--{{{kwargs['monitor']}:.4f}}-{{epoch}}")
    kwargs["dirpath"] = str(kwargs.get("dirpath") or ckpt_dir)
    every_steps = int(kwargs.pop("every_n_train_steps", 0) or 0)
    every_epochs = kwargs.pop("every_n_epochs", None)
    if every_steps > 0 and every_epochs:
        raise ConfigError(
            "exp_manager.checkpoint_callback_params: every_n_train_steps and every_n_epochs are mutually "
            "exclusive; set one of them to 0"
        )
    if every_steps > 0:
        kwargs["every_n_train_steps"] = every_steps
    elif every_epochs is not None:
        kwargs["every_n_epochs"] = int(every_epochs)
    try:
        return SpeechCheckpoint(auto_insert_metric_name=True, **kwargs)
    except (TypeError, ValueError, pl.utilities.exceptions.MisconfigurationException) as e:
        raise ConfigError(f"exp_manager.checkpoint_callback_params: {e}") from None


def setup_experiment(cfg: DictConfig, *, is_global_zero: bool = True) -> Experiment:
    """Create the experiment folder, loggers, checkpoint and EMA callbacks, and find the resume point.

    ``cfg`` is the whole config; ``cfg.exp_manager`` is read (all keys optional).
    """
    exp = _section(cfg.get("exp_manager"), EXP_KEYS, "exp_manager")
    exp.setdefault("name", cfg.get("name") or "default")
    every, console = data_log_settings(cfg, exp)
    log_dir = resolve_log_dir(exp)
    ckpt_dir = log_dir / "checkpoints"
    result = Experiment(log_dir=log_dir, data_log_every_n_steps=every, data_log_console=console)
    if is_global_zero:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "hparams.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")

    if exp.get("create_tensorboard_logger", True):
        tb_kwargs = dict(exp.get("summary_writer_kwargs") or {})
        result.loggers.append(
            TensorBoardLogger(
                save_dir=str(log_dir), name="", version="", default_hp_metric=False, **tb_kwargs
            )
        )
    if exp.get("create_wandb_logger", False):
        try:
            import wandb  # noqa: F401
        except ImportError:
            warnings.warn(
                "exp_manager.create_wandb_logger is true but wandb is not installed; skipping the W&B logger "
                "(pip install wandb, or set create_wandb_logger: false)",
                stacklevel=2,
            )
        else:
            from lightning.pytorch.loggers import WandbLogger

            result.loggers.append(
                WandbLogger(save_dir=str(log_dir), **dict(exp.get("wandb_logger_kwargs") or {}))
            )

    ema = _section(exp.get("ema"), EMA_KEYS, "exp_manager.ema")
    if ema.get("enable", False):
        try:
            result.ema = EMA(
                decay=float(ema.get("decay", 0.999)),
                every_n_steps=int(ema.get("every_n_steps", 1)),
                validate_original_weights=bool(ema.get("validate_original_weights", False)),
                cpu_offload=bool(ema.get("cpu_offload", False)),
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
        result.callbacks.append(result.ema)

    if exp.get("create_checkpoint_callback", True):
        params = _section(
            exp.get("checkpoint_callback_params"), CKPT_KEYS, "exp_manager.checkpoint_callback_params"
        )
        result.checkpoint = _checkpoint_callback(params, ckpt_dir, str(exp["name"]))
        result.callbacks.append(result.checkpoint)

    result.ckpt_path = _resume_path(exp, ckpt_dir)
    return result


def data_log_settings(cfg: DictConfig, exp: Mapping[str, Any]) -> tuple[int, bool]:
    """``(every_n_steps, console)`` of the data figures (:mod:`.observe`): ``exp_manager.
    data_log_every_n_steps`` (an int >= 0, 0 turns them off; default ``trainer.log_every_n_steps``,
    else Lightning's default, 50) and ``exp_manager.data_log_console`` (default true)."""
    key = "exp_manager.data_log_every_n_steps"
    every = exp.get("data_log_every_n_steps")
    if every is None:
        key = "trainer.log_every_n_steps"
        every = OmegaConf.select(cfg, key, default=None)
    if every is None:
        every = LIGHTNING_LOG_EVERY
    every = coerce(every, int, key)
    if every < 0:
        raise ConfigError(f"{key}: must be >= 0 (0 turns the data figures off); got {every}")
    console = coerce(exp.get("data_log_console", True), bool, "exp_manager.data_log_console")
    return every, console


def _resume_path(exp: Mapping[str, Any], ckpt_dir: Path) -> str | None:
    explicit = exp.get("resume_from_checkpoint")
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(f"exp_manager.resume_from_checkpoint: {explicit}: no such checkpoint file")
        return str(explicit)
    if not exp.get("resume_if_exists", False):
        return None
    last = find_last_checkpoint(ckpt_dir)
    if last is not None:
        return str(last)
    if exp.get("resume_ignore_no_checkpoint", False):
        warnings.warn(
            f"resume_if_exists: no *{LAST_SUFFIX}.ckpt in {ckpt_dir}; training from scratch", stacklevel=3
        )
        return None
    raise ConfigError(
        f"exp_manager.resume_if_exists: no *{LAST_SUFFIX}.ckpt in {ckpt_dir} "
        "(set resume_ignore_no_checkpoint: true to start from scratch)"
    )
