"""
``cdrd-vacuum PATH``: make an SQLite store give back the space retention
frees (docs/store.md, "Retention").

A file made by a cdrd before retention has ``auto_vacuum = NONE``: pages
that retention frees are reused by later rows, but the file never shrinks.
This sets ``auto_vacuum = INCREMENTAL`` and rewrites the file once with
VACUUM (it needs about the file's size free again, and the time to copy
it); from then on cdrd gives freed pages back after every sweep.  Run it
while cdrd is stopped: it takes the same lock as cdrd and refuses a file
that a running cdrd holds.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sqlite3
import sys


def vacuum(path: str) -> tuple[int, int]:
    """Convert `path`; (bytes before, bytes after).  Raises OSError, sqlite3.Error, RuntimeError."""
    if not os.path.isfile(path):
        raise RuntimeError(f"{path}: no such file")
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{path} is in use by a running cdrd: stop it first") from None
        before = os.path.getsize(path)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            mode = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
        finally:
            conn.close()
        if mode != 2:
            raise RuntimeError(f"{path}: auto_vacuum is still {mode} after VACUUM")
        return before, os.path.getsize(path)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cdrd-vacuum",
        description="Let an SQLite store give the space retention frees back (run with cdrd stopped).",
    )
    parser.add_argument("path", help="the store's file (server.database without sqlite:)")
    args = parser.parse_args(argv)
    path = args.path.removeprefix("sqlite:")
    try:
        before, after = vacuum(path)
    except (OSError, sqlite3.Error, RuntimeError) as e:
        sys.stderr.write(f"cdrd-vacuum: {e}\n")
        return 1
    sys.stdout.write(f"{path}: incremental auto_vacuum on; {before} bytes before, {after} after\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
