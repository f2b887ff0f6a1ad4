"""The collator: builds the batch contract (docs/batch.md, :class:`~speechdata.batch.Batch`) in two halves.

* :func:`pack` runs in a DataLoader worker: it reads and decodes every audio of the batch's
  examples straight into one flat buffer (:class:`~speechdata.audiobuf.AudioBuffer`), formats and
  tokenizes the text, and hands over *flat* buffers plus lengths (:class:`Packed`), which cross
  the process boundary as shared-memory tensors and are pinned in one call.
* :func:`finalize` runs on the target device: padding, masks, position ids and (optionally) log-mel
  features are computed there by vectorised torch ops, so the CPU path and the GPU path give the
  same batch; the result is built by :func:`~speechdata.batch.make_batch`.

Example::

    >>> packed = pack(records, lambda rec: rec.audio, builder, sample_rate=16000, on_error="skip")
    >>> batch = finalize(packed, device="cuda", pad_id=0, pad_to_multiple=8)
    >>> batch["tokens"].shape, batch["audio_signal"].shape
    (torch.Size([4, 48]), torch.Size([5, 131200]))
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from speechdata.audio import AudioSource
from speechdata.audiobuf import AudioBuffer, ReusedBuffers
from speechdata.batch import Batch, make_batch
from speechdata.config import FeatureConfig
from speechdata.errors import DATA_ERROR_REASONS, DataError, DropCounter, SpeechDataError
from speechdata.manifest import Record
from speechdata.rows import round_up, row_tensors
from speechdata.text.prompt import PromptBuilder

#: Where one record's audio comes from: one source per clip (a path, or the member's bytes).
AudioSources = Callable[[Record], Sequence[AudioSource]]


@dataclass
class Packed:
    """One batch as flat CPU buffers (what a worker sends to the main process).

    ``audio`` holds every clip's samples back to back (``audio_lengths`` per clip); ``ids`` every
    example's full token sequence back to back (``ids_lengths`` per example); ``targets`` (uint8,
    aligned with ``ids``) is 1 for each token that is a loss target (:attr:`Prompt.loss_mask
    <speechdata.text.prompt.Prompt.loss_mask>`); ``answer_start`` is where each example's answer
    part begins; ``rows`` (int64, one per example, or empty) is each example's row in a packed
    batch (docs/packing.md). ``drops`` counts the examples of the planned batch
    that were dropped, by reason. ``slot_flag`` is the in-use flag of the worker's pooled buffer
    that ``audio`` lives in (None when it does not): :meth:`release` clears it once the audio has
    been copied out (padded, or pinned), and a received batch dropped unused releases itself (so
    whoever takes ``audio`` out of a received batch must keep the batch, or copy the audio).
    """

    audio: torch.Tensor
    audio_lengths: torch.Tensor
    num_audios: torch.Tensor
    audio_positions: torch.Tensor
    ids: torch.Tensor
    ids_lengths: torch.Tensor
    answer_start: torch.Tensor
    sample_ids: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    metadata: list[dict[str, Any]] = field(default_factory=list)
    drops: DropCounter = field(default_factory=DropCounter)
    truncated: int = 0
    error: SpeechDataError | None = None
    slot_flag: torch.Tensor | None = None

    _TENSORS = (
        "audio",
        "audio_lengths",
        "num_audios",
        "audio_positions",
        "ids",
        "ids_lengths",
        "answer_start",
        "sample_ids",
        "targets",
        "rows",
    )

    def __len__(self) -> int:
        return int(self.ids_lengths.shape[0])

    @classmethod
    def empty(cls, error: SpeechDataError | None = None) -> Packed:
        """A batch with no examples (carrying ``error`` when a data or config error stopped it)."""
        z = torch.zeros(0, dtype=torch.int64)
        return cls(torch.zeros(0), z, z, z, z, z, z, z, torch.zeros(0, dtype=torch.uint8), z, error=error)

    def pin_memory(self) -> Packed:
        """A copy with every tensor in page-locked memory (called by the DataLoader's pin thread);
        this batch's pooled buffer is released."""
        pinned = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in self._TENSORS:
            pinned[name] = pinned[name].pin_memory()
        pinned["slot_flag"] = None
        self.release()
        return Packed(**pinned)

    def release(self) -> None:
        """Hand the worker's pooled audio buffer back (call once nothing reads ``audio`` any more)."""
        if self.slot_flag is not None:
            self.slot_flag[0] = 0
            self.slot_flag = None

    def __getstate__(self) -> dict[str, Any]:
        # What crosses to the main process: each tensor travels as a shared-memory file descriptor
        # (one socket round trip with the worker per tensor), so the integer fields go as one
        # int64 buffer, and a pooled slot's flag, which lives in the audio's own storage, as its
        # position there: two descriptors per batch.
        state = {k: v for k, v in self.__dict__.items() if k not in _INT_FIELDS and k != "_received"}
        parts = [getattr(self, name) for name in _INT_FIELDS]
        state["_ints"] = torch.cat([p.reshape(-1).to(torch.int64) for p in parts])
        state["_int_lengths"] = [int(p.numel()) for p in parts]
        flag = self.slot_flag
        if flag is not None and flag.untyped_storage().data_ptr() == self.audio.untyped_storage().data_ptr():
            state["slot_flag"] = None
            state["_flag_at"] = flag.storage_offset()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        ints = state.pop("_ints", None)
        if ints is not None:
            state.update(zip(_INT_FIELDS, torch.split(ints, state.pop("_int_lengths")), strict=True))
            state["targets"] = state["targets"].to(torch.uint8)
        at = state.pop("_flag_at", None)
        if at is not None:
            storage = state["audio"].untyped_storage()
            state["slot_flag"] = torch.empty(0, dtype=torch.int32).set_(storage, at, (1,))
        # only the receiving side (the main process) may release when it drops the batch
        self.__dict__.update(state)
        self.__dict__["_received"] = True

    def __del__(self) -> None:
        if self.__dict__.get("_received"):
            # at interpreter shutdown the flag's storage may be gone already
            with contextlib.suppress(Exception):
                self.release()


#: The integer fields of :class:`Packed`, in the order they are handed over as one buffer.
_INT_FIELDS = Packed._TENSORS[1:]


def pack(
    records: Sequence[Record],
    sources: AudioSources,
    builder: PromptBuilder,
    *,
    sample_rate: int,
    on_error: str = "raise",
    rows: Sequence[int] | None = None,
) -> Packed:
    """Decode and tokenize ``records`` into one :class:`Packed` batch.

    Every clip is decoded at ``sample_rate`` (float32 mono) straight into the batch's flat audio
    buffer. Data errors (bad line, missing or undecodable audio, locator mismatch) raise with
    ``on_error="raise"`` and are counted drops with ``"skip"``; filter drops from the text stage
    (``too_long_text``, ``too_short_text``) are always counted, never raised. ``rows`` (one per
    record) are the packed rows the planner put the records in; a dropped record leaves its row.
    """
    audio = AudioBuffer(sum(round(d * sample_rate) for rec in records for d in rec.duration))
    try:
        return _pack(records, sources, builder, audio, sample_rate, on_error, rows)
    except BaseException:
        audio.release()
        raise


def _pack(
    records: Sequence[Record],
    sources: AudioSources,
    builder: PromptBuilder,
    audio: AudioBuffer,
    sample_rate: int,
    on_error: str,
    rows: Sequence[int] | None,
) -> Packed:
    drops = DropCounter()
    kept_rows: list[int] = []
    clip_lengths: list[int] = []
    n_audio: list[int] = []
    positions: list[int] = []
    ids: list[int] = []
    targets: list[int] = []
    lengths: list[int] = []
    starts: list[int] = []
    sample_ids: list[int] = []
    metadata: list[dict[str, Any]] = []
    truncated = 0
    for i, rec in enumerate(records):
        mark = audio.size
        try:
            prompt = builder.build_record(rec)
            clips = [
                _decode(audio, rec, k, src, o, d, sample_rate)
                for k, (src, o, d) in enumerate(zip(sources(rec), rec.offset, rec.duration, strict=True))
            ]
        except DataError as err:
            if err.reason in DATA_ERROR_REASONS and on_error == "raise":
                raise
            audio.truncate(mark)
            drops.add_error(err)
            continue
        clip_lengths.extend(clips)
        n_audio.append(len(clips))
        positions.extend(prompt.audio_positions)
        ids.extend(prompt.input_ids)
        targets.extend(prompt.loss_mask)
        lengths.append(len(prompt.input_ids))
        starts.append(prompt.answer_start)
        sample_ids.append(rec.sample_id)
        if rows is not None:
            kept_rows.append(rows[i])
        truncated += prompt.truncated
        # the line's other keys first: a key of the line named like one of ours (an "answer" key
        # next to answer_key: output) must not replace the value the batch was built from
        metadata.append(
            {
                **rec.extra,
                "audio_filepath": rec.audio,
                "offset": rec.offset,
                "duration": rec.duration,
                "where": rec.where,
                "context": rec.context,
                "answer": rec.answer,
            }
        )
    # one int64 buffer for the seven integer fields (one allocation, one hand-over), views of it
    ints = _int_views([clip_lengths, n_audio, positions, ids, lengths, starts, sample_ids, kept_rows])
    return Packed(
        audio=audio.tensor(),
        audio_lengths=ints[0],
        num_audios=ints[1],
        audio_positions=ints[2],
        ids=ints[3],
        ids_lengths=ints[4],
        answer_start=ints[5],
        sample_ids=ints[6],
        targets=torch.from_numpy(np.array(targets, dtype=np.uint8)),
        rows=ints[7],
        metadata=metadata,
        drops=drops,
        truncated=truncated,
        slot_flag=audio.flag,
    )


def _decode(
    audio: AudioBuffer,
    rec: Record,
    k: int,
    src: AudioSource,
    offset: float,
    duration: float,
    sample_rate: int,
) -> int:
    """Decode clip ``k`` of ``rec`` into ``audio``; its error names the clip as messages name it
    (built only then: a few microseconds per clip otherwise)."""
    try:
        return audio.decode(src, offset=offset, duration=duration, sample_rate=sample_rate, where=rec.where)
    except DataError as err:
        raise DataError(err.reason, f"{rec.where}: {rec.describe_audio(k)}", err.detail) from None


def _int_views(parts: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """``parts`` as int64 tensors that are consecutive views of one buffer."""
    flat = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(parts), np.int64))
    return list(torch.split(flat, [len(p) for p in parts]))


