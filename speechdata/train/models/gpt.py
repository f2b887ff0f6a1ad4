"""A tiny decoder-only LM: token embedding, sinusoidal positions, causal pre-norm blocks, LM head.

The LM is driven by *embeddings* (``forward_embeddings``) so that SALM can splice audio frames into
the input sequence and BESTOW can add its cross-attention output to the text embeddings. Sequences
are right-padded: with causal attention every valid query only sees valid keys, so padding needs no
mask. Packed rows (several examples per row, docs/packing.md) pass each position's index
within its example and the examples' :class:`~speechdata.train.models.blocks.Segments`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from speechdata.train.models.blocks import Segments, TransformerBlock, sinusoidal_positions
from speechdata.train.models.config import LLMConfig


class TinyGPT(nn.Module):
    """Decoder-only transformer LM; the output head is tied to the embedding unless configured not to."""

    def __init__(self, vocab_size: int, cfg: LLMConfig) -> None:
        super().__init__()
        self.hidden_size = cfg.hidden_size
        self.embed_scale = math.sqrt(cfg.hidden_size)
        self.embed_tokens = nn.Embedding(vocab_size, cfg.hidden_size)
        self.drop = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(
            TransformerBlock(
                cfg.hidden_size,
                cfg.num_attention_heads,
                cfg.ffn_hidden_size,
                cfg.hidden_dropout,
                cfg.attention_dropout,
            )
            for _ in range(cfg.num_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.hidden_size)
        self.lm_head = nn.Linear(cfg.hidden_size, vocab_size, bias=False)
        if cfg.share_embeddings_and_output_weights:
            self.lm_head.weight = self.embed_tokens.weight
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        if not cfg.share_embeddings_and_output_weights:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, L]`` -> embeddings ``[B, L, D]``, scaled by ``sqrt(D)`` (as Vaswani et al.)
        so that they are not drowned by the position encodings and audio embeddings at init."""
        return self.embed_tokens(tokens) * self.embed_scale

    def forward_embeddings(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        segments: Segments | None = None,
    ) -> torch.Tensor:
        """Input embeddings ``[B, S, D]`` -> logits ``[B, S, V]`` (causal).

        Right-padded rows by default: position ``j`` of every row has position ``j``. Packed rows
        give ``positions`` ``[B, S]`` (each example's restarting at 0; the sinusoidal encodings
        are indexed by them) and their ``segments``, so that no position attends across an
        example boundary.
        """
        width = x.shape[1] if positions is None else int(positions.max()) + 1 if positions.numel() else 1
        table = sinusoidal_positions(width, self.hidden_size, x.device).to(x.dtype)
        x = x + (table if positions is None else table[positions])
        x = self.drop(x)
        for layer in self.layers:
            x = layer(x, mask=segments, causal=segments is None)
        return self.lm_head(self.final_norm(x))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, L]`` -> logits ``[B, L, V]``."""
        return self.forward_embeddings(self.embed(tokens))
