"""What SALM and BESTOW share: perception, the LM, freezing, LoRA, the loss and greedy decoding.

A subclass only says how the LM input is built from the text and the audio embeddings
(:meth:`SpeechLM.decoder_inputs`); everything else (loss over ``loss_mask``, batched greedy
generation from ``contexts``, freezing flags) is here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from speechdata.batch import Batch, is_packed
from speechdata.train.models.blocks import Segments
from speechdata.train.models.config import ModelConfig
from speechdata.train.models.encoder import Perception
from speechdata.train.models.gpt import TinyGPT
from speechdata.train.models.lora import apply_lora


@dataclass
class DecoderInputs:
    """The LM input built from a batch.

    ``embeds`` ``[B, S, D]`` right-padded; ``lengths`` ``[B]`` valid positions; ``token_index``
    ``[B, L]`` the position in ``embeds`` of each text token (so labels and loss mask follow their
    token).
    """

    embeds: torch.Tensor
    lengths: torch.Tensor
    token_index: torch.Tensor


@dataclass
class RowLayout:
    """Where the examples of a packed batch lie (docs/packing.md), from its ``cu_seqlens``.

    Per example (``[B]``): ``example_row`` its row, ``example_start`` its first token's column,
    ``example_tokens`` its tokens (``tokens_length``); per row (``[R]``): ``row_tokens`` the
    tokens it holds, ``row_audios`` the audios of its examples; per audio (``[A]``):
    ``audio_example`` its example.
    """

    example_row: torch.Tensor
    example_start: torch.Tensor
    example_tokens: torch.Tensor
    row_tokens: torch.Tensor
    row_audios: torch.Tensor
    audio_example: torch.Tensor

    @classmethod
    def of(cls, batch: Batch) -> RowLayout:
        """The layout of a packed batch."""
        cu = batch["cu_seqlens"].to(torch.long)
        present = cu[:, 1:] >= 0  # example k of row r exists
        rows = present.nonzero()[:, 0]  # row-major: the examples in batch order
        starts = cu[:, :-1][present]
        ends = cu[:, 1:][present]
        num_audios = batch["num_audios"].to(torch.long)
        n_rows = cu.shape[0]
        row_audios = torch.zeros(n_rows, dtype=torch.long, device=cu.device).index_add_(0, rows, num_audios)
        return cls(
            rows,
            starts,
            ends - starts,
            cu.max(dim=1).values.clamp(min=0),
            row_audios,
            example_index(num_audios),
        )

    def segments(self, lengths: torch.Tensor, width: int) -> tuple[Segments, torch.Tensor]:
        """The :class:`Segments` of examples of ``lengths`` laid back to back in their rows of
        ``width`` positions, and each position's index within its example ``[R, width]`` (0 on
        padding)."""
        n_rows = self.row_tokens.numel()
        totals = torch.zeros(n_rows, dtype=torch.long, device=lengths.device).index_add_(
            0, self.example_row, lengths
        )
        before = torch.cumsum(lengths, 0) - lengths
        row_first = torch.cumsum(totals, 0) - totals
        starts = before - row_first[self.example_row]
        seg = Segments.of(self.example_row, starts, lengths, (n_rows, width))
        places, within = seg.positions()
        positions = torch.zeros(n_rows * width, dtype=torch.long, device=lengths.device)
        positions = positions.index_put((places,), within)
        return seg, positions.view(n_rows, width)


@dataclass
class ModelOutput:
    """Logits ``[B, S, V]`` with the labels ``[B, S]`` and float loss mask ``[B, S]`` aligned to them."""

    logits: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    lengths: torch.Tensor


def example_index(num_audios: torch.Tensor) -> torch.Tensor:
    """``[A]`` index of the example each audio belongs to."""
    return torch.repeat_interleave(torch.arange(num_audios.numel(), device=num_audios.device), num_audios)


def scatter_rows(
    values: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, ...]
) -> torch.Tensor:
    """A zero tensor of ``shape`` with ``out[rows[m], cols[m]] = values[m]`` for every ``m`` where ``valid``."""
    out = values.new_zeros(shape)
    return out.index_put((rows[valid], cols[valid]), values[valid])


class SpeechLM(nn.Module):
    """Base of :class:`~speechdata.train.models.salm.SALM` and :class:`~speechdata.train.models.bestow.BESTOW`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.perception = Perception(
            cfg.sample_rate, cfg.features, cfg.encoder, cfg.adapter, cfg.llm.hidden_size
        )
        self.llm = TinyGPT(cfg.vocab_size, cfg.llm)
        self.lora_layers: list[str] = []

    def setup_trainable(self) -> None:
        """Apply LoRA and the freezing flags; subclasses call it at the end of ``__init__``."""
        cfg = self.cfg
        if cfg.lora is not None:
            self.lora_layers = apply_lora(
                self.llm,
                cfg.lora.adapter_dim,
                cfg.lora.alpha,
                cfg.lora.adapter_dropout,
                cfg.lora.target_modules,
            )
        if cfg.freeze_llm:
            for name, p in self.llm.named_parameters():
                if "lora_" not in name:
                    p.requires_grad_(False)
        if cfg.freeze_audio_encoder:
            self.perception.encoder.requires_grad_(False)
        if cfg.freeze_modality_adapter:
            self.perception.modality_adapter.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        """Modules whose parameters are all frozen (kept in eval mode: no dropout)."""
        mods: list[nn.Module] = [self.llm, self.perception.encoder, self.perception.modality_adapter]
        return [m for m in mods if not any(p.requires_grad for p in m.parameters())]

    def train(self, mode: bool = True) -> SpeechLM:
        """Like ``nn.Module.train`` but frozen parts stay in eval mode."""
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    # ---------------------------------------------------------------------------------- forward

    def encode_audio(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio embeddings ``[A, F', D]`` at the LM width and their lengths ``[A]``."""
        return self.perception(batch)

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
        """Build the LM input from text tokens ``[B, L]`` and audio embeddings ``[A, F', D]``.

        For a packed batch the rows are the sequences (``tokens_length``, ``num_audios`` and
        ``audio_positions`` per row) and ``layout`` says where each example lies.
        """
        raise NotImplementedError

    def example_lengths(
        self, tokens_length: torch.Tensor, audio_length: torch.Tensor, num_audios: torch.Tensor
    ) -> torch.Tensor:
        """Each example's length in the LM input ``[B]`` (its tokens, and any audio spliced in)."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits for a batch (docs/batch.md), with labels and loss mask moved to the LM positions.

        A packed batch (docs/packing.md) runs its rows through the LM with each example's
        positions restarting at 0 and attention kept within each example, so every example's
        logits are those it gets in a padded batch.
        """
        return self.decode(batch, *self.encode_audio(batch))

    def decode(self, batch: Batch, audio: torch.Tensor, audio_len: torch.Tensor) -> ModelOutput:
        """:meth:`forward` from the batch's audio embeddings, already computed by :meth:`encode_audio`."""
        tokens = batch["tokens"]
        if is_packed(batch):
            layout = RowLayout.of(batch)
            lengths = layout.row_tokens
            inp = self.decoder_inputs(
                tokens,
                lengths,
                audio,
                audio_len,
                layout.row_audios,
                batch["packed_audio_positions"],
                layout,
            )
            per_example = self.example_lengths(batch["tokens_length"], audio_len, batch["num_audios"])
            segments, positions = layout.segments(per_example, inp.embeds.shape[1])
            logits = self.llm.forward_embeddings(inp.embeds, positions, segments)
        else:
            lengths = batch["tokens_length"]
            inp = self.decoder_inputs(
                tokens, lengths, audio, audio_len, batch["num_audios"], batch["audio_positions"]
            )
            logits = self.llm.forward_embeddings(inp.embeds)
        b, seq = logits.shape[:2]
        rows = torch.arange(b, device=tokens.device)[:, None].expand_as(tokens)
        valid = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        labels = torch.full((b, seq), self.cfg.pad_id, dtype=torch.long, device=tokens.device)
        labels = labels.index_put((rows[valid], inp.token_index[valid]), batch["labels"][valid])
        mask = scatter_rows(batch["loss_mask"].to(torch.float32), valid, rows, inp.token_index, (b, seq))
        return ModelOutput(logits, labels, mask, inp.lengths)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over positions with ``loss_mask`` > 0 (plus :meth:`audio_loss`, if
        any), and the number of such tokens."""
        audio, audio_len = self.encode_audio(batch)
        out = self.decode(batch, audio, audio_len)
        loss, count = masked_cross_entropy(out.logits, out.labels, out.loss_mask)
        extra = self.audio_loss(batch, audio, audio_len)
        return (loss if extra is None else loss + extra), count

    def audio_loss(self, batch: Batch, audio: torch.Tensor, audio_len: torch.Tensor) -> torch.Tensor | None:
        """An auxiliary loss on the audio embeddings, added by :meth:`loss`; none by default."""
        return None

    # ------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding from ``contexts`` (with the batch's audio) until EOS or ``max_new_tokens``.

        Returns the generated ids per example, EOS excluded. Sequences are kept right-padded and the
        whole prefix is re-run at each step (no KV cache: the models are tiny).
        """
        contexts, ctx_len = batch["contexts"], batch["context_lengths"].to(torch.long)
        audio, audio_len = self.encode_audio(batch)
        b = contexts.shape[0]
        device = contexts.device
        buf = torch.full(
            (b, contexts.shape[1] + max_new_tokens + 1), self.cfg.pad_id, dtype=torch.long, device=device
        )
        buf[:, : contexts.shape[1]] = contexts
        lengths = ctx_len.clone()
        done = torch.zeros(b, dtype=torch.bool, device=device)
        rows = torch.arange(b, device=device)
        for _ in range(max_new_tokens):
            width = int(lengths.max())
            inp = self.decoder_inputs(
                buf[:, :width], lengths, audio, audio_len, batch["num_audios"], batch["audio_positions"]
            )
            logits = self.llm.forward_embeddings(inp.embeds)
            nxt = logits[rows, (inp.lengths - 1).clamp(min=0)].argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, self.cfg.pad_id), nxt)
            buf[rows, lengths] = nxt
            finished = nxt == self.cfg.eos_id
            lengths = lengths + (~done & ~finished).to(torch.long)
            done = done | finished
            if bool(done.all()):
                break
        starts, ends = ctx_len.tolist(), lengths.tolist()
        return [buf[i, starts[i] : ends[i]].tolist() for i in range(b)]


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum(ce * mask) / max(sum(mask), 1)`` in float32, and ``sum(mask)``."""
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    mask = loss_mask.reshape(-1).float()
    count = mask.sum()
    return (ce * mask).sum() / count.clamp(min=1.0), count
