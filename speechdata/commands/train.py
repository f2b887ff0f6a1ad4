"""``speechdata train CONFIG [key=value ...]``: the bundled tiny SALM / BESTOW trainer
(:mod:`speechdata.train.run`; docs/training.md has every config section).

Example::

    $ speechdata train configs/salm_tiny.yaml model.train_ds.manifest_filepath=train.jsonl trainer.max_steps=100
"""

from __future__ import annotations

import argparse

HELP = "train the bundled tiny SALM / BESTOW model from a config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``speechdata train``."""
    parser.add_argument("config", help="YAML config (NeMo-shaped: trainer, exp_manager, optim, model)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=100")


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata train``: check the config, fit, print the closing line."""
    from speechdata.config import load_config
    from speechdata.train.run import train

    result = train(load_config(args.config, args.overrides))
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items()))
    print(
        f"trained {result.global_step} steps ({result.consumed_samples} samples) in {result.log_dir}: {shown}"
    )
    return 0
