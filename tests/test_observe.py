"""The data figures of a training run (speechdata/train/observe.py, docs/training.md "Data
figures"): the pure figures on hand-computed cases, the callback in a real Trainer with a fake
clock, a short ``speechdata.train.run.train`` run writing them to TensorBoard and the console,
and a slow loader against a fast one."""

from __future__ import annotations

import itertools
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from speechdata.config import dataset_config, load_config
from speechdata.errors import ConfigError
from speechdata.loader import build_dataloader
from speechdata.manifest import Record, pack_sample_id
from speechdata.testing import TINY_MODEL, make_corpus, run_speechdata
from speechdata.text.tokenizer import train_tokenizer
from speechdata.train.exp_manager import setup_experiment
from speechdata.train.observe import (
    BatchSizes,
    DataFigures,
    TimedLoader,
    Window,
    consumption_figures,
    count_batches,
    dataset_counts,
    dataset_names,
    drop_figures,
    padding_fraction,
    summary_line,
    target_weights,
    window_figures,
)
from speechdata.train.run import train
from speechdata.train.synthetic import SyntheticSpec, synthetic_batch

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# ----------------------------------------------------------------------------- pure figures


def test_padding_and_batch_counts_by_hand() -> None:
    assert padding_fraction(8, 10) == pytest.approx(0.2)
    assert padding_fraction(0, 0) == 0.0
    # batch 1: audios of 3 and 5 samples padded to 5, tokens 2 and 6 padded to 8
    # batch 2: one audio of 4 samples (no padding), one row of 8 tokens in width 8
    b1 = {
        "audio_signal": torch.zeros(2, 5),
        "audio_signal_length": torch.tensor([3, 5]),
        "tokens": torch.zeros(2, 8, dtype=torch.int64),
        "tokens_length": torch.tensor([2, 6]),
        "sample_ids": torch.tensor([pack_sample_id(0, 1), pack_sample_id(1, 4)]),
    }
    b2 = {
        "audio_signal": torch.zeros(1, 4),
        "audio_signal_length": torch.tensor([4]),
        "tokens": torch.zeros(1, 8, dtype=torch.int64),
        "tokens_length": torch.tensor([8]),
        "sample_ids": torch.tensor([pack_sample_id(1, 9)]),
    }
    window, per_dataset = count_batches([BatchSizes.of(b1), BatchSizes.of(b2)], num_datasets=3)
    assert window == Window(
        batches=2, examples=3, audio_samples=12, audio_slots=14, tokens=16, token_slots=24
    )
    assert per_dataset.tolist() == [1, 2, 0]
    figures = window_figures([window], sample_rate=4)
    assert figures["data/audio_padding"] == pytest.approx(1 - 12 / 14)
    assert figures["data/token_padding"] == pytest.approx(1 - 16 / 24)
    # without dataset numbers, no per-dataset counts
    assert count_batches([BatchSizes.of(b1)])[1].size == 0


def test_dataset_counts_names_and_weights() -> None:
    ids = [pack_sample_id(0, 1), pack_sample_id(1, 5), pack_sample_id(1, 7), pack_sample_id(2, 1)]
    assert dataset_counts(ids, 3).tolist() == [1, 2, 1]
    with pytest.raises(ValueError, match="dataset 2, but there are 2 datasets"):
        dataset_counts(ids, 2)
    assert dataset_names(["alpha", "beta"]) == ["alpha", "beta"]
    assert dataset_names(["train", "train", "a b"]) == ["0_train", "1_train", "2_a_b"]

    natural = dataset_config({"manifest_filepath": ["a.jsonl", "b.jsonl"]})
    assert target_weights([30, 10], natural).tolist() == [0.75, 0.25]
    weighted = dataset_config(
        {"manifest_filepath": ["a.jsonl", "b.jsonl"], "concat_sampling_probabilities": [0.4, 0.6]}
    )
    assert target_weights([30, 10], weighted) == pytest.approx([0.4, 0.6])
    # a stream does not mix by weights: natural proportions
    assert target_weights([30, 10], weighted, mixed=False).tolist() == [0.75, 0.25]

    shares = consumption_figures(np.array([3, 1]), np.array([0.4, 0.6]), ["a", "b"])
    assert shares == {"data/share/a": 0.75, "data/weight/a": 0.4, "data/share/b": 0.25, "data/weight/b": 0.6}
    assert drop_figures({"too_long_audio": 3, "bad_line": 1}) == {
        "data/drops/total": 4.0,
        "data/drops/too_long_audio": 3.0,
        "data/drops/bad_line": 1.0,
    }


