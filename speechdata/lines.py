"""The rules of one NeMo JSONL manifest line: which keys are read, what values they may hold.

Every reader of manifest lines uses these rules and no other. The rules of one clip and of the
texts are written once, in :func:`check_clip`: the indexer's fast path calls it for a line of the
common shape (one ``audio_filepath``, scalar numbers, no ``shard_id``), and :func:`parse_line`,
the full resolver that the indexer falls back to and that
:meth:`speechdata.manifest.Index.record` reads examples back with, calls it for every clip. So a
line is indexed exactly when it can be read back, with the same values. The commands and the
loader build their :class:`ManifestKeys` with :func:`manifest_keys`.

Keys follow NeMo: audio from ``audio_filepath`` (or ``audio_filename``, ``audio_file``), a string
or a list for multi-audio; ``duration`` and ``offset`` as numbers or lists (``true`` and ``false``
are not numbers; a null or missing ``offset`` is 0, a missing ``duration`` is measured from the
audio header); the answer from ``answer_key`` else ``text``; the context from ``context_key`` else
``question`` else ``default_context``; ``shard_id`` (tarred manifests) an integer. Relative paths
resolve against the manifest's folder (:func:`resolve_audio`).

Example::

    >>> keys = manifest_keys(cfg)                      # from a DatasetConfig
    >>> parse_line({"audio_filepath": "a.wav", "duration": 2, "text": "hi"}, keys)
    Line(audio=['a.wav'], duration=[2.0], offset=[0.0], context=None, answer='hi', messages=None)
    >>> check_clip("a.wav", False, None, {"text": "hi"}, keys)
    Traceback (most recent call last):
    ValueError: 'duration' must be a number, got False
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from speechdata.config import DatasetConfig
from speechdata.errors import SpeechDataError
from speechdata.storage.fs import is_remote

__all__ = [
    "AUDIO_KEYS",
    "INVALID_KEY",
    "MAX_SECONDS",
    "ORIGIN_KEY",
    "Line",
    "ManifestKeys",
    "Message",
    "Record",
    "check_clip",
    "check_json_lines",
    "describe_audio",
    "extra_fields",
    "is_number",
    "json_error",
    "line_where",
    "manifest_keys",
    "manifest_root",
    "parse_conversation",
    "parse_line",
    "resolve_audio",
    "shard_id_of",
]

AUDIO_KEYS = ("audio_filepath", "audio_filename", "audio_file")
#: In a manifest that speechdata writes from other files (``speechdata.sources.converted``):
#: where the line came from (``manifest_3.jsonl:17``, ``cuts.jsonl.gz:5: cut 'c1'``), named by
#: messages instead of the written file's line (:func:`line_where`); never data.
ORIGIN_KEY = "speechdata_origin"
#: In such a manifest: why the original line is no manifest line (not JSON, not an object); the
#: line is then a ``bad_line`` with this message (:func:`parse_line`).
INVALID_KEY = "speechdata_invalid"
_RESERVED = {*AUDIO_KEYS, "duration", "offset", ORIGIN_KEY}
#: Largest duration or offset accepted (about 116 days): larger values are typos or garbage, and
#: would overflow the float32 columns to infinity.
MAX_SECONDS = 1e7
#: The Python types of a JSON number as orjson decodes it; ``bool`` is not one (``true`` is not 1).
_NUMBER_TYPES = frozenset({int, float})


# ------------------------------------------------------------------------------- key settings


@dataclass(frozen=True)
class ManifestKeys:
    """How manifest fields are resolved; part of the cache key.

    ``tarred``: audio paths are tar member names (kept as they are, never resolved on disk).
    ``require_context``: a line without any context (and no ``default_context``) is an error.
    """

    answer_key: str = "answer"
    context_key: str = "context"
    default_context: str | None = None
    tarred: bool = False
    require_context: bool = False

    def digest(self) -> str:
        """A stable short digest of these settings (sha1, never ``hash()``)."""
        blob = json.dumps(self.__dict__, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


def manifest_keys(cfg: DatasetConfig, require_context: bool = False) -> ManifestKeys:
    """The manifest key settings of a dataset config: the one place where ``answer_key``,
    ``context_key``, ``default_context`` and ``is_tarred`` become :class:`ManifestKeys`.

    The loader and every command that reads manifests call this (a command builds its
    :class:`~speechdata.config.DatasetConfig` from its flags). ``require_context``: a line without
    a context (and no ``default_context``) is an error; the loader sets it when its prompt needs a
    context (``PromptBuilder.needs_context``).
    """
    return ManifestKeys(
        answer_key=cfg.answer_key,
        context_key=cfg.context_key,
        default_context=cfg.default_context,
        tarred=cfg.is_tarred,
        require_context=require_context,
    )


# ------------------------------------------------------------------------------ value rules


def is_number(value: Any) -> bool:
    """Whether a decoded JSON value is a number: an int or a float, never ``true``/``false``."""
    return type(value) in _NUMBER_TYPES


def check_clip(
    audio: Any, duration: Any, offset: Any, obj: dict[str, Any], keys: ManifestKeys
) -> tuple[str | None, str]:
    """The rules of one clip of a decoded line, and the line's texts: returns ``(context, answer)``.

    * ``audio``: a non-empty string;
    * ``duration``: a JSON number (``true``/``false`` are not numbers) ``> 0`` and
      ``< MAX_SECONDS``, or ``None`` (measured from the audio);
    * ``offset``: a number ``>= 0`` and ``< MAX_SECONDS``, or ``None`` (0);
    * the answer is ``obj[keys.answer_key]``, else ``obj["text"]``, a string; the context is
      ``obj[keys.context_key]``, else ``obj["question"]``, else ``keys.default_context``, a string
      or ``None`` (an error when ``keys.require_context``).

    Raises ``ValueError`` naming the first problem. This is the one place these rules are
    written: the indexer's fast path calls it once for a line of the common shape (one path,
    scalar numbers), :func:`parse_line` once per clip of any line.
    """
    if type(audio) is not str or not audio:
        raise ValueError("audio path must be a non-empty string or a list of them")
    if duration is not None and (type(duration) not in _NUMBER_TYPES or not 0 < duration < MAX_SECONDS):
        raise ValueError(_number_problem("duration", duration, "> 0"))
    if offset is not None and (type(offset) not in _NUMBER_TYPES or not 0 <= offset < MAX_SECONDS):
        raise ValueError(_number_problem("offset", offset, ">= 0"))
    answer = obj.get(keys.answer_key)
    if answer is None:
        answer = obj.get("text")
        if answer is None:
            raise ValueError(f"no answer ('{keys.answer_key}' or 'text')")
    if type(answer) is not str:
        raise ValueError(f"answer must be a string, got {type(answer).__name__}")
    context = obj.get(keys.context_key)
    if context is None:
        context = obj.get("question")
        if context is None:
            context = keys.default_context
            if context is None and keys.require_context:
                raise ValueError(
                    f"no context ('{keys.context_key}' or 'question') and no default_context is set"
                )
    if context is not None and type(context) is not str:
        raise ValueError(f"context must be a string, got {type(context).__name__}")
    return context, answer


def _number_problem(key: str, value: Any, rule: str) -> str:
    """The message for a ``duration``/``offset`` value that :func:`check_clip` refused."""
    if type(value) not in _NUMBER_TYPES:
        return f"'{key}' must be a number, got {value!r}"[:200]
    return f"{key} must be a finite number {rule} and < {MAX_SECONDS:g} s, got {float(value)}"


def _values(value: Any, n: int, key: str) -> list[Any] | None:
    """The ``n`` raw values of a ``duration``/``offset`` field (a scalar or a list), or ``None``
    when the field is missing or null. A null inside a list is not a number."""
    if value is None:
        return None
    items = list(value) if type(value) is list else [value]
    if len(items) != n:
        raise ValueError(f"'{key}' has {len(items)} values but the line has {n} audios")
    if None in items:
        raise ValueError(f"'{key}' must be a number, got None")
    return items


class Line(NamedTuple):
    """One resolved manifest line (what :func:`parse_line` returns).

    ``duration`` is ``None`` when the line gives none (measured from the audio header).
    ``messages`` is ``None`` for a context/answer line; for a conversation it holds the turns,
    merged by role (:data:`Message`), and ``context``/``answer`` are their text before the last
    assistant turn and the last assistant turn's text (for metadata and the text length).
    """

    audio: list[str]
    duration: list[float] | None
    offset: list[float]
    context: str | None
    answer: str
    messages: list[Message] | None = None


def parse_line(obj: Any, keys: ManifestKeys) -> Line:
    """Resolve one decoded manifest line (see :class:`Line`).

    A line with a ``conversations`` key is a conversation (:func:`parse_conversation`);
    every other line is a context/answer line whose clips pass :func:`check_clip`. Raises
    ``ValueError`` with a short message for anything malformed (the caller adds file:line).
    """
    if type(obj) is not dict:
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if INVALID_KEY in obj:
        raise ValueError(str(obj[INVALID_KEY]))
    if "conversations" in obj:
        return parse_conversation(obj)
    audio_val = None
    for k in AUDIO_KEYS:
        if k in obj:
            audio_val = obj[k]
            break
    if audio_val is None:
        raise ValueError("no audio path (audio_filepath / audio_filename / audio_file)")
    audio = list(audio_val) if type(audio_val) is list else [audio_val]
    if not audio:
        raise ValueError("audio path must be a non-empty string or a list of them")
    if len(audio) > MAX_AUDIOS:
        raise ValueError(f"too many audios in one example ({len(audio)} > {MAX_AUDIOS})")
    n = len(audio)
    dur = _values(obj.get("duration"), n, "duration")
    off = _values(obj.get("offset"), n, "offset")
    for k in range(n):
        context, answer = check_clip(
            audio[k], None if dur is None else dur[k], None if off is None else off[k], obj, keys
        )
    return Line(
        audio,
        None if dur is None else [float(v) for v in dur],
        [0.0] * n if off is None else [float(v) for v in off],
        context,
        answer,
    )


# ------------------------------------------------------------------------------ conversations

#: One message of a conversation: its role (``system``, ``user`` or ``assistant``) and its
#: content as text pieces and audio numbers (``int`` ``k`` is the example's ``k``-th audio), in
#: order. Consecutive turns of one role are one message, joined with a space (as NeMo does).
Message = tuple[str, tuple[str | int, ...]]

#: Roles as the two conversation formats write them.
_NEMO_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
#: ShareGPT's audio placeholders (replaced, in order, by the audios of the ``sound`` key).
SHAREGPT_PLACEHOLDERS = ("<sound>", "<speech>")
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in SHAREGPT_PLACEHOLDERS))
MAX_AUDIOS = 255
#: Key settings for checking a conversation's clips (its texts are not read by key).
_NO_KEYS = ManifestKeys()


def parse_conversation(obj: dict[str, Any]) -> Line:
    """A conversation line, in either of two formats:

    * NeMo's multimodal conversation: ``{"id", "conversations": [{"from": "User" | "Assistant"
      | "System", "type": "text" | "audio", "value", "duration" (audio), "offset"? (audio)}]}``
      (an audio turn's ``value`` is its path); a conversation without audio turns is a text-only
      example;
    * ShareGPT: ``{"conversations": [{"from": "human" | "gpt" | "system", "value"}], "sound":
      path or list}``, where ``<sound>`` / ``<speech>`` in a value stand for the next audio
      (durations from an optional ``duration`` key, else measured from the audio header).

    Rules: roles as above (any case); a system turn only first; the first other turn is the
    user's; at least one assistant turn. Turns of one role in a row are one message, joined
    with a space. Raises ``ValueError`` naming the turn (``turn 3: ...``, counted from 1).
    """
    turns = obj["conversations"]
    if type(turns) is not list or not turns:
        raise ValueError("'conversations' must be a non-empty list of turns")
    sharegpt = not any(type(t) is dict and "type" in t for t in turns)
    audio: list[str] = []
    durations: list[Any] = []
    offsets: list[float] = []
    pieces: list[tuple[str, str | int]] = []  # (role, text or audio number) in order
    used = 0  # ShareGPT placeholders met so far
    if sharegpt:
        audio = _sharegpt_audio(obj)
    for n, turn in enumerate(turns, 1):
        if type(turn) is not dict:
            raise ValueError(f"turn {n}: expected an object, got {type(turn).__name__}")
        who = turn.get("from")
        roles = _SHAREGPT_ROLES if sharegpt else _NEMO_ROLES
        role = roles.get(who.lower()) if type(who) is str else None
        if role is None:
            known = "human, gpt, system" if sharegpt else "User, Assistant, System"
            raise ValueError(f"turn {n}: 'from' must be one of {known}; got {who!r}"[:200])
        value = turn.get("value")
        if type(value) is not str:
            raise ValueError(f"turn {n}: 'value' must be a string, got {type(value).__name__}")
        if sharegpt:
            used = _sharegpt_pieces(value, role, pieces, used, len(audio), n)
            continue
        kind = turn.get("type")
        if kind == "text":
            pieces.append((role, value))
        elif kind == "audio":
            if not value:
                raise ValueError(f"turn {n}: an audio turn's 'value' (its path) is empty")
            duration, offset = turn.get("duration"), turn.get("offset")
            if duration is None:
                raise ValueError(f"turn {n}: audio turn {value!r} has no 'duration'"[:200])
            try:
                check_clip(value, duration, offset, {"text": ""}, _NO_KEYS)
            except ValueError as e:
                raise ValueError(f"turn {n}: {e}") from None
            pieces.append((role, len(audio)))
            audio.append(value)
            durations.append(duration)
            offsets.append(float(offset or 0.0))
        else:
            raise ValueError(f"turn {n}: 'type' must be 'text' or 'audio'; got {kind!r}"[:200])
    if sharegpt:
        if used != len(audio):
            raise ValueError(
                f"{used} audio placeholder(s) ({' or '.join(SHAREGPT_PLACEHOLDERS)}) but {len(audio)} "
                "audio(s) in 'sound'"
            )
        dur = _values(obj.get("duration"), len(audio), "duration") if audio else None
        if dur is not None:
            for k, (a, d) in enumerate(zip(audio, dur, strict=True)):
                try:
                    check_clip(a, d, None, {"text": ""}, _NO_KEYS)
                except ValueError as e:
                    raise ValueError(f"audio {k + 1}: {e}") from None
        durations = dur or []
        offsets = [0.0] * len(audio)
    if len(audio) > MAX_AUDIOS:
        raise ValueError(f"too many audios in one example ({len(audio)} > {MAX_AUDIOS})")
    messages = _merge(pieces)
    context, answer = _texts(messages)
    return Line(
        audio,
        [float(d) for d in durations] if durations or not audio else None,
        offsets,
        context,
        answer,
        messages,
    )


def _sharegpt_audio(obj: dict[str, Any]) -> list[str]:
    """The audio paths of a ShareGPT line (``sound``, else ``ori_sound``; a string or a list)."""
    value = obj.get("sound", obj.get("ori_sound"))
    if value is None:
        return []
    paths = list(value) if type(value) is list else [value]
    for p in paths:
        if type(p) is not str or not p:
            raise ValueError("'sound' must be a non-empty path or a list of them")
    return paths


def _sharegpt_pieces(
    value: str, role: str, pieces: list[tuple[str, str | int]], used: int, audios: int, n: int
) -> int:
    """Cut a ShareGPT value at its placeholders: text parts stripped (empty ones dropped, as
    NeMo does), each placeholder the next audio (``used`` audios came before); returns the
    audios used after it."""
    parts = _PLACEHOLDER.split(value)
    for k, part in enumerate(parts):
        if k:
            if used >= audios:
                raise ValueError(f"turn {n}: more audio placeholders than the {audios} audio(s) in 'sound'")
            pieces.append((role, used))
            used += 1
        text = part.strip() if len(parts) > 1 else part
        if text or len(parts) == 1:
            pieces.append((role, text))
    return used


def _merge(pieces: list[tuple[str, str | int]]) -> list[Message]:
    """Turns of one role in a row as one message (pieces joined with a space), and the role
    rules: system only first, then the user first, at least one assistant message."""
    messages: list[tuple[str, list[str | int]]] = []
    for role, piece in pieces:
        if messages and messages[-1][0] == role:
            messages[-1][1].append(" ")
        else:
            messages.append((role, []))
        messages[-1][1].append(piece)
    for k, (role, _) in enumerate(messages):
        if role == "system" and k:
            raise ValueError(f"message {k + 1}: a system turn may only come first")
    first = messages[1][0] if messages[0][0] == "system" and len(messages) > 1 else messages[0][0]
    if first != "user":
        raise ValueError(
            f"the conversation must start with a user turn (after an optional system turn); it starts with {first!r}"
        )
    if not any(role == "assistant" for role, _ in messages):
        raise ValueError("the conversation has no assistant turn (nothing to learn)")
    out: list[Message] = []
    for role, parts in messages:
        joined: list[str | int] = []
        for p in parts:  # adjacent text pieces as one string
            if type(p) is str and joined and type(joined[-1]) is str:
                joined[-1] += p
            else:
                joined.append(p)
        out.append((role, tuple(joined)))
    return out


def _texts(messages: list[Message]) -> tuple[str, str]:
    """``(text before the last assistant message, the last assistant message's text)``."""
    last = max(k for k, (role, _) in enumerate(messages) if role == "assistant")

    def text(parts: tuple[str | int, ...]) -> str:
        return "".join(p for p in parts if type(p) is str)

    context = "\n".join(text(parts) for _, parts in messages[:last])
    return context, text(messages[last][1])


def shard_id_of(obj: dict[str, Any]) -> int:
    """The ``shard_id`` of a decoded line: an integer ``>= 0``; ``-1`` when absent or null."""
    shard = obj.get("shard_id")
    if shard is None:
        return -1
    if type(shard) is not int or not -1 <= shard < 2**31:
        raise ValueError(f"shard_id must be an integer >= 0, got {shard!r}"[:200])
    return shard


def extra_fields(obj: dict[str, Any], keys: ManifestKeys) -> dict[str, Any]:
    """The fields of a line that no key rule reads (kept in ``Record.extra``)."""
    used = {
        keys.answer_key,
        "text" if keys.answer_key not in obj else "",
        keys.context_key if keys.context_key in obj else "question",
    }
    return {k: v for k, v in obj.items() if k not in _RESERVED and k not in used}


def line_where(manifest: str, line_no: int, obj: Any) -> str:
    """How messages name line ``line_no`` of ``manifest``, decoded as ``obj`` (``None`` when it
    is not JSON): ``manifest:line_no``, or for a line speechdata converted from another file the
    place it came from (its :data:`ORIGIN_KEY`)."""
    if type(obj) is dict:
        origin = obj.get(ORIGIN_KEY)
        if type(origin) is str:
            return origin
    return f"{manifest}:{line_no}"


# ------------------------------------------------------------------------------- a whole file


def check_json_lines(data: bytes, path: os.PathLike[str] | str) -> None:
    """A file that is one JSON array of objects (a common export format, pretty-printed or on one
    line) is one clear error, not N bad lines."""
    if not re.match(rb"(?:\xef\xbb\xbf)?\s*\[", data):
        return
    try:
        whole = orjson.loads(data)
    except orjson.JSONDecodeError:
        return  # JSON Lines whose first line is broken: reported line by line
    if isinstance(whole, list) and any(isinstance(x, dict) for x in whole):
        raise SpeechDataError(
            f"{path}: expected JSON Lines (one object per line), but the file is a JSON array; "
            "convert it with: jq -c '.[]' FILE > FILE.jsonl"
        )


def json_error(line: bytes | memoryview, err: orjson.JSONDecodeError) -> str:
    """What is wrong with a line that is not JSON, in the user's terms."""
    text = bytes(line)
    for token in (b"NaN", b"Infinity"):
        if token in text and err.msg.startswith("unexpected character"):
            name = token.decode()
            return f"{name} is not valid JSON (write a number, or leave the key out)"
    return f"not valid JSON ({err.msg})"


# ------------------------------------------------------------------------------------ paths


def manifest_root(path: str | os.PathLike[str]) -> str:
    """The folder that relative audio paths of manifest ``path`` resolve against: the manifest's
    folder as it is now (``~`` expanded, symlinks of the folder resolved), never a stored one."""
    return str(Path(os.path.expanduser(os.fspath(path))).parent.resolve())


def resolve_audio(name: str, root: str) -> str:
    """An audio path of a manifest line as a file path: ``~`` expanded, relative ones joined to
    the manifest's folder ``root`` (see :func:`manifest_root`; a URL's folder for a manifest on
    object storage); a URL (``s3://...``) stays as it is."""
    if is_remote(name):
        return name
    name = os.path.expanduser(name)
    return name if os.path.isabs(name) else os.path.join(root, name)


def describe_audio(name: str, manifest: str) -> str:
    """How messages name an audio path of a manifest line: as written, and for a relative path
    the folder it was taken relative to (``a.wav (relative to data/manifests/)``)."""
    if is_remote(name) or os.path.isabs(os.path.expanduser(name)):
        return name
    folder = os.path.dirname(manifest) or "."
    return f"{name} (relative to {folder}/)"


# ----------------------------------------------------------------------------------- record


@dataclass
class Record:
    """One example read back from its manifest line, keys resolved."""

    audio: list[str]
    offset: list[float]
    duration: list[float]
    context: str | None
    answer: str
    extra: dict[str, Any]
    where: str
    sample_id: int
    shard_id: int = -1
    row: int = -1
    #: the audio paths as the manifest line wrote them (``audio`` holds them resolved)
    names: list[str] = field(default_factory=list)
    #: the manifest the line came from (as the user named it), for messages
    manifest: str = ""
    #: a conversation's messages (:data:`Message`); ``None`` for a context/answer example
    messages: list[Message] | None = None

    def describe_audio(self, k: int) -> str:
        """The ``k``-th audio as messages name it (see :func:`describe_audio`)."""
        if not self.names:
            return self.audio[k]
        return describe_audio(self.names[k], self.manifest)
