"""The batch contract: what the loader yields, key by key (docs/batch.md has the long form).

A :class:`Batch` is a plain ``dict`` (a ``TypedDict``: no per-batch cost) with the keys below.
:func:`make_batch` is the one place that builds one: the collator
(:func:`speechdata.collate.finalize`) and the synthetic model-test batches
(:func:`speechdata.train.synthetic.synthetic_batch`, which go through the collator) both end there.
It checks what is cheap to check: every tensor's dtype, number of dimensions and device, and that
the dimensions shared by several keys agree (attribute reads only; no value is read, so nothing
waits for the device).

Dimension names used by :data:`LAYOUT` and the docs:

* ``B``: examples; ``A``: audios, ``num_audios.sum()`` (an example may have several);
* ``T``: the longest audio in samples, ``audio_signal_length.max()``;
* ``L``: the token width, ``tokens_length.max()`` rounded up to ``pad_to_multiple`` (at least
  ``pad_to_multiple``);
* ``Lc`` / ``La``: the longest context / answer part, ``context_lengths.max()`` /
  ``answer_lengths.max()``;
* ``M``, ``F``: mel bins and feature frames (``1 + T // hop``), only with log-mel features;
* ``R``, ``K1``: in a packed batch (``packing: true``, docs/packing.md), the rows and one more than
  the most examples in a row.

Example::

    >>> batch = finalize(packed, device="cuda", pad_id=0)   # speechdata.collate, via make_batch
    >>> batch["tokens"].shape, batch["audio_signal"].shape  # [B, L], [A, T]
    (torch.Size([4, 48]), torch.Size([5, 131200]))
"""

import sys
from collections.abc import Mapping
from typing import Any

import torch

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # typing.TypedDict understands NotRequired from 3.11 on
    from typing_extensions import NotRequired, TypedDict


class Batch(TypedDict):
    """One batch as the loader yields it (docs/batch.md; dimension names in the module docstring).

    Audio (``A`` rows: example ``b``'s ``num_audios[b]`` audios follow those of the examples before
    it, in the order of its manifest line):

    * ``audio_signal`` float32 ``[A, T]``: mono waveforms at the dataset's ``sample_rate``, padded
      with 0.0;
    * ``audio_signal_length`` int64 ``[A]``: valid samples per audio;
    * ``num_audios`` int64 ``[B]``: audios per example;
    * ``audio_positions`` int64 ``[A]``: per audio, the index into its example's token sequence
      (``tokens`` row, BOS included) where the audio is inserted, i.e. before ``tokens[b, p]``;
      ``0 <= p <= context_lengths[b]``, non-decreasing within an example; 0 without a locator.

    Text (an example's sequence is ``input_ids = context part + answer part``, ``n`` tokens):

    * ``tokens`` int64 ``[B, L]``: ``input_ids[:-1]``, padded with the pad id;
    * ``tokens_length`` int64 ``[B]``: ``n - 1``;
    * ``labels`` int64 ``[B, L]``: ``input_ids[1:]`` (the next token), padded with the pad id;
    * ``loss_mask`` float32 ``[B, L]``: 1.0 where ``labels`` is a target (with ``answer_only_loss``:
      ``j + 1 >= context_lengths[b]``, i.e. the label lies in the answer part; else every
      ``j < tokens_length[b]``), 0.0 elsewhere and on padding;
    * ``position_ids`` int64 ``[B, L]``: ``0 .. L-1`` on every row;
    * ``contexts`` int64 ``[B, Lc]``: the context part (BOS, template, context, SEP), padded;
    * ``context_lengths`` int64 ``[B]``: its length (where the answer part starts);
    * ``answers`` int64 ``[B, La]``: the answer part (separator, answer, ``end_string``, EOS), padded;
    * ``answer_lengths`` int64 ``[B]``: its length; ``context_lengths + answer_lengths == n``.

    Bookkeeping:

    * ``sample_ids`` int64 ``[B]``: stable ids, ``dataset << 32 | line number`` (1-based);
    * ``metadata`` ``list[dict]`` of ``B``: per example ``audio_filepath``, ``offset``, ``duration``
      (lists, one entry per audio), ``where`` (``path:line``), ``context``, ``answer``, then the
      manifest line's other keys.

    With ``features`` set in the dataset config, also:

    * ``audio_features`` float32 ``[A, M, F]``: normalised log-mel, 0.0 beyond each length;
    * ``audio_features_length`` int64 ``[A]``: valid frames per audio, ``1 + length // hop``.

    With ``packing: true`` (docs/packing.md) ``tokens``, ``labels``, ``loss_mask`` and
    ``position_ids`` are ``[R, L]``: row ``r`` holds its examples' sequences back to back, each
    example's ``position_ids`` restarting at 0; also:

    * ``cu_seqlens`` int32 ``[R, K1]``: row ``r``'s example boundaries ``0, n_0 - 1, n_0 - 1 +
      n_1 - 1, ...`` (example ``b`` of the row spans ``cu_seqlens[r, b] : cu_seqlens[r, b + 1]``),
      -1 after the last;
    * ``packed_audio_positions`` int64 ``[A]``: each audio's position in its row (its example's
      start plus ``min(audio_positions, tokens_length)`` of its example).
    """

    audio_signal: torch.Tensor
    audio_signal_length: torch.Tensor
    num_audios: torch.Tensor
    audio_positions: torch.Tensor
    tokens: torch.Tensor
    tokens_length: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    contexts: torch.Tensor
    context_lengths: torch.Tensor
    answers: torch.Tensor
    answer_lengths: torch.Tensor
    sample_ids: torch.Tensor
    metadata: list[dict[str, Any]]
    audio_features: NotRequired[torch.Tensor]
    audio_features_length: NotRequired[torch.Tensor]
    cu_seqlens: NotRequired[torch.Tensor]
    packed_audio_positions: NotRequired[torch.Tensor]


