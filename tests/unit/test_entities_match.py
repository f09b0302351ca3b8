"""Entity resolution in memory: folding names, scoring them, blocking and deciding."""

from __future__ import annotations

import pytest

from backfill.entities.keys import BlockingIndex, IndexedAlias, blocking_keys
from backfill.entities.match import Candidate, Method, Thresholds, decide, rank
from backfill.entities.normalise import feature_key, fold, name_key, skeleton, tokens
from backfill.entities.score import name_score
from backfill.errors import ConfigError


def test_fold_drops_case_diacritics_punctuation_and_scripts() -> None:
    """Diacritics, Cyrillic and punctuation fold to plain lower-case ASCII words."""
    assert fold("N. Đoković") == "n dokovic"
    assert fold("Müller-Lüdenscheidt, Hans") == "muller ludenscheidt hans"
    assert fold("O'Brien") == "obrien"
    assert fold("Новак Ђоковић") == "novak djokovic"


def test_name_key_ignores_word_order() -> None:
    """ "Last First", "FIRST last" and "First Last" share one exact key."""
    assert name_key("DJOKOVIC Novak") == name_key("Novak Djoković") == "djokovic novak"
    assert tokens("  Rafael   NADAL ") == ("rafael", "nadal")


def test_skeleton_makes_romanisations_one() -> None:
    """Romanisations of one name share a skeleton."""
    assert skeleton("djokovich") == skeleton("djokovic") == skeleton("dokovic")
    assert skeleton("tzonga") == skeleton("tsonga")
    assert skeleton("alexandr") == skeleton("aleksandr")
    assert skeleton("yevgeny") != skeleton("smith")


def test_feature_key_is_stable_and_folded() -> None:
    """Features make one text whatever their order and spelling."""
    assert feature_key({"country": "SRB", "birth_year": 1987}) == feature_key(
        {"birth_year": "1987", "country": "srb"}
    )
    assert feature_key({"country": None}) == ""


@pytest.mark.parametrize(
    ("query", "candidate", "low", "high"),
    [
        ("novak djokovic", "djokovic novak", 1.0, 1.0),
        ("n djokovic", "novak djokovic", 0.95, 0.99),
        ("novak djokovc", "novak djokovic", 0.93, 0.99),
        ("novak djokovich", "novak djokovic", 0.95, 1.0),
        ("maria garcia", "maria garcia lopez", 0.85, 0.92),
        ("novak djokovic", "rafael nadal", 0.0, 0.2),
        ("n djokovic", "m djokovic", 0.0, 0.75),
        ("n djokovic", "djokovic", 0.75, 0.85),
    ],
)
def test_name_score_orders_names_by_likeness(
    query: str, candidate: str, low: float, high: float
) -> None:
    """Order, initials, typos, romanisations and missing words score as a reader would."""
    score = name_score(tuple(query.split()), tuple(candidate.split()))
    assert low <= score <= high


def test_name_score_of_empty_names_is_zero() -> None:
    """An empty name matches nothing."""
    assert name_score((), ("a", "b")) == 0.0


def test_blocking_keys_pair_a_surname_with_an_initial() -> None:
    """A long word gets its ends and a key with each other word's initial."""
    keys = blocking_keys(("novak", "djokovic"))
    assert {"dokovic", "doko<", ">ovic", "dokovic+n", "novak+d"} <= keys
    assert blocking_keys(("n",)) == set()


def test_blocking_index_finds_the_right_alias_among_many() -> None:
    """Among thousands of namesakes the index hands over the one that fits."""
    index = BlockingIndex()
    for i in range(3_000):
        index.add(IndexedAlias(i + 1, i + 1, (f"first{i}", "smith")))
    index.add(IndexedAlias(5_000, 77, ("novak", "djokovic")))
    found = index.candidates(("djokovc", "n"))
    assert [a.entity_id for a in found] == [77]
    assert len(index.candidates(("first12", "smith"), limit=5)) == 5
    assert index.high_water == 5_000 and 5_000 in index


def test_rank_keeps_the_best_alias_per_entity_and_adds_features() -> None:
    """Each entity counts once, by its best alias; a contradicting feature costs."""
    aliases = [
        IndexedAlias(1, 10, ("novak", "djokovic"), {"country": "srb"}),
        IndexedAlias(2, 10, ("nole", "djokovic"), {"country": "srb"}),
        IndexedAlias(3, 11, ("novak", "djokovic"), {"country": "usa"}),
    ]
    ranked = rank(("novak", "djokovic"), {"country": "srb"}, aliases)
    assert [c.entity_id for c in ranked] == [10, 11]
    assert ranked[0].alias_id == 1
    assert ranked[0].score > 1.0 > ranked[1].score


def test_decide_links_reviews_or_creates() -> None:
    """Above accept with a clear lead links; close rivals or a middling score review."""
    thresholds = Thresholds(accept=0.9, review=0.75, margin=0.03)
    assert decide([Candidate(1, 1, "a", 0.95)], thresholds) == (
        Method.FUZZY,
        Candidate(1, 1, "a", 0.95),
    )
    rivals = [Candidate(1, 1, "a", 0.95), Candidate(2, 2, "b", 0.94)]
    assert decide(rivals, thresholds)[0] is Method.REVIEW
    assert decide([Candidate(1, 1, "a", 0.8)], thresholds)[0] is Method.REVIEW
    assert decide([Candidate(1, 1, "a", 0.7)], thresholds) == (Method.NEW, None)
    assert decide([], thresholds) == (Method.NEW, None)


def test_thresholds_refuse_an_impossible_order() -> None:
    """review above accept is a configuration error naming both."""
    with pytest.raises(ConfigError, match="review <= accept"):
        Thresholds(accept=0.7, review=0.8)
    with pytest.raises(ConfigError, match="margin"):
        Thresholds(margin=1.5)
