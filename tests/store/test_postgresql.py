"""
The IStore contract against PostgresStore on the machine's real PostgreSQL
(127.0.0.1:5432, user postgres; CDRD_TEST_POSTGRES overrides the server
URL).  Each test gets a database of its own, dropped afterwards.  No skip:
a PostgreSQL that does not answer fails these tests.
"""

from __future__ import annotations

import psycopg
import psycopg._queries
import pytest
import pytest_twisted
from psycopg.pq import Trace
from pytest_twisted import blockon
from twisted.internet import defer, reactor
from zope.interface.verify import verifyObject

import cdrd.store.sql as sql
from cdrd.interfaces import CallQuery, CdrQuery, EventQuery, IDerivedLane, WriteBatch
from cdrd.store import open_store
from cdrd.store.leases import ORPHANS
from cdrd.store.postgresql import PostgresStore, _numbered, _numbered_rows
from cdrd.store.schema import (
    CUI_PREFIX_MIGRATION,
    EVENTS_BY_SEQ_MIGRATION,
    FILTER_SUMS_MIGRATION,
    MIGRATIONS,
    NUMBERS_MIGRATION,
    SCHEMA_VERSION_DDL,
    SchemaTooNew,
    migration_statements,
)
from cdrd.store.sql import CALL_COLS, _record_row
from cdrd.values import LogEntry
from tests.postgres import pg_admin as admin
from tests.store.contract import DurableStoreContract, assert_filter_totals, gateway_event_reads
from tests.store.numbers import NumberSearchContract, assert_numbers_backfilled, number_records
from tests.store.values import DAY, KEY, KEY2, cdr, cursor, event, gateway_state, item, record, searchable

pytestmark = pytest.mark.integration

@pytest.fixture
def database(pg_database):
    return pg_database


class TestPostgresStore(DurableStoreContract, NumberSearchContract):
    @pytest.fixture
    def store(self, database):
        name, url = database
        store = open_store(url, reactor)
        assert isinstance(store, PostgresStore)
        blockon(store.open())
        self.name = name
        self.opened = [store]
        yield store
        for s in self.opened:
            blockon(s.close())

    @pytest.fixture
    def connect(self, store, database):
        return lambda: psycopg.connect(database[1])

    @pytest.fixture
    def reopen(self, store, database):
        _, url = database

        async def reopen():
            await store.close()
            # a database that was broken below is mended, as an operator would
            admin(f"ALTER DATABASE {self.name} RESET default_transaction_read_only")
            again = PostgresStore(url, reactor)
            await again.open()
            self.opened.append(again)
            return again

        return reopen

    @pytest.fixture
    def break_store(self):
        async def read_only(store):
            # what a failover to a standby looks like from cdrd: the server
            # drops the connections and the next ones may not write
            admin(f"ALTER DATABASE {self.name} SET default_transaction_read_only = on")
            admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE datname = '{self.name}' AND pid <> pg_backend_pid()"
            )

        return read_only


@pytest_twisted.ensureDeferred
async def test_schema_is_versioned_and_a_newer_one_is_refused(database):
    name, url = database
    store = PostgresStore(url, reactor)
    await store.open()
    assert store.schema_version == len(MIGRATIONS)
    await store.close()
    again = PostgresStore(url, reactor)
    await again.open()  # migrates nothing, fails nothing
    assert again.schema_version == len(MIGRATIONS)
    await again.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    newer = PostgresStore(url, reactor)
    with pytest.raises(SchemaTooNew):
        await newer.open()
    assert newer._pool is None


@pytest_twisted.ensureDeferred
async def test_two_nodes_racing_on_one_gateway_store_each_seq_once(database):
    """Two cdrd nodes on one database: events stay unique per (gateway, seq)
    and ids increase in commit order, whatever the two write at once."""
    _, url = database
    a, b = PostgresStore(url, reactor), PostgresStore(url, reactor)
    await a.open()
    await b.open()
    try:
        writes = []
        for start in range(1, 200, 10):
            batch = WriteBatch(events=[event(s) for s in range(start, start + 15)])
            writes += [a.write(batch), b.write(batch)]
        results = await defer.gatherResults(writes, consumeErrors=True)
        inserted = sorted(e.seq for r in results for e in r.events)
        assert inserted == list(range(1, 206))
        ids = [e.id for r in results for e in r.events]
        assert len(set(ids)) == len(ids)
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT seq FROM events ORDER BY id").fetchall()
        assert sorted(r[0] for r in rows) == list(range(1, 206))
    finally:
        await a.close()
        await b.close()


