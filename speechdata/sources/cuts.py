"""lhotse CutSet manifests read as NeMo manifests (``input_cfg`` types ``lhotse`` and
``lhotse_as_conversation``, and a section's ``cuts_path``; docs/configuration.md, "NeMo 2.x keys").

A ``manifest_filepath`` entry ``lhotse:<path>`` (what ``input_cfg`` makes of a ``cuts_path``)
names a CutSet manifest (``.jsonl`` or ``.jsonl.gz``, lhotse's own serialisation).
:func:`resolve_cuts` converts each such entry once into a NeMo JSONL manifest in
``<cache root>/cuts/`` (bound to the cuts file's real path and file stamp, as every cache entry
is, :mod:`speechdata.cache`); from then on it is indexed and read like any manifest. One line per
cut:

* ``audio_filepath``: the recording's one file source (relative paths resolve against the cuts
  file's folder, as NeMo does), ``offset``: the cut's start, ``duration``: its duration;
* ``text``: the texts of its supervisions, joined by a space (the answer; with
  ``lhotse_as_conversation`` the user turn is the ``context`` tag, as in NeMo's SALM recipe);
* the cut's custom fields that are plain values (a ``context`` custom field is the line's context);
  a supervision's ``language`` becomes ``lang``;
* its place (``cuts.jsonl.gz:5: cut 'c1'``, :func:`cut_place`) under
  :data:`~speechdata.lines.ORIGIN_KEY`: later messages about the line name the cut, not the
  converted manifest's line.

Only what a NeMo manifest can say is accepted; anything else is a one-line error naming
``path:line`` and the cut: a cut that is not a ``MonoCut`` (mixed or padding cuts), a recording
with several sources or a source that is not a file (URLs, commands, in-memory audio), and a cut
that selects some channels of a multi-channel recording (speechdata mixes all channels down).
Reading the cuts needs lhotse (the ``lhotse`` extra).

Example::

    >>> cfg = resolve_cuts(cfg)            # "lhotse:cuts.jsonl.gz" -> "~/.cache/speechdata/cuts/....jsonl"
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from speechdata.config import CUTS_PREFIX, DatasetConfig
from speechdata.errors import ConfigError, SpeechDataError
from speechdata.lines import ORIGIN_KEY
from speechdata.sources.converted import converted_manifest

__all__ = ["cut_place", "cut_text_fields", "cuts_manifest", "read_cuts", "resolve_cuts"]

#: Bump when the lines written for a cut change.
CACHE_VERSION = 2
_RESERVED = ("audio_filepath", "duration", "offset", "text", ORIGIN_KEY)


def resolve_cuts(cfg: DatasetConfig) -> DatasetConfig:
    """``cfg`` with every ``lhotse:<path>`` manifest replaced by its converted NeMo manifest
    (:func:`cuts_manifest`); ``cfg`` itself when it names none."""
    if not any(m.startswith(CUTS_PREFIX) for m in cfg.manifests):
        return cfg
    manifests = [
        str(cuts_manifest(m[len(CUTS_PREFIX) :], cfg.cache_dir)) if m.startswith(CUTS_PREFIX) else m
        for m in cfg.manifests
    ]
    return dataclasses.replace(cfg, manifest_filepath=manifests, manifests=manifests)


def cuts_manifest(path: str, cache_dir: str | None = None) -> Path:
    """The NeMo manifest of the CutSet manifest ``path``, converted once (see the module
    docstring) and cached (:func:`~speechdata.sources.converted.converted_manifest`); a
    :class:`SpeechDataError` for a missing file or a cut that a NeMo manifest cannot hold."""
    real = os.path.realpath(os.path.expanduser(path))
    if not os.path.isfile(real):
        raise SpeechDataError(f"{path}: cuts manifest not found")
    # the path as named is part of the binding: the lines name it so
    return converted_manifest(
        "cuts",
        [real],
        lambda: _convert(real, path),
        version=CACHE_VERSION,
        settings=path,
        cache_dir=cache_dir,
    )


def _convert(real: str, shown: str) -> bytes:
    """The NeMo manifest lines of the cuts in ``real`` (``shown`` names it in errors)."""
    folder = os.path.dirname(real)
    lines = [orjson.dumps(_line(cut, where, folder)) for cut, where in read_cuts(real, shown)]
    return b"\n".join(lines) + (b"\n" if lines else b"")


def read_cuts(real: str, shown: str) -> Iterator[tuple[Any, str]]:
    """``(cut, "shown:line")`` for each cut of the CutSet JSONL file ``real`` (``.gz`` or plain;
    ``shown`` names it in errors). Needs lhotse (a one-line :class:`ConfigError` without it); a
    line that is not a cut, or a file that does not read (a corrupt ``.gz``), is a one-line
    :class:`SpeechDataError` naming the file (and line)."""
    try:
        from lhotse.serialization import deserialize_item
    except ImportError:
        raise ConfigError(
            f"{shown}: reading lhotse cuts needs lhotse (pip install 'speechdata[lhotse]')"
        ) from None
    opener: Any = gzip.open if real.endswith(".gz") else open
    number = 0
    try:
        with opener(real, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                where = f"{shown}:{number}"
                try:
                    cut = deserialize_item(orjson.loads(raw))
                except Exception as e:  # lhotse raises many kinds for a malformed item
                    raise SpeechDataError(
                        f"{where}: not a lhotse cut ({type(e).__name__}: {e})".splitlines()[0]
                    ) from None
                yield cut, where
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz
        detail = " ".join(str(e).split()) or type(e).__name__
        raise SpeechDataError(f"{shown}: cannot read after line {number} ({detail})") from None


def cut_place(cut: Any, where: str) -> str:
    """How messages name ``cut``, read at ``where`` (``cuts.jsonl.gz:5``): ``cuts.jsonl.gz:5: cut
    'c1'``. A cut that is not a ``MonoCut`` with a recording is a one-line
    :class:`SpeechDataError` naming it."""
    kind = type(cut).__name__
    name = f"{where}: cut {getattr(cut, 'id', '?')!r}"
    if kind != "MonoCut":
        raise SpeechDataError(f"{name}: a {kind} is not supported (only single-recording MonoCuts)")
    if cut.recording is None:
        raise SpeechDataError(f"{name}: has no recording (cuts without audio are not supported)")
    return name


def _line(cut: Any, where: str, folder: str) -> dict[str, Any]:
    """One cut as a NeMo manifest line (see the module docstring)."""
    name = cut_place(cut, where)
    rec = cut.recording
    if len(rec.sources) != 1 or rec.sources[0].type != "file":
        types = ", ".join(s.type for s in rec.sources)
        raise SpeechDataError(
            f"{name}: audio source(s) of type {types} are not supported (one file per recording)"
        )
    channels = cut.channel if isinstance(cut.channel, list) else [cut.channel]
    if rec.num_channels > 1 and sorted(channels) != list(range(rec.num_channels)):
        raise SpeechDataError(
            f"{name}: selects channel(s) {channels} of a {rec.num_channels}-channel recording; "
            "speechdata mixes all channels down"
        )
    path = str(rec.sources[0].source)
    if not os.path.isabs(path):
        path = os.path.join(folder, path)
    line: dict[str, Any] = {"audio_filepath": path, "duration": round(float(cut.duration), 6)}
    if cut.start:
        line["offset"] = round(float(cut.start), 6)
    line = cut_text_fields(cut, line)
    line[ORIGIN_KEY] = name
    return line


def cut_text_fields(cut: Any, line: dict[str, Any]) -> dict[str, Any]:
    """``line`` with a cut's ``text`` (its supervisions' texts joined by a space), ``lang`` (their
    one language) and its custom fields that are plain values (the module docstring's rules)."""
    line["text"] = " ".join(s.text for s in cut.supervisions if s.text)
    langs = {s.language for s in cut.supervisions if s.language}
    if len(langs) == 1:
        line["lang"] = langs.pop()
    for key, value in (cut.custom or {}).items():
        if key not in _RESERVED and key not in line and isinstance(value, (str, int, float, bool)):
            line[key] = value
    return line
