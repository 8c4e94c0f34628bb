"""
PostgreSQL for several cdrd nodes sharing one database: psycopg 3 in a small
thread pool, one connection per thread, the same schema and SQL as SQLite.

Uniqueness is by constraints (UNIQUE (gateway, seq), primary keys) and
``ON CONFLICT DO NOTHING``.  Every write transaction first takes one
transaction-scoped advisory lock, so write transactions of all nodes commit
one after another: event and outbox ids increase in commit order across
nodes, and a write can tell its own inserts from the rows before it.

Several nodes are active/standby: ``activate()`` waits for a session-level
advisory lock held on a connection of its own for as long as the node runs.
Once a node holds it, every write transaction checks (after the write
lock) that it still does, so a node that lost it (its lock connection
dropped, the server restarted) can never commit again: it is fenced.
"""

from __future__ import annotations

import threading

import psycopg
from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from cdrd.interfaces import IStore
from cdrd.store import StoreClosed, safe_url
from cdrd.store.sql import SqlStore

#: pg_advisory_xact_lock key of cdrd's writers ("cdrd" in ASCII).
WRITE_LOCK = 0x63647264
#: pg_advisory_lock key (two ints: pg_locks shows them as classid, objid,
#: objsubid 2) of the one active node.
ACTIVE_LOCK = (0x63647264, 1)
THREADS = 4
#: seconds between a standby's tries for the active lock, and between the
#: active node's checks that its lock connection is alive
ACTIVE_POLL = 2.0


class NotActive(Exception):
    """This node does not (or no longer) hold the store's active lock."""


@implementer(IStore)
class PostgresStore(SqlStore):
    dialect = "postgresql"
    like = "ILIKE"

    def __init__(self, url: str, reactor, *, threads: int = THREADS, connect_timeout: int = 10):
        self._url = url  # may hold a password: never logged (see __repr__)
        self.reactor = reactor
        self.threads = threads
        self.connect_timeout = connect_timeout
        self._pool: ThreadPool | None = None
        self._local = threading.local()
        self._conns: set[psycopg.Connection] = set()
        self._lock = threading.Lock()
        self.schema_version: int | None = None
        # active/standby: None until activate() is called (no fencing), then
        # the backend pid of the connection that holds ACTIVE_LOCK, or 0 once lost
        self._active_pid: int | None = None
        self._lock_pool: ThreadPool | None = None
        self._lock_conn: psycopg.Connection | None = None  # only in the lock thread
        self._watchdog: task.LoopingCall | None = None

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

    def activate(self, on_lost=None, poll: float = ACTIVE_POLL):
        """
        Fires once this node holds the store's active lock (a standby waits,
        trying every `poll` s), and after every write another node had in
        flight has committed.  From then on a write that finds the lock lost
        fails with NotActive, and `on_lost()` is called once the lock's
        connection is found dead.
        """
        if self._lock_pool is None:
            self._lock_pool = ThreadPool(1, 1, name="cdrd-postgresql-active")
            self._lock_pool.start()
        waiting = []

        def attempt():
            if self._pool is None:
                return defer.fail(StoreClosed(f"{self!r} is not open"))
            d = deferToThreadPool(self.reactor, self._lock_pool, self._try_active)
            d.addCallback(got)
            return d

        def got(pid):
            if pid is None:
                if not waiting:
                    waiting.append(True)
                    self._logger.info(
                        "store {url}: another cdrd node is active; standing by",
                        url=safe_url(self._url))
                return task.deferLater(self.reactor, poll, attempt)
            self._active_pid = pid
            # a barrier: the write in flight of the node active before us
            # commits before anything of ours
            d = self._run(lambda cur: None, write=True)
            d.addCallback(lambda _: started())
            return d

        def started():
            self._logger.info("store {url}: this cdrd node is active", url=safe_url(self._url))
            self._watchdog = task.LoopingCall(self._check_active, on_lost)
            self._watchdog.clock = self.reactor
            self._watchdog.start(poll, now=False)

        return attempt()

    def _try_active(self) -> int | None:
        conn = self._lock_conn
        if conn is None or conn.closed:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self.connect_timeout)
            self._lock_conn = conn
        got, pid = conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s), pg_backend_pid()", ACTIVE_LOCK).fetchone()
        return pid if got else None

    def _ping_lock(self) -> None:
        conn = self._lock_conn
        if conn is None:
            raise NotActive("no lock connection")
        conn.execute("SELECT 1")

    def _check_active(self, on_lost):
        if self._lock_pool is None:
            return None
        d = deferToThreadPool(self.reactor, self._lock_pool, self._ping_lock)

        def lost(failure):
            self._active_pid = 0
            if self._watchdog is not None and self._watchdog.running:
                self._watchdog.stop()
            self._logger.critical(
                "store {url}: this cdrd node lost the active lock ({error}); it writes nothing more",
                url=safe_url(self._url), error=failure.getErrorMessage())
            if on_lost is not None:
                on_lost()

        return d.addErrback(lost)

    def _release_active(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            conn.close()  # ends the session: the lock is free for a standby

    def close(self):
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        lock_pool, self._lock_pool = self._lock_pool, None
        if lock_pool is not None:
            lock_pool.callInThread(self._release_active)
        pool, self._pool = self._pool, None
        if pool is None:
            if lock_pool is not None:
                lock_pool.stop()
            return defer.succeed(None)
        # stop() lets queued work finish and joins the threads: do that in
        # the reactor's own thread pool, not on the reactor
        get_pool = getattr(self.reactor, "getThreadPool", None)
        if get_pool is None:
            pool.stop()
            if lock_pool is not None:
                lock_pool.stop()
            self._close_all()
            return defer.succeed(None)
        def stop_pools():
            pool.stop()
            if lock_pool is not None:
                lock_pool.stop()

        d = deferToThreadPool(self.reactor, get_pool(), stop_pools)
        d.addBoth(lambda r: (self._close_all(), r)[1])
        return d

    def _close_all(self):
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            conn.close()

    # -- running SQL -----------------------------------------------------------

    def _fence(self, cur) -> None:
        """Under the write lock: fail unless this node still holds the active lock."""
        held = self._active_pid and cur.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
            " AND objid = %s AND objsubid = 2 AND pid = %s AND granted",
            (*ACTIVE_LOCK, self._active_pid),
        ).fetchone()
        if not held:
            raise NotActive(f"{self!r}: this node no longer holds the active lock")

    def _connection(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self._url, autocommit=False, connect_timeout=self.connect_timeout)
            self._local.conn = conn
            with self._lock:
                self._conns.add(conn)
        return conn

    def _discard(self, conn):
        self._local.conn = None
        with self._lock:
            self._conns.discard(conn)
        conn.close()

    def _run(self, fn, *args, write: bool):
        if self._pool is None:
            return defer.fail(StoreClosed(f"{self!r} is not open"))
        return deferToThreadPool(self.reactor, self._pool, self._transaction, fn, args, write)

    def _transaction(self, fn, args, write):
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                if write:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                    if self._active_pid is not None:
                        self._fence(cur)
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

