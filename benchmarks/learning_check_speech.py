"""Learning check on speech conversations (issue #14): espeak-ng speech -> ChatML -> trainer.

The corpus is real synthetic speech: :func:`speechdata.testing.make_corpus` with
``speech="espeak"`` (random sentences of :data:`speechdata.testing.WORDS`, eight espeak-ng
voices). Every clip becomes a NeMo multimodal conversation (user: an instruction and the audio,
assistant: the transcript). A byte-level BPE ``tokenizer.json`` is trained on the training
conversations with ``speechdata tokenizer train --kind hf --prompt-format qwen`` (ChatML tokens,
``<|im_end|>`` as EOS), and text-only conversations (user: "Repeat after me: <sentence>",
assistant: the sentence) are mixed in with NeMo 2.x ``input_cfg`` weights (0.9 speech, 0.1 text).

The held-out set is a second corpus (another seed) without any sentence that occurs in the
training set or in the text-only data, so its CER measures sentences the model never saw. The
control trains the same model with the same budget on the same audio with the answers shuffled
against it (seeded permutation; the text-only data unchanged): its CER must stay high.

Budgets are CPU seconds of the training process (``time.process_time``: one torch thread, the
data loaded in the same process with ``num_workers=0``, so the figure counts everything the run
costs), stopped by a callback after the first step past the budget. Runs go two at a time
(``--parallel 2``) on a machine that may be shared, so wall time is also reported.

Usage::

    python benchmarks/learning_check_speech.py --config configs/salm_speech.yaml --out results.json

writes the JSON and, beside it, the same table with a few held-out transcripts as Markdown (``.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # the sibling module (also when this file is loaded by path)
    sys.path.insert(0, str(HERE))

from learning_runs import run_jobs, run_overrides  # noqa: E402

#: The audio locator (one token of the tokenizer, as the bundled configs use).
LOCATOR = "|audio|"
#: The instruction of the text-only conversations.
REPEAT = "Repeat after me: {0}"


def conversation(entry: dict[str, Any], answer: str) -> dict[str, Any]:
    """A NeMo multimodal conversation from a single-audio ``make_corpus`` line (its ``context`` is
    the instruction, the audio follows it) with ``answer`` as the assistant's message."""
    return {
        "id": Path(str(entry["audio_filepath"])).stem,
        "conversations": [
            {"from": "User", "type": "text", "value": entry["context"]},
            {
                "from": "User",
                "type": "audio",
                "value": entry["audio_filepath"],
                "duration": entry["duration"],
                "offset": entry["offset"],
            },
            {"from": "Assistant", "type": "text", "value": answer},
        ],
    }


