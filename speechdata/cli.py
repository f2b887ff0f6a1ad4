"""The ``speechdata`` command: command names mapped to their modules in :mod:`speechdata.commands`.

Each command module provides ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) ->
int``, and imports the library only inside them: listing every command is cheap, and only the
chosen command's options and code are loaded, so ``speechdata shard`` does not pay for the
trainer's imports. ``--cache-dir`` is added here to every command. A :class:`SpeechDataError` is
printed as ``speechdata: error: <message>`` (one line) with exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
from collections.abc import Sequence
from types import ModuleType

from speechdata.cache import ENV_VAR
from speechdata.errors import SpeechDataError

#: command name -> its module. Two-word commands ("tokenizer train") use a space.
COMMANDS: dict[str, str] = {
    "shard": "speechdata.commands.shard",
    "validate": "speechdata.commands.validate",
    "inspect": "speechdata.commands.inspect",
    "bench": "speechdata.commands.bench",
    "train": "speechdata.commands.train",
    "tune": "speechdata.commands.tune",
    "tokenizer train": "speechdata.commands.tokenizer_train",
    "demo": "speechdata.commands.demo",
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
    for name, module in COMMANDS.items():
        command = importlib.import_module(module)
        help_text = command.HELP
        words = name.split()
        target = sub
        if len(words) == 2:
            if words[0] not in groups:
                group_parser = sub.add_parser(words[0], help=f"{words[0]} commands ({words[1]}, ...)")
                groups[words[0]] = group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            target = groups[words[0]]
        p = target.add_parser(
            words[-1],
            help=help_text,
            description=_description(command),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(_module=module)
        if name == chosen:
            command.add_arguments(p)
            p.add_argument(
                "--cache-dir",
                metavar="DIR",
                help="where manifest indexes and tar member tables are cached (sets SPEECHDATA_CACHE_DIR; "
                "default ~/.cache/speechdata; a dataset's cache_dir key wins)",
            )
    return parser


def _description(command: ModuleType) -> str:
    """A command's ``--help`` text: its module docstring (what it does, examples) as plain text."""
    text = inspect.cleandoc(command.__doc__ or command.HELP)
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)  # Sphinx roles: the name alone
    return text.replace("``", "'").replace("::\n", ":\n")


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
