"""
The number search through the numbers dictionary (docs/store.md, "Number
search"), as a mixin for the SQL stores: a subclass provides an opened
`store` fixture and `connect`, a function giving a new DB-API connection
to the same database (the hypothesis test queries through it, in the test's
own thread: a test cannot wait for the reactor).  The plain LIKE scan is
what the dictionary must answer.
"""

from __future__ import annotations

import copy
import random

from attrs import evolve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import capturedLogs, formatEvent

import cdrd.store.sql as sql
from cdrd.interfaces import CALL_FILTERS, CALL_SORTS, CallQuery, CallTotals, WriteBatch
from cdrd.store.schema import MIGRATIONS, NUMBERS_MIGRATION
from tests.store.contract import deferred_test, oracle_search, oracle_totals
from tests.store.values import DAY, HOUR, KEY, KEY2, NOTATIONS, record

#: a few letters, so that substrings recur across calls and numbers (and
#: one call has several numbers that match a search)
ALPHABET = "01aB"


def number_records(n: int = 240, seed: int = 3):
    """Records whose four numbers are short strings of ALPHABET (often
    equal, often one containing another, some empty) over three days."""
    rnd = random.Random(seed)

    def number():
        return "".join(rnd.choice(ALPHABET) for _ in range(rnd.choice([0, 3, 4, 5, 6, 9])))

    out = []
    for ref in range(n):
        begin = DAY - 24 * HOUR + rnd.randrange(0, 3 * 24 * 60) * 60_000 + rnd.randrange(0, 2) * 1000
        answered = rnd.random() < 0.6
        dialed, cli = number(), number()
        out.append(record(
            ref, begin, gateway=rnd.choice([KEY, KEY2]), notation=rnd.choice(NOTATIONS),
            pstn=rnd.random() < 0.3, dialed=dialed, cli=cli,
            pstn_dial=rnd.choice([dialed, "", number()]), pstn_cli=rnd.choice([cli, "", number()]),
            connect=begin + 1000 if answered else None,
            talk=rnd.choice([0, 999, 61_000]) if answered else None, cause=rnd.choice(["", "busy"]),
        ))
    return out


def _plain_scan(fn, query):
    """What the store answers with the dictionary left out (the LIKE scan)."""
    saved = sql.MIN_NUMBER_TEXT
    sql.MIN_NUMBER_TEXT = 10**6
    try:
        return fn(query)
    finally:
        sql.MIN_NUMBER_TEXT = saved


async def matched(store, text):
    """The ids of the numbers the dictionary finds for `text` (None: it cannot answer)."""
    return await store._read(lambda cur: store._match_numbers(cur, text))


def synchronous(store, conn):
    """The store's queries run at once on `conn`, answering values, not Deferreds."""
    same = copy.copy(store)

    def read(fn, *args):
        cur = conn.cursor()
        try:
            return fn(cur, *args)
        finally:
            conn.rollback()
    same._read = read
    return same


queries = st.builds(
    CallQuery,
    number=st.text(ALPHABET + "Ab", min_size=3, max_size=5),
    gateway=st.sampled_from([None, KEY, KEY2]),
    since=st.sampled_from([None, DAY - 24 * HOUR, DAY + 90_000]),
    until=st.sampled_from([None, DAY, DAY + 30 * HOUR + 1000]),
    filter=st.sampled_from(CALL_FILTERS),
    min_talk=st.sampled_from([None, 1000]),
    windows=st.sampled_from([None, ((DAY + 9 * HOUR, DAY + 17 * HOUR), (DAY - 15 * HOUR, DAY - 14 * HOUR))]),
    cause=st.sampled_from([None, None, "busy"]),
    sort=st.sampled_from(("begin", "begin", *CALL_SORTS)),
    descending=st.booleans(),
    limit=st.sampled_from([5, 100]),
    offset=st.sampled_from([0, 3, 40]),
)


