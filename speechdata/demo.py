"""``speechdata demo``: the whole chain on a built-in synthetic corpus, in a few minutes on a CPU.

1. a corpus of tone-alphabet speech whose answers can be read back from the audio
   (:func:`speechdata.testing.make_corpus`), plus a held-out validation set;
2. a SentencePiece tokenizer trained on its text (``speechdata tokenizer train``);
3. NeMo-compatible tar shards (``speechdata shard``), checked (``speechdata validate``);
4. dataset statistics (``speechdata inspect``);
5. the loader benchmarked against the decode floor and its peers (``speechdata bench --compare``);
6. a short training of the tiny SALM and BESTOW models on the shards (``speechdata train``).

Every step runs the same public code a user runs, and the commands are printed so that each
step can be repeated by hand.
"""

from __future__ import annotations

import argparse
import shlex
import time
from importlib import resources
from pathlib import Path

from speechdata.errors import SpeechDataError

HELP = "run the whole chain on a built-in synthetic corpus"
_TOKENIZER_FLAGS = ("--audio-locator", "|audio|", "--no-byte-fallback")


def config_path(name: str) -> Path:
    """A bundled config (``configs/NAME.yaml``): from the checkout, else from the installed package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs" / f"{name}.yaml", here / "configs" / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    packaged = resources.files("speechdata").joinpath(f"configs/{name}.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    raise SpeechDataError(f"bundled config {name}.yaml not found")


def _step(title: str, argv: list[str]) -> None:
    from speechdata.cli import main

    print(f"\n== {title}\n$ speechdata {shlex.join(argv)}", flush=True)
    t = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise SpeechDataError(f"demo step failed ({title}): speechdata {shlex.join(argv)} exited with {code}")
    print(f"-- {title}: {time.perf_counter() - t:.1f} s", flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``speechdata demo``."""
    p.add_argument("--out", default="demo_out", help="working folder (default: ./demo_out)")
    p.add_argument("--examples", type=int, default=400, help="training examples to synthesise (default 400)")
    p.add_argument("--steps", type=int, default=150, help="training steps per model (default 150)")
    p.add_argument("--models", default="salm,bestow", help="which models to train (default: salm,bestow)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus and the training")
    p.add_argument("--no-train", action="store_true", help="stop after the benchmark")


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata demo``."""
    from speechdata.testing import make_corpus

    start = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"== synthetic corpus -> {out}", flush=True)
    common = {
        "min_duration": 0.5,
        "max_duration": 6.0,
        "seconds_per_char": 0.06,
        "multi_audio_fraction": 0.05,
    }
    train = make_corpus(out / "train", n=args.examples, seed=args.seed, **common)
    val = make_corpus(out / "val", n=max(16, args.examples // 10), seed=args.seed + 1000, **common)
    print(
        f"   train: {len(train.entries)} examples, {train.hours:.2f} h; validation: {len(val.entries)} examples"
    )

    tok = out / "tokenizer"
    _step(
        "tokenizer",
        [
            "tokenizer",
            "train",
            str(train.manifest),
            "--out",
            str(tok),
            "--vocab-size",
            "200",
            *_TOKENIZER_FLAGS,
        ],
    )
    shards = out / "shards"
    _step(
        "shard", ["shard", str(train.manifest), "--out", str(shards), "--num-shards", "4", "--workers", "2"]
    )
    _step("validate", ["validate", str(shards)])
    _step("inspect", ["inspect", str(shards), "--num-buckets", "4", "--bins", "8"])
    _step(
        "bench",
        [
            *("bench", str(train.manifest), "audio_locator=|audio|"),
            *("--tokenizer", str(tok / "tokenizer.model"), "--compare"),
            *("--batch-duration", "120", "--workers", "1", "--md", str(out / "bench.md")),
            *("--json", str(out / "bench.json")),
        ],
    )
    if not args.no_train:
        tars = str(shards / f"audio__OP_0..{_count_tars(shards) - 1}_CL_.tar")
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            _step(
                f"train {model}",
                [
                    "train",
                    str(config_path(f"{model}_tiny")),
                    f"trainer.max_steps={args.steps}",
                    f"exp_manager.exp_dir={out / 'experiments'}",
                    f"model.seed={args.seed}",
                    f"model.tokenizer.model={tok / 'tokenizer.model'}",
                    f"model.train_ds.manifest_filepath={shards / 'tarred_audio_manifest.json'}",
                    "model.train_ds.is_tarred=true",
                    f"model.train_ds.tarred_audio_filepaths={tars}",
                    f"model.validation_ds.manifest_filepath={val.manifest}",
                ],
            )
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; everything is in {out}")
    return 0


def _count_tars(folder: Path) -> int:
    n = len(list(folder.glob("audio_*.tar")))
    if n == 0:
        raise SpeechDataError(f"{folder}: no audio_*.tar shards")
    return n
