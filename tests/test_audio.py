"""Audio decoding: spans, channels, resampling, bytes, errors (SPEC §8 fault cases)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechdata.audio import audio_info, load_audio
from speechdata.errors import DataError


@pytest.fixture
def stereo(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    sr = 16000
    data = (rng.standard_normal((sr * 3, 2)) * 0.1).astype(np.float32)
    path = tmp_path / "st.flac"
    sf.write(path, data, sr, subtype="PCM_24")
    return path, sf.read(path, dtype="float32")[0]


def test_span_reads_only_the_requested_frames(stereo) -> None:
    path, full = stereo
    x = load_audio(path, offset=1.25, duration=0.5)
    np.testing.assert_array_equal(x, full[20000:28000].mean(axis=1).astype(np.float32))
    left = load_audio(path, offset=1.25, duration=0.5, channel=0)
    np.testing.assert_array_equal(left, full[20000:28000, 0])
    assert load_audio(path).shape == (48000,)


def test_span_read_seeks_instead_of_reading_everything(stereo, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = stereo
    asked: list[int] = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        asked.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    load_audio(path, offset=2.0, duration=0.25)
    assert asked == [4000]


def test_bytes_and_resampling(stereo) -> None:
    path, full = stereo
    blob = path.read_bytes()
    x = load_audio(blob, offset=0.5, duration=1.0, sample_rate=8000)
    assert x.dtype == np.float32 and x.shape == (8000,)
    assert audio_info(blob).sample_rate == 16000
    same = load_audio(blob, offset=0.5, duration=1.0)
    np.testing.assert_array_equal(same, full[8000:24000].mean(axis=1).astype(np.float32))


@pytest.mark.parametrize(
    ("kwargs", "reason", "message"),
    [
        ({"offset": 5.0}, "decode_error", "past the end"),
        ({"offset": 2.0, "duration": 2.0}, "decode_error", "runs past the end"),
        ({"offset": -1.0}, "decode_error", "offset must be"),
        ({"duration": float("nan")}, "decode_error", "duration must be"),
        ({"channel": 3}, "decode_error", "channel 3 requested"),
    ],
)
def test_bad_spans(stereo, kwargs: dict, reason: str, message: str) -> None:
    path, _ = stereo
    with pytest.raises(DataError) as err:
        load_audio(path, where="m.jsonl:7", **kwargs)
    assert (
        err.value.reason == reason and message in str(err.value) and str(err.value).startswith("m.jsonl:7: ")
    )


def test_missing_empty_truncated_and_garbage(tmp_path: Path, stereo) -> None:
    with pytest.raises(DataError) as err:
        load_audio(tmp_path / "nope.wav", where="m.jsonl:1")
    assert err.value.reason == "missing_audio"
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(DataError, match="empty") as err:
        load_audio(empty)
    assert err.value.reason == "decode_error"
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00not really audio" * 10)
    with pytest.raises(DataError, match="cannot decode") as err:
        load_audio(garbage)
    wav = tmp_path / "ok.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(wav.read_bytes()[:16000])  # header promises 1 s, data holds ~0.5 s
    try:
        x = load_audio(cut, duration=1.0)
    except DataError as e:
        assert e.reason == "decode_error"
    else:  # libsndfile may shorten the frame count to what is there; then it must not claim more
        assert x.shape[0] < 16000 and audio_info(cut).frames == x.shape[0]
