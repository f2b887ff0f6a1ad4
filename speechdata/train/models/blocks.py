"""Transformer building blocks shared by the audio encoder, the tiny GPT and BESTOW.

Pre-norm blocks with ``torch.nn.functional.scaled_dot_product_attention``. Linear layers carry
stable names (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` in attention; ``fc1``, ``fc2`` in
the MLP) so that LoRA can target them by name. Masks are boolean with ``True`` = may attend.
Self-attention over packed rows takes :class:`Segments` instead of a mask: each example's
projected positions are gathered, attend causally among themselves only, and are scattered back,
so attention never crosses an example boundary and costs what it costs on the examples alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_positions(length: int, dim: int, device: torch.device, offset: int = 0) -> torch.Tensor:
    """Fixed sinusoidal position encodings ``[length, dim]`` (no maximum length)."""
    pos = torch.arange(offset, offset + length, device=device, dtype=torch.float32)[:, None]
    half = dim // 2
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / max(half, 1)
    )
    angles = pos * freq[None, :]
    enc = torch.zeros(length, dim, device=device)
    enc[:, 0 : 2 * half : 2] = torch.sin(angles)
    enc[:, 1 : 2 * half : 2] = torch.cos(angles)
    return enc


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean ``[N, max_len]`` mask, ``True`` on the first ``lengths[i]`` positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """Boolean ``[length, length]`` lower-triangular mask (query ``i`` sees keys ``<= i``)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


@dataclass(frozen=True)
class Segments:
    """Where the examples of packed rows ``[R, S]`` lie, for variable-length causal self-attention.

    ``index`` ``[N, W]``: the flat position (``row * S + column``) of each of example ``i``'s
    ``lengths[i]`` positions (0 beyond its length); ``valid`` ``[N, W]``; ``mask``
    ``[N, 1, W, W]``: causal within the example, valid keys only (key 0 always, so no attention
    row is empty); ``shape`` ``(R, S)``.
    """

    index: torch.Tensor
    valid: torch.Tensor
    mask: torch.Tensor
    shape: tuple[int, int]

    @classmethod
    def of(
        cls, rows: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, shape: tuple[int, int]
    ) -> Segments:
        """Examples ``i`` at ``[starts[i], starts[i] + lengths[i])`` of row ``rows[i]`` in ``[R, S]`` rows."""
        width = max(int(lengths.max()) if lengths.numel() else 0, 1)
        col = torch.arange(width, device=lengths.device)
        valid = col[None, :] < lengths[:, None]
        flat = (rows * shape[1] + starts)[:, None] + col[None, :]
        index = torch.where(valid, flat, torch.zeros_like(flat))
        keys = valid.clone()
        keys[:, 0] = True
        mask = causal_mask(width, lengths.device)[None, None] & keys[:, None, None, :]
        return cls(index, valid, mask, (int(shape[0]), int(shape[1])))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``[R, S, D]`` -> ``[N, W, D]``: each example's positions (padding holds position 0's)."""
        return x.reshape(-1, x.shape[-1])[self.index]

    def scatter(self, y: torch.Tensor) -> torch.Tensor:
        """``[N, W, D]`` -> ``[R, S, D]``: each example's valid positions back in place, 0 elsewhere."""
        r, s = self.shape
        out = y.new_zeros((r * s, y.shape[-1]))
        out = out.index_put((self.index[self.valid],), y[self.valid])
        return out.view(r, s, -1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention; ``forward(x, memory=None, mask=None)`` (self-attention without memory)."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, kv_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} attention heads")
        kv_dim = dim if kv_dim is None else kv_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_dim, dim)
        self.v_proj = nn.Linear(kv_dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | Segments | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, N, D]``; ``memory`` ``[B, M, Dkv]`` (default ``x``); ``mask`` broadcastable
        to ``[B, heads, N, M]``, ``True`` where a query may attend to a key, or, for self-attention
        over packed rows, their :class:`Segments`."""
        src = x if memory is None else memory
        q, k, v = self.q_proj(x), self.k_proj(src), self.v_proj(src)
        if isinstance(mask, Segments):
            if memory is not None:
                raise ValueError("Segments are for self-attention; cross-attention takes a mask")
            out = self._attend(mask.gather(q), mask.gather(k), mask.gather(v), mask.mask)
            return self.out_proj(mask.scatter(out))
        return self.out_proj(self._attend(q, k, v, mask))

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of projected ``q`` ``[B, N, D]`` over ``k``, ``v`` ``[B, M, D]``: ``[B, N, D]``."""
        out = F.scaled_dot_product_attention(
            self._heads(q),
            self._heads(k),
            self._heads(v),
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        b, h, n, d = out.shape  # explicit sizes: a batch with no audio has b == 0
        return out.transpose(1, 2).reshape(b, n, h * d)


class MLP(nn.Module):
    """Two-layer feed-forward network with GELU (``fc1`` -> GELU -> dropout -> ``fc2``)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP position-wise."""
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention to a memory, MLP; residual each."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        cross_attention: bool = False,
        memory_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, num_heads, attention_dropout)
        self.cross_attn: MultiHeadAttention | None = None
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross_attn = MultiHeadAttention(dim, num_heads, attention_dropout, kv_dim=memory_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, ffn_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | Segments | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mask`` is the self-attention mask (or the :class:`Segments` of packed rows),
        ``memory_mask`` the cross-attention mask."""
        x = x + self.drop(self.self_attn(self.norm1(x), mask=mask))
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("a cross-attention block needs a memory")
            x = x + self.drop(self.cross_attn(self.norm_cross(x), memory=memory, mask=memory_mask))
        return x + self.drop(self.mlp(self.norm2(x)))