def _rows(
    flat: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, width: int, pad: float | int
) -> torch.Tensor:
    """Gather ``flat[starts[b] : starts[b] + lengths[b]]`` into row ``b`` of a ``[B, width]`` tensor.

    On the CPU numpy does it on the calling thread: torch's gather would wake every intra-op
    thread, and beside a busy DataLoader worker on 2 cores that took 8-16 ms a call instead of
    0.2-0.6 ms (most of the main process's time per short-clip batch).
    """
    if flat.device.type == "cpu":
        return torch.from_numpy(_rows_numpy(flat.numpy(), starts.numpy(), lengths.numpy(), width, pad))
    col = torch.arange(width, device=flat.device)
    valid = col.unsqueeze(0) < lengths.unsqueeze(1)
    if flat.numel() == 0:
        return torch.full(valid.shape, pad, dtype=flat.dtype, device=flat.device)
    idx = (starts.unsqueeze(1) + col.unsqueeze(0)).clamp_(max=flat.numel() - 1)
    return torch.where(valid, flat[idx], torch.as_tensor(pad, dtype=flat.dtype, device=flat.device))


def _rows_numpy(
    flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, pad: float | int
) -> np.ndarray:
    """:func:`_rows` in numpy."""
    col = np.arange(width)
    valid = col[None, :] < lengths[:, None]
    out = np.full(valid.shape, pad, dtype=flat.dtype)
    if flat.size:
        idx = np.minimum(starts[:, None] + col[None, :], flat.size - 1)
        np.copyto(out, flat[idx], where=valid)
    return out


