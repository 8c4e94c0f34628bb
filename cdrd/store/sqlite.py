"""
The embedded store: stdlib sqlite3.  Writes run on ONE dedicated thread
with its own connection: WAL, synchronous=FULL (an ACK means the batch is
on disk), one transaction per write (BEGIN IMMEDIATE ... COMMIT),
multi-row INSERTs.  Queries run on a small pool of reader threads, each with its
own read-only connection: under WAL they read a committed snapshot beside
the writer, so a slow report or CSV export never delays the commit an ACK
is waiting for.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from cdrd.interfaces import IStore
from cdrd.store import StoreClosed
from cdrd.store.sql import SqlStore

BUSY_TIMEOUT_MS = 10_000
#: pages of a fresh file: auto_vacuum=INCREMENTAL is set before the first table
INCREMENTAL = 2
CACHE_KIB = 64 * 1024
READERS = 2
#: WAL pages written before a commit copies them into the database file
#: (SQLite's default is 1 000, ~4 MB).  Every transaction rewrites a leaf of
#: each per-gateway index for each gateway in it (~450 pages for 300 events
#: from 100 gateways), so at 1 000 pages every third commit or so also paid
#: for a checkpoint of mostly the same leaves; at 10 000 (~40 MB of WAL) a
#: checkpoint copies each hot leaf once for ten times as many commits
#: (docs/benchmarks.md, "Checkpoints and collector pauses")
WAL_AUTOCHECKPOINT = 10_000
#: ... but never more than a quarter of the free space of the file system,
#: looked at every WAL_BOUND_EVERY seconds, nor less than SQLite's default:
#: a WAL that filled the disk before reaching its bound could never be
#: checkpointed (a checkpoint is run by a commit that succeeded), and a
#: disk with little room left works as it did with SQLite's default
WAL_MIN_PAGES = 1_000
WAL_SHARE_OF_FREE = 4
WAL_BOUND_EVERY = 1.0
#: bytes: once a checkpoint has emptied it, the WAL file is cut back to this
#: (while a long report holds a snapshot the WAL cannot start again: it grows)
WAL_SIZE_LIMIT = 64 * 1024 * 1024


def free_bytes(directory: str) -> int:
    """Bytes an unprivileged writer may still use on `directory`'s file system."""
    fs = os.statvfs(directory)
    return fs.f_bavail * fs.f_frsize


class StoreInUse(Exception):
    """Another cdrd process writes to this SQLite file."""


