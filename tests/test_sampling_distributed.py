"""Two real ranks (gloo, CPU): rank/world from torch.distributed, equal steps, disjoint examples,
for the planner alone and for ``build_dataloader`` on a real corpus."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speechdata.config import make_dataset_config
from speechdata.loader import build_dataloader
from speechdata.sampling import BatchSampler
from speechdata.testing import make_corpus


class _Index:
    def __init__(self, n: int) -> None:
        d = np.clip(np.random.default_rng(9).gamma(6.0, 2.0, n), 1.0, 35.0).astype(np.float32)
        self.duration = self.min_clip = self.max_clip = d
        self.num_audios = np.ones(n, np.uint8)
        self.dataset = (np.arange(n) % 3).astype(np.uint16)
        self.num_datasets = 3


def _worker(rank: int, world: int, port: int, out: str, manifest: str, tokenizer: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = make_dataset_config(
            {
                "batch_duration": 150.0,
                "bucketing_strategy": "synced_randomized",
                "drop_last": False,
                "seed": 5,
            }
        )
        index = _Index(1001)
        sampler = BatchSampler(index, np.ones(1001, bool), cfg)  # rank/world from the process group
        batches = list(sampler)
        steps = torch.tensor([len(batches)])
        gathered = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
        dist.all_gather(gathered, steps)
        plan = sampler.plan(0)
        Path(out, f"rank{rank}.json").write_text(
            json.dumps(
                {
                    "rank": sampler.rank,
                    "world": sampler.world_size,
                    "steps": [int(t) for t in gathered],
                    "batches": batches,
                    "buckets": plan.bucket.tolist(),
                    "repeated": plan.repeated,
                }
            )
        )
        # the loader on real files: rank and world size from the process group too
        loader = build_dataloader(
            make_dataset_config(
                {
                    "manifest_filepath": manifest,
                    "audio_locator": "|audio|",
                    "batch_duration": 8.0,
                    "num_buckets": 3,
                    "drop_last": True,
                    "min_duration": None,
                    "max_duration": None,
                    "seed": 5,
                }
            ),
            tokenizer,
        )
        Path(out, f"loader{rank}.json").write_text(
            json.dumps(
                {
                    "rank": loader.rank,
                    "world": loader.world_size,
                    "batches": [b["sample_ids"].tolist() for b in loader],
                    "dropped": loader.report().get("drop_last_tail", 0),
                }
            )
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_equal_steps_disjoint_examples(tmp_path):
    corpus = make_corpus(tmp_path / "c", n=30, seed=3, max_duration=3.0)
    corpus.train_tokenizer(vocab_size=80, out_dir=tmp_path / "tok")
    args = (2, _free_port(), str(tmp_path), str(corpus.manifest), str(tmp_path / "tok" / "tokenizer.model"))
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r0["world"], r1["rank"], r1["world"]) == (0, 2, 1, 2)
    assert r0["steps"] == r1["steps"] == [len(r0["batches"])] * 2
    # synced: the same bucket at every step, but for the few steps made of the buckets' leftovers
    # (adjacent buckets, in bucket order: tests/test_synced_tails.py)
    steps = list(zip(r0["buckets"], r1["buckets"], strict=True))
    assert all(b0 <= b1 for b0, b1 in steps)
    assert sum(b0 != b1 for b0, b1 in steps) < len(set(r0["buckets"]) | set(r1["buckets"]))
    a = [i for b in r0["batches"] for i in b]
    b = [i for b in r1["batches"] for i in b]
    shared = set(a) & set(b)
    assert len(a) + len(b) == 1001 + r0["repeated"]
    assert set(a) | set(b) == set(range(1001))
    assert sum(min(a.count(i), b.count(i)) for i in shared) <= r0["repeated"]

    l0, l1 = (json.loads((tmp_path / f"loader{r}.json").read_text()) for r in (0, 1))
    assert (l0["rank"], l0["world"], l1["rank"], l1["world"]) == (0, 2, 1, 2)
    assert len(l0["batches"]) == len(l1["batches"]) > 0
    a = [i for b in l0["batches"] for i in b]
    b = [i for b in l1["batches"] for i in b]
    assert not set(a) & set(b), "an example went to both ranks"
    assert len(a) + len(b) == len(set(a) | set(b)) == len(corpus.entries) - l0["dropped"]
    assert l0["dropped"] == l1["dropped"]
