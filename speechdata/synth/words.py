"""The words and prompts synthetic corpora are made of.

Example::

    >>> make_text(np.random.default_rng(0), 17)   # real words, exactly 17 characters
    'letter understand'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Built-in word list (every length from 1 to 12 letters occurs, so any text length can be met).
_WORD_TEXT = """a i an as at be by do go he if in is it me my no of on or so to up we
    all and are but can day for get has her him his how its let man new not now old one our out
    say see she the two use was way who you also back been call come down each even find from
    give good have here into just know like long look make many more most much must name only
    over part said same some such take than that them then they this time very want well went
    what when will with word work year about after again audio being below could every first
    found great house large learn never other place plant point right river small sound spell
    still study their there these thing think three water where which world would write answer
    before change letter listen little number people should another
    because between country example thought through children different important language
    sentence mountain questions understand information development environment
    neighborhood relationship conversation"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())
_WORDS_BY_LEN: dict[int, list[str]] = {}
for _w in WORDS:
    _WORDS_BY_LEN.setdefault(len(_w), []).append(_w)
_MAX_WORD = max(_WORDS_BY_LEN)
_SHORT_WORDS = tuple(w for w in WORDS if len(w) < _MAX_WORD)

_SINGLE_CONTEXTS = (
    "Transcribe {0}",
    "{0} What is being said?",
    "Write down what you hear: {0}",
    "Listen to {0} and repeat it.",
)
_MULTI_CONTEXTS = (
    "Transcribe {clips} in order.",
    "Repeat {clips} one after the other.",
    "What is said in {clips}?",
)
_PLAIN_CONTEXTS = ("Transcribe the audio.", "What is being said?", "Write down what you hear.")


def make_text(rng: np.random.Generator, n_chars: int) -> str:
    """Words from :data:`WORDS` joined by single spaces, exactly ``n_chars`` characters long."""
    words: list[str] = []
    length = 0
    while length < n_chars:
        room = n_chars - length - (1 if words else 0)
        # Never leave a gap of exactly one character: it could not hold " word".
        if room <= _MAX_WORD:
            choice: Sequence[str] = _WORDS_BY_LEN[room]
        elif room - 1 == _MAX_WORD:
            choice = _SHORT_WORDS
        else:
            choice = WORDS
        words.append(choice[int(rng.integers(len(choice)))])
        length += len(words[-1]) + (1 if len(words) > 1 else 0)
    return " ".join(words)


def make_context(rng: np.random.Generator, locator: str | None, clips: int) -> str:
    """A prompt with one ``locator`` per clip (a plain instruction when ``locator`` is None)."""
    if locator is None:
        return _PLAIN_CONTEXTS[int(rng.integers(len(_PLAIN_CONTEXTS)))]
    if clips == 1:
        return _SINGLE_CONTEXTS[int(rng.integers(len(_SINGLE_CONTEXTS)))].format(locator)
    listed = ", ".join([locator] * (clips - 1)) + f" and {locator}"
    return _MULTI_CONTEXTS[int(rng.integers(len(_MULTI_CONTEXTS)))].format(clips=listed)
