"""A labelled set of names, made from a fixed seed with Faker: canonical people in many
locales and scripts, the variants sources really write of them, and the truth kept aside.

No two people share a surname and first initial: sources abbreviate to "Last F.", and
where that abbreviation fits two people only a birth date can tell them apart, which a
human reviews (the resolver queues it); a set full of such pairs would measure Faker's
short name lists rather than the resolver.

Used by the tests and by ``bench/entities_bench.py`` to measure the resolver; nothing is
downloaded and nothing is stored. Faker is a development dependency (the ``dev`` extra).

Example::

    data = labelled_set(people=20_000, seed=7)
    for query in data.queries:        # query.truth is the index of the right person
        ...
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from backfill.entities.normalise import fold, name_key, skeleton

__all__ = ["LOCALES", "LabelledSet", "Person", "Query", "labelled_set"]

# Locale and the country its people play for (IOC-style codes, as sports sites show them).
LOCALES: dict[str, str] = {
    "en_US": "USA",
    "en_GB": "GBR",
    "de_DE": "GER",
    "fr_FR": "FRA",
    "es_ES": "ESP",
    "it_IT": "ITA",
    "pt_BR": "BRA",
    "pl_PL": "POL",
    "cs_CZ": "CZE",
    "hr_HR": "CRO",
    "hu_HU": "HUN",
    "ro_RO": "ROU",
    "tr_TR": "TUR",
    "nl_NL": "NED",
    "sv_SE": "SWE",
    "da_DK": "DEN",
    "fi_FI": "FIN",
    "sk_SK": "SVK",
    "sl_SI": "SLO",
    "ru_RU": "RUS",
    "uk_UA": "UKR",
    "bg_BG": "BUL",
    "el_GR": "GRE",
}
# Locales whose people often carry two surnames.
_DOUBLE_SURNAME = {"es_ES", "pt_BR"}
_ACCENTS = {
    "a": "á",
    "e": "é",
    "i": "í",
    "o": "ö",
    "u": "ü",
    "c": "ć",
    "s": "š",
    "z": "ž",
    "n": "ñ",
}
# How one romanisation differs from another (Đoković / Djokovic / Djokovich, Tsonga /
# Tzonga, Aleksandr / Alexandr, Yevgeny / Evgeny).
_ROMANISATIONS = [
    ("dj", "d"),
    ("d", "dj"),
    ("ic", "ich"),
    ("ch", "tch"),
    ("ks", "x"),
    ("x", "ks"),
    ("ts", "tz"),
    ("iy", "y"),
    ("y", "i"),
    ("i", "y"),
    ("ye", "e"),
    ("kh", "h"),
    ("sh", "sch"),
    ("ou", "u"),
    ("ph", "f"),
    ("j", "y"),
    ("w", "v"),
    ("v", "w"),
]


@dataclass(frozen=True, slots=True)
class Person:
    """A canonical person: the name as the master source writes it, and the features."""

    name: str
    first: str
    last: str
    country: str
    birth_year: int


@dataclass(frozen=True, slots=True)
class Query:
    """A name as some source writes it, the features that source gives, and the truth:
    the index of the person meant, or None for somebody not among them."""

    name: str
    kind: str
    features: dict[str, object]
    truth: int | None


@dataclass(slots=True)
class LabelledSet:
    """The people, the stored aliases (each with the person it names) and the queries."""

    people: list[Person]
    aliases: list[tuple[str, int]] = field(default_factory=list)
    queries: list[Query] = field(default_factory=list)


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word
    at = rng.randrange(1, len(word) - 1)
    edit = rng.randrange(4)
    if edit == 0:
        return word[:at] + word[at + 1 :]
    if edit == 1:
        return word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    if edit == 2:
        return word[:at] + word[at] + word[at:]
    return word[:at] + rng.choice("aeiounrst") + word[at + 1 :]


def _accented(word: str, rng: random.Random) -> str:
    spots = [i for i, ch in enumerate(word) if ch.lower() in _ACCENTS]
    if not spots:
        return word
    at = rng.choice(spots)
    accent = _ACCENTS[word[at].lower()]
    return word[:at] + (accent.upper() if word[at].isupper() else accent) + word[at + 1 :]


def _romanised(word: str, rng: random.Random) -> str:
    from anyascii import anyascii

    plain = anyascii(word)
    rules = [(a, b) for a, b in _ROMANISATIONS if a in plain.lower()]
    if not rules:
        return plain
    old, new = rng.choice(rules)
    lower = plain.lower()
    at = lower.index(old)
    out = lower[:at] + new + lower[at + len(old) :]
    return out.capitalize()


def _variant(person: Person, rng: random.Random) -> tuple[str, str]:
    """One name a source might write for ``person``, and what kind of variant it is."""
    first, last = person.first, person.last
    kind = rng.choice(
        ["swapped", "initial", "initial_first", "typo", "plain", "accents", "romanised", "case"]
        + (["surname_dropped", "hyphenated"] if " " in last else [])
    )
    if kind == "swapped":
        return f"{last.upper()} {first}", kind
    if kind == "initial":
        return f"{last} {first[0]}.", kind
    if kind == "initial_first":
        return f"{first[0]}. {last}", kind
    if kind == "typo":
        if rng.random() < 0.5 or len(first) < 4:
            return f"{first} {_typo(last, rng)}", kind
        return f"{_typo(first, rng)} {last}", kind
    if kind == "plain":
        from anyascii import anyascii

        return anyascii(f"{first} {last}"), kind
    if kind == "accents":
        return f"{_accented(first, rng)} {_accented(last, rng)}", kind
    if kind == "romanised":
        which = rng.random()
        if which < 0.4:
            return f"{_romanised(first, rng)} {last}", kind
        if which < 0.8:
            return f"{first} {_romanised(last, rng)}", kind
        return f"{_romanised(first, rng)} {_romanised(last, rng)}", kind
    if kind == "surname_dropped":
        return f"{first} {last.rsplit(' ', 1)[0]}", kind
    if kind == "hyphenated":
        return f"{first} {last.replace(' ', '-')}", kind
    return f"{first.lower()} {last.upper()}", kind


def _faker(seed: int) -> Callable[[str], object]:
    try:
        from faker import Faker
    except ImportError as exc:  # pragma: no cover - the dev extra brings Faker
        raise RuntimeError("the labelled set needs Faker: pip install 'backfill[dev]'") from exc
    fake = Faker(list(LOCALES))
    fake.seed_instance(seed)
    return lambda locale: fake[locale]


def labelled_set(
    people: int = 20_000,
    *,
    seed: int = 2026,
    aliases_per_person: int = 0,
    queries: int | None = None,
    strangers: float = 0.1,
    birth_year_share: float = 0.5,
) -> LabelledSet:
    """``people`` distinct canonical people (no two with one name key), each stored under
    its canonical name plus ``aliases_per_person`` variants, and ``queries`` new variants
    (by default one per person) with ``strangers`` of them naming somebody else.

    Every query carries the country; ``birth_year_share`` of them the birth year too.
    The same arguments give the same set.
    """
    rng = random.Random(seed)
    locale_of = _faker(seed)
    locales = list(LOCALES)
    chosen: list[Person] = []
    keys: set[str] = set()

    def person() -> Person:
        while True:
            locale = rng.choice(locales)
            fake = locale_of(locale)
            first = str(fake.first_name())  # type: ignore[attr-defined]
            last = str(fake.last_name())  # type: ignore[attr-defined]
            if locale in _DOUBLE_SURNAME and rng.random() < 0.35:
                last = f"{last} {fake.last_name()}"  # type: ignore[attr-defined]
            if " " in first:
                first = first.split()[0]
            key = name_key(f"{first} {last}")
            # Sources abbreviate to "Last F."; a set where that fits two people would
            # measure a coin toss (see the module's note).
            short = f"{skeleton(fold(first))[:1]}|{name_key(last)}"
            if key and key not in keys and short not in keys:
                keys.update((key, short))
                year = rng.randrange(1960, 2008)
                return Person(f"{first} {last}", first, last, LOCALES[locale], year)

    chosen = [person() for _ in range(people)]
    data = LabelledSet(chosen)
    for index, someone in enumerate(chosen):
        data.aliases.append((someone.name, index))
        for _ in range(aliases_per_person):
            data.aliases.append((_variant(someone, rng)[0], index))
    wanted = people if queries is None else queries
    for _ in range(wanted):
        if rng.random() < strangers:
            stranger = person()
            name, kind = _variant(stranger, rng)
            truth, features_of = None, stranger
        else:
            truth = rng.randrange(people)
            features_of = chosen[truth]
            name, kind = _variant(features_of, rng)
        features: dict[str, object] = {"country": features_of.country}
        if rng.random() < birth_year_share:
            features["birth_year"] = features_of.birth_year
        data.queries.append(Query(name, kind, features, truth))
    return data
