"""The Source seam (docs/architecture.md, "Sources"): a source defined here, in memory (records and
WAV bytes held in Python, no audio or manifest files), goes through the loader exactly as
manifests and tar shards do: batches, drops with their places, resume; read by row (planned) or
streamed, with 0 and 2 workers."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import soundfile as sf

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.errors import DataError
from speechdata.manifest import Index, Record, pack_sample_id
from speechdata.sampling.position import POSITION_VERSION
from speechdata.sources import Source, StreamSlot, StreamSource, index_from_clips
from speechdata.text.tokenizer import Tokenizer, train_tokenizer

LOCATOR = "|audio|"
SR = 16000
WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "stone", "river", "cloud", "bird"]


def _tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _wav(wave: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class MemorySource:
    """Examples held in Python: every clip is WAV bytes in a list, every text a string.

    ``seekable`` true: the loader plans batches of rows and calls :meth:`record` / :meth:`audio`
    in its workers. False: it calls :meth:`stream`, which deals the kept rows of a seeded
    per-epoch order to the (rank, worker) slots.
    """

    def __init__(self, examples: list[dict], *, seekable: bool = True, seed: int = 0) -> None:
        self.examples = examples
        self.seekable = seekable
        self.seed = seed
        self.buckets: np.ndarray | None = None
        self.index: Index = index_from_clips(
            "memory",
            [e["durations"] for e in examples],
            [len(e["context"]) + len(e["answer"]) for e in examples],
        )

    def record(self, row: int) -> Record:
        e = self.examples[row]
        n = len(e["clips"])
        return Record(
            audio=[f"clip{row}.{k}" for k in range(n)],
            offset=[0.0] * n,
            duration=list(e["durations"]),
            context=e["context"],
            answer=e["answer"],
            extra={},
            where=self.index.where(row),
            sample_id=pack_sample_id(0, row + 1),
            row=row,
        )

    def audio(self, rec: Record) -> Sequence[bytes]:
        return self.examples[rec.row]["clips"]

    def stream(self, keep: np.ndarray, slot: StreamSlot) -> Iterator[tuple[Record, Sequence[bytes]]]:
        order = np.random.default_rng([self.seed, slot.epoch]).permutation(np.flatnonzero(keep))
        first = slot.rank * slot.num_workers + slot.worker
        for row in order[first :: slot.world_size * slot.num_workers].tolist():
            rec = self.record(row)
            yield rec, self.audio(rec)


def _examples() -> list[dict]:
    """20 one-clip examples of 0.3-1.25 s, one of two clips, one too long (4 s) and one whose
    bytes are not audio."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(22):
        seconds = [round(0.3 + 0.05 * i, 2)] if i != 20 else [0.4, 0.6]
        waves = [_tone(s, 200 + 40 * i + 5 * k) for k, s in enumerate(seconds)]
        words = " ".join(rng.choice(WORDS, size=3).tolist())
        out.append(
            {
                "waves": waves,
                "clips": [_wav(w) for w in waves],
                "durations": seconds,
                "context": " ".join([LOCATOR] * len(waves)) + " what is said",
                "answer": words,
            }
        )
    out[5]["clips"], out[5]["durations"] = [b"RIFF but not a wave file"], [0.5]
    long = _tone(4.0, 300)
    out[11].update(waves=[long], clips=[_wav(long)], durations=[4.0])
    return out


EXAMPLES = _examples()
BROKEN, TOO_LONG = 5, 11


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    texts = [e["answer"] for e in EXAMPLES] + [e["context"] for e in EXAMPLES]
    return train_tokenizer(
        texts, tmp_path_factory.mktemp("tok"), vocab_size=60, user_symbols=[LOCATOR], byte_fallback=False
    )


def _cfg(workers: int = 0, **kw):
    return make_dataset_config(
        {
            "audio_locator": LOCATOR,
            "prompt_template": "Q: {context}\nA: {answer}",
            "micro_batch_size": 3,
            "drop_last": False,
            "min_duration": None,
            "max_duration": 2.0,
            "on_error": "skip",
            "num_workers": workers,
            "seed": 3,
            "sample_rate": SR,
            "bucket_buffer_size": 8,
            **kw,
        }
    )