def test_rates_and_waits_of_two_ranks_by_hand() -> None:
    # rank 0 waits 1 s of 4, rank 1 waits 3 s of 4; 16 examples, 3 s of audio at 16 kHz in 4 s
    r0 = Window(2, 8, 32000, 40000, 60, 80, wait_s=1.0, step_s=3.0)
    r1 = Window(2, 8, 16000, 40000, 20, 80, wait_s=3.0, step_s=1.0)
    f = window_figures([r0, r1], sample_rate=16000)
    assert f == pytest.approx(
        {
            "data/wait_fraction": 0.75,  # the rank that waits most
            "data/wait_ms_per_batch": 1500.0,
            "data/step_ms_per_batch": 1500.0,
            "data/examples_per_s": 4.0,
            "data/audio_hours_per_s": 3.0 / 3600 / 4.0,
            "data/audio_padding": 1 - 48000 / 80000,
            "data/token_padding": 0.5,
        }
    )
    assert Window.from_list(r0.to_list()) == r0
    line = summary_line(
        20,
        {**f, **drop_figures({}), **consumption_figures(np.array([1, 3]), np.array([0.5, 0.5]), ["a", "b"])},
    )
    assert line.startswith(
        "data @ step 20: wait 75% of the loop (1500.0 ms/batch, step 1500.0 ms) DATA-BOUND | "
    )
    assert "4 examples/s" in line and "padding audio 40.0%, tokens 50.0%" in line
    assert "drops none" in line and "datasets (share/weight) a 25%/50%, b 75%/50%" in line
    calm = summary_line(1, window_figures([Window(1, 1, 1, 1, 1, 1, wait_s=0.1, step_s=0.9)], 16000))
    assert "wait 10% of the loop" in calm and "DATA-BOUND" not in calm


def test_timed_loader_counts_only_the_wait_and_closes_early() -> None:
    now = [0.0]
    closed = []

    class Slow:
        def __len__(self) -> int:
            return 3

        def state_dict(self) -> dict[str, int]:
            return {"batch": 7}

        def __iter__(self):  # type: ignore[no-untyped-def]
            try:
                for i in range(3):
                    now[0] += 0.5  # the loader takes 0.5 s per batch
                    yield i
            finally:
                closed.append(True)

    timed = TimedLoader(Slow(), clock=lambda: now[0])
    assert len(timed) == 3 and timed.state_dict() == {"batch": 7}  # the loader's own
    for _ in timed:
        now[0] += 2.0  # the training step: not a wait
    assert timed.wait_s == pytest.approx(1.5) and timed.batches == 3
    it = iter(timed)
    next(it)
    it.close()  # a trainer stopping mid-epoch closes the loader's iteration at once
    assert closed == [True, True] and timed.batches == 4


# ------------------------------------------------------------------- callback in a Trainer


class Batches:
    """A loader of synthetic batches with the speechdata loader's interface."""

    def __init__(self, n: int = 12, batch_size: int = 2) -> None:
        self.batches = [synthetic_batch(SYNTH, batch_size, seed) for seed in range(n)]
        self.epoch = self.consumed = 0

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        while self.consumed < len(self.batches):
            self.consumed += 1
            yield self.batches[self.consumed - 1]
        self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.consumed = state["epoch"], state["batch"]


SYNTH = SyntheticSpec(vocab_size=24, num_classes=4, max_audios=2, min_seconds=0.1, max_seconds=0.25)


class Tok:
    vocab_size, pad_id, bos_id, eos_id = SYNTH.vocab_size, SYNTH.pad_id, SYNTH.bos_id, SYNTH.eos_id

    @staticmethod
    def decode(ids: list[int]) -> str:
        return " ".join(map(str, ids))


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.batches.append({k: batch[k] for k in ("audio_signal_length", "tokens_length", "sample_ids")})
        self.batches[-1]["widths"] = (batch["audio_signal"].shape[1], batch["tokens"].shape[1])


