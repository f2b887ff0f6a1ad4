"""The LightningModule around a SALM / BESTOW model.

Training logs ``reduced_train_loss`` (mean over data-parallel ranks, NeMo's name), ``lr`` and
``consumed_samples`` (examples trained on so far, summed over ranks and micro-batches; saved in
checkpoints, so checkpoint names using ``{consumed_samples}`` continue after a resume). Validation
logs ``val_loss`` (token-weighted) and ``val_cer``: greedy decoding from ``contexts`` for up to
``tokens_to_generate`` tokens, compared with ``answers`` by character error rate (on decoded text
when a ``decode`` function is given, else on token ids).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from speechdata.batch import Batch
from speechdata.train.models.base import SpeechLM
from speechdata.train.optim import build_optimizer, build_scheduler


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance between two sequences: the fewest substitutions, insertions and
    deletions (each costing 1) that turn ``a`` into ``b``. Strings compare by code point, so
    ``"é"`` (one code point) against ``"e"`` is one substitution; token-id lists compare by id."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def error_sums(pairs: Iterable[tuple[Sequence[Any], Sequence[Any]]]) -> tuple[int, int]:
    """``(edits, reference length)`` summed over ``(hypothesis, reference)`` pairs.

    The character error rate of a set of pairs is ``edits / reference length`` of the sums (not the
    mean of per-pair rates), so it can exceed 1 when hypotheses hold more edits than the references
    have characters. A pair with an empty reference adds its hypothesis's length in insertions and
    nothing to the length; with no reference character at all the rate is undefined (``val_cer``
    is then not logged).
    """
    edits = length = 0
    for hyp, ref in pairs:
        edits += edit_distance(hyp, ref)
        length += len(ref)
    return edits, length


class SpeechLMModule(pl.LightningModule):
    """Trains a :class:`~speechdata.train.models.base.SpeechLM` with the ``optim`` section's optimiser."""

    def __init__(
        self,
        model: SpeechLM,
        optim: Mapping[str, Any],
        *,
        max_steps: int = -1,
        tokens_to_generate: int = 32,
        decode: Callable[[list[int]], str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim_cfg = dict(optim)
        self.max_steps = max_steps
        self.tokens_to_generate = tokens_to_generate
        self.decode = decode
        self.consumed_samples = 0
        if config is not None:
            self.save_hyperparameters({"cfg": dict(config)})
        self._val: dict[str, float] = {}

    def forward(self, batch: Batch) -> Any:
        """The model's output for a batch."""
        return self.model(batch)

    def _sum_over_ranks(self, value: float) -> float:
        t = torch.tensor(float(value), device=self.device)
        if self.trainer is not None and self.trainer.world_size > 1:
            t = self.trainer.strategy.reduce(t, reduce_op="sum")
        return float(t)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Masked cross-entropy on the batch; logs loss, lr and consumed_samples."""
        loss, _ = self.model.loss(batch)
        # examples, not rows: a packed batch (docs/packing.md) has several examples per row
        self.consumed_samples += int(self._sum_over_ranks(batch["sample_ids"].shape[0]))
        self.log(
            "reduced_train_loss", loss.detach(), on_step=True, prog_bar=True, sync_dist=True, batch_size=1
        )
        self.log("consumed_samples", float(self.consumed_samples), on_step=True, batch_size=1)
        opt = self.trainer.optimizers[0] if self.trainer.optimizers else None
        if opt is not None:
            self.log("lr", opt.param_groups[0]["lr"], on_step=True, prog_bar=True, batch_size=1)
        return loss

    def on_validation_epoch_start(self) -> None:
        """Reset the validation sums."""
        self._val = {"loss": 0.0, "tokens": 0.0, "errors": 0.0, "chars": 0.0}

    def _text(self, ids: list[int]) -> list[int] | str:
        """What CER compares: the tokens before the first EOS (a reference's answer part may go on
        after it, as ``<|im_end|>\n`` does in ChatML; generation stops there), pad left out."""
        eos, pad = self.model.cfg.eos_id, self.model.cfg.pad_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        ids = [i for i in ids if i != pad]
        return self.decode(ids) if self.decode is not None else ids

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Loss and greedy-decoding errors on one batch."""
        loss, count = self.model.loss(batch)
        self._val["loss"] += float(loss) * float(count)
        self._val["tokens"] += float(count)
        if self.tokens_to_generate > 0:
            hyps = self.model.generate(batch, self.tokens_to_generate)
            answers, lengths = batch["answers"], batch["answer_lengths"].tolist()
            edits, chars = error_sums(
                (self._text(hyp), self._text(answers[i, : lengths[i]].tolist())) for i, hyp in enumerate(hyps)
            )
            self._val["errors"] += edits
            self._val["chars"] += chars

    def on_validation_epoch_end(self) -> None:
        """Log ``val_loss`` and ``val_cer`` (sums reduced over ranks first)."""
        sums = {k: self._sum_over_ranks(v) for k, v in self._val.items()}
        if sums.get("tokens", 0.0) > 0:
            self.log("val_loss", sums["loss"] / sums["tokens"], prog_bar=True, batch_size=1)
        if sums.get("chars", 0.0) > 0:
            self.log("val_cer", sums["errors"] / sums["chars"], prog_bar=True, batch_size=1)

    def configure_optimizers(self) -> Any:
        """Optimiser from ``optim``; the ``optim.sched`` schedule steps every optimiser step."""
        cfg = dict(self.optim_cfg)
        sched_cfg = cfg.pop("sched", None)
        trainer = self._trainer
        clipping = trainer is not None and bool(trainer.gradient_clip_val)
        mixed = trainer is not None and "mixed" in str(trainer.precision)
        optimizer = build_optimizer(self.model.parameters(), cfg, allow_fused=not (clipping and mixed))
        scheduler = build_scheduler(optimizer, sched_cfg, self.max_steps)
        if scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep ``consumed_samples`` in the checkpoint."""
        checkpoint["consumed_samples"] = self.consumed_samples

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore ``consumed_samples``."""
        self.consumed_samples = int(checkpoint.get("consumed_samples", 0))