def test_the_password_of_a_url_is_never_shown():
    store = PostgresStore("postgresql://cdrd:s3cret@127.0.0.1:5432/cdrd", reactor)
    assert "s3cret" not in repr(store)


def records_at(url, version: int, records, upto: int | None = None) -> None:
    """A database of schema `version` holding `records` (then migrated on
    to `upto`, if given, as cdrds of those versions would)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA_VERSION_DDL)
        for index in range(version):
            for statement in migration_statements("postgresql", index):
                conn.execute(statement)
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO calls ({CALL_COLS}) VALUES ({', '.join(['%s'] * 18)})",
                [_record_row(r) for r in records],
            )
        for index in range(version, upto or version):
            for statement in migration_statements("postgresql", index):
                conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (upto or version,))


@pytest_twisted.ensureDeferred
async def test_the_filter_sums_migration_sums_the_records_stored_before(database):
    """call_hours' per-filter answered and talk (issue 14) are filled from
    the records and hours stored before they arrive (UPDATE ... FROM)."""
    _, url = database
    records, _ = searchable(300)
    records_at(url, 1, records, upto=FILTER_SUMS_MIGRATION - 1)  # up to the one before
    store = PostgresStore(url, reactor)
    await store.open()
    try:
        await assert_filter_totals(store, records)
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_the_numbers_migration_indexes_the_records_stored_before(database):
    """The numbers dictionary, pg_trgm's index and the postings (issue 14)
    are filled from the records stored before they arrive; the migration
    creates the extension."""
    _, url = database
    records = number_records(300)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP EXTENSION IF EXISTS pg_trgm")
    records_at(url, NUMBERS_MIGRATION - 1, records)
    await assert_numbers_backfilled(PostgresStore(url, reactor), records)


def _waits(trace: str) -> int:
    """The round trips in a libpq trace: the server's ReadyForQuery, one per Sync the client waits for."""
    return sum(1 for line in trace.splitlines() if line.split("\t")[:3] == ["B", "5", "ReadyForQuery"])


@pytest_twisted.ensureDeferred
async def test_a_write_transaction_waits_for_the_server_twice_not_once_a_statement(database, tmp_path):
    """
    Pipeline mode: the statements of a write are sent without waiting for
    each answer; the transaction waits when it first reads an answer (what
    was new), and at the commit.  A round trip costs the store thread the
    GIL back from the busy reactor thread each time.
    """
    _, url = database
    store = PostgresStore(url, reactor, threads=1)  # one thread: one connection to trace
    await store.open()
    trace = tmp_path / "libpq.trace"
    try:
        with open(trace, "w") as out:
            def tracing(cur):
                cur.connection.pgconn.trace(out.fileno())
                cur.connection.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)

            await store._run(tracing, write=False)
            rec = record(1, DAY)
            result = await store.write(WriteBatch(
                events=[event(s) for s in range(1, 7)], gateways=[gateway_state()],
                records=[rec], cdrs=[cdr(rec.id, 1, DAY)], cursors=[cursor()],
                outbox=[item("radius", b"x")], outbox_done=[("radius", 1)],
            ))
            await store._run(lambda cur: cur.connection.pgconn.untrace(), write=False)
    finally:
        await store.close()
    assert [e.seq for e in result.events] == [1, 2, 3, 4, 5, 6]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0] == 1
    # what was new (one wait for all sent so far: the lock, the lease check,
    # the events, the ids stored already), then the inserts that depend on
    # it with the COMMIT
    assert _waits(trace.read_text()) == 2


def test_placeholders_are_numbered_for_a_raw_cursor():
    assert _numbered("INSERT INTO t (a, b) VALUES (%s, %s), (%s, %s)") == (
        "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
    )
    assert _numbered("SELECT 1") == "SELECT 1"


@pytest_twisted.ensureDeferred
async def test_a_write_of_many_rows_has_psycopg_parse_no_statement(database, monkeypatch):
    """
    psycopg parses a statement's ``%s`` placeholders with a regular
    expression, and caches that only for statements of at most 50
    parameters: a 500-row INSERT cost ~5 ms of the store thread's CPU (and
    GIL) each time.  The write's statements go with numbered ``$n``
    placeholders through RawCursors: nothing to parse.
    """
    parsed = []
    split = psycopg._queries._split_query
    monkeypatch.setattr(psycopg._queries, "_split_query",
                        lambda query, *a, **k: parsed.append(len(query)) or split(query, *a, **k))
    _, url = database
    store = PostgresStore(url, reactor)
    await store.open()
    try:
        result = await store.write(WriteBatch(events=[event(s) for s in range(1, 301)]))
    finally:
        await store.close()
    assert len(result.events) == 300
    assert [n for n in parsed if n > 4096] == []


