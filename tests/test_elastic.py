"""Elastic resume (docs/architecture.md, "Planning and resume"): a position saved on W ranks
resumes on W' ranks, with other ``num_workers``; the rest of the epoch is dealt again to the new
ranks, which get equal step counts, and over the epoch every example is delivered once (with
``drop_last: false``, whole batches repeat only to fill the last step; with ``drop_last: true``,
the examples left out are counted as ``drop_last_tail``); the next epoch is a fresh deal.

Real gloo process groups (rank and world size from torch.distributed): 2 -> 3 and 4 -> 2 ranks
mid-epoch, each from plain files and from shards read by offset. Then the same in one process (a
chain 2 -> 3 -> 2, the streamed refusal, a bad ``resized``), and the trainer: a 2-process DDP
checkpoint resumed with ``trainer.devices=1``."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speechdata import build_dataloader
from speechdata.config import dataset_config, load_config, make_dataset_config
from speechdata.errors import ConfigError
from speechdata.sampling.position import POSITION_VERSION
from speechdata.shards.write import ShardOptions, write_shards
from speechdata.testing import TINY_MODEL, Corpus, make_corpus, run_speechdata
from speechdata.train.data import CHECKPOINT_KEY
from speechdata.train.run import train

LOCATOR = "|audio|"
N = 45
ALL = set(range(1, N + 1))  # sample_ids: line numbers of the one manifest
CONFIGS = Path(__file__).resolve().parent.parent / "configs"

pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="gloo backend not built")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    c = make_corpus(tmp_path_factory.mktemp("elastic"), n=N, seed=21, min_duration=0.5, max_duration=1.5)
    c.train_tokenizer(vocab_size=100, locator=LOCATOR)
    return c


@pytest.fixture(scope="module")
def shards(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards([corpus.manifest], out, ShardOptions(num_shards=3, progress=False))
    return out


def _tokenizer(corpus: Corpus) -> str:
    return str(corpus.root / "tok" / "tokenizer.model")


def _values(corpus: Corpus, shards: Path, source: str, **kw: Any) -> dict[str, Any]:
    """A dataset section as plain values (they travel to the spawned ranks)."""
    values: dict[str, Any] = {
        "manifest_filepath": str(corpus.manifest),
        "audio_locator": LOCATOR,
        "prompt_template": "Q: {context}\nA: {answer}",
        "min_duration": None,
        "max_duration": None,
        "seed": 11,
        **kw,
    }
    if source != "files":
        values.update(
            manifest_filepath=str(shards / "tarred_audio_manifest.json"),
            is_tarred=True,
            tarred_audio_filepaths=str(shards / "audio_{0..2}.tar")
            if source == "offset"
            else f"pipe:cat {shards}/audio__OP_0..2_CL_.tar",
        )
    return values


def _ids(batch: dict[str, Any]) -> list[int]:
    return batch["sample_ids"].tolist()


# ------------------------------------------------------------------ real process groups


def _rank(rank: int, world: int, store: str, job: dict[str, Any]) -> None:
    """One rank of a gloo group: for each loader of ``job``, either start at ``job["epoch"]``
    and stop after ``stop`` batches (phase "a"), or load a saved state and run to the end of the
    epoch and two batches into the next (phase "b"); the batches and states go to a JSON file."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        for name, spec in job["loaders"].items():
            loader = build_dataloader(make_dataset_config(spec["values"]), job["tokenizer"])
            out: dict[str, Any] = {"rank": loader.rank, "world": loader.world_size}
            if job["phase"] == "a":
                loader.set_epoch(job["epoch"])
                out["len"] = len(loader)
                out["batches"] = []
                for b in loader:
                    out["batches"].append(_ids(b))
                    if len(out["batches"]) == spec["stop"]:
                        break
                out["state"] = loader.state_dict()
            else:
                saved = json.loads(Path(spec["load"]).read_text())
                loader.load_state_dict(saved[rank % len(saved)])  # any saved rank: the same step
                out["len"] = len(loader)
                out["batches"], out["states"] = [], []
                for b in loader:
                    out["batches"].append(_ids(b))
                    out["states"].append(loader.state_dict())
                out["tail"] = loader.report().get("drop_last_tail", 0)
                out["next"] = []
                for b in loader:  # the next epoch: a fresh deal to this world size
                    out["next"].append(_ids(b))
                    if len(out["next"]) == 2:
                        break
            steps = torch.tensor([len(out["batches"])])
            gathered = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
            dist.all_gather(gathered, steps)
            out["steps"] = [int(t) for t in gathered]
            Path(job["out"], f"{job['phase']}-{name}-{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def _spawn(tmp: Path, phase: str, world: int, job: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    store = tmp / f"store-{phase}"
    job = {**job, "phase": phase, "out": str(tmp)}
    mp.spawn(_rank, args=(world, str(store), job), nprocs=world, join=True)
    return {
        name: [json.loads((tmp / f"{phase}-{name}-{r}.json").read_text()) for r in range(world)]
        for name in job["loaders"]
    }


def _check_epoch(
    a: list[dict[str, Any]], b: list[dict[str, Any]], *, stop: int, drop_last: bool, epoch: int
) -> None:
    """The stop on ``len(a)`` ranks and the resume on ``len(b)``: one epoch, every example once."""
    w, w2 = len(a), len(b)
    assert [(o["rank"], o["world"]) for o in a] == [(r, w) for r in range(w)]
    assert [(o["rank"], o["world"]) for o in b] == [(r, w2) for r in range(w2)]
    assert all(len(o["batches"]) == stop and o["state"]["batch"] == stop for o in a)
    # the new ranks: equal step counts (seen by every rank through the group), continuing at `stop`
    steps = len(b[0]["batches"])
    assert steps > 0 and all(o["steps"] == [steps] * w2 and o["len"] == stop + steps for o in b)
    # mid-epoch positions name the earlier deal; the end of the epoch rolls over to a fresh one
    assert steps > 1, "the test wants a position inside the re-dealt part"
    for r, o in enumerate(b):
        run = {"version": POSITION_VERSION, "seed": 11, "rank": r, "world_size": w2}
        assert o["states"][0] == {**run, "epoch": epoch, "batch": stop + 1, "resized": [[w, stop]]}
        assert o["states"][-1] == {**run, "epoch": epoch + 1, "batch": 0}
    before = [tuple(x) for o in a for x in o["batches"]]
    after = [tuple(x) for o in b for x in o["batches"]]
    delivered = Counter(i for x in before + after for i in x)
    assert max(delivered.values()) <= 2
    twice = {i for i, c in delivered.items() if c == 2}
    if drop_last:
        assert not twice, "an example was delivered twice"
        tail = {o["tail"] for o in b}
        assert len(tail) == 1, "every rank counts the same drop_last_tail"
        assert len(delivered) + tail.pop() == N
    else:
        assert set(delivered) == ALL, "every example is delivered"
        # repeats are whole batches of the re-dealt rest, filling its last step(s)
        repeated = [x for x in after if set(x) & twice]
        assert all(after.count(x) == 2 and x not in before for x in repeated)
        assert {i for x in repeated for i in x} == twice
        assert len(repeated) <= 2 * (w2 - 1) * 3  # at most w2 - 1 per bucket, counted twice


def _next_epoch_is_fresh(values: dict[str, Any], tokenizer: str, b: list[dict[str, Any]], epoch: int) -> None:
    w2 = len(b)
    for r, o in enumerate(b):
        fresh = build_dataloader(
            make_dataset_config({**values, "num_workers": 0}), tokenizer, rank=r, world_size=w2
        )
        fresh.set_epoch(epoch + 1)
        first = []
        for batch in fresh:
            first.append(_ids(batch))
            if len(first) == 2:
                break
        assert o["next"] == first, r


@pytest.mark.parametrize(
    ("w", "w2", "epoch", "stops"),
    [(2, 3, 0, {"files": 5, "offset": 3}), (4, 2, 1, {"files": 2, "offset": 1})],
)
def test_gloo_ranks_resume_on_another_world_size(
    corpus: Corpus, shards: Path, tmp_path: Path, w: int, w2: int, epoch: int, stops: dict[str, int]
) -> None:
    tok = _tokenizer(corpus)
    # files: fixed batch sizes; shards by offset: dynamic batches in 2 buckets, synced across ranks.
    # drop_last alternates, and the workers per rank change at the resume
    drop = {"files": w > w2, "offset": w < w2}
    values = {
        "files": _values(corpus, shards, "files", micro_batch_size=2, drop_last=drop["files"]),
        "offset": _values(
            corpus,
            shards,
            "offset",
            batch_duration=3.0,
            num_buckets=2,
            bucketing_strategy="synced_randomized",
            drop_last=drop["offset"],
        ),
    }
    workers = {"files": (0, 1), "offset": (1, 0)}
    a = _spawn(
        tmp_path,
        "a",
        w,
        {
            "tokenizer": tok,
            "epoch": epoch,
            "loaders": {
                name: {"values": {**v, "num_workers": workers[name][0]}, "stop": stops[name]}
                for name, v in values.items()
            },
        },
    )
    for name, outs in a.items():
        assert stops[name] < outs[0]["len"], "the stop is mid-epoch"
        (tmp_path / f"saved-{name}.json").write_text(json.dumps([o["state"] for o in outs]))
    b = _spawn(
        tmp_path,
        "b",
        w2,
        {
            "tokenizer": tok,
            "epoch": epoch,
            "loaders": {
                name: {
                    "values": {**v, "num_workers": workers[name][1]},
                    "load": str(tmp_path / f"saved-{name}.json"),
                }
                for name, v in values.items()
            },
        },
    )
    for name in values:
        _check_epoch(a[name], b[name], stop=stops[name], drop_last=drop[name], epoch=epoch)
        _next_epoch_is_fresh(values[name], tok, b[name], epoch)


# ------------------------------------------------------------------------- in one process


def _take(loader: Any, n: int | None = None) -> list[tuple[int, ...]]:
    """``n`` batches from the loader's position (all of the epoch's rest when ``None``)."""
    out: list[tuple[int, ...]] = []
    for b in loader:
        out.append(tuple(_ids(b)))
        if len(out) == n:
            break
    return out


def test_a_chain_of_world_sizes_delivers_every_example_once(corpus: Corpus, shards: Path) -> None:
    """2 ranks for 3 steps, 3 ranks for 2 more, then 2 ranks to the end of the epoch."""
    tok = _tokenizer(corpus)
    cfg = make_dataset_config(_values(corpus, shards, "files", micro_batch_size=2, drop_last=True))

    def loaders(world: int) -> list[Any]:
        return [build_dataloader(cfg, tok, rank=r, world_size=world) for r in range(world)]

    first = loaders(2)
    part1 = [x for ld in first for x in _take(ld, 3)]
    saved1 = [ld.state_dict() for ld in first]
    second = loaders(3)
    for r, ld in enumerate(second):
        ld.load_state_dict(saved1[r % 2])
    part2 = [x for ld in second for x in _take(ld, 2)]
    saved2 = [ld.state_dict() for ld in second]
    assert saved2[1] == {
        "version": POSITION_VERSION,
        "epoch": 0,
        "batch": 5,
        "seed": 11,
        "rank": 1,
        "world_size": 3,
        "resized": [[2, 3]],
    }
    third = loaders(2)
    for r, ld in enumerate(third):
        ld.load_state_dict(saved2[2 - r])
    lengths = [len(ld) for ld in third]
    rests = [_take(ld) for ld in third]
    assert len(rests[0]) == len(rests[1]) > 0 and lengths == [5 + len(rests[0])] * 2
    delivered = [i for x in part1 + part2 + rests[0] + rests[1] for i in x]
    tail = third[0].report().get("drop_last_tail", 0)
    assert len(delivered) == len(set(delivered)) and len(delivered) + tail == N


def test_positions_that_cannot_be_re_dealt_are_one_line_errors(corpus: Corpus, shards: Path) -> None:
    tok = _tokenizer(corpus)
    streamed = make_dataset_config(_values(corpus, shards, "streamed", micro_batch_size=2, shuffle_n=4))
    on_two = build_dataloader(streamed, tok, rank=0, world_size=2)
    assert on_two.streaming
    at_start = on_two.state_dict()
    _take(on_two, 1)
    saved = on_two.state_dict()
    one = build_dataloader(streamed, tok)
    one.load_state_dict(at_start)  # an epoch boundary holds for any world size
    with pytest.raises(ConfigError) as info:
        one.load_state_dict(saved)
    msg = str(info.value)
    assert msg.startswith("loader state: saved world_size=2 differs from this loader's 1; a streamed dataset")
    assert "dealt by rank and worker" in msg and "\n" not in msg
    # a stream's position records its workers per rank: other num_workers is refused mid-epoch
    files = make_dataset_config(_values(corpus, shards, "files", micro_batch_size=2))
    assert saved["readers"] == 1 and "readers" not in build_dataloader(files, tok).state_dict()
    two_workers = build_dataloader(dataclasses.replace(streamed, num_workers=2), tok, rank=0, world_size=2)
    two_workers.load_state_dict(at_start)
    with pytest.raises(
        ConfigError, match=r"^loader state: saved by 1 stream reader\(s\) per rank, this loader has 2 "
    ):
        two_workers.load_state_dict(saved)

    files = build_dataloader(make_dataset_config(_values(corpus, shards, "files", micro_batch_size=2)), tok)
    per_two = len(build_dataloader(files.cfg, tok, rank=0, world_size=2))
    for state, message in [
        (
            {"epoch": 0, "batch": 40, "world_size": 1, "resized": [[2, 30]]},
            f"loader state: batch 30 is past the end of epoch 0 on 2 ranks ({per_two} batches)",
        ),
        (
            {"epoch": 0, "batch": 4, "resized": [[2, 0]]},
            "loader state: resized must list [world_size >= 1, batch]",
        ),
        ({"epoch": 0, "batch": 4, "resized": [[2, 5]]}, "to at most batch 4, got [[2, 5]]"),
        ({"epoch": 0, "batch": 4, "resized": "2x3"}, "got '2x3'"),
    ]:
        with pytest.raises(ConfigError) as info:
            files.load_state_dict(state)
        assert message in str(info.value) and "\n" not in str(info.value), state


# ------------------------------------------------------------------------------ the trainer


class _Recorder(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.seen.append(batch["sample_ids"].tolist())


def _trainer_overrides(corpus: Corpus, tok: str, exp: Path) -> list[str]:
    return [
        f"model.train_ds.manifest_filepath={corpus.manifest}",
        f"model.validation_ds.manifest_filepath={corpus.manifest}",
        f"model.tokenizer.model={tok}",
        f"exp_manager.exp_dir={exp}",
        "exp_manager.checkpoint_callback_params.every_n_train_steps=1",
        "trainer.accelerator=cpu",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "model.train_ds.num_workers=0",
        "model.train_ds.drop_last=false",
        "model.train_ds.min_duration=null",
        "model.train_ds.max_duration=null",
        "model.micro_batch_size=4",
        "model.global_batch_size=8",
        "optim.sched.max_steps=50",
        *TINY_MODEL,
    ]


def test_the_trainer_resumes_on_more_devices(corpus: Corpus, tmp_path: Path) -> None:
    """One process stops mid-epoch; the checkpoint resumes with ``trainer.devices=2`` (DDP, gloo):
    the run finishes the epoch, and the two ranks' rest of the epoch (their loaders re-dealt from
    the saved position, as the trainer's are) is every example not trained on, each once."""
    tok = _tokenizer(corpus)
    overrides = [*_trainer_overrides(corpus, tok, tmp_path / "exp"), "model.global_batch_size=4"]
    stop = 2
    one = [*overrides, "trainer.devices=1", f"trainer.max_steps={stop}"]
    rec = _Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(load_config(CONFIGS / "salm_tiny.yaml", one), callbacks=[rec])
    last = next((tmp_path / "exp").rglob("*-last.ckpt"))
    saved = torch.load(last, map_location="cpu", weights_only=True)[CHECKPOINT_KEY]
    assert [p["world_size"] for p in saved] == [1] and saved[0]["batch"] == stop
    before = [tuple(x) for x in rec.seen]

    two = [*overrides, "model.global_batch_size=8", "trainer.devices=2", "trainer.strategy=ddp"]
    two += ["trainer.max_steps=-1", "trainer.max_epochs=1"]
    out = run_speechdata(["train", str(CONFIGS / "salm_tiny.yaml"), *two], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    newest = max((tmp_path / "exp").rglob("*-last.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    final = torch.load(newest, map_location="cpu", weights_only=True)
    # the run resumed at step `stop` and finished the epoch on two ranks
    assert [(p["world_size"], p["rank"], p["epoch"], p["batch"]) for p in final[CHECKPOINT_KEY]] == [
        (2, 0, 1, 0),
        (2, 1, 1, 0),
    ]
    ds = dataset_config(load_config(CONFIGS / "salm_tiny.yaml", two), "train_ds")
    after = []
    for r in range(2):
        loader = build_dataloader(ds, tok, rank=r, world_size=2)
        loader.load_state_dict(saved[0])
        after += _take(loader)
    assert final["global_step"] == stop + len(after) // 2
    delivered = [i for x in before + after for i in x]
    assert sorted(delivered) == sorted(ALL), "the rest of the epoch is every example not trained on, once"


def test_the_trainer_resumes_on_another_number_of_devices(corpus: Corpus, tmp_path: Path) -> None:
    """Two DDP processes (gloo) stop mid-epoch; the checkpoint resumes with ``trainer.devices=1``
    and the rest of the epoch is every example the two ranks had not trained on, each once."""
    tok = _tokenizer(corpus)
    overrides = _trainer_overrides(corpus, tok, tmp_path / "exp")
    stop = 2
    two = [*overrides, "trainer.devices=2", "trainer.strategy=ddp", f"trainer.max_steps={stop}"]
    out = run_speechdata(["train", str(CONFIGS / "salm_tiny.yaml"), *two], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    last = next((tmp_path / "exp").rglob("*-last.ckpt"))
    saved = torch.load(last, map_location="cpu", weights_only=True)[CHECKPOINT_KEY]
    ds = dataset_config(load_config(CONFIGS / "salm_tiny.yaml", two), "train_ds")
    assert saved == [
        {"version": POSITION_VERSION, "epoch": 0, "batch": stop, "seed": ds.seed, "rank": r, "world_size": 2}
        for r in range(2)
    ]
    # what the two ranks trained on: their first `stop` batches of epoch 0
    before = [
        tuple(x) for r in range(2) for x in _take(build_dataloader(ds, tok, rank=r, world_size=2), stop)
    ]

    one = [*overrides, "trainer.devices=1", "trainer.max_steps=-1", "trainer.max_epochs=1"]
    rec = _Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(load_config(CONFIGS / "salm_tiny.yaml", one), callbacks=[rec])
    after = [tuple(x) for x in rec.seen]
    delivered = [i for x in before + after for i in x]
    assert sorted(delivered) == sorted(ALL), "the rest of the epoch is every example not trained on, once"
