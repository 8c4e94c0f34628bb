"""The IStore contract against SQLiteStore on a file in a temp dir, and its settings."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from contextlib import asynccontextmanager

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from pytest_twisted import blockon
from twisted.internet import reactor

from cdrd.interfaces import CALL_FILTERS, CallQuery, EventQuery, LogQuery, WriteBatch
from cdrd.store import open_store
from cdrd.store import sqlite as sqlite_module
from cdrd.store.schema import (
    EVENTS_BY_SEQ_MIGRATION,
    FILTER_SUMS_MIGRATION,
    MIGRATIONS,
    NUMBERS_MIGRATION,
    SCHEMA_VERSION_DDL,
    SchemaTooNew,
    migration_statements,
)
from cdrd.store.sql import CALL_COLS, _fields_json, _record_row
from cdrd.store.sqlite import (
    WAL_AUTOCHECKPOINT,
    WAL_MIN_PAGES,
    WAL_SIZE_LIMIT,
    SQLiteStore,
    StoreInUse,
)
from tests.store.contract import DurableStoreContract, assert_filter_totals, gateway_event_reads, oracle_calls
from tests.store.numbers import NumberSearchContract, assert_numbers_backfilled, number_records
from tests.store.values import DAY, HOUR, KEY, KEY2, event, log_entry, random_records, record, searchable


@pytest.fixture
def path(tmp_path):
    # open_store creates the parent directories; the SQLiteStore tests below
    # open the file directly
    (tmp_path / "deep" / "dir").mkdir(parents=True)
    return tmp_path / "deep" / "dir" / "cdrd.sqlite"


class TestSQLiteStore(DurableStoreContract, NumberSearchContract):
    @pytest.fixture
    def store(self, path):
        store = open_store(f"sqlite:{path}", reactor)
        assert isinstance(store, SQLiteStore)
        blockon(store.open())
        self.opened = [store]
        yield store
        for s in self.opened:
            blockon(s.close())

    @pytest.fixture
    def connect(self, store, path):
        return lambda: sqlite3.connect(str(path))

    @pytest.fixture
    def reopen(self, store, path):
        async def reopen():
            await store.close()
            again = SQLiteStore(str(path), reactor)
            await again.open()
            self.opened.append(again)
            return again
        return reopen

    @pytest.fixture
    def break_store(self):
        async def disk_full(store):
            # SQLITE_FULL for real: the file may not grow past its size now
            def cap(cur):
                pages = cur.execute("PRAGMA page_count").fetchone()[0]
                cur.execute(f"PRAGMA max_page_count = {pages}")
            await store._run(cap, write=True)
        return disk_full


@pytest_twisted.ensureDeferred
async def test_settings_wal_full_sync_busy_timeout(path):
    store = SQLiteStore(str(path), reactor)
    await store.open()
    try:
        def settings(cur):
            return (
                cur.execute("PRAGMA journal_mode").fetchone()[0],
                cur.execute("PRAGMA synchronous").fetchone()[0],
                cur.execute("PRAGMA busy_timeout").fetchone()[0],
                threading.current_thread() is not threading.main_thread(),
            )
        assert await store._run(settings, write=False) == ("wal", 2, 10_000, True)

        def checkpoints(cur):
            return (cur.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
                    cur.execute("PRAGMA journal_size_limit").fetchone()[0])
        # the bound as the file system's free space allowed it (the formula:
        # test_the_wal_bound_follows_the_free_space)
        assert await store._run(checkpoints, write=True) == (store.wal_pages, WAL_SIZE_LIMIT)
        assert WAL_MIN_PAGES <= store.wal_pages <= WAL_AUTOCHECKPOINT
    finally:
        await store.close()
    # the schema is versioned; a second open migrates nothing
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
    conn.close()
    store = SQLiteStore(str(path), reactor)
    await store.open()
    assert store.schema_version == len(MIGRATIONS)
    await store.close()


@asynccontextmanager
async def opened(path):
    """A SQLiteStore on `path`, open inside the block (settings patched
    before it take effect), closed after."""
    store = SQLiteStore(str(path), reactor)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def events_of(n: int, first: int, gateways: int = 40) -> list:
    return [event(first + i, ref=first + i, gateway=f"{i % gateways:04d}_000C2A020082") for i in range(n)]


@pytest_twisted.ensureDeferred
async def test_the_wal_is_checkpointed_and_cut_back_to_its_bounds(path, monkeypatch):
    # small bounds, so that a few writes cross them: the WAL is copied into
    # the database once it holds WAL_AUTOCHECKPOINT pages, starts again from
    # its beginning, and is cut back to WAL_SIZE_LIMIT after it grew (here
    # while a reader held a snapshot)
    monkeypatch.setattr(sqlite_module, "WAL_AUTOCHECKPOINT", 64)
    monkeypatch.setattr(sqlite_module, "WAL_MIN_PAGES", 16)
    monkeypatch.setattr(sqlite_module, "WAL_SIZE_LIMIT", 128 * 4096)
    wal = f"{path}-wal"
    async with opened(path) as store:
        seq = 0

        async def writes(n):
            nonlocal seq
            sizes = []
            for _ in range(n):
                await store.write(WriteBatch(events=events_of(40, seq)))
                seq += 40
                sizes.append(os.path.getsize(wal))
            return sizes

        sizes = await writes(40)
        page = 4096
        # never far above the checkpoint's bound: one transaction's pages past it
        assert max(sizes) < (64 + 40) * page, sizes
        assert seq == 1600
        # a reader holding a snapshot keeps the WAL from starting again: it grows
        reader = sqlite3.connect(str(path))
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM events").fetchone()
        grown = max(await writes(40))
        assert grown > 200 * page
        reader.rollback()
        reader.close()
        await writes(3)
        # the next checkpoint that empties it cuts the file back to the limit
        assert os.path.getsize(wal) <= 128 * page


@pytest_twisted.ensureDeferred
async def test_the_wal_bound_follows_the_free_space(path, monkeypatch):
    # a quarter of the free space, between SQLite's default and WAL_AUTOCHECKPOINT:
    # a WAL that filled the disk before its bound could never be checkpointed
    free = {"bytes": 10 * 2**30}
    monkeypatch.setattr(sqlite_module, "free_bytes", lambda directory: free["bytes"])
    monkeypatch.setattr(sqlite_module, "WAL_BOUND_EVERY", 0.0)

    def bound(cur):
        return cur.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    async with opened(path) as store:
        assert await store._run(bound, write=True) == WAL_AUTOCHECKPOINT
        seq = 1
        for space, pages in ((100_000_000, 100_000_000 // (4 * 4096)), (3_000_000, WAL_MIN_PAGES),
                             (0, WAL_MIN_PAGES), (10 * 2**30, WAL_AUTOCHECKPOINT)):
            free["bytes"] = space
            await store.write(WriteBatch(events=events_of(5, seq)))
            seq += 5
            assert (await store._run(bound, write=True), store.wal_pages) == (pages, pages), space


@pytest_twisted.ensureDeferred
async def test_a_write_refused_for_want_of_space_checkpoints_the_wal(path):
    # what the WAL holds goes into the database file at once, so that the
    # WAL starts again from its beginning once space is back
    async with opened(path) as store:
        for n in range(10):
            await store.write(WriteBatch(events=events_of(40, 1 + 40 * n)))
        before = os.path.getsize(path)

        def cap(cur):
            cur.execute(f"PRAGMA max_page_count = {cur.execute('PRAGMA page_count').fetchone()[0]}")
        await store._run(cap, write=True)
        with pytest.raises(sqlite3.OperationalError, match="full"):
            await store.write(WriteBatch(events=events_of(4000, 1000)))
        # the pages of the ten writes were in the WAL only; now in the file
        assert os.path.getsize(path) > before
        conn = sqlite3.connect(str(path))
        busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        conn.close()
        assert (busy, log) == (0, done)


@pytest_twisted.ensureDeferred
async def test_a_batch_json_cannot_hold_fails_its_write_and_writes_nothing(path):
    """What JSON cannot hold (a lone surrogate) fails the write's Deferred,
    not the caller, and nothing of the batch is stored; the store goes on."""
    async with opened(path) as store:
        d = store.write(WriteBatch(events=[event(1), event(2, note="\ud800")]))
        with pytest.raises(TypeError):
            await d
        stored = (await store.write(WriteBatch(events=[event(1)]))).events
        assert [(e.seq, e.id) for e in stored] == [(1, 1)]


@pytest_twisted.ensureDeferred
async def test_refuses_a_newer_schema(path):
    store = SQLiteStore(str(path), reactor)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    store = SQLiteStore(str(path), reactor)
    with pytest.raises(SchemaTooNew):
        await store.open()
    assert store._pool is None


@pytest_twisted.ensureDeferred
async def test_another_process_sees_committed_events_at_once(path):
    """An ACK means durable: the write has committed when its Deferred fires."""
    store = SQLiteStore(str(path), reactor)
    await store.open()
    try:
        await store.write(WriteBatch(events=[event(1), event(2)]))
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT seq FROM events ORDER BY id").fetchall() == [(1,), (2,)]
        conn.close()
        assert len(await store.events(EventQuery())) == 2
    finally:
        await store.close()


def test_open_store_urls(tmp_path):
    with pytest.raises(ValueError):
        open_store("mysql://x", reactor)
    with pytest.raises(ValueError):
        open_store("sqlite:", reactor)
    open_store(f"sqlite:{tmp_path}/a/b/c.sqlite", reactor)
    assert (tmp_path / "a" / "b").is_dir()


@pytest_twisted.ensureDeferred
async def test_a_slow_query_does_not_hold_up_a_write(path):
    """Queries have reader threads of their own: an ACK never waits for a report."""
    store = SQLiteStore(str(path), reactor)
    await store.open()
    gate = threading.Event()

    def slow_count(cur):
        gate.wait(10)
        return cur.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    try:
        query = store._run(slow_count, write=False)
        result = await store.write(WriteBatch(events=[event(1)]))
        assert [e.seq for e in result.events] == [1]
        assert not query.called  # the write committed while the query ran
        gate.set()
        assert await query == 1  # its snapshot began after the commit
    finally:
        gate.set()
        await store.close()


def database_at(path, version: int) -> sqlite3.Connection:
    """A database as a cdrd of schema `version` left it (empty)."""
    conn = sqlite3.connect(path)
    conn.execute(SCHEMA_VERSION_DDL)
    for index in range(version):
        for statement in migration_statements("sqlite", index):
            conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
    return conn


def records_at(path, version: int, records, upto: int | None = None) -> None:
    """A database of schema `version` holding `records` (then migrated on
    to `upto`, if given, as cdrds of those versions would), closed."""
    conn = database_at(path, version)
    conn.executemany(
        f"INSERT INTO calls ({CALL_COLS}) VALUES ({', '.join('?' * 18)})",
        [_record_row(r) for r in records],
    )
    for index in range(version, upto or version):
        for statement in migration_statements("sqlite", index):
            conn.execute(statement)
    conn.execute("UPDATE schema_version SET version = ?", (upto or version,))
    conn.commit()
    conn.close()


@pytest_twisted.ensureDeferred
async def test_a_gateways_events_are_searched_through_indexes_not_scanned(path, monkeypatch):
    """Without events_gateway_id (migration 11) a gateway's events come
    through (gateway, seq), cdrd's own (seq NULL) in rowid order, and the
    primary key: every read is a search of those, none a scan or a sort."""
    store = SQLiteStore(str(path), reactor)
    await store.open()
    try:
        statements = await gateway_event_reads(store, monkeypatch)
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'events'")}
    # cdrd's own events come through the unique index too: its entries end in the rowid
    assert "events_gateway_id" not in indexes and "events_gateway_unsequenced" not in indexes
    assert len(statements) >= 6
    for statement, params in statements:
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + statement, params)]
        if "WHERE id IN" in statement:
            assert plan == ["SEARCH events USING INTEGER PRIMARY KEY (rowid=?)"], (statement, plan)
        else:
            assert len(plan) == 1 and plan[0].replace("COVERING ", "").startswith(
                "SEARCH events USING INDEX sqlite_autoindex_events_1 (gateway=? AND seq"), (statement, plan)
    conn.close()


@pytest_twisted.ensureDeferred
async def test_the_events_by_seq_migration_keeps_a_gateways_events_in_order(path):
    """A database stored before migration 11: its events, cdrd's own
    among them, come back by id through the new indexes."""
    conn = database_at(path, EVENTS_BY_SEQ_MIGRATION - 1)
    rows = [(KEY, 1), (KEY2, 1), (KEY, None), (KEY, 2), (KEY2, None), (KEY, 3)]
    conn.executemany(
        "INSERT INTO events (gateway, seq, boot, ref, type, time, received, fields)"
        " VALUES (?, ?, 'b1', 1, 'HOOK_OFF', 0, 0, '{}')", rows)
    conn.commit()
    conn.close()
    store = SQLiteStore(str(path), reactor)
    await store.open()
    try:
        assert store.schema_version == len(MIGRATIONS)
        assert [(e.id, e.seq) for e in await store.events_after(KEY, 0, 100)] == [
            (1, 1), (3, None), (4, 2), (6, 3)]
        assert [(e.id, e.seq) for e in await store.events_after(KEY, 3, 100)] == [(4, 2), (6, 3)]
        assert [(e.id, e.seq) for e in await store.events_after(KEY2, 2, 100)] == [(5, None)]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_migration_2_counts_the_records_of_a_version_1_database(path):
    """call_hours is filled from the records already stored when it arrives."""
    records = random_records(500)
    records_at(path, 1, records)
    store = SQLiteStore(str(path), reactor)
    await store.open()
    try:
        assert store.schema_version == len(MIGRATIONS) >= 2
        for flt in CALL_FILTERS:
            q = CallQuery(since=DAY - 24 * HOUR, until=DAY + 48 * HOUR, filter=flt, limit=0)
            total, filtered, _ = oracle_calls(records, q)
            page = await store.calls(q)
            assert (page.total, page.filtered) == (total, filtered) and total == 500
        stats = await store.call_stats(DAY - 24 * HOUR, DAY + 48 * HOUR, 24 * HOUR)
        assert sum(s.calls for s in stats) == 500
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_the_filter_sums_migration_sums_the_records_stored_before(path):
    """call_hours' per-filter answered and talk (issue 14) are filled from
    the records and hours stored before they arrive."""
    records, _ = searchable(300)
    records_at(path, 1, records, upto=FILTER_SUMS_MIGRATION - 1)  # up to the one before
    store = SQLiteStore(str(path), reactor)
    await store.open()
    try:
        await assert_filter_totals(store, records)
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_the_numbers_migration_indexes_the_records_stored_before(path):
    """The numbers dictionary, its trigram index and the postings (issue 14)
    are filled from the records stored before they arrive."""
    records = number_records(300)
    records_at(path, NUMBERS_MIGRATION - 1, records)
    await assert_numbers_backfilled(SQLiteStore(str(path), reactor), records)


@pytest_twisted.ensureDeferred
async def test_one_cdrd_per_file(path):
    """A second store on the same file is refused until the first closes."""
    first = SQLiteStore(str(path), reactor)
    await first.open()
    await first.activate()
    second = SQLiteStore(str(path), reactor)
    await second.open()
    try:
        with pytest.raises(StoreInUse, match=f"pid {os.getpid()}"):
            await second.activate()
        await first.close()
        await second.activate()
    finally:
        await first.close()
        await second.close()


@pytest_twisted.ensureDeferred
async def test_a_killed_cdrd_leaves_no_lock_behind(path):
    """The kernel drops the lock with the process, kill -9 included."""
    code = (
        "import sys\n"
        "from twisted.internet import defer, task\n"
        "from cdrd.store.sqlite import SQLiteStore\n"
        "async def main(reactor):\n"
        f"    store = SQLiteStore({str(path)!r}, reactor)\n"
        "    await store.open()\n"
        "    await store.activate()\n"
        "    print('active', flush=True)\n"
        "    await task.deferLater(reactor, 60, lambda: None)\n"
        "task.react(lambda r: defer.ensureDeferred(main(r)))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    store = SQLiteStore(str(path), reactor)
    try:
        assert proc.stdout.readline() == b"active\n"
        await store.open()
        with pytest.raises(StoreInUse, match=f"pid {proc.pid}"):
            await store.activate()
        proc.kill()
        proc.wait(10)
        await store.activate()
    finally:
        proc.kill()
        proc.wait(10)
        await store.close()


# -- retention: the space comes back (issue 11) ------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_new_file_gives_the_space_retention_frees_back(path):
    store = SQLiteStore(str(path), reactor)
    await store.open()
    try:
        assert store.auto_vacuum == 2
        await store.write(WriteBatch(log=[log_entry(DAY - n, detail="x" * 500) for n in range(20_000)]))

        def size(cur):
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return os.path.getsize(path)
        full = await store._run(size, write=False)
        after = None
        while True:
            got = await store.expire("log", DAY + 1, 5000, after)
            if got.after is None:
                break
            after = got.after
        given, left = 0, None
        while left != 0:
            freed, left = await store.reclaim(1000)
            assert freed == 1000 or (left == 0 and freed > 0)  # a whole step each time
            given += freed
        assert given > 1000
        assert await store._run(size, write=False) < full / 4
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_cdrd_vacuum_converts_an_older_file_once_cdrd_has_stopped(path, capsys):
    from cdrd.store import vacuum

    conn = sqlite3.connect(path)  # what a cdrd before retention made: auto_vacuum off
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    store = SQLiteStore(str(path), reactor)
    await store.open()
    assert store.auto_vacuum == 0
    assert await store.reclaim(100) == (0, 0)
    await store.activate()
    assert vacuum.main([f"sqlite:{path}"]) == 1
    assert capsys.readouterr().err == f"cdrd-vacuum: {path} is in use by a running cdrd: stop it first\n"
    await store.close()
    assert vacuum.main([str(path)]) == 0
    assert "incremental auto_vacuum on" in capsys.readouterr().out
    again = SQLiteStore(str(path), reactor)
    await again.open()
    try:
        assert again.auto_vacuum == 2
    finally:
        await again.close()
    assert vacuum.main([str(path) + ".missing"]) == 1
    assert "no such file" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_migration_4_holds_records_stored_before_until_the_outbox_empties(path):
    conn = database_at(path, 3)
    conn.execute(f"INSERT INTO calls ({CALL_COLS}) VALUES ({', '.join('?' * 18)})", _record_row(record(1, DAY)))
    conn.execute("INSERT INTO outbox (sink, payload, created) VALUES ('radius', x'00', 0)")
    conn.execute(f"INSERT INTO calls ({CALL_COLS}) VALUES ({', '.join('?' * 18)})", _record_row(record(2, DAY)))
    conn.commit()
    conn.close()
    store = SQLiteStore(str(path), reactor)
    await store.open()
    try:
        # which of them the waiting item belongs to is not known: both wait
        assert (await store.expire("records", DAY + 1, 10)).deleted == 0
        item = (await store.outbox("radius", 0, 1))[0]
        await store.write(WriteBatch(outbox_done=[("radius", item.id)]))
        assert (await store.expire("records", DAY + 1, 10)).deleted == 2
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_migration_6_counts_the_log_entries_stored_before_once(path):
    conn = database_at(path, 5)
    conn.execute("INSERT INTO log (time, event, peer, gateway, mac, detail)"
                  " VALUES (1, 'Bad Packet', '127.0.0.1:4000', '???', '', 'unknown verb')")
    conn.commit()
    conn.close()
    store = SQLiteStore(str(path), reactor)
    await store.open()
    try:
        [entry] = await store.log(LogQuery())
        assert (entry.event, entry.count) == ("Bad Packet", 1)
    finally:
        await store.close()


@given(st.dictionaries(st.text(), st.text()))
def test_event_fields_json_is_the_stdlib_encoders(fields):
    # orjson writes what a sorted, compact JSONEncoder writes, UTF-8 as it is
    stdlib = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
    assert _fields_json(fields) == (stdlib(fields) if fields else "{}")
    assert json.loads(_fields_json(fields)) == fields


@pytest.mark.parametrize("count", [1, 3, 256, 300, 1100])
def test_rows_go_in_statements_of_power_of_two_sizes(tmp_path, count):
    # a few statement texts serve every batch size (SqlStore.fixed_chunks):
    # the driver keeps them compiled; every row is stored, ids in order
    store = SQLiteStore(str(tmp_path / "cdrd.sqlite"), reactor)
    store._connect()  # in this thread: the schema and the writer's connection
    conn = store._conn
    sizes = []

    class Recording(sqlite3.Cursor):
        def execute(self, sql, params=()):
            if sql.startswith("INSERT INTO events"):
                sizes.append(sql.count("(?, ?, ?, ?, ?, ?, ?, ?)"))
                assert len(params) == 8 * sizes[-1]
            return super().execute(sql, params)

    cur = conn.cursor(Recording)
    events = [event(seq) for seq in range(1, count + 1)]
    cur.execute("BEGIN IMMEDIATE")
    result = store._write(cur, WriteBatch(events=events))
    cur.execute("COMMIT")
    assert sum(sizes) == count
    assert all(size & (size - 1) == 0 and size <= 256 for size in sizes)
    assert len(sizes) == len(set(sizes)) + count // 256 - (1 if count >= 256 else 0)
    assert [e.id for e in result.events] == list(range(1, count + 1))
    assert [e.seq for e in result.events] == [e.seq for e in events]
    conn.close()
