"""Packed rows on the device (docs/packing.md): the text keys of a packed batch.

With ``packing: true`` the planner groups a batch's examples into rows
(:mod:`speechdata.sampling.packing`), the worker keeps each example's row
(:attr:`Packed.rows <speechdata.collate.Packed>`), and :func:`speechdata.collate.finalize` calls
:func:`row_tensors` to lay the examples' sequences back to back in their rows instead of one per
row. Every example contributes exactly the positions it has in a padded batch (``input_ids[:-1]``
as tokens, ``input_ids[1:]`` as labels, its targets as loss mask), so a model that keeps attention
within each example computes the same per-token loss on either batch.

Example::

    >>> t = row_tensors(ids, targets, ids_lengths, rows, audio_positions, num_audios, pad_id=0)
    >>> t["tokens"].shape, t["cu_seqlens"][0]        # [R, L]; row 0 holds two examples
    (torch.Size([2, 64]), tensor([ 0, 21, 50, -1], dtype=torch.int32))
"""

from __future__ import annotations

import torch

__all__ = ["round_up", "row_tensors"]


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``, at least ``multiple`` (the token width)."""
    return max(multiple, -(-n // multiple) * multiple)


def row_tensors(
    ids: torch.Tensor,
    targets: torch.Tensor,
    ids_lengths: torch.Tensor,
    rows: torch.Tensor,
    audio_positions: torch.Tensor,
    num_audios: torch.Tensor,
    *,
    pad_id: int,
    pad_to_multiple: int = 8,
) -> dict[str, torch.Tensor]:
    """The row keys of a packed batch from the flat token buffers (all on one device).

    ``ids`` / ``targets`` hold each example's ``input_ids`` / loss targets back to back
    (``ids_lengths`` per example), ``rows`` the row of each example (non-decreasing; rows left
    empty by dropped examples are closed up). Returns ``tokens``, ``labels``, ``loss_mask``,
    ``position_ids`` ``[R, L]`` (``L``: the longest row rounded up to ``pad_to_multiple``; each
    example's positions restart at 0, a row's padding counts from 0 again), ``cu_seqlens`` int32
    ``[R, K + 1]`` (each row's example boundaries, -1 after its last) and
    ``packed_audio_positions`` ``[A]`` (each audio's position in its row: its example's start plus
    its ``audio_positions``, at most the example's token count, as the models clamp it).
    """
    dev = ids.device
    n = ids_lengths.to(torch.long)
    b = int(n.numel())
    m = (n - 1).clamp(min=0)  # positions per example: input_ids[:-1]
    rows = rows.to(torch.long)
    if b:
        new_row = torch.ones(b, dtype=torch.bool, device=dev)
        new_row[1:] = rows[1:] != rows[:-1]
        row = torch.cumsum(new_row.to(torch.long), 0) - 1
        n_rows = int(row[-1]) + 1
    else:
        row = rows
        n_rows = 0
    row_len = torch.zeros(n_rows, dtype=torch.long, device=dev).index_add_(0, row, m)
    before = torch.cumsum(m, 0) - m
    row_first_pos = torch.cumsum(row_len, 0) - row_len
    start = before - row_first_pos[row]  # example's first column in its row
    width = round_up(int(row_len.max()) if n_rows else 0, pad_to_multiple)

    total = int(m.sum())
    ex = torch.repeat_interleave(torch.arange(b, device=dev), m)
    j = torch.arange(total, device=dev) - torch.repeat_interleave(before, m)
    src = (torch.cumsum(n, 0) - n)[ex] + j
    at = (row[ex], start[ex] + j)
    shape = (n_rows, width)
    tokens = torch.full(shape, pad_id, dtype=ids.dtype, device=dev).index_put(at, ids[src])
    labels = torch.full(shape, pad_id, dtype=ids.dtype, device=dev).index_put(at, ids[src + 1])
    loss_mask = torch.zeros(shape, dtype=torch.float32, device=dev).index_put(
        at, targets[src + 1].to(torch.float32)
    )
    col = torch.arange(width, device=dev)[None, :]
    position_ids = (col - row_len[:, None]).clamp(min=0).expand(shape).contiguous()
    position_ids = position_ids.index_put(at, j)

    per_row = torch.bincount(row, minlength=n_rows) if b else torch.zeros(0, dtype=torch.long, device=dev)
    k = int(per_row.max()) if n_rows else 0
    first_ex = torch.cumsum(per_row, 0) - per_row
    slot = torch.arange(b, device=dev) - first_ex[row] + 1 if b else row
    cu = torch.full((n_rows, k + 1), -1, dtype=torch.int32, device=dev)
    if n_rows:
        cu[:, 0] = 0
        cu = cu.index_put((row, slot), (start + m).to(torch.int32))

    ex_of_audio = torch.repeat_interleave(torch.arange(b, device=dev), num_audios.to(torch.long))
    pos = torch.minimum(audio_positions.to(torch.long), m[ex_of_audio]) + start[ex_of_audio]
    return {
        "tokens": tokens,
        "labels": labels,
        "loss_mask": loss_mask,
        "position_ids": position_ids,
        "cu_seqlens": cu,
        "packed_audio_positions": pos,
    }
