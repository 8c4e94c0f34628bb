"""
PostgreSQL for several active cdrd nodes sharing one database: psycopg 3 in
a small thread pool, one connection per thread, the same schema and SQL as
SQLite.

Uniqueness is by constraints (UNIQUE (gateway, seq), primary keys) and
``ON CONFLICT DO NOTHING``.  Every write transaction first takes one
transaction-scoped advisory lock, so write transactions of all nodes commit
one after another: event and outbox ids increase in commit order across
nodes, and a write can tell its own inserts from the rows before it.

Every node is active.  Each gateway is owned by the node holding its lease
(cdrd.store.leases): a LOGIN takes it, and every write for a gateway checks
its fencing token under the write lock, so a node that lost a gateway can
never commit for it again (LeaseLost).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable

import psycopg
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from cdrd.interfaces import IDerivedLane, ILeasedStore
from cdrd.store import StoreClosed, safe_url
from cdrd.store.leases import NOW_MS, Leases, batch_gateways, default_node_name
from cdrd.store.sql import GATEWAY_FIELDS, LOG_COLS, SqlStore, _gateway, _log

#: pg_advisory_xact_lock key of cdrd's writers ("cdrd" in ASCII): the
#: events' lane, the leases' takes, retention
WRITE_LOCK = 0x63647264
#: pg_advisory_xact_lock key of the derived lane ("cdre"): records, CDRs,
#: cursors and the outboxes, in one order across the nodes (the outbox
#: ids commit in id order).  Taken after WRITE_LOCK by a write that holds
#: both; the derived lane never waits for WRITE_LOCK (docs/store.md, "Two
#: write lanes")
DERIVED_LOCK = 0x63647265
THREADS = 4
#: cluster.lease_seconds when the store is built without a config
LEASE_SECONDS = 10.0

#: NOTIFY channel of the live feeds (docs/web.md, "Several nodes")
FEED_CHANNEL = "cdrd_feed"
#: a NOTIFY payload is at most 8000 bytes
FEED_PAYLOAD = 7000


def _feed_payloads(node: str, events, log, calls: list[str]) -> list[str]:
    """JSON payloads: {"node", "events": [first, last], "log": [first, last], "calls": [ids]}."""
    if not (events or log or calls):
        return []
    payloads = []
    head = {"node": node, "events": events, "log": log, "calls": []}
    size = len(json.dumps(head))
    for call in calls:
        if size + len(call) + 4 > FEED_PAYLOAD:
            payloads.append(json.dumps(head))
            head = {"node": node, "events": None, "log": None, "calls": []}
            size = len(json.dumps(head))
        head["calls"].append(call)
        size += len(call) + 4
    payloads.append(json.dumps(head))
    return payloads


@functools.lru_cache(maxsize=256)
def _numbered(statement: str) -> str:
    """
    A statement's ``%s`` placeholders as ``$1, $2, ...``, for a RawCursor.
    psycopg caches its own conversion only for statements of at most 50
    parameters; a multi-row INSERT of 500 rows (4 000 parameters) was
    parsed anew every time, with a regular expression, in the store
    thread holding the GIL: ~5 ms a statement, most of a write's CPU.
    """
    parts = statement.split("%s")
    out = [parts[0]]
    for n, part in enumerate(parts[1:], 1):
        out.append(f"${n}")
        out.append(part)
    return "".join(out)


#: a multi-row INSERT's row, ``(?, ?)`` -> its texts with numbered
#: placeholders: ``($1, $2)``, ``($3, $4)``, ... (lists never changed once
#: published: the store's threads share them)
_ROW_TEXTS: dict[str, list[str]] = {}


def _numbered_rows(values: str, size: int) -> list[str]:
    """
    The first `size` rows of a multi-row INSERT whose row is `values`, with
    numbered placeholders.  What ``_numbered`` makes of the whole statement,
    without its cost: each group commit is a different size, so the whole
    text (up to 500 rows, 60 KB) was seldom in ``_numbered``'s cache, and
    numbering it again took ~1.4 ms of the store thread's GIL for 300 rows.
    """
    rows = _ROW_TEXTS.get(values)
    if rows is None or len(rows) < size:
        width = values.count("?")
        form = values.replace("%", "%%").replace("?", "$%d")
        known = rows or []
        rows = known + [
            form % tuple(range(i * width + 1, (i + 1) * width + 1)) for i in range(len(known), size)
        ]
        _ROW_TEXTS[values] = rows
    return rows[:size]


def _lost_first(check) -> None:
    """
    Raise LeaseLost if the failed write's lease check found the lease lost
    (the reason that counts), else nothing: the write's own error stands.
    """
    try:
        check()
    except psycopg.Error:
        return  # no answer to the check: the write's error stands


#: the gateways' columns, online only while a node holds a live lease
_PRESENT_COLS = ", ".join(
    f"CASE WHEN g.online = 1 AND l.expires > {NOW_MS} THEN 1 ELSE 0 END" if f == "online" else f"g.{f}"
    for f in GATEWAY_FIELDS
)


@implementer(ILeasedStore, IDerivedLane)
class PostgresStore(SqlStore):
    dialect = "postgresql"
    like = "ILIKE"

    def __init__(self, url: str, reactor, *, threads: int = THREADS, connect_timeout: int = 10,
                 leases: Leases | None = None):
        self._url = url  # may hold a password: never logged (see __repr__)
        self.reactor = reactor
        self.threads = threads
        self.connect_timeout = connect_timeout
        self._pool: ThreadPool | None = None
        self._local = threading.local()
        self._conns: set[psycopg.Connection] = set()
        self._lock = threading.Lock()
        self.schema_version: int | None = None
        self.leases = leases if leases is not None else Leases(default_node_name(), LEASE_SECONDS)
        self._listen_pool: ThreadPool | None = None
        self._listening = False

    def __repr__(self):
        return f"<PostgresStore {safe_url(self._url)}>"

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    # -- lifecycle -------------------------------------------------------------

    def open(self):
        if self._pool is not None:
            return defer.succeed(None)
        self._pool = ThreadPool(1, self.threads, name="cdrd-postgresql")
        self._pool.start()

        def opened(version):
            self.schema_version = version
            self._logger.info("store {url} open, schema version {version}",
                              url=safe_url(self._url), version=version)

        def failed(f):
            pool, self._pool = self._pool, None
            pool.stop()
            self._close_all()
            return f

        d = deferToThreadPool(self.reactor, self._pool, self._transaction, self._migrate_locked, (), True)
        return d.addCallbacks(opened, failed)

    def _migrate_locked(self, cur):
        return self._migrate(cur)

    def activate(self, on_lost=None, poll=None):
        """Every node is active: each gateway is owned through its lease."""
        if self._pool is None:
            return defer.fail(StoreClosed(f"{self!r} is not open"))
        return defer.succeed(None)

    def close(self):
        self._listening = False
        listen_pool, self._listen_pool = self._listen_pool, None
        if listen_pool is not None:
            get_pool = getattr(self.reactor, "getThreadPool", None)
            if get_pool is not None:
                deferToThreadPool(self.reactor, get_pool(), listen_pool.stop)
            else:
                listen_pool.stop()
        pool = self._pool
        if pool is None:
            return defer.succeed(None)
        # a clean stop lets this node's leases expire at once: the gateways'
        # open calls are adopted by another node without waiting
        d = self._run(self.leases.release_all, write=False)
        d.addErrback(lambda f: self._logger.warn(
            "store {url}: could not release this node's leases ({error}); they expire by themselves",
            url=safe_url(self._url), error=f.getErrorMessage()))
        d.addCallback(lambda _: self._stop_pool())
        return d

    def _stop_pool(self):
        pool, self._pool = self._pool, None
        if pool is None:
            return defer.succeed(None)
        # stop() lets queued work finish and joins the threads: do that in
        # the reactor's own thread pool, not on the reactor
        get_pool = getattr(self.reactor, "getThreadPool", None)
        if get_pool is None:
            pool.stop()
            self._close_all()
            return defer.succeed(None)
        d = deferToThreadPool(self.reactor, get_pool(), pool.stop)
        d.addBoth(lambda r: (self._close_all(), r)[1])
        return d

    # -- leases (cdrd.store.leases; driven by cdrd.cluster) ----------------------

    def take_lease(self, gateway: str):
        """Deferred[Taken]: this node owns `gateway` from the commit on (a LOGIN)."""
        return self._run(self.leases.take, gateway, write=True)

    def take_expired_lease(self, key: str):
        """Deferred[Taken | None]: `key`'s lease if nobody holds it live."""
        return self._run(self.leases.take_expired, key, write=True)

    def renew_leases(self):
        """Deferred[list[str]]: renews this node's leases; the gateways found taken."""
        return self._run(self.leases.renew, write=False)

    def orphans(self, limit: int = 100):
        """Deferred[list[str]]: gateways nobody holds live that have calls to end."""
        return self._run(self.leases.orphans, limit, write=False)

    def all_leases(self):
        return self._run(self.leases.leases, write=False)

    def write(self, batch):
        locks = (WRITE_LOCK, DERIVED_LOCK) if batch.has_derived() else (WRITE_LOCK,)
        return self._run(self._write, batch, False, write=True, pipeline=True, locks=locks)

    def write_derived(self, batch):
        """
        The derived lane (IDerivedLane.write_derived): a batch of records,
        CDRs, cursors and outbox rows in a transaction of its own, under
        DERIVED_LOCK and not WRITE_LOCK, so beside the events' own.  Its
        lease check locks the gateways' lease rows (FOR KEY SHARE) until
        the commit: a take waits for it, so the fencing holds without the
        write lock.
        """
        if not batch.derived():
            return defer.fail(ValueError("write_derived: a batch with events, log or gateway state"))
        return self._run(self._write, batch, True, write=True, pipeline=True, locks=(DERIVED_LOCK,))

    def _write(self, cur, batch, derived: bool = False):
        # under the write lock (the derived lane: the lease rows' lock): a
        # node that lost a gateway commits nothing for it (asked first,
        # judged before the commit)
        check = self.leases.check(cur, batch_gateways(batch), lock=derived)
        log_before = self._ask(cur, "SELECT COALESCE(MAX(id), 0) FROM log") if batch.log else None
        try:
            result = super()._write(cur, batch)
        except BaseException:
            _lost_first(check)
            raise
        check()
        log = None
        if batch.log:
            log = (log_before()[0][0] + 1, self._ask(cur, "SELECT COALESCE(MAX(id), 0) FROM log")()[0][0])
        # the other nodes' live feeds: what this commit added (delivered at
        # commit, in commit order; the write lock makes the id ranges ours)
        for payload in _feed_payloads(
            self.leases.node,
            (result.events[0].id, result.events[-1].id) if result.events else None,
            log,
            [r.id for r in batch.records],
        ):
            self._send(cur, "SELECT pg_notify(%s, %s)", (FEED_CHANNEL, payload))
        return result

    # -- pipeline mode: a write transaction's statements sent without waiting

    def _send(self, cur, statement: str, params) -> Callable[[], int]:
        return self._send_numbered(cur, _numbered(statement), params)

    def _send_rows(self, cur, head: str, values: str, tail: str, size: int, params) -> Callable[[], int]:
        if "?" in head or "?" in tail:
            return super()._send_rows(cur, head, values, tail, size, params)
        return self._send_numbered(cur, f"{head}{', '.join(_numbered_rows(values, size))}{tail}", params)

    def _send_numbered(self, cur, statement: str, params) -> Callable[[], int]:
        # a cursor of its own: its answer must not be overwritten
        sent = psycopg.RawCursor(cur.connection)
        sent.execute(statement, params)
        return lambda: max(self._answered(sent).rowcount, 0)

    def _ask(self, cur, statement: str, params=()) -> Callable[[], list]:
        asked = psycopg.RawCursor(cur.connection)
        asked.execute(_numbered(self.sql(statement)), params)
        return lambda: self._answered(asked).fetchall()

    def _answered(self, cursor: psycopg.Cursor) -> psycopg.Cursor:
        """`cursor`, its answer in: the first one read waits for all sent so far (one round trip)."""
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is not None and cursor.pgresult is None:
            pipeline.sync()
        return cursor

    def _event_id_later(self, cur) -> Callable[[], int]:
        rows = self._ask(cur, "SELECT COALESCE(MAX(id), 0) FROM events")
        return lambda: rows()[0][0]

    def log_between(self, first: int, last: int):
        """Deferred[list[LogEntry]]: the gateway log entries with ids first..last."""
        def q(cur):
            rows = cur.execute(
                f"SELECT {LOG_COLS} FROM log WHERE id BETWEEN %s AND %s ORDER BY id", (first, last)
            ).fetchall()
            return [_log(r) for r in rows]
        return self._read(q)

    def listen(self, received) -> None:
        """
        Call `received(payload: dict)` in the reactor thread for every
        commit of any node on this database (LISTEN cdrd_feed), until
        close(); a lost connection is reconnected after a second.
        """
        if self._listen_pool is not None:
            return
        self._listening = True
        self._listen_pool = ThreadPool(1, 1, name="cdrd-postgresql-listen")
        self._listen_pool.start()
        self._listen_pool.callInThread(self._listen_loop, received)

    def _listen_loop(self, received) -> None:
        while self._listening:
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=self.connect_timeout) as conn:
                    conn.execute(f"LISTEN {FEED_CHANNEL}")
                    self.reactor.callFromThread(
                        self._logger.info, "store {url}: listening for the other nodes' commits (live feeds)",
                        url=safe_url(self._url))
                    while self._listening:
                        for note in conn.notifies(timeout=0.5):
                            self.reactor.callFromThread(received, json.loads(note.payload))
            except psycopg.Error as e:
                if self._listening:
                    self.reactor.callFromThread(
                        self._logger.warn, "store {url}: the live feed's LISTEN failed ({error}); again in 1 s",
                        url=safe_url(self._url), error=str(e).strip())
                    time.sleep(1.0)  # in the listen thread, never the reactor

    def gateways(self):
        def q(cur):
            rows = cur.execute(
                f"SELECT {_PRESENT_COLS} FROM gateways g"
                " LEFT JOIN gateway_leases l ON l.gateway = g.key ORDER BY g.key"
            ).fetchall()
            return [_gateway(r) for r in rows]
        return self._read(q)

    def _close_all(self):
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            conn.close()

    # -- running SQL -----------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self._url, autocommit=False, connect_timeout=self.connect_timeout)
            # no JIT: it compiles a report's query for 40-75 ms before
            # running it, more than most of them take (docs/store.md)
            conn.execute("SET jit = off")
            conn.commit()
            self._local.conn = conn
            with self._lock:
                self._conns.add(conn)
        return conn

    def _discard(self, conn):
        self._local.conn = None
        with self._lock:
            self._conns.discard(conn)
        conn.close()

    def _run(self, fn, *args, write: bool, pipeline: bool = False, locks=(WRITE_LOCK,)):
        if self._pool is None:
            return defer.fail(StoreClosed(f"{self!r} is not open"))
        return deferToThreadPool(self.reactor, self._pool, self._transaction, fn, args, write, pipeline, locks)

    def _transaction(self, fn, args, write, pipeline=False, locks=(WRITE_LOCK,)):
        conn = self._connection()
        try:
            if pipeline:
                return self._pipelined(conn, fn, args, locks)
            with conn.cursor() as cur:
                if write:
                    for lock in locks:
                        cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
                result = fn(cur, *args)
            conn.commit()
            return result
        except BaseException:
            if conn.broken or conn.closed:
                self._discard(conn)  # the next call reconnects
            else:
                try:
                    conn.rollback()
                except psycopg.Error:
                    self._discard(conn)
            raise
        finally:
            self._local.pipeline = None
            if pipeline and not conn.closed:
                conn.autocommit = False  # committed or rolled back: idle

    def _pipelined(self, conn, fn, args, locks=(WRITE_LOCK,)):
        """
        A write transaction in pipeline mode: its statements are sent without
        waiting for their answers, BEGIN and COMMIT too (psycopg waits for
        the BEGIN it sends itself: hence autocommit and our own).  The store
        thread waits for the server when `fn` first reads an answer, and at
        the end for the COMMIT: twice, not once a statement, and each wait
        also waits for the GIL back from the busy reactor thread.
        """
        conn.autocommit = True
        with conn.cursor() as cur, conn.pipeline() as self._local.pipeline:
            cur.execute("BEGIN")
            for lock in locks:  # WRITE_LOCK first: one order, no deadlock
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            result = fn(cur, *args)
            cur.execute("COMMIT")
        # the pipeline's end waited for every answer: the COMMIT's too
        return result