@implementer(IStore)
class SQLiteStore(SqlStore):
    dialect = "sqlite"
    fixed_chunks = True  # compiled once, kept in the statement cache (SqlStore.fixed_chunks)

    def __init__(
        self, path: str, reactor, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, readers: int = READERS
    ):
        self.path = path
        self.reactor = reactor
        self.busy_timeout_ms = busy_timeout_ms
        # ":memory:" is one connection's private database: no readers beside it
        self.readers = readers if path != ":memory:" else 0
        self._pool: ThreadPool | None = None
        self._read_pool: ThreadPool | None = None
        self._conn: sqlite3.Connection | None = None  # touched only in the writer thread
        self._local = threading.local()  # a reader thread's connection
        self._read_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._active_fd: int | None = None
        self.schema_version: int | None = None
        #: PRAGMA auto_vacuum once open: 2 (incremental) gives freed space
        #: back (reclaim); 0 reuses it only (cdrd-vacuum converts the file)
        self.auto_vacuum: int | None = None
        #: the writer's auto-checkpoint bound in pages (_bound_wal); 0 until open
        self.wal_pages = 0
        self._wal_looked = 0.0
        self._page_size = 4096

    def __repr__(self):
        return f"<SQLiteStore {self.path!r}>"

    def activate(self, on_lost=None, poll=None):
        """
        One SQLite file serves one cdrd: an exclusive lock on ``PATH.lock``,
        held until close (the kernel drops it when the process dies, kill -9
        included).  A second cdrd on the same file fails at once with
        StoreInUse; there is no standby on SQLite.
        """
        if self.path == ":memory:" or self._active_fd is not None:
            return defer.succeed(None)
        lock_path = f"{self.path}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            return defer.fail(StoreInUse(
                f"{self.path} is in use by another cdrd (pid {holder}, lock {lock_path})"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._active_fd = fd
        return defer.succeed(None)

    # -- lifecycle -------------------------------------------------------------

    def open(self):
        if self._pool is not None:
            return defer.succeed(None)
        self._pool = ThreadPool(1, 1, name=f"cdrd-sqlite:{self.path}")
        self._pool.start()

        def opened(version):
            self.schema_version = version
            if self.readers:
                self._read_pool = ThreadPool(1, self.readers, name=f"cdrd-sqlite-read:{self.path}")
                self._read_pool.start()
            self._logger.info("store {path} open, schema version {version}", path=self.path, version=version)
            if self.auto_vacuum != INCREMENTAL and self.path != ":memory:":
                self._logger.info(
                    "store {path}: auto_vacuum is off, so space that retention frees is reused"
                    " but not given back to the file system; stop cdrd and run cdrd-vacuum {path} once",
                    path=self.path,
                )

        def failed(f):
            pool, self._pool = self._pool, None
            pool.stop()
            return f

        d = deferToThreadPool(self.reactor, self._pool, self._connect)
        return d.addCallbacks(opened, failed)

    def _settings(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")

    def _connect(self) -> int:
        # room for every statement text of the write path compiled (fixed_chunks)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True,
                               cached_statements=512)
        try:
            if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                # a new file: retention's freed pages can go back (reclaim)
                conn.execute(f"PRAGMA auto_vacuum = {INCREMENTAL}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal" and self.path != ":memory:":
                raise sqlite3.OperationalError(f"could not switch {self.path} to WAL (got {mode})")
            self._settings(conn)
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
        self.auto_vacuum = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
        self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        self._conn = conn
        self._bound_wal(conn, force=True)
        return version

    def reclaim(self, pages):
        """PRAGMA incremental_vacuum: at most `pages` free pages given back,
        in the writer's thread (one short transaction of its own)."""
        if self.auto_vacuum != INCREMENTAL:
            return defer.succeed((0, 0))

        if self._pool is None:
            return defer.fail(StoreClosed(f"{self!r} is not open"))

        def fn():
            conn = self._conn
            if conn is None:
                raise StoreClosed(f"{self!r} is not open")
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free:
                # its own transaction, stepped to the end: a cursor's
                # execute() steps once, and gives back one page
                conn.executescript(f"PRAGMA incremental_vacuum({int(pages)})")
            left = conn.execute("PRAGMA freelist_count").fetchone()[0]
            return free - left, left
        return deferToThreadPool(self.reactor, self._pool, fn)

    def close(self):
        pool, self._pool = self._pool, None
        read_pool, self._read_pool = self._read_pool, None
        if pool is None:
            self._release()
            return defer.succeed(None)

        def disconnect():
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        def stop_readers(result):
            # joins the reader threads once their queued queries ran: do it
            # in the reactor's thread pool, not on the reactor
            if read_pool is None:
                return result
            get_pool = getattr(self.reactor, "getThreadPool", None)
            if get_pool is None:
                read_pool.stop()
                self._close_readers()
                return result
            d = deferToThreadPool(self.reactor, get_pool(), read_pool.stop)
            d.addCallback(lambda _: self._close_readers())
            return d.addCallback(lambda _: result)

        d = deferToThreadPool(self.reactor, pool, disconnect)
        # the queued work ran before disconnect (one thread, FIFO); now the
        # thread is idle, so stopping the pool does not wait
        d.addBoth(lambda r: (pool.stop(), r)[1])
        d.addBoth(stop_readers)
        # the last write has committed: now another cdrd may take the file
        d.addBoth(lambda r: (self._release(), r)[1])
        return d

    def _release(self) -> None:
        fd, self._active_fd = self._active_fd, None
        if fd is not None:
            os.close(fd)

    def _close_readers(self) -> None:
        with self._lock:
            conns, self._read_conns = self._read_conns, []
        for conn in conns:
            conn.close()

    # -- running SQL in the store thread ---------------------------------------

    def _run(self, fn, *args, write: bool):
        if self._pool is None:
            return defer.fail(StoreClosed(f"{self!r} is not open"))
        if write or self._read_pool is None:
            return deferToThreadPool(
                self.reactor, self._pool, self._transaction, fn, args, write, self._writer)
        return deferToThreadPool(
            self.reactor, self._read_pool, self._transaction, fn, args, False, self._reader)

    def _last_event_id(self, cur) -> int:
        # the rowid of the last row this connection inserted: no statement
        # (SqlStore._write checks it against the rows it counted)
        return cur.lastrowid or 0

    def _writer(self) -> sqlite3.Connection | None:
        return self._conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False: closed by _close_readers, in another
            # thread, once this pool has stopped
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._settings(conn)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._lock:
                self._read_conns.append(conn)
        return conn

    def _transaction(self, fn, args, write, connection):
        conn = connection()
        if conn is None:
            raise StoreClosed(f"{self!r} is not open")
        cur = conn.cursor()
        # BEGIN IMMEDIATE takes the write lock at once (another process on
        # the same file waits busy_timeout); reads share a snapshot
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(cur, *args)
            cur.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                conn.rollback()
            if write and getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                self._after_full(conn)
            raise
        finally:
            cur.close()
        if write:
            self._bound_wal(conn)
        return result

    def _bound_wal(self, conn: sqlite3.Connection, force: bool = False) -> None:
        """
        The writer's auto-checkpoint bound: WAL_AUTOCHECKPOINT pages, or a
        WAL_SHARE_OF_FREE part of the file system's free space where that is
        less (WAL_MIN_PAGES at least), looked at every WAL_BOUND_EVERY s.
        """
        if self.path == ":memory:":
            return
        now = time.monotonic()
        if not force and now < self._wal_looked + WAL_BOUND_EVERY:
            return
        self._wal_looked = now
        try:
            free = free_bytes(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return
        free_pages = free // (WAL_SHARE_OF_FREE * self._page_size)
        pages = max(WAL_MIN_PAGES, min(WAL_AUTOCHECKPOINT, free_pages))
        if pages != self.wal_pages:
            conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
            self.wal_pages = pages

    def _after_full(self, conn: sqlite3.Connection) -> None:
        """
        A write failed for want of space: the bound follows the free space
        at once, and what the WAL holds is copied into the database where
        it can be (PASSIVE: no wait for readers), so that the WAL starts
        again from its beginning instead of growing once space comes back.
        """
        self._bound_wal(conn, force=True)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass  # no room for it either: the next failed write tries again
