"""A DataLoader worker killed mid-epoch (docs/errors.md, docs/architecture.md): a clear error, then an exact resume.

The worker kills itself with SIGKILL while it prepares a chosen batch (a hook on the dataset's
audio reader, armed once through a marker file so the resumed run is not killed again). The error
must say that a worker died and how to continue; the loader's ``state_dict()`` at that point,
given to a fresh loader, must yield exactly the batches an uninterrupted run yields after it: for
plain files in epoch 1, and for streamed tar shards in epoch 0.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.errors import WorkerDiedError
from speechdata.feed import BatchDataset
from speechdata.manifest import Record
from speechdata.shards.write import ShardOptions, write_shards
from speechdata.testing import make_corpus
from speechdata.text.tokenizer import Tokenizer

LOCATOR = "|audio|"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_corpus(tmp_path_factory.mktemp("kill"), n=24, seed=5, max_duration=3.0)


@pytest.fixture(scope="module")
def tokenizer(corpus) -> Tokenizer:
    return corpus.train_tokenizer(vocab_size=100, locator=LOCATOR)


def _cfg(corpus, **kw: Any):
    return make_dataset_config(
        {
            "manifest_filepath": str(corpus.manifest),
            "audio_locator": LOCATOR,
            "prompt_template": "Q: {context}\nA: {answer}",
            "micro_batch_size": 2,
            "num_workers": 2,
            "drop_last": False,
            "min_duration": None,
            "max_duration": None,
            "seed": 4,
            **kw,
        }
    )


class _KillOnce:
    """Audio reader wrapper: the worker that reads ``victim`` for the ``nth`` time SIGKILLs itself.

    Reads are counted across processes with marker files in ``folder``; only one kill ever happens.
    """

    def __init__(self, reader: Any, victim: int, folder: Path, nth: int = 1) -> None:
        self.reader = reader
        self.victim = victim
        self.folder = folder
        self.nth = nth

    def _first(self, name: str) -> bool:
        try:
            os.close(os.open(self.folder / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def __call__(self, rec: Record) -> Any:
        if rec.sample_id == self.victim:
            reads = next(k for k in range(1, 100) if self._first(f"read{k}"))
            if reads == self.nth and self._first("killed"):
                os.kill(os.getpid(), signal.SIGKILL)
        return self.reader(rec)


def _ids(batch: dict[str, Any]) -> list[int]:
    return batch["sample_ids"].tolist()


def _reference(corpus, tokenizer: Tokenizer, epochs: int) -> list[list[int]]:
    loader = build_dataloader(_cfg(corpus, num_workers=0), tokenizer)
    return [_ids(b) for _ in range(epochs) for b in loader]


def test_killed_worker_gives_a_clear_error_and_resume_loses_nothing(
    tmp_path: Path, corpus, tokenizer
) -> None:
    position = 5
    reference = _reference(corpus, tokenizer, epochs=2)
    per_epoch = len(reference) // 2
    assert per_epoch > position + 1
    # the victim is the first example of a batch in epoch 1: killed on its second read
    victim = reference[per_epoch + position][0]
    loader = build_dataloader(_cfg(corpus), tokenizer)
    loader.dataset.read_audio = _KillOnce(loader.dataset.read_audio, victim, tmp_path, nth=2)
    got: list[list[int]] = [_ids(b) for b in loader]  # epoch 0, untouched
    with pytest.raises(WorkerDiedError) as info:
        for b in loader:
            got.append(_ids(b))
    msg = str(info.value)
    assert re.search(
        r"(DataLoader worker \(pid\(s\) \d+\) exited unexpectedly|"
        r"a DataLoader worker died while handing over a batch \(\w+\)); epoch 1, \d+ batches",
        msg,
    ), msg
    assert "\n" not in msg and "state_dict()" in msg and "load_state_dict()" in msg
    assert (tmp_path / "killed").exists()
    state = loader.state_dict()
    # prefetched batches past the consumer's position were never handed out: nothing was skipped
    assert state["epoch"] == 1 and state["batch"] == len(got) - per_epoch <= position

    resumed = build_dataloader(_cfg(corpus), tokenizer)
    resumed.load_state_dict(state)
    got += [_ids(b) for b in resumed]
    assert got == reference
    flat = [s for b in got[per_epoch:] for s in b]
    assert len(flat) == len(set(flat)) == len(corpus.entries)


def test_same_loader_iterates_again_after_a_worker_died(tmp_path: Path, corpus, tokenizer) -> None:
    reference = _reference(corpus, tokenizer, epochs=1)
    loader = build_dataloader(_cfg(corpus), tokenizer)
    loader.dataset.read_audio = _KillOnce(loader.dataset.read_audio, reference[3][0], tmp_path)
    got: list[list[int]] = []
    with pytest.raises(WorkerDiedError):
        for b in loader:
            got.append(_ids(b))
    # a new iter() on the same loader starts fresh workers and continues at the next batch
    got += [_ids(b) for b in loader]
    assert got == reference


def test_streamed_worker_killed_in_the_first_epoch_resumes_exactly(
    tmp_path: Path, corpus, tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other path and another moment: tar shards streamed through ``pipe:`` by 2 workers,
    a worker killed in epoch 0 while it builds a batch (the stream is replayed on resume)."""
    shards = tmp_path / "shards"
    write_shards([corpus.manifest], shards, ShardOptions(num_shards=3, progress=False))
    cfg = _cfg(
        corpus,
        manifest_filepath=str(shards / "tarred_audio_manifest.json"),
        is_tarred=True,
        tarred_audio_filepaths=f"pipe:cat {shards}/audio__OP_0..2_CL_.tar",
        shuffle_n=8,
        bucket_buffer_size=16,
    )
    reference = [_ids(b) for b in build_dataloader(cfg, tokenizer)]  # epoch 0, uninterrupted
    # the victim: an example of one late batch only (a shard read twice repeats its examples), so
    # the workers' read-ahead cannot reach it before the consumer has taken some batches
    counts = Counter(s for b in reference for s in b)
    position, victim = next(
        (k, s) for k in range(len(reference) - 3, 0, -1) for s in reference[k] if counts[s] == 1
    )
    assert position >= len(reference) // 2, position
    marks = tmp_path / "marks"
    marks.mkdir()
    real = BatchDataset.pack

    def pack(self: BatchDataset, records: list[Record], read_audio: Any, drops: Any) -> Any:
        # the streaming path hands each batch's records here, in the worker that builds it
        if victim in [rec.sample_id for rec in records]:
            try:
                os.close(os.open(marks / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(self, records, read_audio, drops)

    monkeypatch.setattr(BatchDataset, "pack", pack)
    loader = build_dataloader(cfg, tokenizer)
    assert loader.streaming and cfg.num_workers == 2
    got: list[list[int]] = []
    with pytest.raises(WorkerDiedError, match=r"; epoch 0, \d+ batches consumed, nothing lost"):
        for b in loader:
            got.append(_ids(b))
    assert (marks / "killed").exists()
    state = loader.state_dict()
    assert state["epoch"] == 0 and 0 < state["batch"] == len(got) <= position

    resumed = build_dataloader(cfg, tokenizer)
    resumed.load_state_dict(state)
    got += [_ids(b) for b in resumed]
    assert got == reference
