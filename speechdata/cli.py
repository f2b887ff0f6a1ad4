"""The ``speechdata`` command.

Each subcommand lives in its own module, which provides ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Only the module of the command being run is imported, so
``speechdata shard`` does not pay for the trainer's imports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from speechdata.cache import ENV_VAR
from speechdata.errors import SpeechDataError

#: name -> (module, one-line help). Two-word commands ("tokenizer train") use a space.
COMMANDS: dict[str, tuple[str, str]] = {
    "shard": ("speechdata.shards.write", "write manifests into NeMo-compatible tar shards"),
    "validate": ("speechdata.shards.validate", "check every entry of a tarred dataset against its tars"),
    "inspect": ("speechdata.inspect", "dataset statistics: hours, histograms, suggested bucket bins"),
    "bench": ("speechdata.bench", "measure the loader against the decode floor and peers"),
    "train": ("speechdata.train.run", "train the bundled tiny SALM / BESTOW model from a config"),
    "tokenizer train": ("speechdata.text.train_cli", "train a SentencePiece tokenizer from manifests' text"),
    "demo": ("speechdata.demo", "run the whole chain on a built-in synthetic corpus"),
}

_EPILOG = """examples:
  speechdata demo                                  # corpus -> shards -> bench -> tiny training
  speechdata shard train.jsonl --out shards/ --num-shards 8
  speechdata inspect train.jsonl --png hist.png
  speechdata bench configs/salm_tiny.yaml model.train_ds.manifest_filepath=train.jsonl --compare
  speechdata train configs/salm_tiny.yaml model.train_ds.manifest_filepath=train.jsonl

run 'speechdata COMMAND --help' for a command's options."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("speechdata")
    except PackageNotFoundError:
        return "unknown"


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen command's module is imported to add its options."""
    parser = argparse.ArgumentParser(
        prog="speechdata",
        description="Audio-text batches for speech-augmented LLM training (NeMo SALM / BESTOW).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"speechdata {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen(argv)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for name, (module, help_text) in COMMANDS.items():
        words = name.split()
        target = sub
        if len(words) == 2:
            if words[0] not in groups:
                group_parser = sub.add_parser(words[0], help=f"{words[0]} commands ({words[1]}, ...)")
                groups[words[0]] = group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            target = groups[words[0]]
        p = target.add_parser(words[-1], help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
            p.add_argument(
                "--cache-dir",
                metavar="DIR",
                help="where manifest indexes and tar member tables are cached (sets SPEECHDATA_CACHE_DIR; "
                "default ~/.cache/speechdata; a dataset's cache_dir key wins)",
            )
    return parser


def _chosen(argv: Sequence[str]) -> str | None:
    words = [a for a in argv if not a.startswith("-")]
    if len(words) >= 2 and f"{words[0]} {words[1]}" in COMMANDS:
        return f"{words[0]} {words[1]}"
    if words and words[0] in COMMANDS:
        return words[0]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``speechdata`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    module = getattr(args, "_module", None)
    if module is None:
        parser.print_help()
        return 2
    if getattr(args, "cache_dir", None):
        os.environ[ENV_VAR] = args.cache_dir  # DataLoader workers and pools inherit it
    try:
        return int(importlib.import_module(module).run(args) or 0)
    except SpeechDataError as e:
        print(f"speechdata: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("speechdata: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
