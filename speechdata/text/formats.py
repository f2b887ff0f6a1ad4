"""NeMo's prompt formats by name: how each role's message is written around its text.

A format is a template per role (``system``, ``user``, ``assistant``), each a sequence of
literal text, :data:`MESSAGE` (the message's content), and the token ids :data:`BOS` and
:data:`EOS` (added as ids, not as text). The formats write exactly what NeMo's formatters of the
same name write (docs/conversations.md has the table):

* ``llama2``: ``<s>[INST] {user} [/INST]`` then ``{assistant} </s>``; a system prompt goes into
  the first user turn as ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST]``;
* ``llama3``: ``<|begin_of_text|>`` once, then ``<|start_header_id|>{role}<|end_header_id|>\\n\\n
  {message}<|eot_id|>`` for every role;
* ``qwen``: ChatML, ``<|im_start|>{role}\\n{message}<|im_end|>\\n`` (NeMo's has no system role;
  speechdata writes one the ChatML way);
* ``gemma``: ``<start_of_turn>user\\n{user}<end_of_turn>\\n<start_of_turn>model\\n`` then
  ``{assistant}<end_of_turn>\\n`` (the model header belongs to the user turn, as in NeMo);
* ``plain``: the messages' text alone.

Formats without a system role (``gemma``, ``plain``) put a system message in front of the first
user message, followed by a blank line. The strings in :attr:`PromptFormat.specials` must each be
one token of the tokenizer (checked when a builder is made).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BOS", "EOS", "FORMATS", "MESSAGE", "SYSTEM", "PromptFormat"]

#: The items of a role template besides literal text.
MESSAGE = 0  # the message's content
SYSTEM = 1  # the system prompt (llama2's combined system-and-user template)
BOS = 2  # the tokenizer's BOS id
EOS = 3  # the tokenizer's EOS id

Template = tuple[str | int, ...]


@dataclass(frozen=True)
class PromptFormat:
    """One named format (see the module docstring).

    ``system_and_user`` (llama2) is the template of a first user message that has a system
    message before it; ``system`` is ``None`` when the format has no system role.
    """

    name: str
    user: Template
    assistant: Template
    system: Template | None = None
    system_and_user: Template | None = None
    preamble: str = ""
    specials: tuple[str, ...] = ()
    #: the token that ends an assistant turn (a tokenizer trained for this format has it as EOS)
    end_of_turn: str | None = None
    #: a Jinja chat template that writes complete conversations as this format does
    chat_template: str | None = None

    def uses(self, item: int) -> bool:
        """Whether any template of this format holds ``item`` (:data:`BOS` or :data:`EOS`)."""
        templates = (self.user, self.assistant, self.system or (), self.system_and_user or ())
        return any(item in t for t in templates)


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


_CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_LLAMA3 = (
    "{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
    "'<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
_GEMMA = (
    "{% set ns = namespace(system='') %}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.system = m['content'] + '\\n\\n' %}{% else %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + ns.system + m['content'] + '<end_of_turn>\\n' }}"
    "{% set ns.system = '' %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


FORMATS: dict[str, PromptFormat] = {
    "llama2": PromptFormat(
        "llama2",
        user=(BOS, "[INST] ", MESSAGE, " [/INST]"),
        assistant=(MESSAGE, " ", EOS),
        system_and_user=(BOS, "[INST] <<SYS>>\n", SYSTEM, "\n<</SYS>>\n\n", MESSAGE, " [/INST]"),
    ),
    "llama3": PromptFormat(
        "llama3",
        user=(_header("user"), MESSAGE, "<|eot_id|>"),
        assistant=(_header("assistant"), MESSAGE, "<|eot_id|>"),
        system=(_header("system"), MESSAGE, "<|eot_id|>"),
        preamble="<|begin_of_text|>",
        specials=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        end_of_turn="<|eot_id|>",
        chat_template=_LLAMA3,
    ),
    "qwen": PromptFormat(
        "qwen",
        user=("<|im_start|>user\n", MESSAGE, "<|im_end|>\n"),
        assistant=("<|im_start|>assistant\n", MESSAGE, "<|im_end|>\n"),
        system=("<|im_start|>system\n", MESSAGE, "<|im_end|>\n"),
        specials=("<|im_start|>", "<|im_end|>"),
        end_of_turn="<|im_end|>",
        chat_template=_CHATML,
    ),
    "gemma": PromptFormat(
        "gemma",
        user=("<start_of_turn>user\n", MESSAGE, "<end_of_turn>\n<start_of_turn>model\n"),
        assistant=(MESSAGE, "<end_of_turn>\n"),
        specials=("<start_of_turn>", "<end_of_turn>"),
        end_of_turn="<end_of_turn>",
        chat_template=_GEMMA,
    ),
    "plain": PromptFormat("plain", user=(MESSAGE,), assistant=(MESSAGE,)),
}
