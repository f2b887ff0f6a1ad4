"""Transformer building blocks shared by the audio encoder, the tiny GPT and BESTOW.

Pre-norm blocks with ``torch.nn.functional.scaled_dot_product_attention``. Linear layers carry
stable names (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` in attention; ``fc1``, ``fc2`` in
the MLP) so that LoRA can target them by name. Masks are boolean with ``True`` = may attend.
Causal self-attention takes ``causal=True`` instead of a mask (SDPA's ``is_causal``: no mask
tensor is built, and the kernel skips the blocks above the diagonal). Self-attention over packed
rows takes :class:`Segments` instead of a mask: each example's projected positions are gathered,
attend causally among themselves only, and are scattered back, so attention never crosses an
example boundary and costs what it costs on the examples alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
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


#: A sequence joins the current length group while it is at least this fraction of the group's
#: longest (a group's padding stays under a quarter of its positions), and at most this many groups.
GROUP_RATIO, MAX_GROUPS = 0.75, 8


def length_groups(lengths: torch.Tensor) -> list[torch.Tensor]:
    """The sequences ``[N]`` in groups of similar length: indices by decreasing length, a new group
    when a sequence is shorter than :data:`GROUP_RATIO` of its group's longest (the last of
    :data:`MAX_GROUPS` groups takes the rest). Used to run padded work (attention over packed
    examples, the audio encoder) on groups cut to their longest instead of the batch's longest."""
    n = int(lengths.numel())
    if n <= 1:
        return [torch.arange(n, device=lengths.device)]
    values, order = torch.sort(lengths, descending=True, stable=True)
    vals = values.tolist()
    cuts, top = [0], vals[0]
    for i, v in enumerate(vals):
        if v < GROUP_RATIO * top and len(cuts) < MAX_GROUPS:
            cuts.append(i)
            top = v
    if len(cuts) == 1:
        return [torch.arange(n, device=lengths.device)]
    return [order[a:b] for a, b in itertools.pairwise([*cuts, n])]


@dataclass(frozen=True)
class SegmentGroup:
    """Examples of similar length in packed rows: ``index`` ``[N, W]`` the flat position (``row * S
    + column``) of each example's positions (0 beyond its length), ``valid`` ``[N, W]``.

    The group attends causally with no mask: a valid position ``j`` of an example sees its
    positions ``0..j``, all valid (an example's positions come first in its row of the group);
    what a padding position computes is never picked, so neither it nor the padding keys it sees
    receive any gradient."""

    index: torch.Tensor
    valid: torch.Tensor
    places: torch.Tensor  # index[valid]: the flat place of every valid position
    picks: torch.Tensor  # where those positions are in the flattened [N * W] group


@dataclass(frozen=True)
class Segments:
    """Where the examples of packed rows ``[R, S]`` lie, for variable-length causal self-attention:
    the examples in :class:`SegmentGroup` s of similar length (:func:`length_groups`), so that the
    attention of each group is computed at its own longest length; ``shape`` is ``(R, S)``."""

    groups: tuple[SegmentGroup, ...]
    shape: tuple[int, int]
    places: torch.Tensor  # every group's valid places, concatenated

    @classmethod
    def of(
        cls, rows: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, shape: tuple[int, int]
    ) -> Segments:
        """Examples ``i`` at ``[starts[i], starts[i] + lengths[i])`` of row ``rows[i]`` in ``[R, S]`` rows."""
        groups = []
        for idx in length_groups(lengths):
            length = lengths[idx]
            width = max(int(length.max()) if length.numel() else 0, 1)
            col = torch.arange(width, device=lengths.device)
            valid = col[None, :] < length[:, None]
            flat = (rows[idx] * shape[1] + starts[idx])[:, None] + col[None, :]
            index = torch.where(valid, flat, torch.zeros_like(flat))
            picks = valid.reshape(-1).nonzero().squeeze(1)
            groups.append(SegmentGroup(index, valid, index.reshape(-1)[picks], picks))
        places = torch.cat([g.places for g in groups]) if groups else lengths.new_zeros(0)
        return cls(tuple(groups), (int(shape[0]), int(shape[1])), places)

    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every example position's flat place ``[P]`` and its index within its example ``[P]``."""
        places, within = [], []
        for g in self.groups:
            places.append(g.places)
            within.append(g.picks % g.index.shape[1])
        return torch.cat(places), torch.cat(within)

    def attend(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
    ) -> torch.Tensor:
        """``fn(q, k, v)``, causal attention over ``[N, W, D]``, on each group's gathered positions
        of ``[R, S, D]`` rows; the results scattered back into ``[R, S, D]`` (0 on row padding)."""
        r, s = self.shape
        flat = [t.reshape(r * s, -1) for t in (q, k, v)]
        parts = []
        for g in self.groups:
            y = fn(flat[0][g.index], flat[1][g.index], flat[2][g.index])
            parts.append(y.reshape(-1, y.shape[-1])[g.picks])
        out = q.new_zeros((r * s, q.shape[-1])).index_copy(0, self.places, torch.cat(parts))
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
        causal: bool = False,
    ) -> torch.Tensor:
        """``x`` ``[B, N, D]``; ``memory`` ``[B, M, Dkv]`` (default ``x``); ``mask`` broadcastable
        to ``[B, heads, N, M]``, ``True`` where a query may attend to a key, or, for self-attention
        over packed rows, their :class:`Segments`; ``causal``: self-attention where query ``i``
        sees keys ``<= i`` (no ``mask`` then)."""
        src = x if memory is None else memory
        q, k, v = self.q_proj(x), self.k_proj(src), self.v_proj(src)
        if isinstance(mask, Segments):
            if memory is not None:
                raise ValueError("Segments are for self-attention; cross-attention takes a mask")
            return self.out_proj(mask.attend(self._causal, q, k, v))
        if causal:
            if memory is not None or mask is not None:
                raise ValueError("causal is for self-attention without a mask")
            return self.out_proj(self._causal(q, k, v))
        return self.out_proj(self._attend(q, k, v, mask))

    def _causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal self-attention of projected ``q``, ``k``, ``v`` ``[B, N, D]``: ``[B, N, D]``."""
        return self._attend(q, k, v, None, causal=True)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Attention of projected ``q`` ``[B, N, D]`` over ``k``, ``v`` ``[B, M, D]``: ``[B, N, D]``."""
        out = F.scaled_dot_product_attention(
            self._heads(q),
            self._heads(k),
            self._heads(v),
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
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
        causal: bool = False,
    ) -> torch.Tensor:
        """``mask`` is the self-attention mask (or the :class:`Segments` of packed rows),
        ``causal`` causal self-attention without a mask, ``memory_mask`` the cross-attention mask."""
        x = x + self.drop(self.self_attn(self.norm1(x), mask=mask, causal=causal))
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("a cross-attention block needs a memory")
            x = x + self.drop(self.cross_attn(self.norm_cross(x), memory=memory, mask=memory_mask))
        return x + self.drop(self.mlp(self.norm2(x)))