#: Every tensor key's dtype and shape by dimension name (see the module docstring); ``metadata``
#: is the one key that is not a tensor (a list of ``B`` dicts).
LAYOUT: dict[str, tuple[torch.dtype, tuple[str, ...]]] = {
    "audio_signal": (torch.float32, ("A", "T")),
    "audio_signal_length": (torch.int64, ("A",)),
    "num_audios": (torch.int64, ("B",)),
    "audio_positions": (torch.int64, ("A",)),
    "tokens": (torch.int64, ("B", "L")),
    "tokens_length": (torch.int64, ("B",)),
    "labels": (torch.int64, ("B", "L")),
    "loss_mask": (torch.float32, ("B", "L")),
    "position_ids": (torch.int64, ("B", "L")),
    "contexts": (torch.int64, ("B", "Lc")),
    "context_lengths": (torch.int64, ("B",)),
    "answers": (torch.int64, ("B", "La")),
    "answer_lengths": (torch.int64, ("B",)),
    "sample_ids": (torch.int64, ("B",)),
    "audio_features": (torch.float32, ("A", "M", "F")),
    "audio_features_length": (torch.int64, ("A",)),
    "cu_seqlens": (torch.int32, ("R", "K1")),
    "packed_audio_positions": (torch.int64, ("A",)),
}

#: The keys whose first dimension is the row (``R``) in a packed batch (docs/packing.md): each row
#: holds several examples back to back; every other key keeps one entry per example (``B``).
ROW_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def is_packed(batch: Mapping[str, Any]) -> bool:
    """Whether ``batch`` is a packed batch (rows of several examples; it has ``cu_seqlens``)."""
    return batch.get("cu_seqlens") is not None


