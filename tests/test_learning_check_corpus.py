"""The corpus of ``benchmarks/learning_check_corpus.py``: answers in the audio, a shuffled control."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import soundfile as sf
from helpers_scripts import load_benchmark

from speechdata.testing import decode_tones


def load_script() -> ModuleType:
    return load_benchmark("learning_check_corpus")


def read_manifest(path: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines()]


def clip_text(path: Path, entry: dict[str, Any], seconds_per_char: float) -> str:
    sr = sf.info(path).samplerate
    start, frames = round(entry["offset"] * sr), round(entry["duration"] * sr)
    audio, sr = sf.read(path, start=start, frames=frames, dtype="float32")
    return decode_tones(audio, sr, seconds_per_char=seconds_per_char)


def test_answers_can_be_read_from_the_audio_and_the_control_shuffles_them(tmp_path: Path) -> None:
    script = load_script()
    data = script.build_corpus(tmp_path, 24, 6, 0, seconds_per_char=0.25, min_duration=0.5, max_duration=2.5)
    train, val = read_manifest(data["train"]), read_manifest(data["val"])
    for manifest, entries in ((data["train"], train), (data["val"], val)):
        root = Path(manifest).parent
        for e in entries:
            # 0.5-2.5 s at 0.25 s per character: one word of at most 9 characters
            assert 1 <= len(e["answer"]) <= 9 and " " not in e["answer"]
            assert clip_text(root / e["audio_filepath"], e, 0.25) == e["answer"]
    shuffled = read_manifest(data["shuffled"])
    root = Path(data["train"]).parent
    assert [s["audio_filepath"] for s in shuffled] == [str(root / e["audio_filepath"]) for e in train]
    assert [s["offset"] for s in shuffled] == [e["offset"] for e in train]
    assert sorted(s["answer"] for s in shuffled) == sorted(e["answer"] for e in train)
    moved = sum(s["answer"] != e["answer"] for s, e in zip(shuffled, train, strict=True))
    assert moved > len(train) // 2
    assert Path(data["tokenizer"]).is_file()
