"""``speechdata demo``: the whole chain on a built-in synthetic corpus, in a few minutes on a CPU.

1. a corpus of tone-alphabet speech whose answers can be read back from the audio
   (:func:`speechdata.synth.make_corpus`), plus a held-out validation set;
2. a SentencePiece tokenizer trained on its text (``speechdata tokenizer train``);
3. NeMo-compatible tar shards (``speechdata shard``), checked (``speechdata validate``);
4. dataset statistics (``speechdata inspect``);
5. the loader benchmarked against the decode floor and its peers (``speechdata bench --compare``);
6. a short training of the tiny SALM and BESTOW models on the shards (``speechdata train``).

Every step runs the same public command a user runs (through :func:`speechdata.cli.main`), and the
commands are printed so that each step can be repeated by hand. The command-line options are in
:mod:`speechdata.commands.demo`.

Example::

    >>> run_demo("demo_out", examples=100, models=[])   # corpus .. bench, no training
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from speechdata.errors import SpeechDataError
from speechdata.synth.corpus import make_corpus

_TOKENIZER_FLAGS = ("--audio-locator", "|audio|", "--no-byte-fallback")
#: The corpus settings of the demo: short clips, a few multi-audio examples.
CORPUS = {"min_duration": 0.5, "max_duration": 6.0, "seconds_per_char": 0.06, "multi_audio_fraction": 0.05}


def config_path(name: str) -> Path:
    """A bundled config (``configs/NAME.yaml``): from the checkout, else from the installed package."""
    package = Path(__file__).resolve().parents[1]  # speechdata/
    for candidate in (package.parent / "configs" / f"{name}.yaml", package / "configs" / f"{name}.yaml"):
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


def run_demo(
    out_dir: str | Path,
    *,
    examples: int = 400,
    steps: int = 150,
    models: Sequence[str] = ("salm", "bestow"),
    seed: int = 0,
) -> Path:
    """Run the demo in ``out_dir``: ``examples`` training examples (and a tenth, at least 16, for
    validation) from ``seed``, then every step; ``steps`` training steps for each of ``models``
    (none: stop after the benchmark). Returns the resolved folder."""
    start = time.perf_counter()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"== synthetic corpus -> {out}", flush=True)
    train = make_corpus(out / "train", n=examples, seed=seed, **CORPUS)
    val = make_corpus(out / "val", n=max(16, examples // 10), seed=seed + 1000, **CORPUS)
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
    if models:
        tars = str(shards / f"audio__OP_0..{_count_tars(shards) - 1}_CL_.tar")
        for model in models:
            _step(
                f"train {model}",
                [
                    "train",
                    str(config_path(f"{model}_tiny")),
                    f"trainer.max_steps={steps}",
                    f"exp_manager.exp_dir={out / 'experiments'}",
                    f"model.seed={seed}",
                    f"model.tokenizer.model={tok / 'tokenizer.model'}",
                    f"model.train_ds.manifest_filepath={shards / 'tarred_audio_manifest.json'}",
                    "model.train_ds.is_tarred=true",
                    f"model.train_ds.tarred_audio_filepaths={tars}",
                    f"model.validation_ds.manifest_filepath={val.manifest}",
                ],
            )
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; everything is in {out}")
    return out


def _count_tars(folder: Path) -> int:
    n = len(list(folder.glob("audio_*.tar")))
    if n == 0:
        raise SpeechDataError(f"{folder}: no audio_*.tar shards")
    return n
