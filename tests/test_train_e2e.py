"""End to end: synthetic corpus -> tokenizer -> configs/*.yaml -> build_dataloader -> train -> resume."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from speechdata.config import dataset_config, load_config
from speechdata.loader import build_dataloader
from speechdata.testing import TINY_MODEL, make_corpus
from speechdata.text.tokenizer import train_tokenizer
from speechdata.train.run import train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("corpus")
    c = make_corpus(
        root,
        n=20,
        seed=3,
        sample_rates=(16000, 8000),
        min_duration=0.5,
        max_duration=1.5,
        multi_audio_fraction=0.2,
        shared_source_fraction=0.0,
    )
    texts = [e["answer"] for e in c.entries] + [e["context"] for e in c.entries]
    train_tokenizer(texts, root / "tok", vocab_size=320, user_symbols=["|audio|"])
    return {"manifest": str(root / "manifest.jsonl"), "tokenizer": str(root / "tok" / "tokenizer.model")}


def overrides(corpus: dict[str, str], exp_dir: Path, max_steps: int) -> list[str]:
    return [
        f"model.train_ds.manifest_filepath={corpus['manifest']}",
        f"model.validation_ds.manifest_filepath={corpus['manifest']}",
        f"model.tokenizer.model={corpus['tokenizer']}",
        f"exp_manager.exp_dir={exp_dir}",
        f"trainer.max_steps={max_steps}",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "exp_manager.checkpoint_callback_params.every_n_train_steps=2",
        "model.train_ds.num_workers=0",
        "model.micro_batch_size=4",
        "model.global_batch_size=4",
        "model.validation_ds.tokens_to_generate=4",
        "optim.sched.max_steps=50",
        *TINY_MODEL,
    ]


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.seen.append(batch["sample_ids"].tolist())


def fit(config: str, args: list[str]) -> tuple[Any, Recorder]:
    rec = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(load_config(CONFIGS / config, args), callbacks=[rec]), rec


def test_salm_yaml_trains_and_resumes_exactly(corpus: dict[str, str], tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "salm_tiny.yaml", overrides(corpus, tmp_path, 3))
    tok_path = corpus["tokenizer"]
    loader = build_dataloader(dataset_config(cfg, "train_ds"), tok_path)
    expected = [b["sample_ids"].tolist() for _ in range(2) for b in loader]  # two epochs, uninterrupted

    first, rec1 = fit("salm_tiny.yaml", overrides(corpus, tmp_path, 3))
    assert first.global_step == 3 and Path(first.log_dir) == tmp_path / "salm_tiny"
    ckpts = sorted(p.name for p in (tmp_path / "salm_tiny" / "checkpoints").glob("*.ckpt"))
    assert any(n.endswith("-last.ckpt") and "step=2" in n for n in ckpts), ckpts
    assert torch.isfinite(torch.tensor(first.metrics["reduced_train_loss"]))
    assert first.metrics["val_cer"] >= 0.0

    second, rec2 = fit("salm_tiny.yaml", overrides(corpus, tmp_path, 6))
    assert second.global_step == 6
    # resumed from step 2: the batches trained after the resume follow the first two steps exactly
    resumed = rec1.seen[:2] + rec2.seen
    assert resumed == expected[: len(resumed)]
    assert len(resumed) == 6


def test_bestow_yaml_trains(corpus: dict[str, str], tmp_path: Path) -> None:
    result, rec = fit(
        "bestow_tiny.yaml", [*overrides(corpus, tmp_path, 2), "exp_manager.resume_if_exists=false"]
    )
    assert result.global_step == 2 and len(rec.seen) == 2
    assert type(result.module.model).__name__ == "BESTOW"
    assert Path(result.log_dir).parent == tmp_path / "bestow_tiny"


def test_cli_train_reports_missing_paths(capsys: pytest.CaptureFixture[str]) -> None:
    from speechdata.cli import main

    assert main(["train", str(CONFIGS / "salm_tiny.yaml")]) == 1
    err = capsys.readouterr().err
    assert "manifest_filepath" in err and "???" in err


def test_cli_trains_a_config_with_nemo_model_data_sections(corpus: dict[str, str], tmp_path: Path) -> None:
    """NeMo's SpeechLLM configs keep the datasets under model.data: `speechdata train` reads them."""
    import yaml

    from speechdata.cli import main

    raw = yaml.safe_load((CONFIGS / "salm_tiny.yaml").read_text())
    model = raw["model"]
    model["data"] = {"train_ds": model.pop("train_ds"), "validation_ds": model.pop("validation_ds")}
    text = yaml.safe_dump(raw).replace("model.train_ds.", "model.data.train_ds.")
    path = tmp_path / "nemo_layout.yaml"
    path.write_text(text)
    args = [a.replace("model.train_ds.", "model.data.train_ds.") for a in overrides(corpus, tmp_path, 2)]
    args = [a.replace("model.validation_ds.", "model.data.validation_ds.") for a in args]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", str(path), *args, "exp_manager.resume_if_exists=false"]) == 0
    assert list((tmp_path / "salm_tiny").rglob("*.ckpt")) or list(tmp_path.rglob("*.ckpt"))


def test_every_epoch_trained_whole_with_dynamic_batches(corpus: dict[str, str], tmp_path: Path) -> None:
    """Dynamic batches (batch_duration): epochs differ in length (here 11 then 12 batches). Every
    epoch is trained to its last batch, not cut at the first epoch's length."""
    args = [
        *overrides(corpus, tmp_path, -1),
        "trainer.max_epochs=2",
        "trainer.limit_val_batches=0",
        "exp_manager.resume_if_exists=false",
        "model.train_ds.batch_duration=4.0",
        "model.train_ds.num_buckets=1",
    ]
    loader = build_dataloader(
        dataset_config(load_config(CONFIGS / "salm_tiny.yaml", args), "train_ds"), corpus["tokenizer"]
    )
    expected = [[b["sample_ids"].tolist() for b in loader] for _ in range(2)]
    assert len(expected[0]) < len(expected[1])  # the second epoch is the longer
    result, rec = fit("salm_tiny.yaml", args)
    assert rec.seen == expected[0] + expected[1]
    assert result.global_step == len(expected[0]) + len(expected[1])
    # and the LR schedule spans exactly those steps (not twice the first epoch's)
    assert result.module.max_steps == len(expected[0]) + len(expected[1])
