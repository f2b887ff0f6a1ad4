"""GPU check of the collator (issue #6): CUDA batches equal CPU batches; device finalisation timed.

Builds a synthetic corpus (FLAC/WAV, several rates, multi-audio), trains a small tokenizer, then
runs two epochs through two loaders of the same config and seed (2 workers, pinned memory), one
padding on the CPU and one on CUDA, keeps every batch, and compares every tensor of every batch: exact for ids, lengths, masks and audio; within
float tolerance for log-mel features. Then it times :func:`speechdata.collate.finalize` on both
devices for a ~600 s batch (median of repeated runs, CUDA synchronised), and writes a JSON report.

Usage (on a machine with CUDA)::

    python benchmarks/gpu_check.py --out results/gpu_check.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from speechdata import build_dataloader
from speechdata.collate import finalize
from speechdata.config import DatasetConfig, make_dataset_config
from speechdata.testing import make_corpus
from speechdata.text.tokenizer import train_tokenizer


def _compare(cpu: dict, gpu: dict, device: str) -> dict[str, float]:
    worst: dict[str, float] = {}
    for key, want in cpu.items():
        if not isinstance(want, torch.Tensor):
            assert gpu[key] == want, key
            continue
        got = gpu[key]
        assert got.device.type == device, f"{key} is on {got.device}"
        got = got.cpu()
        assert got.dtype == want.dtype and got.shape == want.shape, key
        if key == "audio_features":
            # Per-feature normalisation divides by each mel bin's std over the clip; on bins that
            # are nearly constant (silence, pure tones) float noise of the FFT is amplified, so
            # normalised features are summarised here and the log-mel itself is checked tightly
            # in _check_logmel.
            d = (got - want).abs()
            diff = d.max().item() if want.numel() else 0.0
            FEATURE_DIFFS.append(d.flatten())
        else:
            diff = float((got != want).sum().item())
            assert diff == 0, f"{key}: {int(diff)} elements differ"
        worst[key] = max(worst.get(key, 0.0), diff)
    return worst


FEATURE_DIFFS: list[torch.Tensor] = []


def _check_logmel(batch: dict, device: str) -> float:
    """Un-normalised log-mel of one batch on ``device`` vs the CPU: the max absolute difference."""
    from speechdata.config import FeatureConfig
    from speechdata.features import log_mel

    cfg = FeatureConfig(normalize="none")
    audio, lengths = batch["audio_signal"].cpu(), batch["audio_signal_length"].cpu()
    want, _ = log_mel(audio, lengths, 16000, cfg)
    got, _ = log_mel(audio.to(device), lengths.to(device), 16000, cfg)
    diff = (got.cpu() - want).abs().max().item()
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-3)  # log of near-zero power
    return diff


def _time(fn, repeats: int, cuda: bool) -> float:
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def finalize_timings(cfg: DatasetConfig, tokenizer: Any, device: str, repeats: int) -> dict[str, float]:
    """Median milliseconds of :func:`speechdata.collate.finalize` on the CPU and on ``device`` for
    the biggest batch (by audio seconds) of ``cfg``'s epoch-0 plan in one bucket: padding alone
    (``pad_*_ms``) and padding with log-mel features (``pad+logmel_*_ms``; ``cfg.features``, else
    the defaults), the device's source batch pinned on CUDA; with the batch's audio seconds
    (``timed_batch_audio_seconds``) and examples (``timed_batch_examples``)."""
    from speechdata.config import FeatureConfig
    from speechdata.text.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    features = cfg.features or FeatureConfig()
    big = dataclasses.replace(cfg, num_buckets=1, features=None, num_workers=0)
    loader = build_dataloader(big, tok, device="cpu")
    plan = loader.sampler.plan(0)
    biggest = max(range(len(plan)), key=lambda k: float(loader.index.duration[plan.batch(k)].sum()))
    packed = loader.dataset.__getitems__(plan.batch(biggest).tolist())
    pinned = packed.pin_memory() if device.startswith("cuda") else packed
    timings = {
        "timed_batch_audio_seconds": float(packed.audio_lengths.sum()) / cfg.sample_rate,
        "timed_batch_examples": len(packed),
    }
    for label, feats in (("pad", None), ("pad+logmel", features)):
        for tag, dev, src in (("cpu", "cpu", packed), ("dev", device, pinned)):

            def run(dev: str = dev, src: Any = src, feats: Any = feats) -> None:
                finalize(src, device=dev, pad_id=tok.pad_id, features=feats, sample_rate=cfg.sample_rate)

            run()
            timings[f"{label}_{tag}_ms"] = 1000 * _time(run, repeats, dev.startswith("cuda"))
    return timings


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit code 0 when every batch matched."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--n", type=int, default=160, help="examples in the corpus")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--device", default="cuda", help="the device to check against the CPU ('cpu' = dry run)")
    args = p.parse_args(argv)
    dev_b = args.device
    if dev_b == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    torch.set_num_threads(4)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    corpus = make_corpus(work, n=args.n, seed=5, max_duration=20.0)
    texts = [e["answer"] for e in corpus.entries] + [e["context"] for e in corpus.entries]
    tok = train_tokenizer(texts, work / "tok", vocab_size=200, user_symbols=["|audio|"], byte_fallback=False)
    base = {
        "manifest_filepath": str(corpus.manifest),
        "audio_locator": "|audio|",
        "prompt_template": "Q: {context}\nA: {answer}",
        "batch_duration": 120.0,
        "min_duration": None,
        "max_duration": None,
        "add_bos": True,
        "num_workers": 2,
        "features": {"n_mels": 80},
        "seed": 3,
    }
    cfg = make_dataset_config(base)
    cpu_loader = build_dataloader(cfg, tok, device="cpu")
    cpu_batches = list(cpu_loader) + list(cpu_loader)
    # two epochs kept whole on the device: the workers reuse their pooled audio buffers (released
    # by the pin-memory thread once pinned), which must not change a batch already handed out
    gpu_loader = build_dataloader(cfg, tok, device=dev_b)
    gpu_batches = list(gpu_loader) + list(gpu_loader)
    worst: dict[str, float] = {}
    n_batches = 0
    for cpu_b, gpu_b in zip(cpu_batches, gpu_batches, strict=True):
        for k, v in _compare(cpu_b, gpu_b, dev_b).items():
            worst[k] = max(worst.get(k, 0.0), v)
        n_batches += 1

    logmel_diff = max(_check_logmel(b, dev_b) for b in cpu_batches[:8])
    fd = torch.cat(FEATURE_DIFFS) if FEATURE_DIFFS else torch.zeros(1)
    feature_stats = {
        "logmel_unnormalised_max_abs_diff": logmel_diff,
        "normalised_max_abs_diff": fd.max().item(),
        "normalised_mean_abs_diff": fd.mean().item(),
        "normalised_p99_99_abs_diff": torch.quantile(fd[:: max(1, fd.numel() // 1_000_000)], 0.9999).item(),
        "normalised_fraction_over_1e-3": (fd > 1e-3).float().mean().item(),
    }

    # Time device finalisation of one ~600 s packed batch (features on and off).
    big = make_dataset_config({**base, "batch_duration": 600.0})
    timings = finalize_timings(big, tok, dev_b, args.repeats)
    report = {
        "device": torch.cuda.get_device_name(0) if dev_b == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batches_compared": n_batches,
        "examples": len(corpus.entries),
        "max_abs_diff": worst,
        "features": feature_stats,
        **{k: round(v, 3) for k, v in timings.items()},
        "speedup_pad": round(timings["pad_cpu_ms"] / timings["pad_dev_ms"], 2),
        "speedup_pad_logmel": round(timings["pad+logmel_cpu_ms"] / timings["pad+logmel_dev_ms"], 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
