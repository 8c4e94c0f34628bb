"""
Where a SQLite write transaction's pages go: the pages each commit writes
to the WAL, by the table or index that owns them.

Runs ``bench/capacity.py --mode sqlite`` at one rate into a database of
its own, copies its WAL and then the database file while the load runs,
reads the WAL's frames (each a page; a frame with a commit size ends a
transaction) and names each page's b-tree from the copy's ``dbstat`` as
of the WAL's last commit.

    .venv/bin/python bench/wal_pages.py --rate 2000 --duration 8
    .venv/bin/python bench/wal_pages.py --rate 2000 --event-times sent --tree /work/other

Only loopback; the run stops by itself (capacity.py's bounds); the copy
waits at most `--duration` seconds for the WAL.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WAL_HEADER = 32
FRAME_HEADER = 24


def transactions(wal: bytes) -> list[list[int]]:
    """The page numbers of each committed transaction in `wal`, oldest first."""
    _, _, page_size, _, salt1, salt2, _, _ = struct.unpack(">IIIIIIII", wal[:WAL_HEADER])
    out, pages, off = [], [], WAL_HEADER
    while off + FRAME_HEADER + page_size <= len(wal):
        page, commit, s1, s2 = struct.unpack(">IIII", wal[off:off + 16])
        if (s1, s2) != (salt1, salt2):
            break  # a frame of an earlier generation of the WAL
        pages.append(page)
        if commit:
            out.append(pages)
            pages = []
        off += FRAME_HEADER + page_size
    return out


def owners(database: Path) -> tuple[dict[int, str], int]:
    """Each page's b-tree (table or index name), and the database's page count
    (`database` with its WAL beside it: as of the WAL's last commit)."""
    conn = sqlite3.connect(database)
    try:
        names = {page: name for name, page in conn.execute("SELECT name, pageno FROM dbstat")}
        count = conn.execute("PRAGMA page_count").fetchone()[0]
    finally:
        conn.close()
    return names, count


def report(database: Path, wal: Path) -> str:
    txns = transactions(wal.read_bytes())  # before the database is opened: that may checkpoint it
    names, count = owners(database)
    if not txns:
        return "no committed transaction in the WAL copy"
    by = collections.Counter()
    for pages in txns:
        for page in set(pages):
            name = names.get(page)
            if name is None:
                name = "past the end (freed by then)" if page > count else "other (pointer map, free list)"
            by[name] += 1
    n = len(txns)
    pages = sum(len(set(t)) for t in txns) / n
    lines = [f"{n} transactions, {pages:.1f} distinct pages each (a page is written whole)"]
    lines += [f"{k / n:8.1f}  {name}" for name, k in by.most_common()]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=2000.0, help="offered calls/s")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of offered load")
    p.add_argument("--event-times", choices=("template", "sent"), default="template")
    p.add_argument("--tree", type=Path, default=ROOT, help="a checkout with its own .venv")
    p.add_argument("--copy-after", type=float, default=4.0, help="seconds after the WAL appears")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cdrd-wal-pages-") as tmp:
        tmp = Path(tmp)
        database = tmp / "cdrd.sqlite"
        wal = Path(f"{database}-wal")
        run = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "capacity.py"), "--mode", "sqlite", "--rates", f"{args.rate:g}",
             "--duration", f"{args.duration:g}", "--tree", str(args.tree), "--event-times", args.event_times,
             "--store", f"sqlite:{database}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60 + args.duration
            while not wal.exists() and time.monotonic() < deadline and run.poll() is None:
                time.sleep(0.1)
            time.sleep(args.copy_after)
            if not wal.exists():
                print("the run wrote no WAL", file=sys.stderr)
                return 1
            shutil.copyfile(wal, tmp / "copy.sqlite-wal")  # the WAL first: the file has no later pages
            shutil.copyfile(database, tmp / "copy.sqlite")
            out, _ = run.communicate(timeout=args.duration + 300)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        print(out.decode(errors="replace").rstrip())
        print(report(tmp / "copy.sqlite", tmp / "copy.sqlite-wal"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
