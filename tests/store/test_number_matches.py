"""The number matches a store keeps (sql._NumberMatches): bounded by texts
and by ids, least recently kept out first, a newer match of a text wins."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import cdrd.store.sql as sql


def entry(n, seen=1):
    return (frozenset(range(n)), seen, None)


def test_the_ids_kept_over_every_text_are_bounded(monkeypatch):
    monkeypatch.setattr(sql, "NUMBER_MATCHES_IDS", 10)
    m = sql._NumberMatches()
    m.keep("aaa", entry(4))
    m.keep("bbb", entry(4))
    m.keep("ccc", entry(4))  # 12 > 10: the oldest goes
    assert list(m.texts) == ["bbb", "ccc"] and m.ids == 8
    m.keep("ddd", entry(11))  # alone over the bound: not kept
    assert list(m.texts) == ["bbb", "ccc"] and m.ids == 8
    m.keep("eee", (None, 1, None))  # too many numbers: kept, no ids
    assert list(m.texts) == ["bbb", "ccc", "eee"] and m.ids == 8


def test_a_newer_match_of_a_text_replaces_it_and_an_older_one_does_not():
    m = sql._NumberMatches()
    m.keep("aaa", entry(3, seen=5))
    m.keep("aaa", entry(2, seen=4))  # a search that began before: dropped
    assert m.texts["aaa"][1] == 5 and m.ids == 3
    m.keep("aaa", entry(6, seen=9))
    assert m.texts["aaa"][1] == 9 and m.ids == 6


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 30), st.integers(0, 5)), max_size=60))
def test_the_bounds_hold_and_the_count_is_the_sum(keeps):
    saved = sql.NUMBER_MATCHES_IDS, sql.NUMBER_MATCHES_KEPT
    sql.NUMBER_MATCHES_IDS, sql.NUMBER_MATCHES_KEPT = 40, 4
    try:
        m = sql._NumberMatches()
        for text, n, seen in keeps:
            m.keep(text * 3, entry(n, seen))
            assert len(m.texts) <= 4 and m.ids <= 40
            assert m.ids == sum(len(ids or ()) for ids, *_ in m.texts.values())
    finally:
        sql.NUMBER_MATCHES_IDS, sql.NUMBER_MATCHES_KEPT = saved
