"""Tests of the Lightning side: exp dir layout, checkpoint naming, resume (exact data position), EMA state.

The loader here is an in-memory stand-in with the speechdata loader's interface (``len``,
``set_epoch``, ``state_dict``/``load_state_dict`` counting consumed batches), so these tests do not
depend on manifests or audio files.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf

from speechdata.errors import ConfigError
from speechdata.train.exp_manager import find_last_checkpoint, resolve_log_dir
from speechdata.train.run import train
from speechdata.train.synthetic import SyntheticSpec, synthetic_batch

SYNTH = SyntheticSpec(vocab_size=24, num_classes=4, max_audios=2, min_seconds=0.1, max_seconds=0.25)


class FakeLoader:
    """Deterministic batches per (epoch, index); position = batches consumed, as speechdata's loader."""

    def __init__(self, batches_per_epoch: int = 5, batch_size: int = 2) -> None:
        self.n = batches_per_epoch
        self.batch_size = batch_size
        self.epoch = 0
        self.consumed = 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        while self.consumed < self.n:
            seed = self.epoch * 100 + self.consumed
            self.consumed += 1
            yield synthetic_batch(SYNTH, self.batch_size, seed)
        self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.consumed = state["epoch"], state["batch"]


class FakeTokenizer:
    vocab_size = SYNTH.vocab_size
    pad_id = SYNTH.pad_id
    bos_id = SYNTH.bos_id
    eos_id = SYNTH.eos_id

    @staticmethod
    def decode(ids: list[int]) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids)