def _shape(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(names) + "]"


def _check(batch: Mapping[str, Any]) -> None:
    """Raise when a tensor's dtype, rank or device, or a shared dimension, breaks :data:`LAYOUT`."""
    sizes: dict[str, tuple[int, str]] = {}  # dimension name -> (size, the key that set it)
    first_key = ""
    packed = is_packed(batch)
    if packed != ("packed_audio_positions" in batch):
        raise ValueError("batch: cu_seqlens and packed_audio_positions come together; got only one")
    for key, (dtype, names) in LAYOUT.items():
        if key not in batch:
            continue
        if packed and key in ROW_KEYS:
            names = ("R", *names[1:])
        t = batch[key]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"batch[{key!r}]: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype != dtype:
            raise ValueError(f"batch[{key!r}]: dtype {t.dtype}, expected {dtype}")
        if t.dim() != len(names):
            raise ValueError(f"batch[{key!r}]: shape {list(t.shape)}, expected {_shape(names)}")
        if not first_key:
            first_key = key
        elif t.device != batch[first_key].device:
            raise ValueError(
                f"batch[{key!r}]: on {t.device}, but batch[{first_key!r}] is on {batch[first_key].device}"
            )
        for name, size in zip(names, t.shape, strict=True):
            first = sizes.setdefault(name, (size, key))
            if first[0] != size:
                raise ValueError(
                    f"batch[{key!r}]: shape {list(t.shape)} has {name}={size}, but "
                    f"batch[{first[1]!r}] has {name}={first[0]} ({key} is {_shape(names)})"
                )
    meta = batch["metadata"]
    if not isinstance(meta, list):
        raise TypeError(f"batch['metadata']: expected a list of dicts, got {type(meta).__name__}")
    if len(meta) != sizes["B"][0]:
        raise ValueError(f"batch['metadata']: {len(meta)} entries for B={sizes['B'][0]} examples")


def make_batch(
    *,
    audio_signal: torch.Tensor,
    audio_signal_length: torch.Tensor,
    num_audios: torch.Tensor,
    audio_positions: torch.Tensor,
    tokens: torch.Tensor,
    tokens_length: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    position_ids: torch.Tensor,
    contexts: torch.Tensor,
    context_lengths: torch.Tensor,
    answers: torch.Tensor,
    answer_lengths: torch.Tensor,
    sample_ids: torch.Tensor,
    metadata: list[dict[str, Any]],
    audio_features: torch.Tensor | None = None,
    audio_features_length: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    packed_audio_positions: torch.Tensor | None = None,
) -> Batch:
    """A :class:`Batch` of these values, after the cheap checks (see the module docstring).

    ``audio_features`` and ``audio_features_length`` come together or not at all, and so do the
    packed batch's ``cu_seqlens`` and ``packed_audio_positions`` (then ``tokens``, ``labels``,
    ``loss_mask`` and ``position_ids`` have one row per packed row, :data:`ROW_KEYS`). Raises
    ``TypeError`` for a value of the wrong type and ``ValueError`` for a dtype, rank, device or
    shape that breaks :data:`LAYOUT`, naming the key (a batch built wrongly is a bug in its
    producer, not bad user input).
    """
    batch = Batch(
        audio_signal=audio_signal,
        audio_signal_length=audio_signal_length,
        num_audios=num_audios,
        audio_positions=audio_positions,
        tokens=tokens,
        tokens_length=tokens_length,
        labels=labels,
        loss_mask=loss_mask,
        position_ids=position_ids,
        contexts=contexts,
        context_lengths=context_lengths,
        answers=answers,
        answer_lengths=answer_lengths,
        sample_ids=sample_ids,
        metadata=metadata,
    )
    if (audio_features is None) != (audio_features_length is None):
        raise ValueError("batch: audio_features and audio_features_length come together; got only one")
    if audio_features is not None and audio_features_length is not None:
        batch["audio_features"] = audio_features
        batch["audio_features_length"] = audio_features_length
    if cu_seqlens is not None:
        batch["cu_seqlens"] = cu_seqlens
    if packed_audio_positions is not None:
        batch["packed_audio_positions"] = packed_audio_positions
    _check(batch)
    return batch