class NumberSearchContract:
    @deferred_test
    async def test_number_search_through_the_dictionary_is_the_like_scan(self, store, connect):
        records = number_records()
        await store.write(WriteBatch(records=records[:100]))
        await store.write(WriteBatch(records=records[100:]))
        conn = connect()
        same = synchronous(store, conn)

        @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(query=queries)
        def check(query):
            assert same._read(lambda cur: same._match_numbers(cur, query.number)) is not None
            got = same.calls(query)
            assert got == _plain_scan(same.calls, query)
            total, filtered, page = oracle_search(records, [], query)
            assert (got.total, got.filtered, list(got.records)) == (total, filtered, page)
            totals = same.call_totals(query)
            assert totals == _plain_scan(same.call_totals, query)
            assert totals == oracle_totals(oracle_search(records, [], evolve(query, limit=10**6, offset=0))[2])

        try:
            check()
        finally:
            conn.close()

    @deferred_test
    async def test_a_texts_numbers_are_kept_and_only_numbers_added_since_are_matched_again(self, store):
        """The report page runs its search's match for the calls, the totals
        and the tabs (11-18 ms each on PostgreSQL at ten million numbers):
        the store keeps what a text matched and the dictionary's highest id,
        and matches again only the numbers added since."""
        asked = []  # the lowest id each match of the dictionary read from
        exec_ = store._exec

        def spy(cur, statement, params=()):
            if statement.startswith("SELECT id FROM numbers WHERE"):
                asked.append(params[-2])
            return exec_(cur, statement, params)
        store._exec = spy
        first = record(1, DAY, dialed="1234567", cli="55")
        await store.write(WriteBatch(records=[first]))
        q = CallQuery(number="2345", limit=100)
        assert [r.id for r in (await store.calls(q)).records] == [first.id]
        assert [r.id for r in (await store.calls(q)).records] == [first.id]
        assert asked == [0]  # the second search added nothing to ask
        top = await store._read(lambda cur: store._exec(cur, "SELECT MAX(id) FROM numbers").fetchone()[0])
        more = [record(2, DAY + 1000, dialed="992345", cli="66"), record(3, DAY + 2000, dialed="777")]
        await store.write(WriteBatch(records=more))
        assert [r.id for r in (await store.calls(q)).records] == [first.id, more[0].id]
        assert asked == [0, top]  # only the numbers added since
        assert (await store.call_totals(evolve(q, filter="all"))).calls == 2
        # a dictionary that is not the one matched (restored from a backup,
        # an asynchronous replica promoted): matched again from the start
        await store._run(lambda cur: store._exec(
            cur, "UPDATE numbers SET number = 'x1' WHERE id = (SELECT MAX(id) FROM numbers)"), write=True)
        await store.calls(q)
        assert asked[-1] == 0

    @deferred_test
    async def test_a_dense_number_search_finds_its_page_in_a_stretch_of_its_dates(self, store, connect):
        """A text that matches very many calls: the page is looked for in
        the stretch of the dates at its end first (SqlStore._postings_page)
        and is exactly the whole range's page, whether the stretch holds it
        (matches spread evenly) or not (matches bunched at the other end,
        a few in the stretch: the whole range is read)."""
        rnd = random.Random(5)
        spread = [record(ref, DAY - 24 * HOUR + rnd.randrange(0, 72 * 60) * 60_000 + rnd.randrange(0, 2) * 1000,
                         gateway=rnd.choice([KEY, KEY2]), dialed=f"0777{ref % 7}", cli=f"777{ref % 3}")
                  for ref in range(400)]
        bunched = [record(1000 + ref, DAY - 24 * HOUR + rnd.randrange(0, 60) * 60_000, dialed="4448",
                          cli=f"9{ref % 2}") for ref in range(120)]
        bunched += [record(1500 + ref, DAY + 47 * HOUR + ref * 60_000, dialed="4448") for ref in range(3)]
        filler = [record(2000 + ref, DAY + 40 * HOUR - rnd.randrange(0, 600) * 60_000, dialed="5", cli="6")
                  for ref in range(60)]
        records = spread + bunched + filler
        await store.write(WriteBatch(records=records))
        conn = connect()
        same = synchronous(store, conn)
        pages = []  # per search: each page query's count of Begin terms (3: in a stretch)
        exec_ = same._exec

        def spy(cur, statement, params=()):
            if statement.startswith("SELECT call_id FROM call_numbers"):
                pages[-1].append(statement.count("begin_ms >= ?") + statement.count("begin_ms < ?"))
            return exec_(cur, statement, params)
        same._exec = spy
        saved = sql.DENSE_POSTINGS
        sql.DENSE_POSTINGS = 1
        try:
            for text in ("777", "444"):
                for descending in (True, False):
                    for offset, limit in ((0, 10), (5, 10), (30, 7), (395, 10), (0, 100)):
                        q = CallQuery(number=text, since=DAY - 24 * HOUR, until=DAY + 48 * HOUR,
                                      descending=descending, offset=offset, limit=limit)
                        pages.append([])
                        got = same.calls(q)
                        total, filtered, page = oracle_search(records, [], q)
                        assert (got.filtered, list(got.records)) == (filtered, page), q
        finally:
            sql.DENSE_POSTINGS = saved
            conn.close()
        # the stretch served some pages alone, some needed the whole range after it
        assert [3] in pages and [3, 2] in pages, pages

    @deferred_test
    async def test_the_dictionary_holds_each_number_once_and_retention_takes_the_postings(self, store):
        records = number_records(120)
        await store.write(WriteBatch(records=records[:60]))
        await store.write(WriteBatch(records=records[60:]))
        await store.write(WriteBatch(records=records[:10]))  # stored already: nothing new

        def rows(cur):
            numbers = store._exec(cur, "SELECT number FROM numbers").fetchall()
            postings = store._exec(
                cur, "SELECT call_id, number_id, l1, l2, l3 FROM call_numbers").fetchall()
            ids = dict(store._exec(cur, "SELECT id, number FROM numbers").fetchall())
            return [n for (n,) in numbers], [
                (c, ids[n], *sorted((lo for lo in (l1, l2, l3) if lo), reverse=True))
                for c, n, l1, l2, l3 in postings
            ], ids

        numbers, postings, ids = await store._read(rows)
        assert sorted(numbers) == sorted({n for r in records for n in sql._numbers_of(r)})
        by_id = {v: k for k, v in ids.items()}
        want = set()
        for r in records:
            mine = sorted(by_id[n] for n in sql._numbers_of(r))
            for k, i in enumerate(mine):
                want.add((r.id, ids[i], *mine[:k][::-1]))  # its lower numbers' ids
        assert set(postings) == want
        old = [r for r in records if r.begin < DAY]
        expired = await store.expire("records", DAY, 1000)
        assert expired.deleted == len(old)
        kept = [r for r in records if r.begin >= DAY]
        _, postings, _ = await store._read(rows)
        assert {c for c, *_ in postings} == {r.id for r in kept if sql._numbers_of(r)}
        q = CallQuery(number="01a", limit=10**6)
        assert await matched(store, "01a") is not None
        assert (await store.calls(q)).records == tuple(oracle_search(kept, [], q)[2])

    @deferred_test
    async def test_a_number_search_scans_calls_when_the_dictionary_cannot_answer(self, store):
        records = number_records(120)
        await store.write(WriteBatch(records=records))
        assert await matched(store, "12") is None  # shorter than a trigram
        assert await matched(store, "1_5") is None  # a LIKE wildcard
        assert await matched(store, "zzzz") == []
        for text in ("12", "1_5", "zzzz", "AB", "ab0"):
            q = CallQuery(number=text, limit=10**6)
            assert list((await store.calls(q)).records) == oracle_search(records, [], q)[2]


    @deferred_test
    async def test_a_number_search_counts_up_to_the_cap(self, store):
        """Beyond number_count_cap matching calls, the count stops at the
        cap and says so, the totals too; the pages are still the search's."""
        records = number_records(240)
        await store.write(WriteBatch(records=records))
        q = CallQuery(number="01a", sort="begin", descending=True, limit=4)
        _, n, _ = oracle_search(records, [], q)
        assert n > 6
        everything = oracle_search(records, [], evolve(q, limit=10**6))[2]
        for cap in (n, n + 1):  # at the cap and above it: exact
            store.number_count_cap = cap
            page = await store.calls(q)
            assert (page.filtered, page.capped) == (n, False)
            assert await store.call_totals(q) == oracle_totals(everything)
        store.number_count_cap = n - 1
        page = await store.calls(q)
        assert (page.filtered, page.capped) == (n - 1, True)
        assert list(page.records) == everything[:4]  # the newest, exact
        assert (await store.calls(evolve(q, offset=n - 2))).records == tuple(everything[n - 2:n + 2])
        assert (await store.calls(evolve(q, offset=n - 1))).records == ()  # pages up to the cap
        keyset = await store.calls(evolve(q, limit=10**6, after=(everything[0].begin, everything[0].id)))
        assert list(keyset.records) == everything[1:]  # keyset pages (exports) stay complete
        assert await store.call_totals(q) == CallTotals(calls=n - 1, capped=True)
        # searches the postings do not serve count exactly
        busy = evolve(q, cause="busy")
        assert (await store.calls(busy)).capped is False


