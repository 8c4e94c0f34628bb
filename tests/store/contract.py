"""
The IStore contract, as one mixin run against every store (txacme's
test_store.py, tahoe's test_istorageserver.py): a subclass provides a
`store` fixture giving an opened store.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from attrs import evolve
from zope.interface.verify import verifyObject

from cdrd.interfaces import (
    CALL_FILTERS,
    CALL_SORTS,
    CDR_SORTS,
    SUMMARY_SORTS,
    CallQuery,
    CallTotals,
    CdrQuery,
    CuiTotals,
    EventQuery,
    Expired,
    IStore,
    LogCount,
    LogQuery,
    SummaryPage,
    SummaryRow,
    WriteBatch,
    shifted,
    summary_sort_key,
)
from cdrd.store.schema import ATTEMPT_NOTATIONS, FILTER_NOTATION
from tests.store.values import (
    DAY,
    HOUR,
    KEY,
    KEY2,
    NOTATIONS,
    cdr,
    cursor,
    event,
    gateway_state,
    item,
    log_entry,
    random_records,
    record,
    searchable,
)

deferred_test = pytest_twisted.ensureDeferred
DAY_MS = 24 * 3_600_000


def oracle_calls(records, q):
    """What CallQuery q must answer over `records`, computed the naive way."""
    base = [
        r for r in records
        if (q.gateway is None or r.gateway == q.gateway)
        and (q.since is None or r.begin >= q.since)
        and (q.until is None or r.begin < q.until)
    ]
    if q.filter == "all":
        chosen = base
    elif q.filter == "pstn":
        chosen = [r for r in base if r.pstn]
    else:
        chosen = [r for r in base if r.notation == FILTER_NOTATION[q.filter]]
    chosen = sorted(chosen, key=lambda r: (r.begin, r.id))
    return len(base), len(chosen), chosen[q.offset:q.offset + q.limit]


def _nulls_first(value):
    return (value is not None, value if value is not None else 0)


def oracle_search(records, cdrs, q):
    """What a CallQuery with search terms must answer, the naive way."""
    total, _, _ = oracle_calls(records, evolve(q, limit=0))
    chosen = oracle_calls(records, evolve(q, offset=0, limit=10**9))[2]
    with_cui = {c.call for c in cdrs if q.cui is not None and c.cui[:len(q.cui)] == q.cui}

    def keep(r):
        talk = r.talk or 0
        return (
            (q.number is None or any(q.number.lower() in x.lower()
                                     for x in (r.dialed, r.cli, r.pstn_dial, r.pstn_cli)))
            and (q.cui is None or r.id in with_cui)
            and (q.min_talk is None or talk >= q.min_talk)
            and (q.max_talk is None or talk <= q.max_talk)
            and (q.windows is None or any(a <= r.begin < b for a, b in q.windows))
            and (q.cause is None or r.cause == q.cause)
        )

    chosen = [r for r in chosen if keep(r)]
    column = {"begin": "begin", "end": "end"}.get(q.sort, q.sort)
    chosen.sort(key=lambda r: (_nulls_first(getattr(r, column)), r.id), reverse=q.descending)
    return total, len(chosen), chosen[q.offset:q.offset + q.limit]


def oracle_totals(records):
    attempts = [r for r in records if r.notation in ATTEMPT_NOTATIONS]
    answered = [r for r in attempts if r.connect is not None]
    return CallTotals(
        calls=len(records), answered=sum(r.connect is not None for r in records),
        attempts=len(attempts), attempts_answered=len(answered), talk=sum(r.talk or 0 for r in answered),
    )


async def assert_filter_totals(store, records):
    """Every filter's totals, for every gateway and for one, over the days
    around DAY, agree with `records` (the filter sums migration's tests)."""
    for flt in CALL_FILTERS:
        for gateway in (None, KEY):
            q = CallQuery(gateway=gateway, since=DAY - 24 * HOUR, until=DAY + 48 * HOUR, filter=flt)
            assert await store.call_totals(q) == oracle_totals(oracle_calls(records, evolve(q, limit=10**6))[2])


def oracle_summary(records, group, prefix, bucket, sort=None, descending=False, shift=None):
    """Every group of a summary, in its order (SummaryPage.rows of them all)."""
    keys = {
        "caller": lambda r: r.cli,
        "destination": lambda r: r.dialed[:prefix] if prefix else r.dialed,
        "gateway": lambda r: r.gateway,
        "time": lambda r: str(shifted(r.begin, shift) // bucket * bucket) if bucket else None,
    }
    groups = {}
    for r in records:
        groups.setdefault(keys[group](r), []).append(r)
    rows = [SummaryRow(key=k, totals=oracle_totals(v)) for k, v in groups.items()]
    return sorted(rows, key=summary_sort_key(sort, group == "time"), reverse=descending)


def oracle_cdrs(cdrs, q):
    """(total, page) a CdrQuery with search terms must answer; cdrs in written order."""
    written = {c.id: n for n, c in enumerate(cdrs)}

    def keep(c):
        d = c.duration or 0
        return (
            (q.gateway is None or c.gateway == q.gateway)
            and (q.cui is None or c.cui[:len(q.cui)] == q.cui)
            and (q.call is None or c.call == q.call)
            and (q.since is None or c.start >= q.since) and (q.until is None or c.start < q.until)
            and (q.number is None or q.number.lower() in c.dialled.lower() or q.number.lower() in c.cli.lower())
            and (q.min_duration is None or d >= q.min_duration)
            and (q.max_duration is None or d <= q.max_duration)
            and (q.windows is None or any(a <= c.start < b for a, b in q.windows))
            and (q.cause is None or c.status == q.cause)
            and (q.cuis is None or c.cui in q.cuis)
        )

    out = [c for c in cdrs if keep(c)]
    if q.sort == "written":
        out.sort(key=lambda c: written[c.id], reverse=q.descending)
    else:
        out.sort(key=lambda c: (_nulls_first(getattr(c, q.sort)), written[c.id]), reverse=q.descending)
    return len(out), out[q.offset:q.offset + q.limit]


def oracle_cui_totals(cdrs):
    by = {}
    for c in cdrs:
        by.setdefault(c.cui, []).append(c)
    return [
        CuiTotals(cui=k, cdrs=len(v), answered=sum(c.duration is not None for c in v),
                  duration=sum(c.duration or 0 for c in v))
        for k, v in sorted(by.items())
    ]


async def gateway_event_reads(store, monkeypatch) -> list[tuple[str, tuple]]:
    """
    The statements (as sent, with their parameters) with which `store`
    reads a gateway's events: after an id (its own event's, and the last
    event, another gateway's: the walk down) and newest first; for the
    stores' tests to ask their database's plan of.
    """
    r = await store.write(WriteBatch(events=[
        *(event(s) for s in range(1, 6)), event(None, type="STALE"), event(1, gateway=KEY2)]))
    ids = [e.id for e in r.events]
    statements = []
    run = store._exec

    def recorded(cur, statement, params=()):
        statements.append((store.sql(statement), tuple(params)))
        return run(cur, statement, params)

    monkeypatch.setattr(store, "_exec", recorded)
    assert [e.seq for e in await store.events_after(KEY, ids[1], 10)] == [3, 4, 5, None]
    assert [e.seq for e in await store.events_after(KEY, ids[-1], 10)] == []
    assert [e.seq for e in await store.events(EventQuery(gateway=KEY, limit=2))] == [None, 5]
    monkeypatch.undo()
    return statements


class StoreContract:
    """Every IStore behaves like this."""

    def test_provides_istore(self, store):
        assert verifyObject(IStore, store)

    # -- events ---------------------------------------------------------------

    @deferred_test
    async def test_events_get_increasing_ids_and_duplicates_are_left_out(self, store):
        first = await store.write(WriteBatch(events=[
            event(1, port="1"), event(2, type="DIAL", digits="2252"),
            event(2, type="DIAL", digits="2252"),  # a resend inside the batch
            event(None, type="STALE"), event(None, type="STALE"),  # synthetic: always inserted
        ]))
        assert [(e.seq, e.type) for e in first.events] == [
            (1, "HOOK_OFF"), (2, "DIAL"), (None, "STALE"), (None, "STALE")]
        ids = [e.id for e in first.events]
        assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids))
        assert first.events[0].fields == {"port": "1"}

        second = await store.write(WriteBatch(events=[
            event(1), event(3, type="HOOK_ON"), event(1, gateway=KEY2)]))
        assert [(e.gateway, e.seq) for e in second.events] == [(KEY, 3), (KEY2, 1)]
        assert second.events[0].id > ids[-1]
        assert second.events[1].id > second.events[0].id

        again = await store.write(WriteBatch(events=[event(1), event(2), event(3)]))
        assert again.events == ()

        stored = await store.events(EventQuery(gateway=KEY, newest_first=False))
        assert [(e.seq, e.type) for e in stored] == [
            (1, "HOOK_OFF"), (2, "DIAL"), (None, "STALE"), (None, "STALE"), (3, "HOOK_ON")]
        # stored as written: fields, boot, times
        assert stored[0] == first.events[0]
        assert stored[1].fields == {"digits": "2252"} and stored[1].received == DAY + 5

    @deferred_test
    async def test_event_queries(self, store):
        events = [event(seq, ref=seq % 3, time=DAY + seq * 1000) for seq in range(1, 13)]
        events.append(event(1, gateway=KEY2, time=DAY + 500))
        await store.write(WriteBatch(events=events[:6]))
        await store.write(WriteBatch(events=events[6:]))

        newest = await store.events(EventQuery(gateway=KEY, limit=3))
        assert [e.seq for e in newest] == [12, 11, 10]
        page = await store.events(EventQuery(gateway=KEY, limit=3, offset=3))
        assert [e.seq for e in page] == [9, 8, 7]
        oldest = await store.events(EventQuery(gateway=KEY, limit=2, newest_first=False))
        assert [e.seq for e in oldest] == [1, 2]
        by_ref = await store.events(EventQuery(gateway=KEY, ref=1, newest_first=False))
        assert [e.seq for e in by_ref] == [1, 4, 7, 10]
        window = await store.events(EventQuery(since=DAY + 500, until=DAY + 3000, newest_first=False))
        assert [(e.gateway, e.seq) for e in window] == [(KEY, 1), (KEY, 2), (KEY2, 1)]
        everything = await store.events(EventQuery(limit=100))
        assert len(everything) == 13

    @deferred_test
    async def test_events_after_is_replay_by_id(self, store):
        r = await store.write(WriteBatch(events=[event(s) for s in range(1, 6)] + [event(1, gateway=KEY2)]))
        ids = [e.id for e in r.events]
        after = await store.events_after(KEY, ids[1], 2)
        assert [e.seq for e in after] == [3, 4]
        assert [e.seq for e in await store.events_after(KEY, 0, 100)] == [1, 2, 3, 4, 5]
        assert [e.seq for e in await store.events_after(KEY2, 0, 100)] == [1]
        assert await store.events_after(KEY, ids[4], 100) == []
        # every gateway
        assert [(e.gateway, e.seq) for e in await store.events_after(None, ids[3], 100)] == [
            (KEY, 5), (KEY2, 1)]

    @deferred_test
    async def test_a_gateways_events_by_id_with_cdrds_own_and_other_gateways_between(self, store):
        # Recovery and the catch-up read a gateway's events after an id,
        # the gateway page its newest: by id, whatever index serves them
        # (SqlStore._gateway_events: seq order, and cdrd's own events
        # merged in).  Every after-id: the gateway's own events, cdrd's,
        # another gateway's, and ids no event has.
        batches = [
            [event(1), event(1, gateway=KEY2), event(None, type="STALE"), event(2)],
            [event(None, type="STALE"), event(None, type="STALE", gateway=KEY2)],
            [event(2, gateway=KEY2), event(5), event(None, type="STALE"), event(6), event(7)],  # a seq gap
            [event(3, gateway=KEY2)],
            [event(None, type="STALE"), event(None, type="STALE")],
            [event(8), event(4, gateway=KEY2)],
        ]
        stored = []
        for batch in batches:
            stored += (await store.write(WriteBatch(events=batch))).events
        top = max(e.id for e in stored)
        for gateway in (KEY, KEY2):
            mine = [e for e in stored if e.gateway == gateway]
            for after in range(0, top + 2):
                expected = [e for e in mine if e.id > after]
                for limit in (1, 2, 100):
                    got = await store.events_after(gateway, after, limit)
                    assert got == expected[:limit], (gateway, after, limit)
            newest = list(reversed(mine))
            for offset in range(len(mine) + 1):
                page = await store.events(EventQuery(gateway=gateway, limit=2, offset=offset))
                assert page == newest[offset:offset + 2], (gateway, offset)
                page = await store.events(EventQuery(gateway=gateway, limit=3, offset=offset, newest_first=False))
                assert page == mine[offset:offset + 3], (gateway, offset)

    # -- gateway log ----------------------------------------------------------

    @deferred_test
    async def test_log_newest_first_by_key_or_bare_id(self, store):
        await store.write(WriteBatch(log=[
            log_entry(DAY + 1, "Login"),
            log_entry(DAY + 2, "Login", mac="000C2A0200FF"),  # same gw id, other MAC
            log_entry(DAY + 3, "Bad Packet", gateway="???", mac="", detail="unknown verb"),
        ]))
        await store.write(WriteBatch(log=[log_entry(DAY + 4, "Logout")]))

        everything = await store.log(LogQuery())
        assert [e.time - DAY for e in everything] == [4, 3, 2, 1]
        assert everything[1].detail == "unknown verb" and everything[1].gateway == "???"
        assert all(isinstance(e.id, int) for e in everything)
        by_key = await store.log(LogQuery(gateway=KEY))
        assert [e.event for e in by_key] == ["Logout", "Login"]
        assert [e.mac for e in by_key] == ["000C2A020082"] * 2
        by_id = await store.log(LogQuery(gateway="8200"))
        assert len(by_id) == 3
        window = await store.log(LogQuery(since=DAY + 2, until=DAY + 4))
        assert [e.time - DAY for e in window] == [3, 2]
        page = await store.log(LogQuery(limit=2, offset=1))
        assert [e.time - DAY for e in page] == [3, 2]
        assert await store.log(LogQuery(gateway="9999")) == []

    @deferred_test
    async def test_a_coalesced_log_entry_keeps_its_row_and_takes_its_count(self, store):
        first = log_entry(DAY + 1, "Bad Packet", gateway="???", mac="", detail="unknown verb", peer="127.0.0.9:4001")
        same_time_other_peer = log_entry(DAY + 1, "Bad Packet", gateway="???", mac="", peer="127.0.0.9:4002")
        await store.write(WriteBatch(log=[first, same_time_other_peer, log_entry(DAY + 2, "Login")]))
        assert [e.count for e in await store.log(LogQuery())] == [1, 1, 1]

        await store.write(WriteBatch(log_counts=[LogCount(first, 2_597)]))
        await store.write(WriteBatch(log_counts=[LogCount(first, 2_598)], log=[log_entry(DAY + 3, "Logout")]))
        entries = await store.log(LogQuery())
        assert [(e.event, e.peer, e.count) for e in entries] == [
            ("Logout", "127.0.0.1:2348", 1), ("Login", "127.0.0.1:2348", 1),
            ("Bad Packet", "127.0.0.9:4002", 1), ("Bad Packet", "127.0.0.9:4001", 2_598)]
        assert entries[3].detail == "unknown verb" and entries[3].time == DAY + 1
        # a count whose row is gone (retention) or was never stored changes nothing
        gone = log_entry(DAY + 9, "Bad Packet", peer="127.0.0.9:4003")
        await store.write(WriteBatch(log_counts=[LogCount(gone, 5)]))
        assert len(await store.log(LogQuery())) == 4

    # -- gateways and cursors -------------------------------------------------

    @deferred_test
    async def test_gateways_are_upserted_by_key(self, store):
        assert await store.gateway(KEY) is None
        assert await store.gateways() == []
        second = gateway_state(KEY2, boot_token=None, login=None, last_heard=None, online=False)
        await store.write(WriteBatch(gateways=[gateway_state(), second]))
        assert await store.gateway(KEY) == gateway_state()
        assert await store.gateway(KEY2) == second
        newer = gateway_state(last_seq=99, online=False, peer="127.0.0.1:4000", restarts=2)
        await store.write(WriteBatch(gateways=[newer]))
        assert await store.gateway(KEY) == newer
        assert [g.key for g in await store.gateways()] == sorted([KEY, KEY2])
        # several states of one gateway in one batch (a group commit): the last wins
        states = [gateway_state(last_seq=n) for n in (100, 102, 101)]
        await store.write(WriteBatch(gateways=states))
        assert (await store.gateway(KEY)).last_seq == 101

    @deferred_test
    async def test_cursors_are_upserted_by_gateway(self, store):
        assert await store.cursors() == {}
        await store.write(WriteBatch(cursors=[cursor(), cursor(KEY2, 3, 4)]))
        await store.write(WriteBatch(cursors=[cursor(applied=19), cursor(applied=20, replay_from=11)]))
        assert await store.cursors() == {
            KEY: cursor(applied=20, replay_from=11), KEY2: cursor(KEY2, 3, 4)}

    # -- call records ---------------------------------------------------------

    @deferred_test
    async def test_records_are_inserted_once(self, store):
        first = record(1, DAY, cause="busy", connect=None, talk=None, pstn_time=1500, port=None, pport=2)
        await store.write(WriteBatch(records=[first, evolve(first, cause="changed")]))
        await store.write(WriteBatch(records=[evolve(first, notation="Other", begin=DAY + 5)]))
        page = await store.calls(CallQuery())
        assert (page.total, page.filtered, page.records) == (1, 1, (first,))

    @deferred_test
    async def test_calls_every_filter_total_and_filtered(self, store):
        records = random_records(300)
        await store.write(WriteBatch(records=records[:150]))
        await store.write(WriteBatch(records=records[150:]))
        queries = []
        for flt in CALL_FILTERS:
            queries += [
                CallQuery(filter=flt, limit=1000),
                CallQuery(gateway=KEY, since=DAY, until=DAY + 24 * HOUR, filter=flt, limit=1000),
                CallQuery(gateway=KEY2, since=DAY - 24 * HOUR, until=DAY, filter=flt, limit=7, offset=3),
                CallQuery(since=DAY + 3 * HOUR, filter=flt, limit=5, offset=40),
                CallQuery(until=DAY, filter=flt, limit=0),
            ]
        for q in queries:
            total, filtered, expected = oracle_calls(records, q)
            page = await store.calls(q)
            assert (page.total, page.filtered) == (total, filtered), q
            assert list(page.records) == expected, q
        # not vacuous: every filter selects something, and less than all
        for flt in CALL_FILTERS[1:]:
            _, filtered, _ = oracle_calls(records, CallQuery(filter=flt))
            assert 0 < filtered < len(records), flt

    @deferred_test
    async def test_calls_counts_over_ranges_not_on_whole_hours(self, store):
        """Days of a zone at +05:30 or +05:45, minutes, years: counts stay exact."""
        records = random_records(400)
        await store.write(WriteBatch(records=records))
        await store.write(WriteBatch(records=records[:50]))  # replayed: counted once
        minute = 60_000
        for since, until in [
            (DAY - 330 * minute, DAY + 24 * HOUR - 330 * minute),
            (DAY - 345 * minute, DAY + 48 * HOUR - 345 * minute),
            (DAY + 7 * minute, DAY + 59 * minute),
            (DAY + 30 * minute, DAY + 90 * minute),
            (None, DAY + 30 * minute),
            (DAY + 30 * minute, None),
            (DAY - 1, DAY + 1),
            (None, None),
        ]:
            for flt in CALL_FILTERS:
                for gateway in (None, KEY2):
                    q = CallQuery(gateway=gateway, since=since, until=until, filter=flt, limit=3)
                    total, filtered, expected = oracle_calls(records, q)
                    page = await store.calls(q)
                    assert (page.total, page.filtered, list(page.records)) == (
                        total, filtered, expected), q

    @deferred_test
    async def test_calls_keyset_pages_walk_the_search_once(self, store):
        records = random_records(300)
        await store.write(WriteBatch(records=records))
        for flt in ("all", "pstn", "out"):
            q = CallQuery(gateway=KEY, since=DAY - 24 * HOUR, until=DAY + 48 * HOUR, filter=flt, limit=7)
            total, filtered, _ = oracle_calls(records, evolve(q, limit=1000))
            seen, after = [], None
            while True:
                page = await store.calls(evolve(q, after=after))
                assert (page.total, page.filtered) == (total, filtered)
                if not page.records:
                    break
                seen += page.records
                after = (page.records[-1].begin, page.records[-1].id)
            assert seen == oracle_calls(records, evolve(q, limit=1000))[2]
            assert len(seen) == filtered > 7

    @deferred_test
    async def test_calls_boundaries_and_tie_order(self, store):
        a = record(2, DAY, notation="Call in")
        b = record(1, DAY, notation="Call in")  # same begin: id order
        c = record(3, DAY + HOUR)  # == until: excluded
        d = record(4, DAY - 1)  # before since: excluded
        await store.write(WriteBatch(records=[a, b, c, d]))
        page = await store.calls(CallQuery(gateway=KEY, since=DAY, until=DAY + HOUR, filter="in"))
        assert page.records == tuple(sorted([a, b], key=lambda r: r.id))
        assert (page.total, page.filtered) == (2, 2)
        out = await store.calls(CallQuery(gateway=KEY, since=DAY, until=DAY + HOUR, filter="out"))
        assert (out.total, out.filtered, out.records) == (2, 0, ())
        assert (await store.calls(CallQuery(gateway=KEY2))).total == 0

    @deferred_test
    async def test_call_quarters(self, store):
        q = 900_000
        await store.write(WriteBatch(records=[
            record(1, DAY), record(2, DAY + 1), record(3, DAY + q - 1), record(4, DAY + q),
            record(5, DAY + 5 * q + 7), record(6, DAY + 40 * q),
            record(7, DAY + 2 * q, gateway=KEY2), record(8, DAY - 1),
        ]))
        assert await store.call_quarters(KEY, DAY, DAY + 40 * q) == [DAY, DAY + q, DAY + 5 * q]
        assert await store.call_quarters(None, DAY, DAY + 41 * q) == [
            DAY, DAY + q, DAY + 2 * q, DAY + 5 * q, DAY + 40 * q]
        assert await store.call_quarters(KEY, DAY + 1, DAY + q) == [DAY]
        assert await store.call_quarters(KEY2, DAY, DAY + 2 * q) == []
        assert await store.call_quarters(KEY, DAY - HOUR, DAY) == [DAY - q]

    @deferred_test
    async def test_ended_calls(self, store):
        await store.write(WriteBatch(records=[
            record(1, DAY - 2 * HOUR, end=DAY - HOUR), record(2, DAY, end=DAY + 10),
            record(3, DAY, end=DAY, boot="b2"), record(4, DAY, gateway=KEY2, end=DAY + 10),
        ]))
        assert sorted(await store.ended_calls(KEY, DAY)) == [("b1", 2), ("b2", 3)]
        assert sorted(await store.ended_calls(KEY, 0)) == [("b1", 1), ("b1", 2), ("b2", 3)]
        assert await store.ended_calls(KEY, DAY + 11) == []

    @deferred_test
    async def test_call_stats_sum_by_gateway_and_bucket(self, store):
        records = random_records(300)
        # unanswered ones, and an answered Hook On/Off that is no attempt
        records += [
            record(1000 + n, DAY + n * 7 * 60_000, notation=notation, connect=None, talk=None)
            for n, notation in enumerate(NOTATIONS)
        ]
        records.append(record(2000, DAY + 5, notation="Other", talk=1000))
        await store.write(WriteBatch(records=records))

        def oracle(since, until, bucket):
            sums = {}
            for r in records:
                if since <= r.begin < until:
                    k = (r.gateway, r.begin // bucket * bucket)
                    row = sums.setdefault(k, [0, 0, 0, 0, 0])
                    attempt = r.notation in ATTEMPT_NOTATIONS
                    answered = r.connect is not None
                    row[0] += 1
                    row[1] += answered
                    row[2] += attempt
                    row[3] += attempt and answered
                    row[4] += (r.talk or 0) if attempt and answered else 0
            return [(g, b, *row) for (g, b), row in sorted(sums.items())]

        for since, until, bucket in [
            (DAY - 24 * HOUR, DAY + 48 * HOUR, HOUR),
            (DAY, DAY + 24 * HOUR, HOUR),
            (DAY + 90 * 60_000, DAY + 5 * HOUR, 900_000),
            (DAY - 24 * HOUR, DAY + 48 * HOUR, 24 * HOUR),
            (DAY + 100 * HOUR, DAY + 101 * HOUR, HOUR),
        ]:
            got = await store.call_stats(since, until, bucket)
            assert [(s.gateway, s.start, s.calls, s.answered, s.attempts, s.attempts_answered,
                     s.talk) for s in got] == oracle(since, until, bucket)
        # not vacuous
        day = await store.call_stats(DAY, DAY + 24 * HOUR, 24 * HOUR)
        assert {s.gateway for s in day} == {KEY, KEY2}
        assert all(0 < s.attempts_answered <= s.attempts < s.calls for s in day)
        assert any(s.attempts_answered < s.attempts and 0 < s.talk for s in day)

    # -- CDRs -----------------------------------------------------------------

    @deferred_test
    async def test_cdrs_written_once_in_written_order(self, store):
        c1 = record(1, DAY).id
        c2 = record(2, DAY, gateway=KEY2).id
        # written order is not start order
        a = cdr(c1, 0, DAY + 50, cui="ACCT-1")
        b = cdr(c1, 1, DAY + 10, cui="ACCT-2", duration=None, status="busy")
        # billed by another call than the one that created it (a transfer)
        c = cdr(c2, 0, DAY + 30, gateway=KEY2, cui="ACCT-1", billed_call=c1)
        await store.write(WriteBatch(cdrs=[a, b]))
        await store.write(WriteBatch(cdrs=[c, evolve(a, duration=1)]))  # a replayed: ignored
        await store.write(WriteBatch(cdrs=[a, b, c]))
        assert await store.cdrs(CdrQuery()) == (3, [a, b, c])
        assert await store.cdrs(CdrQuery(cui="ACCT-1")) == (2, [a, c])
        assert await store.cdrs(CdrQuery(gateway=KEY2)) == (1, [c])
        assert await store.cdrs(CdrQuery(call=c1)) == (2, [a, b])
        assert await store.cdrs(CdrQuery(since=DAY + 10, until=DAY + 50)) == (2, [b, c])
        assert await store.cdrs(CdrQuery(limit=1, offset=1)) == (3, [b])
        assert await store.cdrs(CdrQuery(cui="nobody")) == (0, [])
        assert (await store.cdrs(CdrQuery(cui="ACCT-2")))[1][0].line.endswith(",-busy,ACCT-2,2252,201")
        # keyset paging in written order; the total counts the whole search
        assert await store.cdrs(CdrQuery(after=a.id)) == (3, [b, c])
        assert await store.cdrs(CdrQuery(after=b.id, limit=5)) == (3, [c])
        assert await store.cdrs(CdrQuery(cui="ACCT-1", after=a.id)) == (2, [c])
        assert await store.cdrs(CdrQuery(after=c.id)) == (3, [])

    # -- outbox ---------------------------------------------------------------

    @deferred_test
    async def test_outbox_append_read_delete_stats(self, store):
        assert await store.outbox_stats("radius") == (0, None)
        payloads = [bytes([0, 255, n]) + b"\r\n" for n in range(5)]
        await store.write(WriteBatch(outbox=[item("radius", p, DAY + n) for n, p in enumerate(payloads)]))
        await store.write(WriteBatch(outbox=[item("syslog", b"<134>1 line", DAY + 100)]))
        items = await store.outbox("radius", 0, 100)
        assert [i.payload for i in items] == payloads
        ids = [i.id for i in items]
        assert ids == sorted(set(ids))
        assert [i.created for i in items] == [DAY + n for n in range(5)]
        assert [i.id for i in await store.outbox("radius", ids[1], 2)] == ids[2:4]
        assert await store.outbox_stats("radius") == (5, DAY)
        assert await store.outbox_stats("syslog") == (1, DAY + 100)

        await store.write(WriteBatch(
            outbox_done=[("radius", ids[0]), ("radius", ids[2]), ("syslog", ids[1])],
            outbox=[item("radius", b"new", DAY + 9)],
        ))
        left = await store.outbox("radius", 0, 100)
        assert [i.payload for i in left] == [payloads[1], payloads[3], payloads[4], b"new"]
        assert left[-1].id > ids[-1]
        assert await store.outbox_stats("radius") == (4, DAY + 1)
        assert await store.outbox_stats("syslog") == (1, DAY + 100)  # (sink, id) pairs

    # -- one transaction, all of it -------------------------------------------

    @deferred_test
    async def test_a_batch_writes_every_kind(self, store):
        rec = record(1, DAY)
        result = await store.write(WriteBatch(
            events=[event(1)], log=[log_entry(DAY)], gateways=[gateway_state()],
            records=[rec], cdrs=[cdr(rec.id, 0, DAY)], cursors=[cursor()],
            outbox=[item("radius", b"x")],
        ))
        assert len(result.events) == 1
        assert len(await store.events(EventQuery())) == 1
        assert len(await store.log(LogQuery())) == 1
        assert await store.gateway(KEY) == gateway_state()
        assert (await store.calls(CallQuery())).records == (rec,)
        assert (await store.cdrs(CdrQuery()))[0] == 1
        assert await store.cursors() == {KEY: cursor()}
        assert (await store.outbox_stats("radius"))[0] == 1


    # -- search, totals, summaries (issue 14) -----------------------------------

    @deferred_test
    async def test_call_search_terms_match_the_naive_answer(self, store):
        records, cdrs = searchable(400)
        await store.write(WriteBatch(records=records[:200], cdrs=cdrs[:150]))
        await store.write(WriteBatch(records=records[200:], cdrs=cdrs[150:]))
        windows = ((DAY + 9 * HOUR, DAY + 17 * HOUR), (DAY - 15 * HOUR, DAY - 14 * HOUR - 1000))
        queries = [
            CallQuery(number="2252"), CallQuery(number="2_5%"), CallQuery(number="252", gateway=KEY),
            CallQuery(number="nothing"), CallQuery(cui="ACME"), CallQuery(cui="acme"),
            CallQuery(cui="ACME-2", filter="out"), CallQuery(min_talk=1000), CallQuery(max_talk=999),
            CallQuery(min_talk=1000, max_talk=61_000, since=DAY, until=DAY + DAY),
            CallQuery(windows=windows), CallQuery(windows=()), CallQuery(cause="busy"),
            CallQuery(cause="no answer", number="0", min_talk=0, filter="pstn"),
            CallQuery(cause=""), CallQuery(since=DAY + HOUR // 2, until=DAY + 30 * HOUR, number="20"),
        ]
        for q in queries:
            for sort in CALL_SORTS:
                for descending in (False, True):
                    sq = evolve(q, sort=sort, descending=descending, limit=7, offset=3)
                    total, filtered, page = oracle_search(records, cdrs, sq)
                    got = await store.calls(sq)
                    assert (got.total, got.filtered) == (total, filtered), sq
                    assert list(got.records) == page, sq
            assert await store.call_totals(q) == oracle_totals(oracle_search(records, cdrs, evolve(q, limit=10**6))[2])

    @deferred_test
    async def test_call_search_keyset_walks_descending_too(self, store):
        records, cdrs = searchable(120)
        await store.write(WriteBatch(records=records, cdrs=cdrs))
        for descending in (False, True):
            q = CallQuery(number="2", limit=9, descending=descending)
            seen, after = [], None
            while True:
                page = await store.calls(evolve(q, after=after))
                if not page.records:
                    break
                seen += page.records
                after = (page.records[-1].begin, page.records[-1].id)
            assert seen == oracle_search(records, cdrs, evolve(q, limit=10**6))[2]
        with pytest.raises(ValueError):
            await store.calls(CallQuery(sort="talk", after=(DAY, "x")))
        with pytest.raises(ValueError):
            await store.calls(CallQuery(sort="password"))

    @deferred_test
    async def test_call_totals_fast_path_over_whole_hours_and_edges(self, store):
        records = random_records(300)
        await store.write(WriteBatch(records=records))
        for since, until, gateway in [
            (None, None, None), (DAY, DAY + DAY, KEY), (DAY + 1234, DAY + 5 * HOUR + 77, None),
            (DAY + 10, DAY + 2 * HOUR + 20, KEY2), (DAY - HOUR, DAY + HOUR, KEY2),
        ]:
            q = CallQuery(gateway=gateway, since=since, until=until)
            want = oracle_totals(oracle_search(records, [], evolve(q, limit=10**6))[2])
            got = await store.call_totals(q)
            assert got == want
            assert got.calls and got.minutes == got.talk / 60_000
            assert got.asr == got.attempts_answered / got.attempts
        empty = await store.call_totals(CallQuery(since=0, until=1))
        assert (empty.calls, empty.asr, empty.acd, empty.minutes) == (0, None, None, 0)

    @deferred_test
    async def test_call_totals_and_counts_of_every_filter_and_time_of_day_window(self, store):
        """The hourly sums serve each filter's totals and a time-of-day
        search's counts: whole hours, edges, windows over the dates' ends,
        overlapping and empty windows all agree with the naive answer."""
        records, _ = searchable(400)
        await store.write(WriteBatch(records=records[:250]))
        await store.write(WriteBatch(records=records[250:]))
        window_sets = [
            None,
            tuple((DAY + d * 24 * HOUR + 9 * HOUR, DAY + d * 24 * HOUR + 10 * HOUR) for d in range(-2, 3)),
            ((DAY + 9 * HOUR + 1234, DAY + 11 * HOUR + 5), (DAY - 15 * HOUR, DAY - 14 * HOUR - 1000)),
            ((DAY, DAY + 3 * HOUR), (DAY + HOUR, DAY + 5 * HOUR + 7)),  # overlapping
            ((DAY + 2 * HOUR, DAY + 2 * HOUR),),
            (),
        ]
        for flt in CALL_FILTERS:
            for since, until, gateway in [
                (None, None, None), (DAY, DAY + DAY, KEY), (DAY + 1234, DAY + 5 * HOUR + 77, None),
                (DAY - HOUR, DAY + HOUR, KEY2), (DAY + 10 * HOUR - 1, DAY + 30 * HOUR, None),
            ]:
                for windows in window_sets:
                    q = CallQuery(gateway=gateway, since=since, until=until, filter=flt, windows=windows)
                    total, filtered, page = oracle_search(records, [], evolve(q, limit=10**6))
                    assert await store.call_totals(q) == oracle_totals(page), q
                    got = await store.calls(evolve(q, limit=5, offset=2))
                    assert (got.total, got.filtered) == (total, filtered), q
                    assert list(got.records) == page[2:7], q
        filtered_talk = [(await store.call_totals(CallQuery(filter=f))).talk for f in CALL_FILTERS[1:]]
        assert all(filtered_talk[:3])  # the sums read are not all zero

    @deferred_test
    async def test_call_summary_by_every_group(self, store):
        records, cdrs = searchable(300)
        await store.write(WriteBatch(records=records, cdrs=cdrs))
        cases = [
            ("caller", None, None), ("destination", None, None), ("destination", 3, None),
            ("gateway", None, None), ("time", None, HOUR), ("time", None, 900_000), ("time", None, DAY),
        ]
        queries = [
            CallQuery(), CallQuery(since=DAY + 1000, until=DAY + 7 * HOUR + 5), CallQuery(filter="out"),
            CallQuery(number="22", gateway=KEY), CallQuery(cui="ACME", min_talk=1),
        ]
        for q in queries:
            for group, prefix, bucket in cases:
                got = await store.call_summary(q, group, prefix=prefix, bucket=bucket)
                want = oracle_summary(oracle_search(records, cdrs, evolve(q, limit=10**6))[2], group, prefix, bucket)
                assert got == SummaryPage(groups=len(want), rows=tuple(want)), (q, group, prefix, bucket)
        top = await store.call_summary(CallQuery(), "caller", limit=2)
        everyone = oracle_summary(records, "caller", None, None)
        assert top == SummaryPage(groups=len(everyone), rows=tuple(everyone[:2]))
        with pytest.raises(ValueError):
            await store.call_summary(CallQuery(), "cli")
        with pytest.raises(ValueError):
            await store.call_summary(CallQuery(), "caller", sort="begin")

    @deferred_test
    async def test_call_summary_sorted_and_paged(self, store):
        """Every sort, both ways, a page of it; and local buckets of a zone's
        offsets (shift), whole hours (read from the hourly sums) or not."""
        records, cdrs = searchable(300)
        await store.write(WriteBatch(records=records, cdrs=cdrs))
        cases = [("caller", None, None), ("destination", 2, None), ("gateway", None, None), ("time", None, HOUR)]
        for q in (CallQuery(), CallQuery(filter="in", since=DAY - 5 * HOUR)):
            chosen = oracle_search(records, cdrs, evolve(q, limit=10**6))[2]
            for group, prefix, bucket in cases:
                for sort in (None, *SUMMARY_SORTS):
                    for descending in (False, True):
                        want = oracle_summary(chosen, group, prefix, bucket, sort, descending)
                        for offset, limit in ((0, 1000), (1, 3), (len(want) - 1, 5), (len(want) + 3, 5)):
                            got = await store.call_summary(
                                q, group, prefix=prefix, bucket=bucket, limit=limit, offset=offset,
                                sort=sort, descending=descending)
                            assert got == SummaryPage(groups=len(want), rows=tuple(want[offset:offset + limit])), (
                                q, group, sort, descending, offset)
        shifts = [
            ((0, HOUR),),  # one whole-hour offset
            ((0, HOUR), (DAY + 5 * HOUR, 2 * HOUR), (DAY + 29 * HOUR, HOUR)),  # summer time and back
            ((0, 19_800_000),),  # +05:30
            ((0, 0), (DAY + 90 * 60_000, 45 * 60_000)),  # a change at half past
        ]
        for shift in shifts:
            for q in (CallQuery(), CallQuery(since=DAY - HOUR - 7, until=DAY + 40 * HOUR + 5), CallQuery(filter="out")):
                chosen = oracle_search(records, cdrs, evolve(q, limit=10**6))[2]
                for bucket in (HOUR, DAY):
                    want = oracle_summary(chosen, "time", None, bucket, shift=shift)
                    got = await store.call_summary(q, "time", bucket=bucket, shift=shift)
                    assert got == SummaryPage(groups=len(want), rows=tuple(want)), (q, bucket, shift)
                    assert sum(r.totals.calls for r in got.rows) == len(chosen)

    @deferred_test
    async def test_cdr_search_sort_and_totals_per_cui(self, store):
        records, cdrs = searchable(300)
        await store.write(WriteBatch(records=records, cdrs=cdrs[:100]))
        await store.write(WriteBatch(cdrs=cdrs[100:]))
        queries = [
            CdrQuery(), CdrQuery(cui="ACME"), CdrQuery(cui="ACME-1", gateway=KEY), CdrQuery(number="2_5"),
            CdrQuery(number="252", min_duration=1000), CdrQuery(max_duration=999),
            CdrQuery(windows=((DAY, DAY + 12 * HOUR),)), CdrQuery(cause="busy"), CdrQuery(cause=""),
            CdrQuery(since=DAY, until=DAY + DAY, cui="B"),
            CdrQuery(cuis=("ACME-1", "BETA", "nobody")), CdrQuery(cuis=()),
            CdrQuery(cuis=("ACME-1",), since=DAY, until=DAY + DAY, gateway=KEY),
        ]
        for q in queries:
            for sort in CDR_SORTS:
                for descending in (False, True):
                    sq = evolve(q, sort=sort, descending=descending, limit=9, offset=2)
                    total, page = oracle_cdrs(cdrs, sq)
                    assert await store.cdrs(sq) == (total, page), sq
            assert await store.cui_totals(q) == oracle_cui_totals(oracle_cdrs(cdrs, evolve(q, limit=10**6))[1])

    @deferred_test
    async def test_cui_summary_sorted_and_paged_by_the_store(self, store):
        """The summary by CUI: the per-CUI totals as summary rows, every sort
        both ways, a page of it, past the end too."""
        records, cdrs = searchable(300)
        await store.write(WriteBatch(records=records, cdrs=cdrs))
        for q in (CdrQuery(), CdrQuery(since=DAY, until=DAY + DAY, gateway=KEY), CdrQuery(cui="nobody")):
            rows = [
                SummaryRow(key=t.cui, totals=CallTotals(
                    calls=t.cdrs, answered=t.answered, attempts=t.cdrs, attempts_answered=t.answered,
                    talk=t.duration))
                for t in oracle_cui_totals(oracle_cdrs(cdrs, evolve(q, limit=10**6))[1])
            ]
            for sort in (None, *SUMMARY_SORTS):
                for descending in (False, True):
                    want = sorted(rows, key=summary_sort_key(sort, False), reverse=descending)
                    for offset, limit in ((0, 1000), (1, 2), (max(len(want) - 1, 0), 5), (len(want) + 3, 5)):
                        got = await store.cui_summary(q, limit=limit, offset=offset, sort=sort, descending=descending)
                        assert got == SummaryPage(groups=len(want), rows=tuple(want[offset:offset + limit])), (
                            q, sort, descending, offset)
            assert not q.cui or rows == []
        with pytest.raises(ValueError):
            await store.cui_summary(CdrQuery(), sort="begin")

    @deferred_test
    async def test_call_record_and_outbox_matching(self, store):
        r = record(5, DAY)
        await store.write(WriteBatch(
            records=[r, record(6, DAY)],
            outbox=[item("radius", f'{{"leg":"{r.id}/1"}}'.encode()), item("radius", b'{"leg":"other/1"}'),
                    item("syslog", r.id.encode()), item("radius", f'{{"leg":"{r.id}/2"}}'.encode())],
        ))
        assert await store.call_record(r.id) == r
        assert await store.call_record("nope") is None
        found = await store.outbox_matching("radius", r.id, 10)
        assert [i.payload for i in found] == [f'{{"leg":"{r.id}/1"}}'.encode(), f'{{"leg":"{r.id}/2"}}'.encode()]
        assert found[0].id < found[1].id
        assert len(await store.outbox_matching("radius", r.id, 1)) == 1
        await store.write(WriteBatch(outbox_done=[("radius", found[0].id)]))
        assert [i.id for i in await store.outbox_matching("radius", r.id, 10)] == [found[1].id]


    # -- retention (issue 11) -----------------------------------------------------

    async def expire_all(self, store, kind, before, limit=3, stale_after=0):
        """Batches of `limit` until the sweep is through: (deleted, cdrs, batches)."""
        deleted = cdrs = batches = 0
        after = None
        for _ in range(1000):
            got = await store.expire(kind, before, limit, after, stale_after=stale_after)
            assert isinstance(got, Expired) and got.deleted <= limit
            deleted, cdrs, batches = deleted + got.deleted, cdrs + got.cdrs, batches + 1
            if got.after is None:
                return deleted, cdrs, batches
            after = got.after
        raise AssertionError("the sweep never ended")

    @deferred_test
    async def test_expire_log_deletes_only_what_is_older_than_the_cutoff(self, store):
        times = [DAY - 3 * HOUR, DAY - 2 * HOUR, DAY - 1, DAY - 1, DAY, DAY + 1, DAY - 5 * HOUR, DAY - 1]
        await store.write(WriteBatch(log=[log_entry(t, detail=str(n)) for n, t in enumerate(times)]))
        assert await store.oldest() == {"events": None, "log": DAY - 5 * HOUR, "records": None}
        assert await self.expire_all(store, "log", DAY, limit=2) == (6, 0, 4)
        assert sorted(e.time for e in await store.log(LogQuery())) == [DAY, DAY + 1]
        assert (await store.oldest())["log"] == DAY
        # nothing older left: one batch that finds nothing
        assert await store.expire("log", DAY, 2) == Expired(deleted=0)

    @deferred_test
    async def test_expire_never_deletes_events_that_recovery_replays(self, store):
        old = [event(n, ref=n, time=DAY - 10 * HOUR + n) for n in range(1, 9)]
        other = [event(n, ref=n, time=DAY - 10 * HOUR, gateway=KEY2) for n in range(1, 4)]
        new = [event(n, ref=n, time=DAY + n) for n in range(9, 12)]
        ids = [e.id for e in (await store.write(WriteBatch(events=old + other + new))).events]
        # KEY's oldest open call began at its 6th event; KEY2 has no cursor:
        # its events were never applied
        await store.write(WriteBatch(cursors=[cursor(applied=ids[-1], replay_from=ids[5])]))
        assert await self.expire_all(store, "events", DAY, limit=2) == (5, 0, 6)
        left = await store.events(EventQuery(newest_first=False, limit=100))
        assert [(e.gateway, e.seq) for e in left] == [
            (KEY, 6), (KEY, 7), (KEY, 8), (KEY2, 1), (KEY2, 2), (KEY2, 3), (KEY, 9), (KEY, 10), (KEY, 11)]
        assert (await store.oldest())["events"] == DAY - 10 * HOUR

    @deferred_test
    async def test_expire_records_takes_their_cdrs_and_keeps_the_hour_sums_true(self, store):
        records, cdrs = searchable(300)
        # a CDR created by one call and billed by another (a transfer), and
        # one of a row written before billed_call existed
        moved = cdr(records[0].id, 7, records[0].begin, billed_call=records[-1].id)
        older = cdr(records[1].id, 8, records[1].begin, billed_call="")
        cdrs += [moved, older]
        await store.write(WriteBatch(records=records[:150], cdrs=cdrs[:100]))
        await store.write(WriteBatch(records=records[150:], cdrs=cdrs[100:]))
        cutoff = DAY + 7 * HOUR + 30 * 60_000  # not on a whole hour
        deleted, gone_cdrs, _ = await self.expire_all(store, "records", cutoff, limit=40)
        kept = [r for r in records if r.begin >= cutoff]
        kept_ids = {r.id for r in kept}
        kept_cdrs = [c for c in cdrs if (c.billed_call or c.call) in kept_ids]
        assert 0 < deleted == len(records) - len(kept) and 0 < len(kept)
        assert gone_cdrs == len(cdrs) - len(kept_cdrs)
        page = await store.calls(CallQuery(limit=1000))
        assert sorted(r.id for r in page.records) == sorted(kept_ids)
        assert page.total == page.filtered == len(kept)
        assert sorted(c.id for c in (await store.cdrs(CdrQuery(limit=1000)))[1]) == sorted(c.id for c in kept_cdrs)
        # every count the pages read from the hourly sums agrees with the records left
        span = (DAY - 48 * HOUR, DAY + 72 * HOUR)
        assert await store.call_totals(CallQuery(since=span[0], until=span[1])) == oracle_totals(kept)
        for flt in CALL_FILTERS:
            q = CallQuery(since=span[0], until=span[1], filter=flt, limit=0)
            got = await store.calls(q)
            assert (got.total, got.filtered) == oracle_calls(kept, q)[:2]
            assert await store.call_totals(q) == oracle_totals(oracle_calls(kept, evolve(q, limit=10**6))[2])
        stats = await store.call_stats(*span, 24 * HOUR)
        assert sum(s.calls for s in stats) == len(kept)
        assert all(s.start + 24 * HOUR > cutoff for s in stats)
        hourly = {(s.gateway, s.start): s.calls for s in await store.call_stats(*span, HOUR)}
        want = {}
        for r in kept:
            key = (r.gateway, r.begin // HOUR * HOUR)
            want[key] = want.get(key, 0) + 1
        assert hourly == want
        by_gateway = await store.call_summary(CallQuery(since=span[0], until=span[1]), "gateway")
        assert sum(r.totals.calls for r in by_gateway.rows) == len(kept)
        assert (await store.oldest())["records"] == min(r.begin for r in kept)
        await self.assert_cdr_counts(store, kept_cdrs)

    async def assert_cdr_counts(self, store, cdrs):
        """Every plain count (the hourly CDR sums and their edges) agrees with `cdrs`."""
        for gateway in (None, KEY, KEY2, "nobody"):
            for since, until in ((None, None), (DAY, DAY + DAY), (DAY - 48 * HOUR, DAY + 72 * HOUR),
                                 (DAY + 7 * HOUR + 1, DAY + 30 * HOUR - 1), (DAY + 5 * 60_000, DAY + 40 * 60_000),
                                 (None, DAY + 9 * HOUR + 17), (DAY + 3 * HOUR + 5, None)):
                q = CdrQuery(gateway=gateway, since=since, until=until, limit=0)
                assert (await store.cdrs(q))[0] == oracle_cdrs(cdrs, q)[0], q

    @deferred_test
    async def test_cdr_counts_from_the_hourly_sums_count_each_cdr_once(self, store):
        records, cdrs = searchable(300)
        await store.write(WriteBatch(records=records, cdrs=cdrs[:120]))
        # written again (a replay after a crash): stored and counted once
        await store.write(WriteBatch(cdrs=cdrs[100:] + cdrs[100:110]))
        await self.assert_cdr_counts(store, cdrs)

    @deferred_test
    async def test_expire_never_deletes_a_record_an_outbox_has_not_delivered(self, store):
        old = DAY - 30 * DAY_MS
        await store.write(WriteBatch(records=[record(1, old)]))  # the outbox was empty
        await store.write(WriteBatch(records=[record(2, old)], outbox=[item("radius", b"stop 2")]))
        await store.write(WriteBatch(records=[record(3, old)], outbox=[item("syslog", b"cdr 3")]))
        await store.write(WriteBatch(records=[record(4, old)]))  # written while 2 and 3 wait
        assert await self.expire_all(store, "records", DAY, limit=10) == (1, 0, 1)
        radius = await store.outbox("radius", 0, 10)
        await store.write(WriteBatch(outbox_done=[("radius", radius[0].id)]))
        # 3's item still waits, so nothing written since it stored goes
        assert await self.expire_all(store, "records", DAY, limit=10) == (1, 0, 1)
        syslog = await store.outbox("syslog", 0, 10)
        await store.write(WriteBatch(
            outbox_done=[("syslog", syslog[0].id)], records=[record(5, old)], outbox=[item("radius", b"stop 5")]))
        assert await self.expire_all(store, "records", DAY, limit=10) == (2, 0, 1)
        assert [r.ref for r in (await store.calls(CallQuery())).records] == [5]

    @deferred_test
    async def test_expire_keeps_records_that_recovery_marks_ended(self, store):
        """Recovery tombstones the calls that ended up to stale_after before
        the first event it replays: deleting them would record them again."""
        first = DAY - 2 * HOUR
        events = (await store.write(WriteBatch(events=[event(1, ref=9, time=first)]))).events
        await store.write(WriteBatch(
            records=[
                record(1, first - 3 * HOUR, end=first - 3 * HOUR + 1),
                record(2, first - HOUR, end=first - 10),  # ended within 60 s before
                record(3, first - HOUR, end=first - 10, gateway=KEY2),  # no open call there
            ],
            cursors=[cursor(applied=events[0].id, replay_from=events[0].id)],
        ))
        assert await self.expire_all(store, "records", DAY, limit=10, stale_after=60_000) == (2, 0, 1)
        assert [r.ref for r in (await store.calls(CallQuery())).records] == [2]
        assert await self.expire_all(store, "records", DAY, limit=10, stale_after=0) == (1, 0, 1)

    @deferred_test
    async def test_expire_goes_on_past_what_it_keeps(self, store):
        """A batch of held rows only moves on: later batches still delete."""
        events = (await store.write(WriteBatch(
            events=[event(n, ref=n, time=DAY - 100 + n) for n in range(1, 7)],
            cursors=[cursor(applied=0, replay_from=0)],
        ))).events
        await store.write(WriteBatch(events=[event(1, ref=1, time=DAY - 200, gateway=KEY2)]))
        await store.write(WriteBatch(cursors=[cursor(applied=events[-1].id, replay_from=events[-1].id + 1)]))
        got = await store.expire("events", DAY, 1)  # KEY2's: no cursor, kept
        assert got.deleted == 0 and got.after is not None
        got = await store.expire("events", DAY, 4, got.after)
        assert got.deleted == 4
        assert await store.expire("events", DAY, 4, got.after) == Expired(deleted=2)
        assert [e.gateway for e in await store.events(EventQuery())] == [KEY2]

    @deferred_test
    async def test_expire_refuses_an_unknown_kind(self, store):
        with pytest.raises(ValueError, match="gateways"):
            await store.expire("gateways", DAY, 10)


class DurableStoreContract(StoreContract):
    """
    Stores with a database behind them: a subclass also provides `reopen`
    (a fixture: a function closing `store` and returning a new opened store
    on the same database) and `break_store` (make the next writes fail).
    """

    @deferred_test
    async def test_written_data_survives_close_and_reopen(self, store, reopen):
        rec = record(1, DAY)
        first = await store.write(WriteBatch(
            events=[event(1), event(2)], gateways=[gateway_state()], records=[rec],
            cdrs=[cdr(rec.id, 0, DAY)], cursors=[cursor()], outbox=[item("radius", b"\x00x")],
            log=[log_entry(DAY)],
        ))
        store2 = await reopen()
        assert await store2.events(EventQuery(newest_first=False)) == list(first.events)
        assert await store2.gateway(KEY) == gateway_state()
        assert (await store2.calls(CallQuery())).records == (rec,)
        assert (await store2.cdrs(CdrQuery()))[0] == 1
        assert await store2.cursors() == {KEY: cursor()}
        assert [i.payload for i in await store2.outbox("radius", 0, 10)] == [b"\x00x"]
        # the uniqueness and id order carry over the restart
        again = await store2.write(WriteBatch(events=[event(2), event(3)]))
        assert [e.seq for e in again.events] == [3]
        assert again.events[0].id > first.events[-1].id

    @deferred_test
    async def test_a_failing_write_errbacks_and_applies_nothing(self, store):
        await store.write(WriteBatch(events=[event(1)]))
        bad = evolve(record(2, DAY), notation=None)  # NOT NULL: fails late in the transaction
        with pytest.raises(Exception):  # noqa: B017 - each database raises its own
            await store.write(WriteBatch(
                events=[event(2), event(3)], log=[log_entry(DAY)], gateways=[gateway_state()],
                records=[record(1, DAY), bad], cursors=[cursor()], outbox=[item("radius", b"x")],
            ))
        assert [e.seq for e in await store.events(EventQuery())] == [1]
        assert await store.log(LogQuery()) == []
        assert await store.gateways() == []
        assert (await store.calls(CallQuery())).total == 0
        assert await store.cursors() == {}
        assert await store.outbox_stats("radius") == (0, None)
        # and the store goes on working
        ok = await store.write(WriteBatch(events=[event(2)]))
        assert [e.seq for e in ok.events] == [2]

    @deferred_test
    async def test_a_broken_database_errbacks_and_applies_nothing(self, store, break_store, reopen):
        await store.write(WriteBatch(events=[event(1)]))
        await break_store(store)
        with pytest.raises(Exception):  # noqa: B017 - each database raises its own
            await store.write(WriteBatch(
                events=[event(n) for n in range(2, 2000)],
                log=[log_entry(DAY, detail="x" * 2000) for _ in range(200)],
                outbox=[item("syslog", b"y" * 4000) for _ in range(200)],
            ))
        store2 = await reopen()
        assert [e.seq for e in await store2.events(EventQuery())] == [1]
        assert await store2.log(LogQuery()) == []
        assert await store2.outbox_stats("syslog") == (0, None)

    @deferred_test
    async def test_write_after_close_fails(self, store):
        await store.close()
        with pytest.raises(Exception):  # noqa: B017 - each database raises its own
            await store.write(WriteBatch(events=[event(1)]))
