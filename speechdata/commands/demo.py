"""``speechdata demo``: the whole chain on a built-in synthetic corpus (:mod:`speechdata.synth.demo`).

Example::

    $ speechdata demo --out demo_out --examples 400 --steps 150
"""

from __future__ import annotations

import argparse

HELP = "run the whole chain on a built-in synthetic corpus"


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
    from speechdata.synth.demo import run_demo

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    run_demo(
        args.out,
        examples=args.examples,
        steps=args.steps,
        models=[] if args.no_train else models,
        seed=args.seed,
    )
    return 0
