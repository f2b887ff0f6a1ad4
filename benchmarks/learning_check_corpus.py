"""Learning check through the whole pipeline (issue #7): corpus -> tokenizer -> loader -> trainer.

A tone-alphabet corpus (:func:`speechdata.testing.make_corpus`: every character of the answer is a
tone, so the answer can be read back from the audio) is written once; SALM and BESTOW
(``configs/*_tiny.yaml``) are trained on it with ``speechdata.train.run.train`` for a wall-clock
budget each, on the CPU, and the held-out character error rate is measured by greedy decoding at
the end. The control trains the same model with the same budget on the same audio with the
answers shuffled against it (seeded permutation), so nothing but the answer prior can be learned:
its CER must stay high, the real run's must fall.

The corpus: 0.5-2.5 s clips at ``--seconds-per-char 0.25`` (with a 10 ms hop and 8x encoder
subsampling, three encoder frames per character), so every answer is one word of 2-9 characters
from :data:`speechdata.testing.WORDS`. At the make_corpus default of 0.08 s (one encoder frame per
character, answers of up to 30 characters) the tiny models did not learn the alignment in 15
CPU minutes (held-out CER 0.77-0.79; ``--seconds-per-char 0.08 --decay-steps 0`` is that
setting). The learning rate decays (cosine) to the config's ``min_lr`` over ``--decay-steps``
steps and stays there until the time budget ends.

Runs can go two at a time (``--parallel 2``), one torch thread each: CPU minutes = wall minutes.

Usage::

    python benchmarks/learning_check_corpus.py --minutes 12 --out benchmarks/results/learning_corpus_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from speechdata.testing import make_corpus, write_manifest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # the sibling module (also when this file is loaded by path)
    sys.path.insert(0, str(HERE))

from learning_runs import run_jobs, run_overrides  # noqa: E402


def build_corpus(
    work: Path,
    n_train: int,
    n_val: int,
    seed: int,
    seconds_per_char: float = 0.25,
    min_duration: float = 0.5,
    max_duration: float = 2.5,
) -> dict[str, str]:
    """Train / validation / shuffled-train manifests and a tokenizer, under ``work``."""
    from speechdata.text.tokenizer import train_tokenizer

    common = {
        "formats": ("flac",),
        "sample_rates": (16000,),
        "stereo_fraction": 0.0,
        "multi_audio_fraction": 0.0,
        "min_duration": min_duration,
        "max_duration": max_duration,
        "seconds_per_char": seconds_per_char,
    }
    train = make_corpus(work / "train", n=n_train, seed=seed, **common)
    val = make_corpus(work / "val", n=n_val, seed=seed + 7919, **common)
    rng = np.random.default_rng([seed, 0xC0])
    perm = rng.permutation(len(train.entries))
    shuffled = [
        dict(e, answer=train.entries[int(j)]["answer"]) for e, j in zip(train.entries, perm, strict=True)
    ]
    for e in shuffled:
        e["audio_filepath"] = str(train.root / e["audio_filepath"])
    shuffled_path = write_manifest(work / "train_shuffled.jsonl", shuffled)
    texts = [e["answer"] for e in train.entries] + [e["context"] for e in train.entries]
    train_tokenizer(texts, work / "tok", vocab_size=40, user_symbols=["|audio|"], byte_fallback=False)
    return {
        "train": str(train.manifest),
        "shuffled": str(shuffled_path),
        "val": str(val.manifest),
        "tokenizer": str(work / "tok" / "tokenizer.model"),
        "train_hours": f"{train.hours:.3f}",
    }


def one_run(job: dict[str, Any]) -> dict[str, Any]:
    """Train one model for the budget and evaluate it (runs in its own process)."""
    import torch

    torch.set_num_threads(job["threads"])
    from speechdata.config import load_config
    from speechdata.train.run import train

    minutes = job["minutes"]
    overrides = [
        *run_overrides(job),
        f"trainer.max_time='00:00:{int(minutes):02d}:{round((minutes % 1) * 60):02d}'",
        f"model.train_ds.manifest_filepath={job['manifest']}",
        f"model.validation_ds.manifest_filepath={job['val']}",
        "model.train_ds.num_workers=1",
        f"optim.lr={job['lr']}",
        *job.get("overrides", []),
    ]
    cfg = load_config(ROOT / "configs" / f"{job['arch']}_tiny.yaml", overrides)
    t = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - t
    val = result.trainer.validate(result.module, dataloaders=result.trainer.val_dataloaders, verbose=False)
    metrics = val[0] if val else {}
    return {
        "arch": job["arch"],
        "control": job["control"],
        "steps": result.global_step,
        "train_seconds": round(seconds, 1),
        "val_cer": float(metrics.get("val_cer", float("nan"))),
        "val_loss": float(metrics.get("val_loss", float("nan"))),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the check and print a table (and write JSON with ``--out``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock training budget per run")
    p.add_argument("--arch", default="salm,bestow")
    p.add_argument("--train", type=int, default=2000, help="training examples")
    p.add_argument("--val", type=int, default=100, help="held-out examples")
    p.add_argument("--parallel", type=int, default=2, help="runs at once (one torch thread each)")
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument(
        "--decay-steps",
        type=int,
        default=5000,
        help="cosine decay from --lr to the config's min_lr over this many steps, then min_lr "
        "(0: over trainer.max_steps, i.e. a constant LR for a time-limited run)",
    )
    p.add_argument(
        "--seconds-per-char",
        type=float,
        default=0.25,
        help="tone length per character (0.25 s: three encoder frames per character)",
    )
    p.add_argument("--min-duration", type=float, default=0.5, help="shortest clip, seconds")
    p.add_argument("--max-duration", type=float, default=2.5, help="longest clip, seconds")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/speechdata_learning_check")
    p.add_argument("--out")
    args = p.parse_args(argv)
    work = Path(args.work)
    data = build_corpus(
        work,
        args.train,
        args.val,
        args.seed,
        seconds_per_char=args.seconds_per_char,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
    )
    overrides = [f"optim.sched.max_steps={args.decay_steps}"] if args.decay_steps > 0 else []
    jobs = [
        {
            "arch": arch,
            "control": control,
            "manifest": data["shuffled" if control else "train"],
            "val": data["val"],
            "tokenizer": data["tokenizer"],
            "exp_dir": str(work / "exp" / f"{arch}_{'control' if control else 'real'}"),
            "minutes": args.minutes,
            "threads": max(1, 2 // args.parallel),
            "seed": args.seed,
            "lr": args.lr,
            "warmup": args.warmup,
            "overrides": [*overrides, *args.set],
        }
        for arch in [a.strip() for a in args.arch.split(",") if a.strip()]
        for control in (False, True)
    ]
    results = run_jobs(one_run, jobs, args.parallel)
    lines = [
        f"Learning check: {args.train} tone-alphabet examples ({data['train_hours']} h, "
        f"{args.seconds_per_char:g} s per character), {args.val} held out, "
        f"{args.minutes:g} CPU minutes per run",
        "",
        "| model | answers | steps | held-out CER | held-out loss |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        kind = "shuffled (control)" if r["control"] else "matched"
        lines.append(f"| {r['arch']} | {kind} | {r['steps']} | {r['val_cer']:.3f} | {r['val_loss']:.3f} |")
    lines.append("")
    lines.append("Targets: matched CER <= 0.10, control CER >= 0.80.")
    print("\n".join(lines))
    if args.out:
        payload = {"settings": vars(args), "data": data, "runs": results, "table": lines}
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
