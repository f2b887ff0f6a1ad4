"""Tests of speechdata.features.log_mel (on-device log-mel)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from speechdata.config import FeatureConfig
from speechdata.errors import ConfigError
from speechdata.features import frame_params, hz_to_mel, log_mel, mel_filterbank, mel_to_hz

SR = 16000


def _tone(freq: float, seconds: float, sr: int = SR) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    return torch.sin(2 * math.pi * freq * t).to(torch.float32)


def test_frame_params_defaults() -> None:
    assert frame_params(16000, FeatureConfig()) == (400, 160, 512)
    assert frame_params(8000, FeatureConfig()) == (200, 80, 256)
    assert frame_params(16000, FeatureConfig(n_fft=1024)) == (400, 160, 1024)
    with pytest.raises(ConfigError, match="n_fft"):
        frame_params(16000, FeatureConfig(n_fft=256))


def test_mel_scale_round_trip_and_filterbank_shape() -> None:
    hz = torch.tensor([0.0, 700.0, 4000.0, 8000.0], dtype=torch.float64)
    assert torch.allclose(mel_to_hz(hz_to_mel(hz)), hz)
    assert abs(float(hz_to_mel(torch.tensor(700.0))) - 2595 * math.log10(2)) < 1e-3
    fb = mel_filterbank(40, 512, SR)
    assert fb.shape == (40, 257)
    assert float(fb.max()) <= 1.0 + 1e-6
    assert bool((fb.sum(dim=1) > 0).all()), "every filter must see at least one FFT bin"


@pytest.mark.parametrize("freq", [300.0, 1000.0, 2500.0, 6000.0])
def test_pure_tone_peaks_in_its_mel_bin(freq: float) -> None:
    cfg = FeatureConfig(n_mels=40, normalize="none")
    audio = _tone(freq, 0.5)[None]
    feats, lens = log_mel(audio, torch.tensor([audio.shape[1]]), SR, cfg)
    mean_energy = feats[0, :, 2 : int(lens[0]) - 2].mean(dim=1)
    top = float(hz_to_mel(torch.tensor(SR / 2.0, dtype=torch.float64)))
    centres = mel_to_hz(torch.linspace(0.0, top, 42, dtype=torch.float64))[1:-1]
    expected = int(torch.argmin((centres - freq).abs()))
    assert abs(int(mean_energy.argmax()) - expected) <= 1


def test_padding_does_not_change_valid_features() -> None:
    gen = torch.Generator().manual_seed(0)
    audio = torch.randn(1, 7321, generator=gen)
    cfg = FeatureConfig()
    ref, ref_len = log_mel(audio, torch.tensor([7321]), SR, cfg)
    padded = torch.cat([audio, torch.randn(1, 3000, generator=gen)], dim=1)  # garbage padding
    out, out_len = log_mel(padded, torch.tensor([7321]), SR, cfg)
    n = int(ref_len[0])
    assert int(out_len[0]) == n == 1 + 7321 // 160
    assert torch.allclose(out[0, :, :n], ref[0, :, :n], atol=1e-4)
    assert bool((out[0, :, n:] == 0).all())


def test_per_feature_normalisation_over_valid_frames() -> None:
    gen = torch.Generator().manual_seed(1)
    audio = torch.randn(3, 16000, generator=gen) * torch.tensor([[0.1], [1.0], [5.0]])
    lengths = torch.tensor([16000, 9000, 4000])
    feats, lens = log_mel(audio, lengths, SR, FeatureConfig())
    assert lens.tolist() == [101, 57, 26]
    for i, n in enumerate(lens.tolist()):
        valid = feats[i, :, :n].double()
        assert torch.allclose(valid.mean(dim=1), torch.zeros(80, dtype=torch.float64), atol=1e-4)
        assert torch.allclose(valid.std(dim=1), torch.ones(80, dtype=torch.float64), atol=1e-3)
        assert bool((feats[i, :, n:] == 0).all())


@given(
    lengths=st.lists(st.integers(min_value=1, max_value=4000), min_size=1, max_size=4),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    normalize=st.sampled_from(["per_feature", "none"]),
)
def test_batch_equals_per_item(lengths: list[int], seed: int, normalize: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    cfg = FeatureConfig(n_mels=32, normalize=normalize)
    items = [torch.randn(n, generator=gen) for n in lengths]
    total = max(lengths) + 17
    batch = torch.zeros(len(items), total)
    for i, a in enumerate(items):
        batch[i, : a.numel()] = a
    feats, lens = log_mel(batch, torch.tensor(lengths), SR, cfg)
    assert feats.shape == (len(items), 32, 1 + total // 160)
    for i, a in enumerate(items):
        one, one_len = log_mel(a[None], torch.tensor([a.numel()]), SR, cfg)
        n = int(one_len[0])
        assert int(lens[i]) == n
        np.testing.assert_allclose(feats[i, :, :n].numpy(), one[0, :, :n].numpy(), atol=2e-3, rtol=1e-4)


def test_dtype_and_errors() -> None:
    audio = torch.randn(2, 800, dtype=torch.float64)
    feats, _ = log_mel(audio, torch.tensor([800, 400]), SR)
    assert feats.dtype == torch.float32
    with pytest.raises(ValueError, match="lengths"):
        log_mel(audio, torch.tensor([800]), SR)
    with pytest.raises(ConfigError, match="normalize"):
        log_mel(audio, torch.tensor([800, 400]), SR, FeatureConfig(normalize="global"))
    empty, empty_len = log_mel(torch.zeros(0, 800), torch.zeros(0, dtype=torch.long), SR)
    assert empty.shape == (0, 80, 6) and empty_len.numel() == 0
