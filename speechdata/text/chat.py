"""Chat templates: a tokenizer's Jinja ``chat_template`` rendered as transformers'
``apply_chat_template`` renders it (docs/tokenizers.md, "Chat templates").

The environment is the one transformers builds, so a template renders to the same string:

* a sandboxed, immutable Jinja environment (``jinja2.sandbox.ImmutableSandboxedEnvironment``: no
  access to private attributes, no mutation of lists and dicts the template did not make) with
  ``trim_blocks`` and ``lstrip_blocks`` on and the ``loopcontrols`` extension
  (``{% break %}``, ``{% continue %}``);
* the ``{% generation %}...{% endgeneration %}`` block (transformers uses it to find assistant
  text) renders its body;
* ``raise_exception(message)`` stops rendering with ``message``; ``strftime_now(format)`` is the
  local time formatted; the ``tojson`` filter is :func:`json.dumps` (no HTML escaping;
  ``indent``, ``separators``, ``sort_keys``, ``ensure_ascii`` accepted); ``dict(...)`` builds a
  plain dict and ``namespace(...)`` refuses names that start with ``_``;
* the variables: ``messages`` (each a dict with ``role`` and ``content``; keys whose value is
  ``None`` are left out and a reasoning field is also given as ``reasoning_content`` and
  ``thinking``, as transformers does), ``add_generation_prompt``, ``tools``
  and ``documents`` (``None`` unless given), every special token the tokenizer names
  (``bos_token``, ``eos_token``, ``unk_token``, ``sep_token``, ``pad_token``, ``cls_token``,
  ``mask_token``) and any extra keyword of :meth:`ChatTemplate.render` (they override the special
  tokens, as in transformers).

A malformed template is a :class:`~speechdata.errors.ConfigError` naming the template and line; an
error while rendering one conversation (``raise_exception``, a missing key, a wrong type) is a
:class:`~speechdata.errors.DataError` (reason ``bad_line``) naming the conversation's place.

Example::

    >>> chatml = ("{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|im_end|>\\n"
    ...           "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}")
    >>> ChatTemplate(chatml).render([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    '<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from speechdata.errors import ConfigError, DataError

#: The special-token variables a template sees (those the tokenizer defines).
SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

#: The names a message's reasoning may come under; a template sees it under ``reasoning_content``
#: and ``thinking`` too, as transformers passes it.
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}body{% endgeneration %}`` renders ``body`` unchanged."""

    tags = {"generation"}  # noqa: RUF012 (jinja2's Extension declares it as a class attribute)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller: Any) -> str:
        return str(caller())


class _TemplateRaised(Exception):
    """What ``raise_exception`` raises inside the template (turned into a DataError by render)."""


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _DictMaker:
    """The template's ``dict``: builds plain dicts, exposes nothing of the ``dict`` type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Any, value: Any = None) -> dict[Any, Any]:
        return dict.fromkeys(keys, value)


class _Namespace(jinja2.utils.Namespace):
    """The template's ``namespace``: attribute names starting with ``_`` are refused."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # self travels in args, as in jinja2's Namespace
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with '_'")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictMaker()
    env.globals["namespace"] = _Namespace
    return env


@lru_cache(maxsize=32)
def _compile(template: str, name: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"{name}:{e.lineno}: chat template syntax error: {e.message}") from None


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON-like data (str/int/float/bool/None, lists, tuples, dicts of them);
    anything else is a DataError: a template sees data, never objects with methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, np.generic):  # numpy scalars, as their Python value
        return _plain(value.item(), where)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k, where): _plain(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, where) for v in value]
        return items if isinstance(value, list) else tuple(items)
    raise DataError("bad_line", where, f"chat message value of type {type(value).__name__} is not plain data")


def _messages(messages: Sequence[Mapping[str, Any]], where: str) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise DataError("bad_line", where, f"messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise DataError("bad_line", where, "a conversation needs at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise DataError("bad_line", where, f"message {i} must be a dict, got {type(m).__name__}")
        message = {k: _plain(v, where) for k, v in m.items() if v is not None}
        reasoning = next((message[k] for k in REASONING_KEYS if k in message), None)
        if reasoning is not None:  # every name a template may read it under
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


class ChatTemplate:
    """A Jinja chat template with the special tokens of its tokenizer (see the module docstring).

    ``name`` names the template in errors (for example ``tok/tokenizer_config.json:chat_template``).
    It pickles as its text; the compiled template is cached per process.
    """

    def __init__(
        self,
        template: str,
        special_tokens: Mapping[str, str] | None = None,
        *,
        name: str = "chat_template",
    ) -> None:
        if not isinstance(template, str) or not template:
            raise ConfigError(f"{name}: a chat template must be a non-empty string")
        self.template = template
        self.name = name
        self.special_tokens: dict[str, str] = {
            k: v for k, v in (special_tokens or {}).items() if k in SPECIAL_TOKEN_KEYS and v is not None
        }
        _compile(template, name)  # a malformed template fails here, not at the first example

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        where: str = "",
        **kwargs: Any,
    ) -> str:
        """The conversation ``messages`` as text.

        ``add_generation_prompt`` asks the template for the header of a new assistant turn;
        ``kwargs`` become template variables (``tools``, ``documents``, ``enable_thinking``, ...).
        ``where`` names the conversation in errors (default: the template's name).
        """
        place = where or self.name
        variables: dict[str, Any] = {"tools": None, "documents": None, **self.special_tokens}
        variables.update({k: _plain(v, place) for k, v in kwargs.items()})
        variables["messages"] = _messages(messages, place)
        variables["add_generation_prompt"] = bool(add_generation_prompt)
        compiled = _compile(self.template, self.name)
        try:
            return compiled.render(**variables)
        except _TemplateRaised as e:
            raise DataError("bad_line", place, f"chat template: {e}") from None
        except jinja2.exceptions.SecurityError as e:
            raise ConfigError(f"{self.name}: chat template does something unsafe: {e}") from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
            raise DataError("bad_line", place, f"chat template failed: {type(e).__name__}: {e}") from None

    def __repr__(self) -> str:
        return f"ChatTemplate({self.name!r}, {len(self.template)} characters)"
