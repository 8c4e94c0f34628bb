"""
A gateway's events read back from a large SQLite store: what recovery, the
LOGIN catch-up and the gateway's event page ask for, timed through the
store's own API (`events_after`, `events`), per checkout.

Fills a store of the checkout's schema with `--events` events of
`--gateways` gateways (every 50th one of cdrd's own, seq NULL) by plain
INSERTs, then times, for `--samples` gateways each:

- ``after own``: 500 events after one of the gateway's own in its last
  tenth but one twentieth (a recovery page, the catch-up);
- ``after other``: 500 events after another gateway's event (the first
  page of a replay from `replay_from`);
- ``newest``: the gateway's 100 newest events (its event page).

    .venv/bin/python bench/events_reads.py --tree /work/before --tree /work/main

Each checkout runs in a process of its own (its PYTHONPATH) on a temp
file; nothing listens.  Prints p50 / p95 ms per read.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC_EVERY = 50


def fill(path: str, events: int, gateways: int) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    rng = random.Random(1)
    seqs = [0] * gateways
    refs = [1000] * gateways
    rows = []
    for i in range(events):
        g = rng.randrange(gateways)
        key = f"{9000 + g}_0200{g:08X}"
        if i % SYNTHETIC_EVERY == 0:
            seq = None
        else:
            seqs[g] += 1
            seq = seqs[g]
            if seq % 6 == 0:
                refs[g] += 1
        rows.append((key, seq, "b1", refs[g], "DIAL", 1_800_000_000_000 + i, 1_800_000_000_000 + i, "{}"))
        if len(rows) == 50_000:
            conn.executemany("INSERT INTO events (gateway, seq, boot, ref, type, time, received, fields)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            rows = []
    if rows:
        conn.executemany("INSERT INTO events (gateway, seq, boot, ref, type, time, received, fields)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def react(main) -> None:
    """Run the coroutine function `main(reactor)` under ``task.react``, which exits by SystemExit: return."""
    from twisted.internet import defer, task

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise


def measure(args, out: dict) -> None:
    """In the checkout's process: open its store, fill it, time the reads into `out`."""
    from cdrd.interfaces import EventQuery
    from cdrd.store.sqlite import SQLiteStore

    async def run(reactor):
        path = os.path.join(args.dir, "events.sqlite")
        store = SQLiteStore(path, reactor)
        await store.open()  # the checkout's schema
        await store.close()
        t0 = time.monotonic()
        fill(path, args.events, args.gateways)
        out["fill_s"] = round(time.monotonic() - t0, 1)
        store = SQLiteStore(path, reactor)
        await store.open()
        try:
            import sqlite3

            conn = sqlite3.connect(path)
            top = conn.execute("SELECT MAX(id) FROM events").fetchone()[0]
            rng = random.Random(2)
            reads = {"after own": [], "after other": [], "newest": []}
            for _ in range(args.samples):
                g = rng.randrange(args.gateways)
                key = f"{9000 + g}_0200{g:08X}"
                near = rng.randrange(top - top // 10, top - top // 20)  # events after it, every gateway
                own = conn.execute("SELECT id FROM events WHERE gateway = ? AND id <= ? AND seq IS NOT NULL"
                                   " ORDER BY id DESC LIMIT 1", (key, near)).fetchone()[0]
                other = conn.execute("SELECT id FROM events WHERE gateway <> ? AND id <= ?"
                                     " ORDER BY id DESC LIMIT 1", (key, near)).fetchone()[0]
                for name, read, read_args in (
                    ("after own", store.events_after, (key, own, 500)),
                    ("after other", store.events_after, (key, other, 500)),
                    ("newest", store.events, (EventQuery(gateway=key, limit=100),)),
                ):
                    t = time.perf_counter()
                    got = await read(*read_args)
                    reads[name].append((time.perf_counter() - t) * 1000)
                    assert got, name
            conn.close()
            for name, ms in reads.items():
                ms.sort()
                out[name] = (round(ms[len(ms) // 2], 2), round(ms[int(len(ms) * 0.95)], 2))
        finally:
            await store.close()

    react(run)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", type=Path, help="a checkout (repeat)")
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--gateways", type=int, default=100)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result: dict = {}
        measure(args, result)
        print(json.dumps(result), flush=True)
        return 0
    print(f"{args.events} events, {args.gateways} gateways, {args.samples} reads each; p50 / p95 ms")
    for tree in args.tree or [ROOT]:
        with tempfile.TemporaryDirectory(prefix="cdrd-events-reads-") as tmp:
            env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", "--dir", tmp,
                 "--events", str(args.events), "--gateways", str(args.gateways), "--samples", str(args.samples)],
                env=env, capture_output=True, timeout=3600, cwd=tree)
            lines = done.stdout.decode().strip().splitlines()
            if done.returncode != 0 or not lines:
                print(f"{tree}: failed\n{done.stderr.decode()[-2000:]}", file=sys.stderr)
                return 1
            r = json.loads(lines[-1])
            print(f"{tree.name:<10} filled in {r['fill_s']} s  " + "  ".join(
                f"{name} {r[name][0]} / {r[name][1]}" for name in ("after own", "after other", "newest")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
