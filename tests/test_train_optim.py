"""Tests of optimisers, schedules, accumulation, trainer argument mapping and EMA."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from speechdata.errors import ConfigError
from speechdata.train.ema import EMA
from speechdata.train.optim import CosineAnnealing, WarmupPolicy, build_optimizer, build_scheduler
from speechdata.train.run import accumulation, trainer_kwargs


def _opt(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(sched: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def test_warmup_policy_values() -> None:
    lrs = _lrs(WarmupPolicy(_opt(1.0), warmup_steps=4, max_steps=10, min_lr=0.01), 13)
    assert lrs[:4] == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5])
    assert lrs[4:11] == pytest.approx([1.0] * 7)
    assert lrs[11:] == pytest.approx([0.01, 0.01])


def test_cosine_annealing_values() -> None:
    lrs = _lrs(CosineAnnealing(_opt(1.0), warmup_steps=2, max_steps=12, min_lr=0.1), 14)
    assert lrs[:2] == pytest.approx([1 / 3, 2 / 3])
    for step in range(2, 13):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 2) / 10))
        assert lrs[step] == pytest.approx(expected)
    assert lrs[2] == pytest.approx(1.0) and lrs[7] == pytest.approx(0.55) and lrs[12] == pytest.approx(0.1)
    assert lrs[13] == pytest.approx(0.1)


def test_scheduler_from_config_warmup_ratio_and_errors() -> None:
    sched = build_scheduler(_opt(2.0), {"name": "CosineAnnealing", "warmup_ratio": 0.1, "min_lr": 0.0}, 100)
    assert isinstance(sched, CosineAnnealing) and sched.warmup_steps == 10 and sched.max_steps == 100
    assert build_scheduler(_opt(), None, 10) is None
    with pytest.raises(ConfigError, match="not both"):
        build_scheduler(_opt(), {"name": "WarmupPolicy", "warmup_steps": 3, "warmup_ratio": 0.1}, 10)
    with pytest.raises(ConfigError, match=r"did you mean 'CosineAnnealing'"):
        build_scheduler(_opt(), {"name": "CosineAnealing"}, 10)
    with pytest.raises(ConfigError, match=r"optim\.sched\.warmup: unknown key"):
        build_scheduler(_opt(), {"name": "WarmupPolicy", "warmup": 3}, 10)


def test_optimizers_by_name() -> None:
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2), requires_grad=False)]
    opt = build_optimizer(
        params, {"name": "fused_adam", "lr": 1e-3, "betas": [0.8, 0.9], "weight_decay": 0.1}
    )
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert len(group["params"]) == 1 and group["betas"] == (0.8, 0.9) and group["weight_decay"] == 0.1
    assert not group.get("fused"), "fused only on CUDA"
    assert type(build_optimizer(params, {"name": "adam", "lr": 1.0})) is torch.optim.Adam
    assert type(build_optimizer(params, {"name": "adamw", "lr": 1.0})) is torch.optim.AdamW
    with pytest.raises(ConfigError, match=r"optim\.name"):
        build_optimizer(params, {"name": "lamb", "lr": 1.0})
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        build_optimizer(params, {"name": "adamw"})
    with pytest.raises(ConfigError, match="no trainable"):
        build_optimizer(params[1:], {"name": "adamw", "lr": 1.0})


@pytest.mark.parametrize(
    ("gbs", "mbs", "dp", "expected"), [(4, 2, 1, 2), (8, 2, 2, 2), (2, 2, 1, 1), (64, 4, 8, 2)]
)
def test_accumulation(gbs: int, mbs: int, dp: int, expected: int) -> None:
    assert accumulation(gbs, mbs, dp) == expected


@pytest.mark.parametrize(("gbs", "mbs", "dp"), [(6, 4, 1), (4, 2, 4), (3, 2, 1)])
def test_accumulation_must_be_whole(gbs: int, mbs: int, dp: int) -> None:
    with pytest.raises(ConfigError, match="global_batch_size"):
        accumulation(gbs, mbs, dp)


def _trainer_cfg(**trainer: object) -> object:
    return OmegaConf.create({"trainer": trainer, "model": {"tensor_model_parallel_size": 1}})


def test_trainer_kwargs_gpu_request_falls_back_to_cpu() -> None:
    cfg = _trainer_cfg(
        devices=2, accelerator="gpu", precision="bf16", max_steps=5, logger=False, gradient_clip_val=1.0
    )
    plan = trainer_kwargs(cfg, global_batch_size=8, micro_batch_size=2, cuda_count=0)
    assert plan.cpu_fallback and "no CUDA device" in plan.notes[0]
    kw = plan.kwargs
    assert kw["accelerator"] == "cpu" and kw["devices"] == 1 and kw["precision"] == "32-true"
    assert kw["accumulate_grad_batches"] == 4 and kw["use_distributed_sampler"] is False
    assert kw["gradient_clip_val"] == 1.0 and "logger" not in kw


def test_trainer_kwargs_on_gpus() -> None:
    cfg = _trainer_cfg(devices=2, num_nodes=2, accelerator="gpu", precision=16)
    plan = trainer_kwargs(cfg, global_batch_size=32, micro_batch_size=4, cuda_count=2)
    assert plan.data_parallel_size == 4 and plan.accumulate_grad_batches == 2
    assert plan.kwargs["precision"] == "16-mixed" and plan.kwargs["strategy"] == "ddp"
    assert plan.kwargs["devices"] == 2
    one = trainer_kwargs(
        _trainer_cfg(devices=[1], precision="bf16-mixed"),
        global_batch_size=2,
        micro_batch_size=2,
        cuda_count=2,
    )
    assert one.data_parallel_size == 1 and "strategy" not in one.kwargs and one.kwargs["accelerator"] == "gpu"


@pytest.mark.parametrize(
    ("trainer", "match"),
    [
        ({"precision": "fp8"}, r"trainer\.precision"),
        ({"max_step": 3}, r"did you mean 'max_steps'"),
        ({"accelerator": "cpu", "precision": 16}, "needs a GPU"),
        ({"accumulate_grad_batches": 3}, r"trainer\.accumulate_grad_batches"),
    ],
)
def test_trainer_kwargs_errors(trainer: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        trainer_kwargs(_trainer_cfg(**trainer), global_batch_size=4, micro_batch_size=2, cuda_count=0)


def test_ema_math_and_swap() -> None:
    module = torch.nn.Linear(2, 1, bias=False)
    frozen = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    module.register_parameter("frozen", frozen)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = EMA(decay=0.5, every_n_steps=2)
    trainer = SimpleNamespace(global_step=0, sanity_checking=False)
    ema.on_fit_start(trainer, module)  # type: ignore[arg-type]
    assert set(ema.ema) == {"weight"}
    expected = torch.tensor([[1.0, 2.0]])
    for step, value in enumerate([3.0, 5.0, 7.0, 9.0], start=1):
        with torch.no_grad():
            module.weight.fill_(value)
        trainer.global_step = step
        ema.on_train_batch_end(trainer, module, None, None, 0)  # type: ignore[arg-type]
        ema.on_train_batch_end(trainer, module, None, None, 1)  # same step (accumulation): no update
        if step % 2 == 0:
            expected = 0.5 * expected + 0.5 * value
    assert torch.allclose(
        ema.ema["weight"], expected
    )  # (1,2) -> 3 after step 2 (5): 3,3.5 -> step 4 (9): 6,6.25
    assert torch.allclose(expected, torch.tensor([[6.0, 6.25]]))
    ema.on_validation_start(trainer, module)  # type: ignore[arg-type]
    assert torch.allclose(module.weight, expected)
    ema.on_validation_end(trainer, module)  # type: ignore[arg-type]
    assert torch.allclose(module.weight, torch.full((1, 2), 9.0))
    state = ema.state_dict()
    other = EMA(decay=0.5)
    other.load_state_dict(state)
    other.on_fit_start(trainer, module)  # type: ignore[arg-type]
    assert torch.allclose(other.ema["weight"], expected)
    keep = EMA(decay=0.5, validate_original_weights=True)
    keep.on_fit_start(trainer, module)  # type: ignore[arg-type]
    with torch.no_grad():
        module.weight.fill_(1.0)
    keep.on_validation_start(trainer, module)  # type: ignore[arg-type]
    assert torch.allclose(module.weight, torch.ones(1, 2))
    with warnings.catch_warnings(), pytest.raises(ValueError, match="decay"):
        EMA(decay=1.5)