@pytest_twisted.ensureDeferred
async def test_the_derived_lane_writes_derived_rows_only(database):
    _, url = database
    store = PostgresStore(url, reactor)
    await store.open()
    try:
        assert verifyObject(IDerivedLane, store)
        rec = record(1, DAY)
        await store.write_derived(WriteBatch(
            records=[rec], cdrs=[cdr(rec.id, 0, DAY)], cursors=[cursor()], outbox=[item("radius", b"x")],
        ))
        assert (await store.calls(CallQuery())).records == (rec,)
        assert await store.cursors() == {KEY: cursor()}
        assert [i.payload for i in await store.outbox("radius", 0, 10)] == [b"x"]
        for batch in (WriteBatch(events=[event(1)]), WriteBatch(gateways=[gateway_state()]),
                      WriteBatch(events=[event(1)], cursors=[cursor(applied=20, replay_from=21)]),
                      WriteBatch(log=[LogEntry(time=DAY, event="Login", peer="p")], records=[record(2, DAY)])):
            with pytest.raises(ValueError):
                await store.write_derived(batch)
        assert await store.events(EventQuery()) == []
        assert len((await store.calls(CallQuery())).records) == 1
        assert await store.cursors() == {KEY: cursor()}
    finally:
        await store.close()


@pytest.mark.parametrize("statement", [
    "INSERT INTO cursors (gateway, applied, replay_from) VALUES (?, ?, ?)"
    " ON CONFLICT (gateway) DO UPDATE SET applied = excluded.applied",
    "INSERT INTO call_numbers (number_id, call_id) SELECT n.id, v.column2"
    " FROM (VALUES (?, ?)) AS v JOIN numbers n ON n.number = v.column1",
])
def test_a_multi_row_inserts_numbered_text_is_the_whole_statements_numbered(statement):
    """
    ``_numbered_rows`` numbers a multi-row INSERT's rows from a list kept
    per row shape (``_numbered`` of the whole text cost ~1.4 ms a 300-row
    statement, seldom cached: every group commit is a different size): the
    text must be exactly what numbering the whole statement gives, in any
    order of sizes, and a list handed out must never change after.
    """
    head, values, tail = sql._split_insert(statement)
    first = _numbered_rows(values, 3)
    kept = list(first)
    for size in (1, 3, 300, 2, 500, 17):
        whole = _numbered(f"{head}{', '.join([values] * size)}{tail}".replace("?", "%s"))
        assert f"{head}{', '.join(_numbered_rows(values, size))}{tail}" == whole
    assert first == kept


def _plan(url: str, statement: str, params) -> str:
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_seqscan = off")  # a handful of rows: ask whether the index can serve
        rows = conn.execute("EXPLAIN " + statement, params).fetchall()
    return "\n".join(r[0] for r in rows)


