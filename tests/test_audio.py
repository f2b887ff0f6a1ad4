"""Audio decoding: spans, channels, resampling, bytes, errors (docs/errors.md fault cases)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechdata.audio import AudioInfo, PcmWav, audio_info, load_audio, parse_pcm16_wav
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
    import speechdata.audio

    path, _ = stereo
    asked: list[int] = []
    real_read = speechdata.audio._read

    def spy(f, frames, out):
        asked.append(frames)
        return real_read(f, frames, out)

    monkeypatch.setattr(speechdata.audio, "_read", spy)
    load_audio(path, offset=2.0, duration=0.25)
    assert asked == [4000]


@pytest.mark.parametrize(("ext", "subtype"), [("flac", "PCM_16"), ("wav", "PCM_24"), ("ogg", "VORBIS")])
def test_libsndfile_reads_equal_soundfile_read(tmp_path: Path, ext: str, subtype: str) -> None:
    # one sf_readf_float call (no seek after the read) gives SoundFile.read's samples, mono and stereo
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((16000, 2)) * 0.2).astype(np.float32)
    for name, audio in (("st", data), ("mono", data[:, 0])):
        path = tmp_path / f"{name}.{ext}"
        sf.write(path, audio, 16000, subtype=subtype)
        with sf.SoundFile(path) as f:
            f.seek(3000)
            want = f.read(8000, dtype="float32")
        want = want if want.ndim == 1 else want.mean(axis=1, dtype=np.float32)
        out = np.zeros(9000, dtype=np.float32)
        got = load_audio(path, offset=3000 / 16000, duration=0.5, out=out)
        np.testing.assert_array_equal(got, want)
        assert np.shares_memory(got, out)


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


def _pcm16(tmp_path: Path, name: str, channels: int, **kw) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(len(name) + channels)
    pcm = rng.integers(-32768, 32768, size=(24000, channels), dtype=np.int16)
    pcm[:2] = [[-32768] * channels, [32767] * channels]  # both extremes
    path = tmp_path / name
    sf.write(path, pcm, 16000, subtype="PCM_16", **kw)
    return path, sf.read(path, dtype="float32", always_2d=True)[0]


@pytest.mark.parametrize(("channels", "fmt"), [(1, "WAV"), (2, "WAV"), (1, "WAVEX")])
def test_pcm16_wav_direct_path_equals_libsndfile(tmp_path: Path, channels: int, fmt: str) -> None:
    path, ref = _pcm16(tmp_path, f"x{channels}{fmt}.wav", channels, format=fmt)
    with PcmWav.open(path) as direct:
        assert (direct.samplerate, direct.channels, direct.frames) == (16000, channels, 24000)
    mono = ref[:, 0] if channels == 1 else ref.mean(axis=1, dtype=np.float32)
    for source in (path, path.read_bytes()):
        np.testing.assert_array_equal(load_audio(source), mono)
        np.testing.assert_array_equal(load_audio(source, offset=0.25, duration=0.5), mono[4000:12000])
        np.testing.assert_array_equal(load_audio(source, channel=channels - 1), ref[:, channels - 1])
    assert audio_info(path) == AudioInfo(16000, 24000, channels, "WAV")


def test_other_wavs_go_to_libsndfile(tmp_path: Path) -> None:
    x = np.linspace(-1, 1, 1600, dtype=np.float32)
    for subtype in ("FLOAT", "PCM_24", "PCM_U8"):
        sf.write(tmp_path / f"{subtype}.wav", x, 16000, subtype=subtype)
        assert PcmWav.open(tmp_path / f"{subtype}.wav") is None
    path, ref = _pcm16(tmp_path, "whole.wav", 1)
    blob = path.read_bytes()
    assert PcmWav.open(blob[:-2]) is None  # data chunk incomplete: libsndfile decides
    assert PcmWav.open(path.with_suffix(".flac")) is None  # not named .wav: not even opened
    (tmp_path / "folder.wav").mkdir()
    assert PcmWav.open(tmp_path / "folder.wav") is None
    with pytest.raises(DataError, match="cannot decode"):
        load_audio(tmp_path / "folder.wav")
    # a chunk before "data" (LIST metadata) is skipped
    listed = blob[:36] + b"LIST" + (6).to_bytes(4, "little") + b"INFOab" + blob[36:]
    listed = listed[:4] + (len(listed) - 8).to_bytes(4, "little") + listed[8:]
    assert PcmWav.open(listed) is not None
    np.testing.assert_array_equal(load_audio(listed), ref[:, 0])
    assert parse_pcm16_wav(listed[:40], len(listed)) is None  # header cut before the data chunk


def test_decode_into_a_buffer(stereo, tmp_path: Path) -> None:
    path, ref = _pcm16(tmp_path, "m.wav", 1)
    out = np.full(9000, -7.0, dtype=np.float32)
    x = load_audio(path, offset=0.5, duration=0.5, out=out)
    assert np.may_share_memory(x, out) and x.shape == (8000,)
    np.testing.assert_array_equal(out[:8000], ref[8000:16000, 0])
    assert (out[8000:] == -7.0).all()
    y = load_audio(path, offset=0.5, duration=0.5, out=out[:100])  # does not fit: a new array
    assert not np.may_share_memory(y, out)
    np.testing.assert_array_equal(y, ref[8000:16000, 0])
    st_path, _ = stereo  # downmixed and resampled, then copied into the buffer
    z = load_audio(st_path, duration=0.5, sample_rate=8000, out=out)
    assert np.may_share_memory(z, out)
    np.testing.assert_array_equal(z, load_audio(st_path, duration=0.5, sample_rate=8000))
