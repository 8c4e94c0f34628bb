"""
What the number search's postings cost the write path (migration 9): the
CPU per call record of SqlStore._write on a SQLite file, with the numbers
dictionary and postings written (``with``) and with `_index_numbers` left
out (``without``), alternating batch by batch in one process:

    .venv/bin/python bench/numbers_write.py [--rounds 60] [--batch 500]

Records carry the report bench's numbers: a random 11-digit dialled
number (a new dictionary entry nearly every call) and one of 10 000
Caller IDs; every fifth is PSTN (its PSTN numbers the same).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cdrd.store.sql as store_sql  # noqa: E402
from cdrd.interfaces import WriteBatch  # noqa: E402
from cdrd.store.schema import MIGRATIONS, migration_statements  # noqa: E402
from cdrd.values import CallRecord  # noqa: E402

DAY = 1795305600000


def records(rnd: random.Random, first: int, n: int) -> list[CallRecord]:
    out = []
    for ref in range(first, first + n):
        dialed = f"0{rnd.randint(1_000_000_000, 9_999_999_999)}"
        cli = f"44207946{rnd.randint(0, 9999):04d}"
        pstn = ref % 5 == 0
        begin = DAY + ref * 1000
        out.append(CallRecord(
            id=f"8200_000C2A020082/b1/{ref}", gateway="8200_000C2A020082", boot="b1", ref=ref, port=1,
            pport=None, notation="Call out", pstn=pstn, dialed=dialed, begin=begin, connect=begin + 2000,
            end=begin + 60_000, talk=58_000, pstn_dial=dialed if pstn else "", pstn_time=None, cli=cli,
            pstn_cli=cli if pstn else "", cause="",
        ))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="the number postings' cost on the write path")
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--batch", type=int, default=500)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdrd-bench-numbers-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "store.sqlite", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        for index in range(len(MIGRATIONS)):
            for statement in migration_statements("sqlite", index):
                conn.execute(statement)
        store = store_sql.SqlStore()
        real = store_sql.SqlStore._index_numbers
        rnd = random.Random(1)
        times: dict[str, list[float]] = {"without": [], "with": []}
        ref = 0
        try:
            for _ in range(args.rounds):
                for label in times:
                    store_sql.SqlStore._index_numbers = real if label == "with" else (
                        lambda self, cur, records, sign=1: None)
                    batch = WriteBatch(records=records(rnd, ref, args.batch))
                    ref += args.batch
                    began = time.process_time()
                    conn.execute("BEGIN")
                    store._write(conn.cursor(), batch)
                    conn.execute("COMMIT")
                    times[label].append((time.process_time() - began) * 1000 / args.batch)
        finally:
            store_sql.SqlStore._index_numbers = real
            conn.close()
    for label, values in times.items():
        print(f"{label:8} CPU ms per record: median {statistics.median(values):.4f}, max {max(values):.4f}"
              f" ({len(values)} batches of {args.batch})")


if __name__ == "__main__":
    main()
