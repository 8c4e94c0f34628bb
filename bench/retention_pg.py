"""
Retention on PostgreSQL: how long one delete batch holds the writer, and
whether the space comes back for new rows (plain batched deletes, then
autovacuum; docs/store.md, "Retention").

    .venv/bin/python bench/retention_pg.py [--events 1000000] [--log 250000] [--records 250000]
                                           [--batch 500]

A fresh database at 127.0.0.1:5432 (user postgres, trust), dropped at the
end.  Filled with SQL (generate_series), 40 days old; then PostgresStore's
own `expire` in batches of --batch for each kind (the time of each batch
is what an ACK may wait behind it); then `VACUUM` (what autovacuum does on
its own); then the same rows again, new; --cycles times.  The tables' size after
each fill says whether the space was reused: it stops growing.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, task  # noqa: E402

from cdrd.store.postgresql import PostgresStore  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432"
DAY_MS = 86_400_000
TABLES = ("events", "log", "calls", "cdrs", "call_hours")


def fill(conn, n_events, n_log, n_records, old, tag):
    span = 9 * DAY_MS
    conn.execute(
        "INSERT INTO events (gateway, seq, boot, ref, type, time, received, fields)"
        f" SELECT '70' || (i %% 20) || '_02000000' || lpad((i %% 20)::text, 4, '0'), i + {tag} * 100000000, 'b1',"
        " i / 6, 'HOOK_OFF', %s + i * %s / %s, %s + i * %s / %s + 40,"
        " '{\"cause\":\"normal\",\"cli\":\"201\",\"dialed\":\"02079460000\",\"port\":1}'"
        " FROM generate_series(0::bigint, %s - 1) AS i",
        (old, span, n_events, old, span, n_events, n_events))
    conn.execute(
        "INSERT INTO cursors (gateway, applied, replay_from)"
        " SELECT DISTINCT gateway, 1e12, 1e12 FROM events ON CONFLICT (gateway) DO NOTHING")
    conn.execute(
        "INSERT INTO log (time, event, peer, gateway, mac, detail)"
        " SELECT %s + i * %s / %s, 'Bad Packet', '203.0.113.' || (i %% 250) || ':' || (1024 + i %% 60000), '', '',"
        " 'line too long: 4096 bytes without LF' FROM generate_series(0::bigint, %s - 1) AS i",
        (old, span, n_log, n_log))
    conn.execute(
        "INSERT INTO calls (id, gateway, boot, ref, port, pport, notation, pstn, dialed, begin_ms, connect_ms,"
        " end_ms, talk, pstn_dial, pstn_time, cli, pstn_cli, cause, outbox_mark)"
        f" SELECT 'g' || (i %% 20) || '/b{tag}/' || i, 'g' || (i %% 20), 'b{tag}', i, 1, NULL, 'Call out', 0,"
        " '02079460000', %s + i * %s / %s, %s + i * %s / %s + 2000, %s + i * %s / %s + 60000, 58000, '', NULL,"
        " '201', '', '', 0 FROM generate_series(0::bigint, %s - 1) AS i",
        (old, span, n_records) * 3 + (n_records,))
    conn.execute(
        "INSERT INTO cdrs (id, call, gateway, start, ringing, duration, status, cui, dialled, cli, billed_call)"
        f" SELECT md5('{tag}' || i), 'g' || (i %% 20) || '/b{tag}/' || i, 'g' || (i %% 20), %s + i * %s / %s, 1500,"
        f" 58000, '', 'ACCT-201', '02079460000', '201', 'g' || (i %% 20) || '/b{tag}/' || i"
        " FROM generate_series(0::bigint, %s - 1) AS i",
        (old, span, n_records, n_records))
    conn.execute(
        "INSERT INTO call_hours SELECT gateway, begin_ms / 3600000 * 3600000, COUNT(*), 0, 0, COUNT(*), 0, 0, 0, 0,"
        " COUNT(*), COUNT(*), COUNT(*), SUM(talk) FROM calls WHERE boot = %s GROUP BY 1, 2"
        " ON CONFLICT (gateway, hour) DO NOTHING", (f"b{tag}",))


def sizes(conn) -> int:
    return sum(conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0] for t in TABLES)


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else 0.0


async def sweep(store, before, batch) -> dict:
    out = {}
    for kind in ("events", "log", "records"):
        times, deleted, after = [], 0, None
        began = time.monotonic()
        while True:
            t0 = time.monotonic()
            got = await store.expire(kind, before, batch, after)
            times.append(time.monotonic() - t0)
            deleted += got.deleted + got.cdrs
            if got.after is None:
                break
            after = got.after
        out[kind] = {"rows": deleted, "batches": len(times), "seconds": time.monotonic() - began,
                     "p50_ms": 1000 * percentile(times, 50), "p99_ms": 1000 * percentile(times, 99),
                     "max_ms": 1000 * max(times)}
    return out


async def run(reactor, args):
    name = f"cdrd_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = f"{SERVER}/{name}"
    store = PostgresStore(url, reactor)
    try:
        await store.open()
        now = int(time.time() * 1000)
        with psycopg.connect(url, autocommit=True) as conn:
            t0 = time.monotonic()
            fill(conn, args.events, args.log, args.records, now - 40 * DAY_MS, 1)
            conn.execute("VACUUM ANALYZE")
            filled, fill_s = sizes(conn), time.monotonic() - t0
            result = await sweep(store, now - 30 * DAY_MS, args.batch)
            after_fill = [filled]
            for tag in range(2, 2 + args.cycles):
                if tag > 2:
                    await sweep(store, now - 30 * DAY_MS, args.batch)
                conn.execute("VACUUM")  # what autovacuum does on its own
                fill(conn, args.events, args.log, args.records, now - 40 * DAY_MS, tag)
                conn.execute("ANALYZE")
                after_fill.append(sizes(conn))
        rows = args.events + args.log + 2 * args.records
        print(f"PostgreSQL: filled {rows:,} rows in {fill_s:.0f} s; sweep in batches of {args.batch}:")
        print(f"{'kind':<8} {'rows':>10} {'batches':>8} {'seconds':>8} {'rows/s':>8} {'p50 ms':>7}"
              f" {'p99 ms':>7} {'max ms':>7}")
        for kind, r in result.items():
            print(f"{kind:<8} {r['rows']:>10,} {r['batches']:>8} {r['seconds']:>8.1f}"
                  f" {r['rows'] / r['seconds']:>8,.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['max_ms']:>7.1f}")
        mib = 2**20
        print("tables after each fill (sweep, VACUUM, the same rows again, new):"
              + ", ".join(f" {n / mib:,.0f} MiB" for n in after_fill))
    finally:
        await store.close()
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main(argv=None):
    p = argparse.ArgumentParser(description="retention on PostgreSQL: batch times and space reuse")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--log", type=int, default=250_000)
    p.add_argument("--records", type=int, default=250_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--cycles", type=int, default=3, help="sweep + VACUUM + fill again, this many times")
    args = p.parse_args(argv)
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
