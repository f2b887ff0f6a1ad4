"""SALM: audio embeddings spliced into the LM input at ``audio_positions``.

For an example with text tokens ``t[0:n]`` and audios ``a_1..a_k`` at positions ``p_1 <= .. <= p_k``
(token indices; ``p = 0`` prepends), the LM input is::

    emb(t[0:p_1]) a_1 emb(t[p_1:p_2]) a_2 ... a_k emb(t[p_k:n])

of length ``n + sum(frames)``. Each text token keeps its label and loss-mask value (they move with
it); audio frames get label ``pad_id`` and loss mask 0, so audio carries no loss. Audios that share
a position keep their batch order. Examples are right-padded to the longest spliced sequence.

With ``model.perception.modality_adapter.ctc_weight`` > 0, training adds that weight times a CTC
loss (:func:`ctc_targets`) of a linear head on the audio embeddings: an auxiliary loss that aligns
the embeddings with the words they say (the LM still reads the embeddings and writes the answer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speechdata.batch import Batch
from speechdata.train.models.base import DecoderInputs, RowLayout, SpeechLM, example_index, scatter_rows
from speechdata.train.models.config import ModelConfig


def splice_plan(
    tokens_length: torch.Tensor,
    max_tokens: int,
    audio_length: torch.Tensor,
    num_audios: torch.Tensor,
    audio_positions: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where everything goes in the spliced sequence.

    Returns ``token_index`` ``[B, max_tokens]`` (output position of each token), ``audio_start``
    ``[A]`` (output position of each audio's first frame), ``lengths`` ``[B]`` (spliced lengths) and
    ``ex`` ``[A]`` (example of each audio). Positions beyond an example's token count are clamped
    to its end.
    """
    ex = example_index(num_audios)
    pos = torch.minimum(audio_positions.to(torch.long), tokens_length[ex].to(torch.long))
    alen = audio_length.to(torch.long)
    n_audio = pos.numel()
    order = torch.arange(n_audio, device=pos.device)
    same = ex[:, None] == ex[None, :]
    earlier = (pos[None, :] < pos[:, None]) | (
        (pos[None, :] == pos[:, None]) & (order[None, :] < order[:, None])
    )
    prior = ((same & earlier).to(torch.long) * alen[None, :]).sum(dim=1)  # frames placed before audio i
    j = torch.arange(max_tokens, device=pos.device)
    shifts = (pos[:, None] <= j[None, :]).to(torch.long) * alen[:, None]  # [A, L]
    b = tokens_length.numel()
    token_shift = torch.zeros(b, max_tokens, dtype=torch.long, device=pos.device).index_add_(0, ex, shifts)
    total_audio = torch.zeros(b, dtype=torch.long, device=pos.device).index_add_(0, ex, alen)
    return j[None, :] + token_shift, pos + prior, tokens_length.to(torch.long) + total_audio, ex


def ctc_targets(batch: Batch, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CTC targets of the batch's single-audio examples: ``audio`` ``[K]`` (the row of each one's
    audio in ``audio_signal``), ``targets`` ``[K, La]`` (its ``answers`` without EOS and padding,
    left-aligned, ``pad_id`` after) and ``lengths`` ``[K]``."""
    num_audios = batch["num_audios"].to(torch.long)
    answers = batch["answers"]
    keep = torch.arange(answers.shape[1], device=answers.device)[None, :] < batch["answer_lengths"][:, None]
    keep &= (answers != eos_id) & (answers != pad_id)
    single = (num_audios == 1).nonzero().squeeze(1)
    first = torch.cumsum(num_audios, 0) - num_audios
    keep = keep[single]
    lengths = keep.sum(dim=1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, in order
    targets = torch.gather(answers[single], 1, order)
    cols = torch.arange(targets.shape[1], device=targets.device)[None, :]
    targets = torch.where(cols < lengths[:, None], targets, torch.full_like(targets, pad_id))
    return first[single], targets, lengths


class SALM(SpeechLM):
    """Speech-Augmented LM: perception -> audio embeddings spliced into the token embeddings -> GPT."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        #: the CTC head (vocabulary + blank, the last class) when ``ctc_weight`` > 0
        self.ctc_head: nn.Linear | None = None
        if cfg.adapter.ctc_weight > 0:
            self.ctc_head = nn.Linear(cfg.llm.hidden_size, cfg.vocab_size + 1)
        self.setup_trainable()

    def audio_loss(self, batch: Batch, audio: torch.Tensor, audio_len: torch.Tensor) -> torch.Tensor | None:
        """In training with ``ctc_weight`` > 0: that weight times the CTC loss of the audio
        embeddings against the answers (:func:`ctc_targets`); else none."""
        if self.ctc_head is None or not self.training:
            return None
        rows, targets, lengths = ctc_targets(batch, self.cfg.eos_id, self.cfg.pad_id)
        if rows.numel() == 0:
            return None
        logp = F.log_softmax(self.ctc_head(audio[rows]).float(), dim=-1).transpose(0, 1)  # [T, K, V+1]
        ctc = F.ctc_loss(
            logp, targets, audio_len[rows], lengths, blank=self.cfg.vocab_size, zero_infinity=True
        )
        return self.cfg.adapter.ctc_weight * ctc

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
        """Splice the audio embeddings into the token embeddings (see the module docstring); a
        packed row is spliced as one sequence (its audios at their row positions)."""
        b, n_tok = tokens.shape
        text = self.llm.embed(tokens)
        token_index, audio_start, lengths, ex = splice_plan(
            tokens_length, n_tok, audio_length, num_audios, audio_positions
        )
        seq = max(int(lengths.max()) if b else 0, 1)
        dim = text.shape[-1]
        rows = torch.arange(b, device=tokens.device)[:, None].expand(b, n_tok)
        tok_valid = torch.arange(n_tok, device=tokens.device)[None, :] < tokens_length[:, None]
        embeds = scatter_rows(text, tok_valid, rows, token_index, (b, seq, dim))
        if audio.shape[0]:
            n_frames = audio.shape[1]
            f = torch.arange(n_frames, device=tokens.device)
            fr_valid = f[None, :] < audio_length[:, None]
            fr_rows = ex[:, None].expand(-1, n_frames)
            fr_cols = audio_start[:, None] + f[None, :]
            audio_part = scatter_rows(audio.to(embeds.dtype), fr_valid, fr_rows, fr_cols, (b, seq, dim))
            embeds = embeds + audio_part
        return DecoderInputs(embeds, lengths, token_index)

    def example_lengths(
        self, tokens_length: torch.Tensor, audio_length: torch.Tensor, num_audios: torch.Tensor
    ) -> torch.Tensor:
        """Tokens plus the frames of the example's audios."""
        frames = torch.zeros_like(tokens_length, dtype=torch.long).index_add_(
            0, example_index(num_audios), audio_length.to(torch.long)
        )
        return tokens_length.to(torch.long) + frames