async def assert_numbers_backfilled(store, records):
    """`store` (not open yet) opens on a database of the schema before the
    numbers migration that holds `records`: after the migration the
    dictionary answers number searches as the LIKE scan does, and the
    records written next are found too (the trigram index kept)."""
    with capturedLogs() as logs:
        await store.open()
    try:
        assert store.schema_version == len(MIGRATIONS)  # and on, to the latest
        # the operator sees a long migration begin, not only end
        assert f"migrating to version {NUMBERS_MIGRATION} of" in " ".join(
            formatEvent(e) for e in logs)
        await _backfilled(store, records)
    finally:
        await store.close()


async def _backfilled(store, records):
    for text in ("01a", "aB1", "0000", "1a0", "Bb"):
        q = CallQuery(number=text, limit=10**6)
        if len(text) >= sql.MIN_NUMBER_TEXT:
            assert await matched(store, text) is not None
        assert list((await store.calls(q)).records) == oracle_search(records, [], q)[2], text
        want = oracle_totals(oracle_search(records, [], q)[2])
        assert await store.call_totals(evolve(q, filter="all")) == want
    more = number_records(40, seed=9)
    more = [evolve(r, id=r.id + "-new", ref=r.ref + 1000, dialed="zz01aB") for r in more]
    await store.write(WriteBatch(records=more))
    q = CallQuery(number="z01a", limit=10**6)
    assert (await matched(store, "z01a")) and list((await store.calls(q)).records) == sorted(
        more, key=lambda r: (r.begin, r.id))
