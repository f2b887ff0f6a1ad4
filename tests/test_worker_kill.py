"""A DataLoader worker killed mid-epoch (SPEC §8, §5): a clear error, then an exact resume.

The worker kills itself with SIGKILL while it prepares a chosen batch (a hook on the dataset's
audio reader, armed once through a marker file so the resumed run is not killed again). The error
must say that a worker died and how to continue; the loader's ``state_dict()`` at that point,
given to a fresh loader, must yield exactly the batches an uninterrupted run yields after it.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.errors import WorkerDiedError
from speechdata.manifest import Record
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
