"""One resume harness for every path (docs/architecture.md, "Planning and resume"): plain files,
tar shards read by offset, tar shards streamed through ``pipe:``, each with 0 and 2 workers, and
the trainer. Each run stops after k batches, takes the position, builds a new loader (or trainer),
loads it, and the batches that follow must be those of an uninterrupted run (by sample_ids).
Positions in the older formats keep loading."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from speechdata import build_dataloader
from speechdata.config import dataset_config, load_config, make_dataset_config
from speechdata.errors import ConfigError
from speechdata.sampling import Position
from speechdata.sampling.position import POSITION_VERSION
from speechdata.shards.write import ShardOptions, write_shards
from speechdata.testing import TINY_MODEL, Corpus, make_corpus
from speechdata.text.tokenizer import Tokenizer
from speechdata.train.data import CHECKPOINT_KEY
from speechdata.train.run import train

LOCATOR = "|audio|"
EPOCHS = 2
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_corpus(
        tmp_path_factory.mktemp("resume"),
        n=18,
        seed=12,
        min_duration=0.5,
        max_duration=2.0,
        multi_audio_fraction=0.2,
    )


@pytest.fixture(scope="module")
def tokenizer(corpus: Corpus) -> Tokenizer:
    return corpus.train_tokenizer(vocab_size=100, locator=LOCATOR)


@pytest.fixture(scope="module")
def shards(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards([corpus.manifest], out, ShardOptions(num_shards=3, progress=False))
    return out


def _cfg(corpus: Corpus, shards: Path, path: str, workers: int) -> Any:
    values: dict[str, Any] = {
        "manifest_filepath": str(corpus.manifest),
        "audio_locator": LOCATOR,
        "prompt_template": "Q: {context}\nA: {answer}",
        "micro_batch_size": 2,
        "drop_last": False,
        "min_duration": None,
        "max_duration": None,
        "num_workers": workers,
        "seed": 8,
        "shuffle_n": 6,
        "bucket_buffer_size": 8,
    }
    if path != "files":
        tars = (
            f"pipe:cat {shards}/audio__OP_0..2_CL_.tar"
            if path == "streamed"
            else str(shards / "audio_{0..2}.tar")
        )
        values.update(
            manifest_filepath=str(shards / "tarred_audio_manifest.json"),
            is_tarred=True,
            tarred_audio_filepaths=tars,
        )
    return make_dataset_config(values)


def _ids(batch: dict[str, Any]) -> list[int]:
    return batch["sample_ids"].tolist()


def _until_epoch(loader: Any, end: int) -> list[list[int]]:
    """Every batch from the loader's position to the end of epoch ``end - 1``."""
    out: list[list[int]] = []
    while loader.epoch < end:
        out += [_ids(b) for b in loader]
    return out


