"""
The embedded store: stdlib sqlite3 on ONE dedicated thread with its own
connection.  WAL, synchronous=FULL (an ACK means the batch is on disk),
one transaction per write (BEGIN IMMEDIATE ... COMMIT), executemany.
"""

from __future__ import annotations

import sqlite3

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from cdrd.interfaces import IStore
from cdrd.store.sql import SqlStore

BUSY_TIMEOUT_MS = 10_000
CACHE_KIB = 64 * 1024


class StoreClosed(Exception):
    """The store is not open."""


@implementer(IStore)
class SQLiteStore(SqlStore):
    dialect = "sqlite"

    def __init__(self, path: str, reactor, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS):
        self.path = path
        self.reactor = reactor
        self.busy_timeout_ms = busy_timeout_ms
        self._pool: ThreadPool | None = None
        self._conn: sqlite3.Connection | None = None  # touched only in the pool's thread
        self.schema_version: int | None = None

    def __repr__(self):
        return f"<SQLiteStore {self.path!r}>"

    # -- lifecycle -------------------------------------------------------------

    def open(self):
        if self._pool is not None:
            return defer.succeed(None)
        self._pool = ThreadPool(1, 1, name=f"cdrd-sqlite:{self.path}")
        self._pool.start()

        def opened(version):
            self.schema_version = version
            self._logger.info("store {path} open, schema version {version}", path=self.path, version=version)

        def failed(f):
            pool, self._pool = self._pool, None
            pool.stop()
            return f

        d = deferToThreadPool(self.reactor, self._pool, self._connect)
        return d.addCallbacks(opened, failed)

    def _connect(self) -> int:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal" and self.path != ":memory:":
                raise sqlite3.OperationalError(f"could not switch {self.path} to WAL (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            conn.execute("PRAGMA temp_store = MEMORY")
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                version = self._migrate(cur)
                cur.execute("COMMIT")
            except BaseException:
                conn.rollback()
                raise
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return version

    def close(self):
        pool, self._pool = self._pool, None
        if pool is None:
            return defer.succeed(None)

        def disconnect():
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        d = deferToThreadPool(self.reactor, pool, disconnect)
        # the queued work ran before disconnect (one thread, FIFO); now the
        # thread is idle, so stopping the pool does not wait
        d.addBoth(lambda r: (pool.stop(), r)[1])
        return d

    # -- running SQL in the store thread ---------------------------------------

    def _run(self, fn, *args, write: bool):
        if self._pool is None:
            return defer.fail(StoreClosed(f"{self!r} is not open"))
        return deferToThreadPool(self.reactor, self._pool, self._transaction, fn, args, write)

    def _transaction(self, fn, args, write):
        conn = self._conn
        if conn is None:
            raise StoreClosed(f"{self!r} is not open")
        cur = conn.cursor()
        # BEGIN IMMEDIATE takes the write lock at once (another process on
        # the same file waits busy_timeout); reads share a snapshot
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(cur, *args)
            cur.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        finally:
            cur.close()
        return result
