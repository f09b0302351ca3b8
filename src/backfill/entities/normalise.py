"""Names made comparable: diacritics and scripts folded to ASCII (with ``anyascii``, a
library made for transliteration), case, punctuation and hyphens dropped, and the order of
the words made irrelevant, so "DJOKOVIC Novak", "Novak Djoković" and "Новак Ђоковић" share
one key."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache

from backfill._optional import require_entities

__all__ = ["feature_key", "fold", "name_key", "skeleton", "tokens"]

_NOT_WORD = re.compile(r"[^a-z0-9]+")
# Apostrophes join (O'Brien, D'Amato); every other mark separates words.
_JOINERS = re.compile(r"['’`´]")
_ANYASCII: Callable[[str], str] | None = None


def _transliterate() -> Callable[[str], str]:
    global _ANYASCII
    require_entities()
    from anyascii import anyascii

    _ANYASCII = anyascii
    return anyascii


@lru_cache(maxsize=131_072)
def fold(text: str) -> str:
    """``text`` in lower-case ASCII words separated by one space: ``"N. Đoković"`` is
    ``"n dokovic"``, ``"Müller-Lüdenscheidt"`` is ``"muller ludenscheidt"``."""
    anyascii = _ANYASCII or _transliterate()
    ascii_text = _JOINERS.sub("", anyascii(text)).lower()
    return " ".join(_NOT_WORD.sub(" ", ascii_text).split())


# Spellings that romanisations of one name differ by (Đoković / Djokovic / Djokovich,
# Tsonga / Tzonga, Aleksandr / Alexandr, Yevgeny / Evgeny), each brought to one form.
_SPELLINGS = [
    (re.compile(r"tch|tsch"), "ch"),
    (re.compile(r"sch"), "sh"),
    (re.compile(r"dj"), "d"),
    (re.compile(r"kh"), "h"),
    (re.compile(r"ph"), "f"),
    (re.compile(r"tz|cz"), "ts"),
    (re.compile(r"x"), "ks"),
    (re.compile(r"w"), "v"),
    (re.compile(r"y|j"), "i"),
    (re.compile(r"ou"), "u"),
    (re.compile(r"ich\b"), "ic"),
    (re.compile(r"(.)\1+"), r"\1"),
]


@lru_cache(maxsize=131_072)
def skeleton(word: str) -> str:
    """A folded word with the spellings romanisations differ by made one: ``djokovich``,
    ``djokovic`` and ``dokovic`` are all ``dokovic``; ``yevgeny`` is ``ievgeni``."""
    for pattern, replacement in _SPELLINGS:
        word = pattern.sub(replacement, word)
    return word


def tokens(text: str) -> tuple[str, ...]:
    """The folded words of ``text``."""
    return tuple(fold(text).split())


def name_key(text: str) -> str:
    """The exact-match key of a name: its folded words in sorted order, so that "Last
    First" and "First Last" agree."""
    return " ".join(sorted(tokens(text)))


def feature_key(features: Mapping[str, object]) -> str:
    """Context features (country, birth year, ...) as one stable text, folded like names:
    part of an entity's identity, so two people of one name but another birth year are
    two entities."""
    return "|".join(f"{k}={fold(str(v))}" for k, v in sorted(features.items()) if v is not None)