def _saved(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` after a round trip through a checkpoint file (torch.save / weights-only load)."""
    buf = io.BytesIO()
    torch.save({"loader": state}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)["loader"]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("path", ["files", "offset", "streamed"])
def test_every_path_resumes_exactly(
    corpus: Corpus, shards: Path, tokenizer: Tokenizer, path: str, workers: int
) -> None:
    cfg = _cfg(corpus, shards, path, workers)
    reference_loader = build_dataloader(cfg, tokenizer)
    assert reference_loader.streaming == (path == "streamed")
    reference = _until_epoch(reference_loader, EPOCHS)
    per_epoch = len(reference) // EPOCHS if path != "streamed" else None
    first_epoch = len(_until_epoch(build_dataloader(cfg, tokenizer), 1))
    # mid-epoch 0, right at the end of epoch 0, and mid-epoch 1
    for stop in (2, first_epoch, first_epoch + 1):
        loader = build_dataloader(cfg, tokenizer)
        head: list[list[int]] = []
        while len(head) < stop:
            for b in loader:
                head.append(_ids(b))
                if len(head) == stop:
                    break
        state = loader.state_dict()
        streams = not loader.source.seekable  # a stream also records its readers per rank
        assert set(state) == {"version", "epoch", "batch", "seed", "rank", "world_size"} | (
            {"readers"} if streams else set()
        )
        if per_epoch is not None and stop == per_epoch:
            assert (state["epoch"], state["batch"]) == (1, 0)  # a finished epoch rolls over
        resumed = build_dataloader(cfg, tokenizer)
        resumed.load_state_dict(_saved(state))
        assert head + _until_epoch(resumed, EPOCHS) == reference, (path, workers, stop)


def test_older_position_formats_keep_loading(corpus: Corpus, shards: Path, tokenizer: Tokenizer) -> None:
    cfg = _cfg(corpus, shards, "files", 0)
    reference = _until_epoch(build_dataloader(cfg, tokenizer), EPOCHS)
    per_epoch = len(reference) // EPOCHS
    run = {"seed": 8, "rank": 0, "world_size": 1}
    v1 = 1  # they finish their epoch by the version-1 deal (tests/test_synced_tails.py)
    legacy = [
        ({"epoch": 1, "batch": 2}, Position(1, 2, rule=v1)),  # the sampler's
        ({"epoch": 1, "batch": 2, **run}, Position(1, 2, **run, rule=v1)),  # the loader's
        # the trainer's checkpoint entry (mid-epoch): its loader state is the position
        (
            {"epoch": 1, "batches": 2, "epoch_complete": False, "state": {"epoch": 1, "batch": 2, "seed": 8}},
            Position(1, 2, seed=8, rule=v1),
        ),
    ]
    for old, want in legacy:
        assert Position.from_dict(old) == want
        loader = build_dataloader(cfg, tokenizer)
        loader.load_state_dict(old)
        assert loader.state_dict() == {"version": 1, "epoch": 1, "batch": 2, **run}
        assert _until_epoch(loader, EPOCHS) == reference[per_epoch + 2 :]
    # an entry saved at the end of an epoch names the start of the next
    done = {
        "epoch": 0,
        "batches": per_epoch,
        "epoch_complete": True,
        "state": {"epoch": 0, "batch": per_epoch},
    }
    assert Position.from_dict(done) == Position(1, 0)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"epoch": 0, "batch": 1, "seed": 9}, "saved seed=9 differs from this loader's 8"),
        # another world size re-deals the rest of the epoch (tests/test_elastic.py); a re-deal record
        # that does not fit the position is refused
        ({"epoch": 0, "batch": 1, "resized": [[2, 3]]}, "to at most batch 1"),
        ({"epoch": 0, "batch": 999}, "batch 999 is past the end of epoch 0"),
        ({"epoch": 0, "batch": -1}, "'batch' >= 0"),
        ({"epoch": True, "batch": 1}, "'epoch' >= 0"),
        ({"epoch": 0}, "'batch' >= 0"),
        ({"epoch": 0, "batch": 1, "rank": 2, "world_size": 2}, "rank 2 is not below world_size 2"),
        ({"epoch": 0, "batch": 1, "shard": 3}, "unknown key(s) 'shard'"),
        ({"version": POSITION_VERSION + 1, "epoch": 0, "batch": 1}, "newer speechdata"),
        ([0, 1], "expected a mapping"),
    ],
)
def test_bad_positions_are_one_line_errors(
    corpus: Corpus, shards: Path, tokenizer: Tokenizer, state: Any, message: str
) -> None:
    loader = build_dataloader(_cfg(corpus, shards, "files", 0), tokenizer)
    with pytest.raises(ConfigError, match=r"^loader state: ") as info:
        loader.load_state_dict(state)
    assert message in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------- the trainer


class _Recorder(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.seen.append(batch["sample_ids"].tolist())


def _train_cfg(corpus: Corpus, exp_dir: Path, max_steps: int) -> Any:
    overrides = [
        f"model.train_ds.manifest_filepath={corpus.manifest}",
        f"model.validation_ds.manifest_filepath={corpus.manifest}",
        f"model.tokenizer.model={corpus.root / 'tok' / 'tokenizer.model'}",
        f"exp_manager.exp_dir={exp_dir}",
        f"trainer.max_steps={max_steps}",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "exp_manager.checkpoint_callback_params.every_n_train_steps=1",
        "model.train_ds.num_workers=0",
        "model.micro_batch_size=4",
        "model.global_batch_size=4",
        "optim.sched.max_steps=50",
        *TINY_MODEL,
    ]
    return load_config(CONFIGS / "salm_tiny.yaml", overrides)


def _fit(cfg: Any) -> tuple[Any, _Recorder]:
    rec = _Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(cfg, callbacks=[rec]), rec


@pytest.mark.parametrize("legacy", [False, True])
def test_the_trainer_resumes_exactly(
    corpus: Corpus, tokenizer: Tokenizer, tmp_path: Path, legacy: bool
) -> None:
    """Stop one step before the end of epoch 0, resume to two steps into epoch 1: the batches
    trained on are those of an uninterrupted run. ``legacy``: the checkpoint's data position is
    rewritten in the format checkpoints had before positions had a version."""
    ds = dataset_config(_train_cfg(corpus, tmp_path, 1), "train_ds")
    epoch0 = len(build_dataloader(ds, tokenizer))
    stop, end = epoch0 - 1, epoch0 + 2
    assert stop >= 1
    _, rec_ref = _fit(_train_cfg(corpus, tmp_path / "ref", end))
    _, rec1 = _fit(_train_cfg(corpus, tmp_path / "run", stop))
    last = next((tmp_path / "run").rglob("*-last.ckpt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    run = {"seed": ds.seed, "rank": 0, "world_size": 1}
    assert ckpt[CHECKPOINT_KEY] == [{"version": POSITION_VERSION, "epoch": 0, "batch": stop, **run}]
    if legacy:
        state = {"epoch": 0, "batch": stop, **run}
        ckpt[CHECKPOINT_KEY] = [{"epoch": 0, "batches": stop, "epoch_complete": False, "state": state}]
        torch.save(ckpt, last)
    second, rec2 = _fit(_train_cfg(corpus, tmp_path / "run", end))
    assert second.global_step == end
    assert rec1.seen + rec2.seen == rec_ref.seen
