"""
Why cdrd's store writes multi-row INSERTs, not executemany: rows per second
into an events-like table (cdrd's indexes, WAL, synchronous=FULL), with and
without a busy Python thread beside the writer, as cdrd's reactor is.

    .venv/bin/python bench/sqlite_gil.py [--rows 2000] [--transactions 10]

Python's sqlite3 lets go of the GIL around every row's sqlite3_step; with a
busy thread beside it, every row of executemany then waits for the GIL.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

COLUMNS = "gateway, seq, boot, ref, type, time, received, fields"
ONE = "(?, ?, ?, ?, ?, ?, ?, ?)"


def table(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, gateway TEXT, seq INT,"
        " boot TEXT, ref INT, type TEXT, time INT, received INT, fields TEXT, UNIQUE (gateway, seq))"
    )
    # cdrd's indexes since migration 11 (a gateway's events by seq)
    conn.execute("CREATE INDEX events_gateway_unsequenced ON events (gateway, id) WHERE seq IS NULL")
    conn.execute("CREATE INDEX events_gateway_ref ON events (gateway, ref, id)")
    conn.execute("CREATE INDEX events_time ON events (time)")
    return conn


def executemany(cur, rows):
    cur.executemany(f"INSERT INTO events ({COLUMNS}) VALUES {ONE} ON CONFLICT DO NOTHING", rows)


def multi_row(cur, rows, chunk=500):
    for i in range(0, len(rows), chunk):
        part = rows[i:i + chunk]
        cur.execute(
            f"INSERT INTO events ({COLUMNS}) VALUES {', '.join([ONE] * len(part))} ON CONFLICT DO NOTHING",
            [v for row in part for v in row],
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--rows", type=int, default=2000, help="rows a transaction")
    p.add_argument("--transactions", type=int, default=10)
    args = p.parse_args(argv)
    sys.setswitchinterval(0.0005)  # as twistd cdrd sets it
    seq = 0

    def rows():
        nonlocal seq
        out = []
        for _ in range(args.rows):
            seq += 1
            out.append((f"gw{seq % 50}", seq, "r0", seq % 100, "DIAL", seq, seq, '{"digits":"2252"}'))
        return out

    with tempfile.TemporaryDirectory(prefix="cdrd-bench-gil-") as tmp:
        conn = table(Path(tmp) / "events.sqlite")
        print(f"SQLite {sqlite3.sqlite_version}, {args.rows} rows a transaction, {args.transactions} transactions")
        for busy in (False, True):
            for name, insert in (("executemany", executemany), ("multi-row VALUES", multi_row)):
                stop = threading.Event()

                def spin(stop=stop):
                    x = 0
                    while not stop.is_set():
                        x += 1

                thread = threading.Thread(target=spin)
                if busy:
                    thread.start()
                took = 0.0
                try:
                    for _ in range(args.transactions):
                        batch = rows()
                        t0 = time.perf_counter()
                        conn.execute("BEGIN IMMEDIATE")
                        insert(conn.cursor(), batch)
                        conn.execute("COMMIT")
                        took += time.perf_counter() - t0
                finally:
                    stop.set()
                    if busy:
                        thread.join()
                beside = "a busy thread beside" if busy else "alone"
                print(f"{name:<17} {beside:<21} {args.rows * args.transactions / took:>10,.0f} rows/s")
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
