"""Options shared by several commands: the manifest keys.

Every command that reads manifests (``shard``, ``validate``, ``inspect``, ``tokenizer train``,
``bench``) takes ``--answer-key`` and ``--context-key`` (and ``--default-context`` where a context is used), with
the meaning and defaults of the dataset keys ``answer_key``, ``context_key`` and
``default_context`` (docs/configuration.md). :func:`manifest_keys_from` turns them into
:class:`~speechdata.manifest.ManifestKeys` the way the loader does: through a
:class:`~speechdata.config.DatasetConfig` and :func:`speechdata.manifest.manifest_keys`.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from speechdata.config import DatasetConfig
    from speechdata.manifest import ManifestKeys

#: The key flags and the dataset keys they set.
KEY_FLAGS = {
    "answer_key": "--answer-key",
    "context_key": "--context-key",
    "default_context": "--default-context",
}


def add_key_options(
    parser: argparse.ArgumentParser, *, default_context: bool = True, defaults: str | None = None
) -> None:
    """Add ``--answer-key``, ``--context-key`` and (with ``default_context``) ``--default-context``.

    A flag that is not given leaves its key at the default (``defaults`` names where that default
    comes from in the help, e.g. "the config's"; by default the dataset key defaults are shown).
    """
    group = parser.add_argument_group(
        "manifest keys", "which keys of a manifest line hold the texts (the dataset keys of the same names)"
    )
    group.add_argument(
        "--answer-key",
        metavar="KEY",
        help="key of the answer; a line without it uses 'text' "
        f"(default: {defaults or 'answer'}; NeMo's label_key)",
    )
    group.add_argument(
        "--context-key",
        metavar="KEY",
        help=f"key of the context (prompt); a line without it uses 'question' (default: {defaults or 'context'})",
    )
    if default_context:
        group.add_argument(
            "--default-context",
            metavar="TEXT",
            help=f"context of the lines that have none (default: {defaults or 'none'})",
        )


def key_values(args: argparse.Namespace) -> dict[str, Any]:
    """The dataset keys set by the key flags that were given: ``{"answer_key": "output", ...}``."""
    return {key: getattr(args, key) for key in KEY_FLAGS if getattr(args, key, None) is not None}


def dataset_keys(args: argparse.Namespace, *, tarred: bool = False) -> DatasetConfig:
    """A :class:`~speechdata.config.DatasetConfig` holding the key flags (and ``is_tarred``),
    checked by the dataset section validator."""
    from speechdata.config import make_dataset_config

    return make_dataset_config({**key_values(args), "is_tarred": tarred}, "command line")


def manifest_keys_from(
    args: argparse.Namespace, *, tarred: bool = False, require_context: bool = False
) -> ManifestKeys:
    """The :class:`~speechdata.manifest.ManifestKeys` of the key flags, built as the loader builds
    them from a config (:func:`speechdata.manifest.manifest_keys`)."""
    from speechdata.manifest import manifest_keys

    return manifest_keys(dataset_keys(args, tarred=tarred), require_context=require_context)


def key_overrides(args: argparse.Namespace, prefix: str = "") -> list[str]:
    """The key flags as dotted config overrides (``prefix`` + ``answer_key="output"``); values are
    JSON-quoted, so any text stays a string."""
    return [f"{prefix}{key}={json.dumps(value)}" for key, value in key_values(args).items()]