def text_conversation(sentence: str) -> dict[str, Any]:
    """A text-only conversation (no audio turn): repeat ``sentence``."""
    return {
        "conversations": [
            {"from": "User", "type": "text", "value": REPEAT.format(sentence)},
            {"from": "Assistant", "type": "text", "value": sentence},
        ]
    }


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def build_corpus(
    work: Path,
    n_train: int,
    n_val: int,
    seed: int,
    *,
    n_text: int | None = None,
    min_duration: float = 1.0,
    max_duration: float = 3.0,
    vocab_size: int = 1024,
) -> dict[str, Any]:
    """Write the training, shuffled-control, text-only and held-out conversation manifests and the
    tokenizer under ``work``; returns their paths and the corpus figures.

    ``n_val`` clips are synthesised for the held-out set; those whose sentence occurs in the
    training set or in the text-only data are dropped (the count is returned). ``n_text``
    text-only sentences (default ``n_train // 9``: a tenth of the examples, matching the 0.1
    weight) are drawn from the seed with the training answers' length distribution.
    """
    from speechdata.cli import main as cli
    from speechdata.synth.words import make_text
    from speechdata.testing import make_corpus

    common = {
        "speech": "espeak",
        "formats": ("wav",),
        "sample_rates": (16000,),
        "stereo_fraction": 0.0,
        "multi_audio_fraction": 0.0,
        "shared_source_fraction": 0.0,
        "min_duration": min_duration,
        "max_duration": max_duration,
        "locator": None,
    }
    train = make_corpus(work / "train", n=n_train, seed=seed, **common)
    val = make_corpus(work / "val", n=n_val, seed=seed + 7919, **common)
    answers = [str(e["answer"]) for e in train.entries]
    rng = np.random.default_rng([seed, 0xC1])
    perm = rng.permutation(len(answers))
    n_text = n_train // 9 if n_text is None else n_text
    lengths = rng.choice([len(a) for a in answers], size=n_text)
    val_answers = {str(e["answer"]) for e in val.entries}
    seen = set(answers)
    texts: list[str] = []
    for n in lengths.tolist():
        s = make_text(rng, int(n))
        while s in val_answers:  # never a held-out sentence
            s = make_text(rng, int(n))
        texts.append(s)
    seen.update(texts)
    held_out = [e for e in val.entries if str(e["answer"]) not in seen]

    paths = {
        "train": _write_jsonl(
            train.root / "conversations.jsonl",
            [conversation(e, a) for e, a in zip(train.entries, answers, strict=True)],
        ),
        "shuffled": _write_jsonl(
            train.root / "conversations_shuffled.jsonl",
            [conversation(e, answers[int(j)]) for e, j in zip(train.entries, perm, strict=True)],
        ),
        "text": _write_jsonl(work / "text_only.jsonl", [text_conversation(s) for s in texts]),
        "val": _write_jsonl(
            val.root / "conversations.jsonl", [conversation(e, e["answer"]) for e in held_out]
        ),
    }
    tok = work / "tok"
    cli(
        [
            "tokenizer",
            "train",
            str(paths["train"]),
            str(paths["text"]),
            "--kind",
            "hf",
            "--prompt-format",
            "qwen",
            "--audio-locator",
            LOCATOR,
            "--vocab-size",
            str(vocab_size),
            "--out",
            str(tok),
        ]
    )
    return {
        **{k: str(v) for k, v in paths.items()},
        "tokenizer": str(tok),
        "train_hours": round(train.hours, 3),
        "train_examples": len(train.entries),
        "text_examples": len(texts),
        "val_synthesised": len(val.entries),
        "val_held_out": len(held_out),
        "val_dropped_as_seen": len(val.entries) - len(held_out),
        "distinct_train_sentences": len(set(answers)),
    }


def _cpu_budget_callback(seconds: float) -> Any:
    """A Lightning callback that stops training after the first step past ``seconds`` of this
    process's CPU time (counted from the start of training)."""
    import lightning.pytorch as pl

    class CpuBudget(pl.Callback):
        def __init__(self) -> None:
            self.start = 0.0
            self.used = 0.0

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.start = time.process_time()

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            self.used = time.process_time() - self.start
            if self.used >= seconds:
                trainer.should_stop = True

    return CpuBudget()


def transcript_cer(result: Any, tokens: int, n_samples: int = 5) -> tuple[float, list[dict[str, str]]]:
    """CER of greedy transcripts of the whole held-out set against the transcripts, and the first
    ``n_samples`` pairs.

    The trainer's ``val_cer`` compares with the batch's ``answers``: with ``qwen`` they end with
    ``<|im_end|>\n``; EOS is removed, but the newline the format writes after it stays in the
    reference, one deletion per example that generation (stopping at EOS) can never produce. Here
    the reference is the transcript itself (that newline removed); edits are summed by
    :func:`speechdata.train.module.error_sums` as for ``val_cer``.
    """
    import torch

    from speechdata.train.module import error_sums

    module = result.module.eval()
    pairs: list[tuple[str, str]] = []
    with torch.no_grad():
        for batch in result.trainer.val_dataloaders:
            hyps = module.model.generate(batch, tokens)
            lengths = batch["answer_lengths"].tolist()
            for i, hyp in enumerate(hyps):
                ref = str(module._text(batch["answers"][i, : lengths[i]].tolist()))
                pairs.append((str(module._text(hyp)), ref.removesuffix("\n")))
    edits, chars = error_sums(pairs)
    return edits / max(chars, 1), [{"reference": r, "hypothesis": h} for h, r in pairs[:n_samples]]