def _ids(batch: dict) -> list[int]:
    return batch["sample_ids"].tolist()


def test_the_test_source_is_a_source() -> None:
    assert isinstance(MemorySource(EXAMPLES), Source)
    assert isinstance(MemorySource(EXAMPLES, seekable=False), StreamSource)


@pytest.mark.parametrize(("seekable", "workers"), [(True, 0), (True, 2), (False, 0), (False, 2)])
def test_in_memory_source_batches_drops_and_resume(
    tokenizer: Tokenizer, seekable: bool, workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(workers)
    loader = build_dataloader(cfg, tokenizer, source=MemorySource(EXAMPLES, seekable=seekable))
    assert loader.streaming == (not seekable)
    caplog.set_level(logging.WARNING, logger="speechdata")
    epoch0 = list(loader)
    # every example once, except the one the filter drops and the one that does not decode
    seen = [s for b in epoch0 for s in _ids(b)]
    want = {pack_sample_id(0, i + 1) for i in range(len(EXAMPLES)) if i not in (BROKEN, TOO_LONG)}
    assert sorted(seen) == sorted(want)
    # the audio and text are the source's own
    for b in epoch0:
        clip = 0
        for k, sid in enumerate(_ids(b)):
            e = EXAMPLES[(sid & 0xFFFFFFFF) - 1]
            assert b["metadata"][k]["answer"] == e["answer"]
            for wave in e["waves"]:
                n = int(b["audio_signal_length"][clip])
                assert n == wave.size
                np.testing.assert_allclose(b["audio_signal"][clip, :n].numpy(), wave, atol=1.5 / 32768)
                clip += 1
    # drops: counted by reason, logged with their places
    assert loader.report() == {"too_long_audio": 1, "decode_error": 1}
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 0:"))
    assert f"memory:{TOO_LONG + 1}" in line and f"memory:{BROKEN + 1}" in line, line

    # resume: stop after 2 batches of epoch 1, continue in a new loader from the state
    epoch1 = [_ids(b) for b in loader]
    assert epoch1 != [_ids(b) for b in epoch0]
    head = []
    stopped = build_dataloader(cfg, tokenizer, source=MemorySource(EXAMPLES, seekable=seekable))
    stopped.set_epoch(1)
    for b in stopped:
        head.append(_ids(b))
        if len(head) == 1:  # the source went to the worker processes
            pids = stopped.worker_pids()
            assert len(pids) == workers and os.getpid() not in pids
        if len(head) == 2:
            break
    state = stopped.state_dict()
    plain = {"version": POSITION_VERSION, "epoch": 1, "batch": 2, "seed": 3, "rank": 0, "world_size": 1}
    # a stream also records its readers per rank (num_workers, 0 counting as 1)
    assert state == (plain if seekable else {**plain, "readers": max(1, workers)})
    resumed = build_dataloader(cfg, tokenizer, source=MemorySource(EXAMPLES, seekable=seekable))
    resumed.load_state_dict(state)
    assert head + [_ids(b) for b in resumed] == epoch1


def test_a_raised_record_error_is_the_one_line_error(tokenizer: Tokenizer) -> None:
    class Failing(MemorySource):
        def record(self, row: int) -> Record:
            if row == 2:
                raise DataError("bad_line", self.index.where(row), "no answer")
            return super().record(row)

    loader = build_dataloader(_cfg(on_error="raise", shuffle=False), tokenizer, source=Failing(EXAMPLES))
    with pytest.raises(DataError, match=r"^memory:3: no answer$"):
        list(loader)


def test_a_stream_source_needs_stream(tokenizer: Tokenizer) -> None:
    class NoStream(MemorySource):
        stream = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"^NoStream: a source with seekable false needs stream\(\)$"):
        build_dataloader(_cfg(), tokenizer, source=NoStream(EXAMPLES, seekable=False))