def tiny_cfg(exp_dir: Path, max_steps: int, **exp: Any) -> Any:
    return OmegaConf.create(
        {
            "name": "obs",
            "trainer": {
                "accelerator": "cpu",
                "devices": 1,
                "max_steps": max_steps,
                "max_epochs": -1,
                "log_every_n_steps": 1,
                "limit_val_batches": 0,
                "num_sanity_val_steps": 0,
                "enable_progress_bar": False,
                "enable_model_summary": False,
            },
            "exp_manager": {
                "exp_dir": str(exp_dir),
                "create_checkpoint_callback": False,
                "version": "v",
                **exp,
            },
            "optim": {"name": "adamw", "lr": 1e-3},
            "model": {
                "arch": "salm",
                "tokenizer": {"model": "unused"},
                "llm": {"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "ffn_hidden_size": 64},
                "perception": {
                    "preprocessor": {"n_mels": 16},
                    "encoder": {"d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64},
                    "modality_adapter": {"hidden_size": 32},
                },
                "train_ds": {
                    "manifest_filepath": "unused.jsonl",
                    "global_batch_size": 4,
                    "micro_batch_size": 2,
                },
            },
        }
    )


def test_callback_in_a_trainer_with_a_fake_clock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every clock reading advances 1 s: each wait and each step lasts 1 s exactly, so the figures
    follow from how many batches were fetched and trained in each window."""
    ticks = itertools.count()
    loader = Batches()
    figures = DataFigures(loader, sample_rate=16000, every_n_steps=2, clock=lambda: float(next(ticks)))
    assert figures.names == []  # no index: no per-dataset figures
    rec = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(
            tiny_cfg(tmp_path, max_steps=4, data_log_every_n_steps=0),  # only this test's callback
            tokenizer=Tok(),
            train_loader=figures.loader,
            callbacks=[figures, rec],
        )
    assert result.global_step == 4 and len(rec.batches) == 8  # accumulation 2: 8 micro-batches
    assert not any(isinstance(c, DataFigures) and c is not figures for c in result.trainer.callbacks)
    last = figures.last
    # window of steps 3-4: 4 micro-batches of 2 examples, 4 steps of 1 s, and one wait per batch fetched
    fetched = figures.loader.batches
    assert fetched >= 8
    window = rec.batches[4:]
    tokens = sum(int(b["tokens_length"].sum()) for b in window)
    slots = sum(b["widths"][1] * len(b["tokens_length"]) for b in window)
    assert last["data/token_padding"] == pytest.approx(1 - tokens / slots)
    assert last["data/step_ms_per_batch"] == pytest.approx(1000.0)
    waits = last["data/wait_ms_per_batch"] * 4 / 1000.0  # whole fake seconds: batches fetched in the window
    assert waits == pytest.approx(round(waits)) and 3 <= waits <= 5
    assert last["data/wait_fraction"] == pytest.approx(waits / (waits + 4))
    assert last["data/examples_per_s"] == pytest.approx(8 / (waits + 4))
    out = capsys.readouterr().out
    assert out.count("data @ step ") == 2 and "data @ step 4: wait " in out


def test_settings_are_checked_and_default_to_the_trainers(tmp_path: Path) -> None:
    def settings(**exp: Any) -> tuple[int, bool]:
        cfg = tiny_cfg(tmp_path, 1, **exp)
        e = setup_experiment(cfg)
        return e.data_log_every_n_steps, e.data_log_console

    assert settings() == (1, True)  # trainer.log_every_n_steps
    assert settings(data_log_every_n_steps=25, data_log_console=False) == (25, False)
    with pytest.raises(ConfigError, match=r"exp_manager.data_log_every_n_steps: must be >= 0 .*got -1"):
        settings(data_log_every_n_steps=-1)
    with pytest.raises(ConfigError, match=r"exp_manager.data_log_every_n_steps: expected int, got 'often'"):
        settings(data_log_every_n_steps="often")
    with pytest.raises(ConfigError, match=r"exp_manager.data_log_console: expected bool, got 'yes'"):
        settings(data_log_console="yes")
    with pytest.raises(ConfigError, match=r"exp_manager.data_log_every_n_step: unknown key.*did you mean"):
        settings(data_log_every_n_step=3)
    no_trainer_key = tiny_cfg(tmp_path, 1)
    del no_trainer_key.trainer["log_every_n_steps"]
    assert setup_experiment(no_trainer_key).data_log_every_n_steps == 50  # Lightning's default


# ------------------------------------------------------------------------- real training runs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("obs")
    common = {
        "min_duration": 0.5,
        "max_duration": 1.5,
        "multi_audio_fraction": 0.2,
        "shared_source_fraction": 0.0,
    }
    a = make_corpus(root, n=24, seed=3, manifest_name="alpha.jsonl", audio_subdir="a", **common)
    b = make_corpus(root, n=12, seed=4, manifest_name="beta.jsonl", audio_subdir="b", **common)
    entries = a.entries + b.entries
    texts = [e["answer"] for e in entries] + [e["context"] for e in entries]
    train_tokenizer(texts, root / "tok", vocab_size=320, user_symbols=["|audio|"])
    return {
        "alpha": str(root / "alpha.jsonl"),
        "beta": str(root / "beta.jsonl"),
        "tokenizer": str(root / "tok" / "tokenizer.model"),
    }


def salm_overrides(corpus: dict[str, str], exp_dir: Path, max_steps: int) -> list[str]:
    return [
        f"model.train_ds.manifest_filepath=[{corpus['alpha']},{corpus['beta']}]",
        f"model.validation_ds.manifest_filepath={corpus['beta']}",
        f"model.tokenizer.model={corpus['tokenizer']}",
        f"exp_manager.exp_dir={exp_dir}",
        "exp_manager.create_checkpoint_callback=false",
        "exp_manager.resume_if_exists=false",
        f"trainer.max_steps={max_steps}",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "model.train_ds.num_workers=0",
        "model.micro_batch_size=4",
        "model.global_batch_size=4",
        "optim.sched.max_steps=50",
        *TINY_MODEL,
    ]


def scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_logs_the_data_figures_to_tensorboard_and_the_console(
    corpus: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        *salm_overrides(corpus, tmp_path, max_steps=4),
        "exp_manager.data_log_every_n_steps=2",
        "model.train_ds.concat_sampling_probabilities=[0.5,0.5]",
        "model.train_ds.max_duration=1.3",  # some examples are dropped as too long
    ]
    cfg = load_config(CONFIGS / "salm_tiny.yaml", args)
    rec = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg, callbacks=[rec])
    assert result.global_step == 4 and len(rec.batches) == 4
    (figures,) = [c for c in result.trainer.callbacks if isinstance(c, DataFigures)]
    report = figures.loader.report()
    assert report.get("too_long_audio", 0) > 0

    tb = scalars(result.log_dir)
    for tag in (
        "data/wait_fraction",
        "data/wait_ms_per_batch",
        "data/step_ms_per_batch",
        "data/examples_per_s",
        "data/audio_hours_per_s",
        "data/audio_padding",
        "data/token_padding",
        "data/drops/total",
        "data/share/alpha",
        "data/weight/beta",
    ):
        assert [step for step, _ in tb[tag]] == [2, 4], tag
    at4 = {tag: dict(values)[4] for tag, values in tb.items() if tag.startswith("data/")}
    assert 0.0 <= at4["data/wait_fraction"] <= 1.0
    assert at4["data/examples_per_s"] > 0 and at4["data/audio_hours_per_s"] > 0
    # what the model trained on in steps 3-4 (an independent count from the batches)
    window = rec.batches[2:]
    audio = sum(int(b["audio_signal_length"].sum()) for b in window)
    audio_slots = sum(b["widths"][0] * len(b["audio_signal_length"]) for b in window)
    tokens = sum(int(b["tokens_length"].sum()) for b in window)
    token_slots = sum(b["widths"][1] * len(b["tokens_length"]) for b in window)
    assert at4["data/audio_padding"] == pytest.approx(1 - audio / audio_slots, abs=1e-6)
    assert at4["data/token_padding"] == pytest.approx(1 - tokens / token_slots, abs=1e-6)
    examples = sum(len(b["tokens_length"]) for b in window)
    hours = audio / 16000 / 3600
    assert at4["data/audio_hours_per_s"] / at4["data/examples_per_s"] == pytest.approx(
        hours / examples, rel=1e-5
    )
    # consumption since the start against the weights
    ids = [i for b in rec.batches for i in b["sample_ids"].tolist()]
    alpha = sum(1 for i in ids if i >> 32 == 0) / len(ids)
    assert at4["data/share/alpha"] == pytest.approx(alpha, abs=1e-6)
    assert at4["data/share/beta"] == pytest.approx(1 - alpha, abs=1e-6)
    assert at4["data/weight/alpha"] == at4["data/weight/beta"] == 0.5
    assert at4["data/drops/too_long_audio"] == report["too_long_audio"]
    assert at4["data/drops/total"] == sum(report.values())

    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("data @ step ")]
    assert [line.split(":")[0] for line in lines] == ["data @ step 2", "data @ step 4"], out
    assert f"too_long_audio={report['too_long_audio']}" in lines[-1]
    assert "datasets (share/weight) alpha " in lines[-1] and "/50%, beta " in lines[-1]


class SlowSource:
    """A source whose clips take ``delay`` seconds each to open: a loader slower than the step."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def audio(self, rec: Record) -> Any:
        time.sleep(self.delay)
        return self.inner.audio(rec)


def test_a_slow_loader_shows_a_high_wait_fraction_and_a_fast_one_a_low_one(
    corpus: dict[str, str], tmp_path: Path
) -> None:
    args = [*salm_overrides(corpus, tmp_path, max_steps=6), "exp_manager.data_log_every_n_steps=3"]
    cfg = load_config(CONFIGS / "salm_tiny.yaml", args)
    ds = dataset_config(cfg, "train_ds")
    source = build_dataloader(ds, corpus["tokenizer"]).source
    wait = {}
    for name, delay in (("slow", 0.1), ("fast", 0.0)):
        loader = build_dataloader(ds, corpus["tokenizer"], source=SlowSource(source, delay))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = train(cfg, train_loader=loader)
        (figures,) = [c for c in result.trainer.callbacks if isinstance(c, DataFigures)]
        wait[name] = figures.last["data/wait_fraction"]  # steps 4-6
    # slow: 4 clips x 0.1 s of waiting per batch against a step of a few tens of ms
    assert wait["slow"] > 0.5 > wait["fast"], wait


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="gloo backend not built")
def test_two_rank_ddp_gathers_the_figures_and_prints_once(corpus: dict[str, str], tmp_path: Path) -> None:
    """Every rank joins the gather at each logging step; rank 0 alone logs and prints."""
    args = [
        *salm_overrides(corpus, tmp_path / "exp", max_steps=3),
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "model.global_batch_size=8",
        "exp_manager.data_log_every_n_steps=1",
    ]
    out = run_speechdata(["train", str(CONFIGS / "salm_tiny.yaml"), *args], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("data @ step ")]
    assert [line.split(":")[0] for line in lines] == [f"data @ step {s}" for s in (1, 2, 3)], out.stdout[
        -2000:
    ]
    (log_dir,) = {p.parent for p in (tmp_path / "exp").rglob("events.out.tfevents.*")}
    tb = scalars(str(log_dir))
    assert [s for s, _ in tb["data/wait_fraction"]] == [1, 2, 3]
    # consumption is summed over the ranks: the first 3 batches of each rank's plan
    ds = dataset_config(load_config(CONFIGS / "salm_tiny.yaml", args), "train_ds")
    ids = []
    for rank in range(2):
        batches = iter(build_dataloader(ds, corpus["tokenizer"], rank=rank, world_size=2))
        ids += [i for _ in range(3) for i in next(batches)["sample_ids"].tolist()]
    alpha = sum(1 for i in ids if i >> 32 == 0) / len(ids)
    assert len(ids) == 24 and dict(tb["data/share/alpha"])[3] == pytest.approx(alpha, abs=1e-6)
