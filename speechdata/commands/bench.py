"""``speechdata bench CONFIG|MANIFEST|DIR [key=value ...]``: the loader against the decode floor and
its peers (:mod:`speechdata.bench`; options and run in :mod:`speechdata.bench.command`).

The key flags (``--answer-key``, ``--context-key``, ``--default-context``) become overrides of the
measured dataset section (``model.train_ds.answer_key=...``), so a config's keys stay unless a
flag is given.

Example::

    $ speechdata bench train.jsonl --compare --repeats 3 --md bench.md --png bench.png --json bench.json
    $ speechdata bench qa.jsonl --answer-key output --context-key input
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speechdata.commands.options import add_key_options, key_overrides

HELP = "measure the loader against the decode floor and peers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``speechdata bench``."""
    from speechdata.bench import command as bench

    bench.add_arguments(p)
    add_key_options(p, defaults="the dataset section's")


def _section_prefix(args: argparse.Namespace) -> str:
    """Where the measured section's keys are overridden: its path in a YAML config (under
    ``model.``, ``model.data.`` or the top level), else ``model.<section>.`` (bench's own config)."""
    if Path(args.source).suffix in (".yaml", ".yml") and Path(args.source).is_file():
        from speechdata.config import find_section, load_config

        return find_section(load_config(args.source, args.overrides), args.section)[1] + "."
    return f"model.{args.section}."


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata bench``."""
    from speechdata.bench import command as bench

    if any(getattr(args, key, None) is not None for key in ("answer_key", "context_key", "default_context")):
        args.overrides = [*args.overrides, *key_overrides(args, _section_prefix(args))]
    return int(bench.run(args) or 0)
