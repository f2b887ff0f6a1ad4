"""BESTOW: text attends to audio through cross-attention blocks in front of the LM.

The LM input keeps the text length. The token embeddings go through ``xattn.num_layers`` blocks of
causal self-attention + cross-attention to the example's audio frames (all audios of an example,
concatenated in batch order; padding masked) + MLP; the projected output of these blocks is added
to the token embeddings and the sum feeds the LM. An example without audio attends to a single
zero frame (its cross-attention then contributes only biases), which keeps attention well defined.
"""

from __future__ import annotations

import torch
from torch import nn

from speechdata.train.models.base import DecoderInputs, RowLayout, SpeechLM, example_index, scatter_rows
from speechdata.train.models.blocks import Segments, TransformerBlock, causal_mask
from speechdata.train.models.config import ModelConfig


def pack_audio_per_example(
    audio: torch.Tensor, audio_length: torch.Tensor, num_audios: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate each example's audio frames: ``[A, F, D]`` -> ``[B, M, D]`` and a key mask ``[B, M]``.

    ``M`` is at least 1; a row without frames has only key 0 (a zero frame) unmasked.
    """
    b = num_audios.numel()
    dim = audio.shape[-1]
    ex = example_index(num_audios)
    alen = audio_length.to(torch.long)
    per_example = torch.zeros(b, dtype=torch.long, device=audio.device).index_add_(0, ex, alen)
    m = max(int(per_example.max()) if b else 0, 1)
    mask = torch.arange(m, device=audio.device)[None, :] < per_example[:, None]
    mask[:, 0] = True
    if audio.shape[0] == 0:
        return audio.new_zeros((b, m, dim)), mask
    # frames of the audios before audio i within its example
    csum = torch.cumsum(alen, 0) - alen
    first_audio = torch.cumsum(num_audios.to(torch.long), 0) - num_audios.to(torch.long)
    offset = csum - csum[first_audio[ex]]
    n_frames = audio.shape[1]
    f = torch.arange(n_frames, device=audio.device)
    valid = f[None, :] < alen[:, None]
    rows = ex[:, None].expand(-1, n_frames)
    cols = offset[:, None] + f[None, :]
    return scatter_rows(audio, valid, rows, cols, (b, m, dim)), mask


def _packed_masks(
    layout: RowLayout,
    audio_length: torch.Tensor,
    row_audios: torch.Tensor,
    key_mask: torch.Tensor,
    width: int,
) -> tuple[Segments, torch.Tensor]:
    """Self-attention :class:`Segments` of the examples' tokens in their rows of ``width``, and the
    cross-attention mask ``[R, 1, width, M + 1]``: a token sees the frames of its own example's
    audios (memory built per row by :func:`pack_audio_per_example`, ``M`` frames); a token that
    sees none (its example has no audio, or it is row padding) sees key ``M``, a zero frame the
    caller appends, as a padded batch's example without audio sees its zero frame."""
    segments, _ = layout.segments(layout.example_tokens, width)
    n_rows, m = key_mask.shape
    device = key_mask.device
    # each token's example, at its place row * width + column
    lengths = layout.example_tokens
    ex = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    first = torch.repeat_interleave(
        layout.example_row * width + layout.example_start - (torch.cumsum(lengths, 0) - lengths), lengths
    )
    place = first + torch.arange(int(lengths.sum()), device=device)
    token_ex = torch.full((n_rows * width,), -1, dtype=torch.long, device=device)
    token_ex = token_ex.index_put((place,), ex).view(n_rows, width)
    # the frames of each row's audios lie back to back, in batch order
    alen = audio_length.to(torch.long)
    row_of_audio = example_index(row_audios)
    before = torch.cumsum(alen, 0) - alen
    first = torch.cumsum(row_audios, 0) - row_audios
    offset = before - before[first[row_of_audio]] if alen.numel() else before
    frame_ex = torch.full((n_rows, m), -1, dtype=torch.long, device=device)
    if alen.numel():
        f = torch.arange(int(alen.max()), device=device)
        ok = f[None, :] < alen[:, None]
        rows = row_of_audio[:, None].expand_as(ok)
        cols = offset[:, None] + f[None, :]
        values = layout.audio_example[:, None].expand_as(ok)
        frame_ex = frame_ex.index_put((rows[ok], cols[ok]), values[ok])
    own = (token_ex[:, :, None] == frame_ex[:, None, :]) & (token_ex[:, :, None] >= 0)
    return segments, torch.cat([own, ~own.any(dim=-1, keepdim=True)], dim=-1)[:, None]


class BESTOW(SpeechLM):
    """Cross-attention speech LM: ``LM(emb(tokens) + XAttn(emb(tokens), audio))``; text length kept."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        dim = cfg.llm.hidden_size
        x = cfg.xattn
        self.xattn_layers = nn.ModuleList(
            TransformerBlock(dim, x.num_heads, x.ffn_dim, x.dropout, x.dropout, cross_attention=True)
            for _ in range(x.num_layers)
        )
        self.xattn_norm = nn.LayerNorm(dim)
        self.xattn_out = nn.Linear(dim, dim)
        self.setup_trainable()

    def decoder_inputs(
        self,
        tokens: torch.Tensor,
        tokens_length: torch.Tensor,
        audio: torch.Tensor,
        audio_length: torch.Tensor,
        num_audios: torch.Tensor,
        audio_positions: torch.Tensor,
        layout: RowLayout | None = None,
    ) -> DecoderInputs:
        """Token embeddings plus the cross-attention blocks' output; ``audio_positions`` is not
        used. In a packed row (``layout``) each example's tokens attend to their own earlier
        tokens and to their own example's audio frames only."""
        text = self.llm.embed(tokens)
        memory, key_mask = pack_audio_per_example(audio.to(text.dtype), audio_length, num_audios)
        h = text
        self_mask: torch.Tensor | Segments
        if layout is None:
            self_mask = causal_mask(tokens.shape[1], tokens.device)
            mem_mask = key_mask[:, None, None, :]
        else:
            self_mask, mem_mask = _packed_masks(layout, audio_length, num_audios, key_mask, tokens.shape[1])
            memory = torch.cat([memory, memory.new_zeros((memory.shape[0], 1, memory.shape[2]))], dim=1)
        for layer in self.xattn_layers:
            h = layer(h, mask=self_mask, memory=memory, memory_mask=mem_mask)
        embeds = text + self.xattn_out(self.xattn_norm(h))
        token_index = torch.arange(tokens.shape[1], device=tokens.device)[None, :].expand_as(tokens)
        return DecoderInputs(embeds, tokens_length.to(torch.long), token_index)

    def example_lengths(
        self, tokens_length: torch.Tensor, audio_length: torch.Tensor, num_audios: torch.Tensor
    ) -> torch.Tensor:
        """The example's tokens (BESTOW keeps the text length)."""
        return tokens_length.to(torch.long)
