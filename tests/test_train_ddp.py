"""A 2-process CPU DDP run (gloo) of ``speechdata train`` completes an epoch with equal steps per
rank (issue #7): the loader deals each rank the same number of batches, so DDP's lock-step
all-reduce never waits on a rank that ran out, and each rank's saved data position is the end of
its epoch. Every step's checkpoint holds each rank's exact position (epoch 0, that many batches)
in the one position format (docs/architecture.md, "Planning and resume")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from speechdata.config import dataset_config, load_config
from speechdata.loader import build_dataloader
from speechdata.sampling.position import POSITION_VERSION
from speechdata.testing import TINY_MODEL, make_corpus, run_speechdata
from speechdata.text.tokenizer import train_tokenizer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="gloo backend not built")
def test_two_rank_cpu_ddp_completes_an_epoch_with_equal_steps(tmp_path: Path) -> None:
    c = make_corpus(
        tmp_path / "c", n=36, seed=9, min_duration=0.5, max_duration=1.5, multi_audio_fraction=0.0
    )
    texts = [e["answer"] for e in c.entries] + [e["context"] for e in c.entries]
    train_tokenizer(texts, tmp_path / "tok", vocab_size=60, user_symbols=["|audio|"], byte_fallback=False)
    tok = str(tmp_path / "tok" / "tokenizer.model")
    overrides = [
        f"model.train_ds.manifest_filepath={c.manifest}",
        f"model.validation_ds.manifest_filepath={c.manifest}",
        f"model.tokenizer.model={tok}",
        f"exp_manager.exp_dir={tmp_path / 'exp'}",
        "exp_manager.checkpoint_callback_params.every_n_train_steps=1",
        "exp_manager.checkpoint_callback_params.save_top_k=-1",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_steps=-1",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "model.train_ds.num_workers=0",
        "model.micro_batch_size=4",
        "model.global_batch_size=8",
        *TINY_MODEL,
    ]
    cfg = load_config(CONFIGS / "salm_tiny.yaml", overrides)
    ds = dataset_config(cfg, "train_ds")
    per_rank = [len(build_dataloader(ds, tok, rank=r, world_size=2)) for r in range(2)]
    assert per_rank[0] == per_rank[1] > 0
    out = run_speechdata(["train", str(CONFIGS / "salm_tiny.yaml"), *overrides], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    # accumulation = global / (micro x 2 ranks) = 1, so one optimizer step per batch of each rank
    assert f"trained {per_rank[0]} steps" in out.stdout, out.stdout[-2000:]
    steps = per_rank[0]
    ckpts = [
        (int(re.search(r"-step=(\d+)-", p.name).group(1)), p) for p in (tmp_path / "exp").rglob("*.ckpt")
    ]
    # one per step, and the -last one
    assert sorted(step for step, _ in ckpts) == [*range(1, steps + 1), steps], ckpts
    for step, path in ckpts:
        positions = torch.load(path, map_location="cpu", weights_only=True)["speechdata_loader"]
        # one data position per rank, in rank order, in the loader's state_dict() format: the
        # next batch after `step` batches of epoch 0 (Lightning fetches one batch ahead; the saved
        # position is the last batch trained on), and a finished epoch rolls over to the next
        want = {"epoch": 0, "batch": step} if step < steps else {"epoch": 1, "batch": 0}
        assert positions == [
            {"version": POSITION_VERSION, **want, "seed": ds.seed, "rank": r, "world_size": 2}
            for r in range(2)
        ], (step, positions)