class Recorder(pl.Callback):
    """Records the sample ids of every batch the model trained on."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.seen.append(batch["sample_ids"].tolist())


def make_cfg(exp_dir: Path, max_steps: int, **exp: Any) -> Any:
    cfg = {
        "name": "tiny",
        "trainer": {
            "devices": 1,
            "accelerator": "cpu",
            "precision": 32,
            "max_steps": max_steps,
            "max_epochs": -1,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "enable_checkpointing": False,
            "val_check_interval": 2,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 1,
        },
        "exp_manager": {
            "exp_dir": str(exp_dir),
            "name": "${name}",
            "create_tensorboard_logger": True,
            "create_wandb_logger": False,
            "checkpoint_callback_params": {
                "monitor": "reduced_train_loss",
                "save_top_k": 2,
                "every_n_epochs": 0,
                "every_n_train_steps": 2,
                "filename": "${name}--{reduced_train_loss:.2f}-{step}-{consumed_samples}",
            },
            "resume_if_exists": True,
            "resume_ignore_no_checkpoint": True,
            "ema": {"enable": True, "decay": 0.9, "every_n_steps": 1},
            **exp,
        },
        # the schedule's max_steps is fixed so that runs with different trainer.max_steps share it
        "optim": {
            "name": "fused_adam",
            "lr": 3e-3,
            "sched": {"name": "CosineAnnealing", "warmup_steps": 2, "max_steps": 8},
        },
        "model": {
            "arch": "salm",
            "seed": 7,
            "tokenizer": {"model": "unused"},
            "llm": {"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "ffn_hidden_size": 64},
            "perception": {
                "preprocessor": {"n_mels": 16},
                "encoder": {"d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "dropout": 0.0},
                "modality_adapter": {"hidden_size": 32},
            },
            "train_ds": {"manifest_filepath": "unused.jsonl", "global_batch_size": 4, "micro_batch_size": 2},
            "validation_ds": {"manifest_filepath": "unused.jsonl", "tokens_to_generate": 3},
        },
    }
    return OmegaConf.create(cfg)


def run(cfg: Any, loader: Any = None) -> tuple[Any, Recorder]:
    """Train ``cfg`` on ``loader`` (a :class:`FakeLoader` of 5 batches by default)."""
    rec = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(
            cfg,
            tokenizer=FakeTokenizer(),
            train_loader=loader if loader is not None else FakeLoader(),
            val_loader=FakeLoader(2),
            callbacks=[rec],
        )
    return result, rec


def test_exp_dir_checkpoints_and_exact_resume(tmp_path: Path) -> None:
    # interrupted run: 4 optimiser steps with accumulation 2 over epochs of 5 micro-batches: steps end after
    # micro-batches 2, 4, 5 (end of epoch 0: a partial accumulation) and 7 (epoch 1, batch 2: resumes mid-epoch)
    first, rec1 = run(make_cfg(tmp_path / "a", max_steps=4))
    log_dir = Path(first.log_dir)
    assert log_dir == tmp_path / "a" / "tiny"  # resume_if_exists: no version folder (NeMo)
    assert (log_dir / "hparams.yaml").is_file()
    assert OmegaConf.load(log_dir / "hparams.yaml").exp_manager.name == "tiny"  # resolved
    assert list(log_dir.glob("events.out.tfevents.*")), "TensorBoard logs in the exp dir"
    names = sorted(p.name for p in (log_dir / "checkpoints").glob("*.ckpt"))
    pattern = re.compile(
        r"tiny--reduced_train_loss=\d+\.\d\d-step=(\d+)-consumed_samples=(\d+)\.0(-last)?\.ckpt"
    )
    parsed = [pattern.fullmatch(n) for n in names]
    assert all(parsed), names
    assert {(m.group(1), m.group(2)) for m in parsed} == {("2", "8"), ("4", "14")}  # type: ignore[union-attr]
    assert sum(1 for m in parsed if m.group(3)) == 1  # type: ignore[union-attr]
    assert first.global_step == 4 and first.consumed_samples == 14
    assert len(rec1.seen) == 7
    last = find_last_checkpoint(log_dir / "checkpoints")
    assert last is not None and "step=4" in last.name
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["consumed_samples"] == 14
    # the data position in the one position format (the fake loader knows no seed, rank or world size)
    assert ckpt["speechdata_loader"] == [
        {"version": 1, "epoch": 1, "batch": 2, "seed": None, "rank": None, "world_size": None}
    ]
    assert any("EMA" in k for k in ckpt["callbacks"])

    # resumed run continues from the -last checkpoint to 6 steps
    second, rec2 = run(make_cfg(tmp_path / "a", max_steps=6))
    assert second.log_dir == first.log_dir and second.global_step == 6 and second.consumed_samples == 20

    # reference: the same 6 steps uninterrupted
    ref, rec_ref = run(make_cfg(tmp_path / "b", max_steps=6))
    assert rec1.seen + rec2.seen == rec_ref.seen, "resume continues with exactly the next batch"
    for (n, p), q in zip(second.module.named_parameters(), ref.module.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), n
    assert "val_loss" in ref.metrics and "val_cer" in ref.metrics


def test_versions_and_resume_errors(tmp_path: Path) -> None:
    exp = {"exp_dir": str(tmp_path), "name": "x"}
    assert resolve_log_dir({**exp, "version": "v1"}) == tmp_path / "x" / "v1"
    stamped = resolve_log_dir(exp)
    assert stamped.parent == tmp_path / "x" and re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", stamped.name)
    stamped.mkdir(parents=True)
    again = resolve_log_dir(exp)
    assert again != stamped and again.name.startswith(stamped.name[:10])
    cfg = make_cfg(tmp_path / "c", max_steps=1, resume_ignore_no_checkpoint=False)
    with pytest.raises(ConfigError, match="resume_ignore_no_checkpoint"):
        run(cfg)
    cfg = make_cfg(tmp_path / "d", max_steps=1, resume_from_checkpoint=str(tmp_path / "nope.ckpt"))
    with pytest.raises(ConfigError, match="no such checkpoint"):
        run(cfg)
    bad = make_cfg(tmp_path / "e", max_steps=1)
    bad.exp_manager.checkpoint_callback_params.every_n_epochs = 1
    with pytest.raises(ConfigError, match="mutually exclusive"):
        run(bad)
    bad = make_cfg(tmp_path / "f", max_steps=1)
    bad.exp_manager.chekpoint_callback_params = {}
    with pytest.raises(ConfigError, match="did you mean 'checkpoint_callback_params'"):
        run(bad)


class VaryingLoader(FakeLoader):
    """Epochs of different lengths, as dynamic batching gives (epoch ``e`` has ``lengths[e]``)."""

    def __init__(self, lengths: list[int]) -> None:
        super().__init__(lengths[0])
        self.lengths = lengths

    def __len__(self) -> int:
        return self.lengths[min(self.epoch, len(self.lengths) - 1)]

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.n = len(self)
        yield from super().__iter__()


def test_every_epoch_is_trained_whole_when_lengths_differ(tmp_path: Path) -> None:
    """Lightning reads a train loader's length once unless told to reload it each epoch; an epoch
    longer than the first must still be trained to its end, not cut at the first one's length."""
    cfg = make_cfg(tmp_path, max_steps=-1)
    cfg.trainer.max_epochs = 3
    cfg.model.train_ds.global_batch_size = 2  # one batch per step
    cfg.exp_manager.checkpoint_callback_params.every_n_train_steps = 0
    lengths = [3, 5, 4]
    result, rec = run(cfg, VaryingLoader(lengths))
    assert len(rec.seen) == sum(lengths) and result.global_step == sum(lengths)
    expected = [
        synthetic_batch(SYNTH, 2, e * 100 + b)["sample_ids"].tolist()
        for e, n in enumerate(lengths)
        for b in range(n)
    ]
    assert rec.seen == expected