def one_run(job: dict[str, Any]) -> dict[str, Any]:
    """Train one model for the CPU budget and evaluate it (runs in its own process)."""
    import torch

    torch.set_num_threads(1)
    from speechdata.config import load_config
    from speechdata.train.run import train

    input_cfg = [
        {
            "type": "multimodal_conversation",
            "manifest_filepath": job["manifest"],
            "weight": 1 - job["text_weight"],
        },
        {"type": "multimodal_conversation", "manifest_filepath": job["text"], "weight": job["text_weight"]},
    ]
    cfg_path = Path(job["exp_dir"]) / "input_cfg.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(input_cfg) + "\n")  # JSON is YAML
    overrides = [
        *run_overrides(job),
        f"trainer.max_time='00:{int(job['max_wall_minutes']) // 60:02d}:{int(job['max_wall_minutes']) % 60:02d}:00'",
        "exp_manager.create_tensorboard_logger=False",
        "model.train_ds.manifest_filepath=null",
        f"model.train_ds.input_cfg={cfg_path}",
        "model.train_ds.prompt_template=null",
        "model.train_ds.prompt_format=qwen",
        f"model.train_ds.max_duration={job['max_duration']}",
        "model.train_ds.num_workers=0",
        f"model.validation_ds.manifest_filepath={job['val']}",
        "model.validation_ds.prompt_format=qwen",
        f"model.validation_ds.max_duration={job['max_duration']}",
        f"optim.sched.max_steps={job['decay_steps']}",
        *([f"optim.lr={job['lr']}"] if job["lr"] is not None else []),
        *job.get("overrides", []),
    ]
    config = job.get("config") or ROOT / "configs" / f"{job['arch']}_tiny.yaml"
    cfg = load_config(config, overrides)
    budget = _cpu_budget_callback(job["cpu_minutes"] * 60)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train(cfg, callbacks=[budget])
    train_cpu, wall = budget.used, time.perf_counter() - wall0
    setup_cpu = time.process_time() - cpu0 - train_cpu
    val = result.trainer.validate(result.module, dataloaders=result.trainer.val_dataloaders, verbose=False)
    metrics = val[0] if val else {}
    cer, samples = transcript_cer(result, int(cfg.model.validation_ds.tokens_to_generate))
    return {
        "arch": job["arch"],
        "control": job["control"],
        "steps": result.global_step,
        "train_cpu_seconds": round(train_cpu, 1),
        "setup_cpu_seconds": round(setup_cpu, 1),
        "wall_seconds": round(wall, 1),
        "train_loss": float(result.metrics.get("reduced_train_loss", float("nan"))),
        "cer": cer,
        "val_cer": float(metrics.get("val_cer", float("nan"))),
        "val_loss": float(metrics.get("val_loss", float("nan"))),
        "samples": samples,
    }


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    """The results table, the command's settings and a few held-out transcripts as Markdown."""
    flags = []
    for key, value in payload["settings"].items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not None and value is not False and value != []:
            flags.append(f"{flag} {' '.join(value) if isinstance(value, list) else value}")
    command = "python benchmarks/learning_check_speech.py " + " ".join(flags)
    out = ["# Learning check on speech conversations", "", f"`{command}`", "", *payload["table"]]
    for r in payload["runs"]:
        kind = "control" if r["control"] else "matched"
        out += [
            "",
            f"Held-out transcripts, {r['arch']} {kind} (reference / greedy hypothesis, JSON strings):",
            "",
        ]
        out += [f"- `{json.dumps(s['reference'])}` / `{json.dumps(s['hypothesis'])}`" for s in r["samples"]]
    path.write_text("\n".join(out) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the check and print a table (and write JSON with ``--out``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-minutes", type=float, default=20.0, help="CPU budget per training run")
    p.add_argument(
        "--max-wall-minutes",
        type=int,
        default=600,
        help="also stop at this wall-clock time (a shared machine): the CPU minutes used are reported",
    )
    p.add_argument("--arch", default="salm")
    p.add_argument(
        "--config",
        help="the model/trainer config (one --arch); default configs/<arch>_tiny.yaml",
    )
    p.add_argument("--train", type=int, default=2400, help="training clips")
    p.add_argument("--val", type=int, default=200, help="held-out clips synthesised (seen sentences dropped)")
    p.add_argument("--text-weight", type=float, default=0.1, help="input_cfg weight of the text-only data")
    p.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size (upper bound)")
    p.add_argument("--min-duration", type=float, default=1.0, help="shortest clip, seconds")
    p.add_argument("--max-duration", type=float, default=3.0, help="longest clip, seconds")
    p.add_argument("--parallel", type=int, default=2, help="runs at once (one torch thread each)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the config's optim.lr)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument(
        "--decay-steps", type=int, default=8000, help="cosine decay to min_lr over this many steps"
    )
    p.add_argument("--no-control", action="store_true", help="skip the shuffled-answer control")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/speechdata_learning_speech")
    p.add_argument("--out")
    args = p.parse_args(argv)
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    if args.config and len(archs) != 1:
        p.error("--config takes one --arch")
    work = Path(args.work)
    t = time.process_time()
    data = build_corpus(
        work,
        args.train,
        args.val,
        args.seed,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        vocab_size=args.vocab_size,
    )
    data["build_cpu_seconds"] = round(time.process_time() - t, 1)
    jobs = [
        {
            "arch": arch,
            "control": control,
            "manifest": data["shuffled" if control else "train"],
            "text": data["text"],
            "val": data["val"],
            "tokenizer": data["tokenizer"],
            "exp_dir": str(work / "exp" / f"{arch}_{'control' if control else 'real'}"),
            "cpu_minutes": args.cpu_minutes,
            "max_wall_minutes": args.max_wall_minutes,
            "text_weight": args.text_weight,
            "max_duration": args.max_duration,
            "seed": args.seed,
            "lr": args.lr,
            "warmup": args.warmup,
            "decay_steps": args.decay_steps,
            "overrides": list(args.set),
            "config": args.config,
        }
        for arch in archs
        for control in ((False,) if args.no_control else (False, True))
    ]
    results = run_jobs(one_run, jobs, args.parallel)
    lines = [
        f"Learning check on speech: {data['train_examples']} espeak-ng conversations "
        f"({data['train_hours']} h, {args.min_duration:g}-{args.max_duration:g} s) + "
        f"{data['text_examples']} text-only (weight {args.text_weight:g}), "
        f"{data['val_held_out']} held-out unseen sentences, {args.cpu_minutes:g} CPU minutes per run",
        "",
        "| model | answers | steps | train CPU min | wall min | held-out CER | val_cer | held-out loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        kind = "shuffled (control)" if r["control"] else "matched"
        lines.append(
            f"| {r['arch']} | {kind} | {r['steps']} | {r['train_cpu_seconds'] / 60:.1f} | "
            f"{r['wall_seconds'] / 60:.1f} | {r['cer']:.3f} | {r['val_cer']:.3f} | {r['val_loss']:.3f} |"
        )
    lines += [
        "",
        "held-out CER: greedy transcripts against the transcripts; val_cer: the trainer's metric "
        "(its references keep the newline after <|im_end|>).",
        "Targets: matched CER <= 0.20 within 20 CPU minutes, control CER >= 0.80.",
    ]
    print("\n".join(lines))
    if args.out:
        payload = {"settings": vars(args), "data": data, "runs": results, "table": lines}
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
        write_markdown(payload, Path(args.out).with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