@pytest_twisted.ensureDeferred
async def test_a_cui_prefix_is_an_index_range_under_the_databases_collation(database):
    """The billing CDRs' search by CUI prefix: under any collation but C
    (Debian's clusters are C.UTF-8 or en_US.UTF-8) the old index on cui
    could not serve LIKE 'prefix%', and a month of ten million records
    read every CDR of the dates (0.8-1 s).  Migration 10's
    text_pattern_ops index takes the prefix as a range."""
    _, url = database
    store = PostgresStore(url, reactor)
    await store.open()
    try:
        cdrs = [cdr(f"c{i}", 1, DAY + i, cui=cui) for i, cui in
                enumerate(["ACCT-42", "ACCT-420", "ACCT-4", "ACCT-43", "acct-42", "ACCT-42%"])]
        await store.write(WriteBatch(cdrs=cdrs))
        total, page = await store.cdrs(CdrQuery(cui="ACCT-42", since=DAY, until=DAY + 100))
        assert total == 3 and sorted(c.cui for c in page) == ["ACCT-42", "ACCT-42%", "ACCT-420"]
        where = sql._Where()
        store._cui_prefix(where, "ACCT-42")
        plan = _plan(url, store.sql(f"SELECT COUNT(*) FROM cdrs WHERE {' AND '.join(where.terms)}"),
                     where.params)
        assert "cdrs_cui_start" in plan and "Index Cond: ((cui ~>=~" in plan, plan
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_gateways_events_are_read_through_indexes(database, monkeypatch):
    """Without events_gateway_id (migration 11) a gateway's events come
    through (gateway, seq), the primary key and the unsequenced index;
    so does the orphans' check of events not applied (cdrd.store.leases)."""
    _, url = database
    store = PostgresStore(url, reactor)
    await store.open()
    try:
        statements = await gateway_event_reads(store, monkeypatch)
    finally:
        await store.close()
    with psycopg.connect(url) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'events'")}
        # enough rows, and statistics, for the planner's choice to mean something
        conn.execute(
            "INSERT INTO events (gateway, seq, boot, ref, type, time, received, fields)"
            " SELECT CASE WHEN i %% 2 = 0 THEN %s ELSE 'gw' || (i %% 31) END, 100 + i, 'b', i / 6,"
            " 'DIAL', i, i, '{}' FROM generate_series(1, 60000) AS i",
            (KEY,),
        )
        conn.execute("ANALYZE events")
    assert "events_gateway_id" not in indexes and "events_gateway_unsequenced" in indexes
    assert len(statements) >= 6
    for statement, params in statements:
        plan = _plan(url, statement, params)
        assert "Seq Scan" not in plan, (statement, plan)
        if "id <= " not in statement:  # the walk down: it reads what its caller reads next anyway
            assert "Sort" not in plan, (statement, plan)
    plan = _plan(url, ORPHANS, (100,))  # sorts the gateways, searches their events
    assert "Seq Scan on events" not in plan and "Sort Key: e" not in plan, plan
    assert "Index Scan Backward using events_gateway_seq_key" in plan, plan
    assert "events_gateway_unsequenced" in plan, plan


@pytest_twisted.ensureDeferred
async def test_the_events_by_seq_migration_keeps_a_gateways_events_in_order(database):
    """A database stored before migration 11: its events, cdrd's own
    among them, come back by id through the new indexes."""
    _, url = database
    records_at(url, EVENTS_BY_SEQ_MIGRATION - 1, [])
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO events (gateway, seq, boot, ref, type, time, received, fields)"
                " VALUES (%s, %s, 'b1', 1, 'HOOK_OFF', 0, 0, '{}')",
                [(KEY, 1), (KEY2, 1), (KEY, None), (KEY, 2), (KEY2, None), (KEY, 3)])
        ids = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id")]
    store = PostgresStore(url, reactor)
    await store.open()
    try:
        assert store.schema_version == len(MIGRATIONS)
        assert [(e.id, e.seq) for e in await store.events_after(KEY, 0, 100)] == [
            (ids[0], 1), (ids[2], None), (ids[3], 2), (ids[5], 3)]
        assert [e.seq for e in await store.events_after(KEY, ids[2], 100)] == [2, 3]
        assert [(e.id, e.seq) for e in await store.events_after(KEY2, ids[1], 100)] == [(ids[4], None)]
    finally:
        await store.close()
    with psycopg.connect(url) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'events'")}
    assert "events_gateway_id" not in indexes and "events_gateway_unsequenced" in indexes


@pytest_twisted.ensureDeferred
async def test_the_cui_prefix_migration_replaces_the_index_of_a_database_stored_before(database):
    _, url = database
    records_at(url, CUI_PREFIX_MIGRATION - 1, [])
    store = PostgresStore(url, reactor)
    await store.open()
    try:
        assert store.schema_version == len(MIGRATIONS)
    finally:
        await store.close()
    with psycopg.connect(url) as conn:
        (definition,) = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'cdrs_cui_start'").fetchone()
    assert "cui text_pattern_ops, start, gateway, duration, seq" in definition


@pytest_twisted.ensureDeferred
async def test_the_stores_sessions_run_without_jit(database):
    """PostgreSQL's JIT compiled a costly report query for 40-75 ms before
    running it (EXPLAIN ANALYZE on ten million records): cdrd's sessions
    turn it off."""
    _, url = database
    store = PostgresStore(url, reactor)
    await store.open()
    try:
        assert await store._read(lambda cur: cur.execute("SHOW jit").fetchone()[0]) == "off"
    finally:
        await store.close()
