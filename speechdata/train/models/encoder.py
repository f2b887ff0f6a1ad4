"""Perception: log-mel front end, audio encoder and modality adapter.

``audio [A, T]`` -> :func:`speechdata.features.log_mel` (skipped when the batch already carries
``audio_features``) -> :class:`ConvSubsampling` (three stride-2 convolutions: 8x fewer frames) ->
transformer blocks -> :class:`ModalityAdapter` (depthwise conv + MLP, then a projection to the LM
width) -> ``[A, F', D_lm]`` audio embeddings with their lengths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speechdata.batch import Batch
from speechdata.config import FeatureConfig
from speechdata.features import log_mel
from speechdata.train.models.blocks import TransformerBlock, length_groups, length_mask, sinusoidal_positions
from speechdata.train.models.config import AdapterConfig, EncoderConfig

#: Stride-2 convolutions in the subsampling stack (8x).
SUBSAMPLING_LAYERS = 3


def subsampled_lengths(lengths: torch.Tensor, layers: int = SUBSAMPLING_LAYERS) -> torch.Tensor:
    """Frames after ``layers`` stride-2 convolutions with kernel 3 and padding 1: ``ceil(n / 2)`` each."""
    out = lengths
    for _ in range(layers):
        out = torch.div(out + 1, 2, rounding_mode="floor")
    return out


class LogMelFrontend(nn.Module):
    """Waveforms to normalised log-mel features (no parameters)."""

    def __init__(self, sample_rate: int, features: FeatureConfig) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.features = features

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[A, T]`` audio and ``[A]`` lengths -> ``[A, n_mels, F]`` features and ``[A]`` lengths."""
        return log_mel(audio, lengths, self.sample_rate, self.features)


class ConvSubsampling(nn.Module):
    """Three stride-2 ``Conv2d`` (kernel 3, padding 1, ReLU) over (time, mel), then a linear to ``d_model``."""

    def __init__(self, n_mels: int, channels: int, d_model: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for _ in range(SUBSAMPLING_LAYERS):
            layers += [nn.Conv2d(in_ch, channels, kernel_size=3, stride=2, padding=1), nn.ReLU()]
            in_ch = channels
        self.conv = nn.Sequential(*layers)
        freq = n_mels
        for _ in range(SUBSAMPLING_LAYERS):
            freq = (freq + 1) // 2
        self.out = nn.Linear(channels * freq, d_model)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[A, n_mels, F]`` -> ``[A, ceil(F/8), d_model]`` and subsampled lengths.

        Frames beyond each audio's length are zeroed after every convolution, so an audio's
        output does not depend on how much padding its batch gives it.
        """
        x = feats.transpose(1, 2)[:, None]  # [A, 1, F, n_mels]
        for k in range(0, len(self.conv), 2):
            x = self.conv[k + 1](self.conv[k](x))  # conv, ReLU: [A, C, F', M']
            lengths = subsampled_lengths(lengths, 1)
            x = x * length_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
        a, c, f, m = x.shape
        x = self.out(x.permute(0, 2, 1, 3).reshape(a, f, c * m))
        return x, lengths


class AudioEncoder(nn.Module):
    """Conv subsampling + bidirectional transformer blocks with key-padding masks."""

    def __init__(self, n_mels: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.subsampling = ConvSubsampling(n_mels, cfg.subsampling_channels, cfg.d_model)
        self.layers = nn.ModuleList(
            TransformerBlock(cfg.d_model, cfg.num_heads, cfg.ffn_dim, cfg.dropout, cfg.dropout)
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.d_model = cfg.d_model

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[A, n_mels, F]`` features -> ``[A, F', d_model]`` encodings (0 beyond each length)."""
        x, lengths = self.subsampling(feats, lengths)
        x = x + sinusoidal_positions(x.shape[1], self.d_model, x.device).to(x.dtype)
        valid = length_mask(lengths, x.shape[1])
        # an empty audio still gets one key so that attention rows are never fully masked
        keys = valid | (torch.arange(x.shape[1], device=x.device) == 0)[None, :]
        mask = keys[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask=mask)
        return self.norm(x) * valid[..., None], lengths


class ModalityAdapter(nn.Module):
    """Depthwise conv over time + MLP on encoder frames, then a linear projection to the LM width."""

    def __init__(self, in_dim: int, out_dim: int, cfg: AdapterConfig) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, in_dim, cfg.kernel_size, padding=cfg.kernel_size // 2, groups=in_dim)
        self.fc1 = nn.Linear(in_dim, cfg.hidden_size)
        self.fc2 = nn.Linear(cfg.hidden_size, in_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[A, F', in_dim]`` -> ``[A, F', out_dim]``; frames beyond ``lengths`` are 0."""
        valid = length_mask(lengths, x.shape[1])[..., None]
        x = x * valid
        h = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        h = h + self.fc2(self.drop(F.gelu(self.fc1(h))))
        return self.proj(h) * valid


class Perception(nn.Module):
    """The whole audio side: front end (optional), encoder, adapter + projection."""

    def __init__(
        self,
        sample_rate: int,
        features: FeatureConfig,
        enc: EncoderConfig,
        adapter: AdapterConfig,
        lm_dim: int,
    ) -> None:
        super().__init__()
        self.preprocessor = LogMelFrontend(sample_rate, features)
        self.encoder = AudioEncoder(features.n_mels, enc)
        self.modality_adapter = ModalityAdapter(enc.d_model, lm_dim, adapter)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio embeddings ``[A, F', D_lm]`` and lengths ``[A]`` for a batch (docs/batch.md).

        Uses ``audio_features`` / ``audio_features_length`` when present, else computes log-mel
        from ``audio_signal`` / ``audio_signal_length``. The audios are encoded in groups of
        similar length (:func:`length_groups`), each group cut to its longest audio: every audio
        is encoded on its own (masks, zero padding), so the result is the one of the whole batch
        at once, without computing the padding of short audios next to long ones.
        """
        features = batch.get("audio_features") is not None
        if features:
            signal, lengths = batch["audio_features"], batch["audio_features_length"]
        else:
            signal, lengths = batch["audio_signal"], batch["audio_signal_length"]
        groups = length_groups(lengths)
        if len(groups) <= 1:
            return self._encode(signal, lengths, features)
        parts = []
        for idx in groups:
            width = int(lengths[idx].max())
            parts.append((idx, *self._encode(signal[idx, ..., :width], lengths[idx], features)))
        frames = max(p[1].shape[1] for p in parts)
        first = parts[0][1]
        out = first.new_zeros((signal.shape[0], frames, first.shape[-1]))
        out_len = lengths.new_zeros(signal.shape[0])
        for idx, emb, emb_len in parts:
            out[idx, : emb.shape[1]] = emb
            out_len[idx] = emb_len
        return out, out_len

    def _encode(
        self, signal: torch.Tensor, lengths: torch.Tensor, features: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of audios (``features``: their log-mel features) padded to one width."""
        if features:
            feats = signal
        else:
            feats, lengths = self.preprocessor(signal, lengths)
        dtype = next(self.encoder.parameters()).dtype
        enc, enc_len = self.encoder(feats.to(dtype), lengths)
        return self.modality_adapter(enc, enc_len), enc_len
