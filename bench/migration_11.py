"""
How long migration 11 (a gateway's events by seq: docs/store.md, "Events
by gateway") takes at start-up on a store of N events, on the local
PostgreSQL and on a SQLite file: each filled at schema 10 by one INSERT
... SELECT (every 50th event one of cdrd's own), then opened by cdrd,
which migrates.

    .venv/bin/python bench/migration_11.py 2000000

A temp database on 127.0.0.1:5432 (bench.ingest's, dropped at the end)
and a temp file; nothing listens.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.events_reads import react  # noqa: E402
from bench.ingest import drop_postgres, postgres_database  # noqa: E402
from cdrd.store.postgresql import PostgresStore  # noqa: E402
from cdrd.store.schema import EVENTS_BY_SEQ_MIGRATION, SCHEMA_VERSION_DDL, migration_statements  # noqa: E402
from cdrd.store.sqlite import SQLiteStore  # noqa: E402

BEFORE = EVENTS_BY_SEQ_MIGRATION - 1
COLUMNS = "gateway, seq, boot, ref, type, time, received, fields"
ROW = "'gw' || (i % 100), CASE WHEN i % 50 = 0 THEN NULL ELSE i END, 'b', i / 6, 'DIAL', i, i, '{}'"


def fill_postgresql(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA_VERSION_DDL)
        for index in range(BEFORE):
            for statement in migration_statements("postgresql", index):
                conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (BEFORE,))
        conn.execute(f"INSERT INTO events ({COLUMNS}) SELECT {ROW.replace('%', '%%')}"
                     " FROM generate_series(1, %s) AS i", (n,))
        conn.execute("VACUUM ANALYZE events")


def fill_sqlite(path: str, n: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA auto_vacuum = 2")  # as cdrd makes a new file
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(SCHEMA_VERSION_DDL)
    for index in range(BEFORE):
        for statement in migration_statements("sqlite", index):
            conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (?)", (BEFORE,))
    conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                 f" INSERT INTO events ({COLUMNS}) SELECT {ROW} FROM n", (n,))
    conn.commit()
    conn.close()


async def migrate(reactor, stores) -> None:
    for name, store in stores:
        began = time.monotonic()
        await store.open()
        took = time.monotonic() - began
        print(f"{name}: open() migrating to schema {store.schema_version}: {took:.2f} s")
        await store.close()


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
    url, name = postgres_database()
    with tempfile.TemporaryDirectory(prefix="cdrd-migration-11-") as tmp:
        path = os.path.join(tmp, "cdrd.sqlite")
        try:
            began = time.monotonic()
            fill_postgresql(url, n)
            fill_sqlite(path, n)
            print(f"{n} events at schema {BEFORE} on both stores, filled in {time.monotonic() - began:.0f} s;"
                  f" the SQLite file {os.path.getsize(path) / 1e6:.0f} MB")
            react(lambda reactor: migrate(reactor, [
                ("postgresql", PostgresStore(url, reactor)), ("sqlite", SQLiteStore(path, reactor))]))
        finally:
            drop_postgres(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
