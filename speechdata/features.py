"""Log-mel features on any torch device.

:func:`log_mel` turns a right-padded batch of waveforms into per-feature-normalised log-mel
spectrograms with plain torch ops, on whatever device the audio is on (CPU and CUDA give the same
numbers within float tolerance). It is what the collator calls when a dataset section sets
``features:`` and what the bundled trainer's front end calls when a batch has no
``audio_features``.

Choices (NeMo's ASR preprocessor is the model, differences noted):

* window ``round(window_size * sr)`` samples, hop ``round(window_stride * sr)`` samples,
  ``n_fft`` = the next power of two at or above the window length unless given;
* symmetric Hann window (``periodic=False``, as NeMo), zero-padded to ``n_fft`` and centred;
* frames are centred (``center=True``) with *zero* padding of ``n_fft // 2`` on both sides, so an
  audio of ``n`` samples has ``1 + n // hop`` frames; samples beyond an audio's length are zeroed
  before the transform, so padding never leaks into valid frames;
* power spectrum ``|X|^2``; mel filterbank on the **HTK** mel scale
  (``mel = 2595 * log10(1 + f / 700)``) from 0 Hz to ``sr / 2``, triangular filters with peak 1
  (no area normalisation: a constant gain per bin, which per-feature normalisation removes);
  no dither and no pre-emphasis (NeMo's defaults have both);
* ``log(x + log_zero_guard)``;
* ``normalize: per_feature``: mean and (unbiased) standard deviation per mel bin over the *valid*
  frames of each audio only, ``(x - mean) / (std + 1e-5)`` as NeMo; frames beyond an audio's
  length are set to 0. ``normalize: none`` skips the statistics (padding frames are still 0).

Example::

    >>> audio = torch.randn(2, 16000)
    >>> feats, lens = log_mel(audio, torch.tensor([16000, 8000]), 16000, FeatureConfig())
    >>> feats.shape, lens.tolist()
    (torch.Size([2, 80, 101]), [101, 51])
"""

from __future__ import annotations

from functools import lru_cache

import torch

from speechdata.config import FeatureConfig
from speechdata.errors import ConfigError

#: Added to the standard deviation in per-feature normalisation (NeMo's constant).
STD_EPS = 1e-5


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def frame_params(sample_rate: int, cfg: FeatureConfig) -> tuple[int, int, int]:
    """``(win_length, hop_length, n_fft)`` in samples for a sample rate and feature settings."""
    win = round(cfg.window_size * sample_rate)
    hop = round(cfg.window_stride * sample_rate)
    if win <= 0 or hop <= 0:
        raise ConfigError(
            f"features: window_size {cfg.window_size} s / window_stride {cfg.window_stride} s give "
            f"{win} / {hop} samples at {sample_rate} Hz; both must be at least one sample"
        )
    n_fft = cfg.n_fft if cfg.n_fft is not None else 1 << (win - 1).bit_length()
    if n_fft < win:
        raise ConfigError(f"features.n_fft: {n_fft} is shorter than the window ({win} samples)")
    if cfg.n_mels <= 0:
        raise ConfigError(f"features.n_mels: must be positive; got {cfg.n_mels}")
    return win, hop, n_fft


def num_frames(lengths: torch.Tensor, hop_length: int) -> torch.Tensor:
    """Frames of a centred STFT for audios of ``lengths`` samples: ``1 + length // hop``."""
    return 1 + torch.div(lengths, hop_length, rounding_mode="floor")


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK-mel filters, float32 ``[n_mels, n_fft // 2 + 1]``, peak 1, 0 Hz to Nyquist.

    Filter ``m`` rises from the ``m``-th to the ``m+1``-th of ``n_mels + 2`` points equally spaced
    on the mel scale and falls to the ``m+2``-th; weights are evaluated at the FFT bin centre
    frequencies ``k * sr / n_fft``.
    """
    fft_freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    top = hz_to_mel(torch.tensor(sample_rate / 2.0, dtype=torch.float64))
    points = mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64))
    lower, centre, upper = points[:-2, None], points[1:-1, None], points[2:, None]
    rising = (fft_freqs[None, :] - lower) / (centre - lower)
    falling = (upper - fft_freqs[None, :]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


@lru_cache(maxsize=32)
def _constants(
    device: torch.device, n_mels: int, n_fft: int, win_length: int, sample_rate: int
) -> tuple[torch.Tensor, torch.Tensor]:
    window = torch.hann_window(win_length, periodic=False, dtype=torch.float32).to(device)
    return window, mel_filterbank(n_mels, n_fft, sample_rate).to(device)


def log_mel(
    audio: torch.Tensor, lengths: torch.Tensor, sample_rate: int, cfg: FeatureConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel features of a right-padded batch of audios, on the audios' device.

    Args:
        audio: float ``[A, T]`` waveforms, right-padded (the padding content is ignored).
        lengths: int ``[A]`` valid samples per audio.
        sample_rate: sampling rate of ``audio`` in Hz.
        cfg: feature settings (:class:`~speechdata.config.FeatureConfig`; defaults if ``None``).

    Returns:
        ``features`` float32 ``[A, n_mels, F]`` with ``F = 1 + T // hop`` and ``feat_lengths``
        int64 ``[A]`` = ``1 + lengths // hop``; frames at or beyond an audio's ``feat_length``
        are 0.
    """
    cfg = cfg if cfg is not None else FeatureConfig()
    if audio.dim() != 2:
        raise ValueError(f"log_mel: audio must be [A, T], got shape {tuple(audio.shape)}")
    if lengths.shape != (audio.shape[0],):
        raise ValueError(f"log_mel: lengths must be [{audio.shape[0]}], got shape {tuple(lengths.shape)}")
    if cfg.normalize not in ("per_feature", "none"):
        raise ConfigError(f"features.normalize: must be 'per_feature' or 'none', got {cfg.normalize!r}")
    win, hop, n_fft = frame_params(sample_rate, cfg)
    device = audio.device
    window, fbank = _constants(device, cfg.n_mels, n_fft, win, sample_rate)
    lengths = lengths.to(device=device, dtype=torch.long)
    n_audio, n_samples = audio.shape
    feat_lengths = num_frames(lengths, hop)
    n_frames = 1 + n_samples // hop
    if n_audio == 0:
        return audio.new_zeros((0, cfg.n_mels, n_frames), dtype=torch.float32), feat_lengths

    with torch.autocast(device_type=device.type, enabled=False):
        x = audio.to(torch.float32)
        valid_samples = torch.arange(n_samples, device=device)[None, :] < lengths[:, None]
        x = x * valid_samples
        spec = torch.stft(
            x,
            n_fft=n_fft,
            hop_length=hop,
            win_length=win,
            window=window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # [A, n_fft//2+1, F]
        mel = torch.matmul(fbank, power)  # [A, n_mels, F]
        feats = torch.log(mel + cfg.log_zero_guard)
        valid = (torch.arange(n_frames, device=device)[None, :] < feat_lengths[:, None])[:, None, :]
        if cfg.normalize == "per_feature":
            count = feat_lengths.to(torch.float32)[:, None, None]
            mean = (feats * valid).sum(dim=2, keepdim=True) / count
            centred = (feats - mean) * valid
            var = centred.square().sum(dim=2, keepdim=True) / torch.clamp(count - 1.0, min=1.0)
            feats = centred / (torch.sqrt(var) + STD_EPS)
        feats = feats * valid
    return feats, feat_lengths


__all__ = [
    "STD_EPS",
    "frame_params",
    "hz_to_mel",
    "log_mel",
    "mel_filterbank",
    "mel_to_hz",
    "num_frames",
]
