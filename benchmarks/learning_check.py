"""Learning check for the bundled tiny SALM / BESTOW models: do they *listen*?

The task (:mod:`speechdata.train.synthetic`): each example's answer spells the pitch classes of its
one or two audios (tones), so the answer can be predicted only from the audio. Each model is
trained twice in the same run, with the same seed, steps and batches (a fresh batch every step):

* ``audio``: the real batches;
* ``deaf`` (the baseline): the same batches with the audio replaced by silence, so the model can
  learn only the answer prior.

Printed per model: held-out answer loss and greedy-decoding token error rate for both, and the
ratios ``audio / deaf`` (well below 1 means the model uses the audio). Ratios, not absolute
numbers, are the result; the JSON written with ``--out`` records the settings.

Usage::

    python benchmarks/learning_check.py                      # CPU, both models
    python benchmarks/learning_check.py --device cuda --precision bf16 --out results/learning_check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from typing import Any

import torch

from speechdata.config import FeatureConfig
from speechdata.train.models import ModelConfig, build_model
from speechdata.train.models.config import AdapterConfig, EncoderConfig, LLMConfig, XAttnConfig
from speechdata.train.module import error_sums
from speechdata.train.optim import CosineAnnealing, build_optimizer
from speechdata.train.synthetic import SyntheticSpec, synthetic_batch

SYNTH = SyntheticSpec(vocab_size=32, num_classes=6, max_audios=2, min_seconds=0.2, max_seconds=0.5)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _silence(batch: dict[str, Any]) -> dict[str, Any]:
    return dict(batch, audio_signal=torch.zeros_like(batch["audio_signal"]))


def _model(arch: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=SYNTH.vocab_size,
        pad_id=SYNTH.pad_id,
        eos_id=SYNTH.eos_id,
        bos_id=SYNTH.bos_id,
        arch=arch,
        features=FeatureConfig(n_mels=40),
        encoder=EncoderConfig(
            d_model=64, num_layers=2, num_heads=4, ffn_dim=128, subsampling_channels=16, dropout=0.0
        ),
        adapter=AdapterConfig(hidden_size=64),
        llm=LLMConfig(hidden_size=64, num_layers=2, num_attention_heads=4, ffn_hidden_size=128),
        xattn=XAttnConfig(num_layers=1, num_heads=4, ffn_dim=128),
    )
    return build_model(cfg)


def _evaluate(model: Any, batches: list[dict[str, Any]], autocast: Any) -> tuple[float, float]:
    model.eval()
    loss_sum, tokens, errors, ref_len = 0.0, 0.0, 0, 0
    with torch.no_grad(), autocast():
        for batch in batches:
            loss, count = model.loss(batch)
            loss_sum += float(loss) * float(count)
            tokens += float(count)
            hyps = model.generate(batch, max_new_tokens=8)
            lengths = batch["answer_lengths"].tolist()
            refs = [
                [t for t in batch["answers"][i, :n].tolist() if t != SYNTH.eos_id]
                for i, n in enumerate(lengths)
            ]
            e, n = error_sums(zip(hyps, refs, strict=True))
            errors += e
            ref_len += n
    return loss_sum / tokens, errors / max(ref_len, 1)


def run_one(arch: str, deaf: bool, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Train one model and return its held-out loss and token error rate."""
    model = _model(arch, args.seed).to(device)
    opt = build_optimizer(model.parameters(), {"name": "fused_adam", "lr": args.lr, "weight_decay": 0.01})
    sched = CosineAnnealing(opt, warmup_steps=args.steps // 10, max_steps=args.steps, min_lr=args.lr / 20)
    # a fresh batch every step (seeds 0..steps-1), held-out batches from seeds no step uses
    held_out = [
        synthetic_batch(SYNTH, args.batch_size, seed=10_000_000 + args.seed * 1000 + i) for i in range(8)
    ]
    if deaf:
        held_out = [_silence(b) for b in held_out]
    held_out = [_to(b, device) for b in held_out]
    use_bf16 = args.precision == "bf16"

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    start = time.perf_counter()
    model.train()
    for step in range(args.steps):
        batch = synthetic_batch(SYNTH, args.batch_size, seed=args.seed * 1_000_000 + step)
        batch = _to(_silence(batch) if deaf else batch, device)
        with autocast():
            loss, _ = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    loss, ter = _evaluate(model, held_out, autocast)
    return {"loss": loss, "token_error_rate": ter, "train_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    """Run the check and print ratios against the deaf baseline."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="salm,bestow", help="comma-separated: salm, bestow")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["32", "bf16"], default="32")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results: dict[str, Any] = {
        "command": " ".join([sys.executable, *sys.argv]),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "models": {},
    }
    print(
        f"{'model':8} {'loss audio':>10} {'loss deaf':>10} {'ratio':>7} {'TER audio':>10} {'TER deaf':>9} {'ratio':>7}"
    )
    for arch in args.arch.split(","):
        heard = run_one(arch, False, args, device)
        deaf = run_one(arch, True, args, device)
        loss_ratio = heard["loss"] / deaf["loss"]
        ter_ratio = heard["token_error_rate"] / max(deaf["token_error_rate"], 1e-9)
        results["models"][arch] = {
            "audio": heard,
            "deaf": deaf,
            "loss_ratio": loss_ratio,
            "ter_ratio": ter_ratio,
        }
        print(
            f"{arch:8} {heard['loss']:10.3f} {deaf['loss']:10.3f} {loss_ratio:7.3f} "
            f"{heard['token_error_rate']:10.3f} {deaf['token_error_rate']:9.3f} {ter_ratio:7.3f}"
        )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