def _pad_on_cpu(flat: torch.Tensor, lengths: list[int], buffers: ReusedBuffers | None) -> torch.Tensor:
    """``[A, max(lengths)]``: clip ``k`` of ``flat`` in row ``k``, zeros after it (in one of
    ``buffers`` when one is free).

    Every element is written once, by numpy on the calling thread: torch's parallel fill and
    copy would use every intra-op thread, and in the main process those compete with the
    DataLoader workers for the same cores (on 2 cores with 1 worker, 4-8x slower).
    """
    shape = (len(lengths), max(lengths, default=0))
    out = buffers.empty(shape) if buffers is not None else torch.empty(shape, dtype=torch.float32)
    rows, src = out.numpy(), flat.numpy()
    pos = 0
    for k, n in enumerate(lengths):
        rows[k, :n] = src[pos : pos + n]
        rows[k, n:] = 0.0
        pos += n
    return out


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(lengths, 0) - lengths


def finalize(
    packed: Packed,
    *,
    device: torch.device | str | None = None,
    pad_id: int = 0,
    pad_to_multiple: int = 8,
    features: FeatureConfig | None = None,
    sample_rate: int = 16000,
    buffers: ReusedBuffers | None = None,
) -> Batch:
    """Pad a :class:`Packed` batch on ``device`` into a :class:`~speechdata.batch.Batch` (docs/batch.md).

    ``pad_id`` fills ``tokens``, ``labels``, ``contexts`` and ``answers`` beyond each example's
    length; the token width is rounded up to ``pad_to_multiple``; ``loss_mask[b, j]`` is the target
    flag of label ``j`` (token ``j + 1``, from ``packed.targets``). A batch with ``rows`` is laid
    out in packed rows (:func:`~speechdata.rows.row_tensors`, docs/packing.md). ``features`` adds log-mel
    ``audio_features`` computed at ``sample_rate``. On the CPU, ``buffers`` (kept by the caller
    from batch to batch) lends the padded audio its memory when an earlier batch's is free.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    nb = dev.type == "cuda"
    t = {name: getattr(packed, name).to(dev, non_blocking=nb) for name in Packed._TENSORS}

    alen = t["audio_lengths"]
    if dev.type == "cpu":
        audio_signal = _pad_on_cpu(t["audio"], packed.audio_lengths.tolist(), buffers)
    else:
        # one copy per clip (split + pad_sequence): a gather index over [A, T] would cost
        # 8 bytes of index per sample and several full-size temporaries
        clips = torch.split(t["audio"], packed.audio_lengths.tolist())
        if clips:
            audio_signal = torch.nn.utils.rnn.pad_sequence(list(clips), batch_first=True)
        else:
            audio_signal = torch.zeros((0, 0), dtype=torch.float32, device=dev)

    n = t["ids_lengths"]
    start = _offsets(n)
    tokens_length = (n - 1).clamp_(min=0)
    if packed.rows.numel():  # packed rows (docs/packing.md)
        text = row_tensors(
            t["ids"],
            t["targets"],
            n,
            t["rows"],
            t["audio_positions"],
            t["num_audios"],
            pad_id=pad_id,
            pad_to_multiple=pad_to_multiple,
        )
    else:
        width = round_up(int(tokens_length.max()) if n.numel() else 0, pad_to_multiple)
        col = torch.arange(width, device=dev).unsqueeze(0)
        text = {
            "tokens": _rows(t["ids"], start, tokens_length, width, pad_id),
            "labels": _rows(t["ids"], start + 1, tokens_length, width, pad_id),
            # label j is input_ids[j + 1]: its target flag is targets[j + 1]
            "loss_mask": _rows(t["targets"], start + 1, tokens_length, width, 0).to(torch.float32),
            "position_ids": col.expand(len(packed), width).contiguous(),
        }
    ctx_len = t["answer_start"]
    ans_len = n - ctx_len
    contexts = _rows(t["ids"], start, ctx_len, int(ctx_len.max()) if n.numel() else 0, pad_id)
    answers = _rows(t["ids"], start + ctx_len, ans_len, int(ans_len.max()) if n.numel() else 0, pad_id)

    feats = feat_len = None
    if features is not None:
        from speechdata.features import log_mel

        feats, feat_len = log_mel(audio_signal, alen, sample_rate, features)
    return make_batch(
        audio_signal=audio_signal,
        audio_signal_length=alen,
        num_audios=t["num_audios"],
        audio_positions=t["audio_positions"],
        tokens_length=tokens_length,
        contexts=contexts,
        context_lengths=ctx_len,
        answers=answers,
        answer_lengths=ans_len,
        sample_ids=t["sample_ids"],
        metadata=packed.metadata,
        audio_features=feats,
        audio_features_length=feat_len,
        **text,
    )
