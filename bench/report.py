"""
Report benchmark: how long the report pages and the JSON API take over a
big store (ten million call records by default), measured over HTTP
against a real cdrd.

    .venv/bin/python bench/report.py [--records 10000000] [--gateways 100]
                                     [--days 365] [--repeat 15]
                                     [--database sqlite|postgresql]
                                     [--path var/bench/report-10M.sqlite]
                                     [--match search]
                                     [--tree /work/base --tree . --rounds 2]

The store is filled once (SQLite: a file under var/bench/, reused by later
runs with the same parameters; PostgreSQL: a database cdrd_bench_report_N,
kept likewise) with records spread over --days days ending today, on
--gateways gateways, about one CDR per two records.  Then
``twistd -n cdrd`` serves it on loopback and each query is timed
--repeat times after one warm-up request; p50, p95 and max are printed in
milliseconds, and the server's CPU per request (user + system, from
/proc: what the load of a shared machine disturbs least).  With --tree
(repeatable) each checkout serves the same store in turn (its own
.venv), --rounds times, alternating: a same-run baseline.  Every process
is stopped at the end.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import ROOT, start_cdrd, stop  # noqa: E402

from cdrd.store.schema import MIGRATIONS, migration_statements  # noqa: E402

DAY_MS = 86_400_000
NOTATIONS = [  # (notation, weight, answered)
    ("Call out", 45, True),
    ("Call in", 30, True),
    ("Call out failed", 15, False),
    ("Call in reject", 4, False),
    ("Hook On/Off", 4, False),
    ("Other", 2, False),
]
CHUNK = 200_000


def gateway_keys(n: int) -> list[str]:
    return [f"{8200 + i}_000C2A{i:06X}" for i in range(n)]


def records(args, today_ms: int):
    """Rows of the calls table and of the cdrs table, in chunks, begin increasing."""
    rng = random.Random(7)
    keys = gateway_keys(args.gateways)
    first = today_ms - (args.days - 1) * DAY_MS
    span = args.days * DAY_MS
    choices = [n for n, w, _ in NOTATIONS for _ in range(w)]
    answered = {n for n, _, a in NOTATIONS if a}
    step = span / args.records
    calls, cdrs = [], []
    for i in range(args.records):
        begin = int(first + i * step + rng.random() * step)
        key = keys[rng.randrange(len(keys))]
        notation = rng.choice(choices)
        pstn = int(rng.random() < 0.2)
        ref = i + 1
        call_id = f"{key}/b1/{ref}"
        talk = rng.randint(5_000, 600_000) if notation in answered else None
        connect = begin + rng.randint(2_000, 20_000) if talk is not None else None
        end = (connect + talk) if talk is not None else begin + rng.randint(1_000, 30_000)
        dialed = f"0{rng.randint(1_000_000_000, 9_999_999_999)}"
        cli = f"44207946{rng.randint(0, 9999):04d}"
        cause = "" if talk is not None else rng.choice(["busy", "cancelled", "failed", "rejected"])
        calls.append((
            call_id, key, "b1", ref, 1 + (i % 2), 1 if pstn else None, notation, pstn, dialed,
            begin, connect, end, talk, dialed if pstn else "", (talk if pstn else None), cli,
            cli if pstn else "", cause,
        ))
        if talk is not None and rng.random() < 0.75:
            cdrs.append((
                f"{i:032x}", call_id, key, connect, rng.randint(0, 20_000), talk, "",
                f"ACCT-{rng.randint(1, 5000)}", dialed, cli,
            ))
        if len(calls) == CHUNK:
            yield calls, cdrs
            calls, cdrs = [], []
    if calls:
        yield calls, cdrs


CALL_INSERT = (
    "INSERT INTO calls (id, gateway, boot, ref, port, pport, notation, pstn, dialed, begin_ms,"
    " connect_ms, end_ms, talk, pstn_dial, pstn_time, cli, pstn_cli, cause)"
    " VALUES (" + ", ".join("?" * 18) + ")"
)
CDR_INSERT = (
    "INSERT INTO cdrs (id, call, gateway, start, ringing, duration, status, cui, dialled, cli)"
    " VALUES (" + ", ".join("?" * 10) + ")"
)


def schema(dialect: str) -> tuple[list[str], list[str]]:
    """cdrd's schema as its migrations make it: (the tables, then what runs
    after the rows are in: the indexes and the summaries filled from them,
    in migration order)."""
    statements = []
    for s in (s for i in range(len(MIGRATIONS)) for s in migration_statements(dialect, i)):
        words = s.split()
        if [w.upper() for w in words[:2]] == ["DROP", "INDEX"]:
            # an index a later migration replaces: never made here
            name = words[-1].rstrip(";")
            statements = [t for t in statements
                          if not t.lstrip().upper().startswith(f"CREATE INDEX {name.upper()} ")]
            continue
        statements.append(s)
    after = [s for s in statements
             if s.lstrip().upper().startswith(("CREATE INDEX", "INSERT", "UPDATE", "CREATE TRIGGER"))]
    return [s for s in statements if s not in after], after


def fill_sqlite(path: Path, args, today_ms: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")  # bench data: rebuilt if lost
    conn.execute("PRAGMA cache_size = -1048576")
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    tables, indexes = schema("sqlite")
    for statement in tables:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
    done = 0
    for calls, cdrs in records(args, today_ms):
        conn.executemany(CALL_INSERT, calls)
        conn.executemany(CDR_INSERT, cdrs)
        done += len(calls)
        print(f"  {done:,} records", end="\r", flush=True)
    print("\n  indexing ...", flush=True)
    for statement in indexes:  # built once, sorted, after the rows: much faster
        conn.execute(statement)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    print()


def fill_postgres(url: str, args, today_ms: int) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            tables, indexes = schema("postgresql")
            for statement in tables:
                cur.execute(statement)
            cur.execute("INSERT INTO schema_version VALUES (%s)", (len(MIGRATIONS),))
            done = 0
            for calls, cdrs in records(args, today_ms):
                with cur.copy(
                    "COPY calls (id, gateway, boot, ref, port, pport, notation, pstn, dialed,"
                    " begin_ms, connect_ms, end_ms, talk, pstn_dial, pstn_time, cli, pstn_cli,"
                    " cause) FROM STDIN"
                ) as copy:
                    for row in calls:
                        copy.write_row(row)
                with cur.copy(
                    "COPY cdrs (id, call, gateway, start, ringing, duration, status, cui,"
                    " dialled, cli) FROM STDIN"
                ) as copy:
                    for row in cdrs:
                        copy.write_row(row)
                done += len(calls)
                print(f"  {done:,} records", end="\r", flush=True)
            print("\n  indexing ...", flush=True)
            for statement in indexes:
                cur.execute(statement)
            # a running cdrd writes each hour's call_hours rows as the hour
            # goes: in hour order, which the backfill above (by gateway) is not
            cur.execute("CLUSTER call_hours USING call_hours_hour")
    with psycopg.connect(url, autocommit=True) as conn:
        # what autovacuum does to tables that only grow (PostgreSQL 13+):
        # the visibility map that index-only scans need, and the statistics
        conn.execute("VACUUM (ANALYZE)")
    print()


def postgres_store(args) -> str:
    import psycopg

    name = f"cdrd_bench_report_{args.records}_{args.gateways}_{args.days}"
    server = "postgresql://postgres@127.0.0.1:5432"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and args.rebuild:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            exists = None
        if not exists:
            conn.execute(f"CREATE DATABASE {name}")
    url = f"{server}/{name}"
    if not exists:
        print(f"filling PostgreSQL database {name} ...")
        t = time.monotonic()
        fill_postgres(url, args, today_midnight())
        print(f"  filled in {time.monotonic() - t:.0f} s")
    return url


def sqlite_store(args) -> str:
    path = Path(args.path or ROOT / "var" / "bench" /
                f"report-{args.records}-{args.gateways}-{args.days}.sqlite").resolve()
    if path.exists() and args.rebuild:
        for p in path.parent.glob(path.name + "*"):
            p.unlink()
    if not path.exists():
        print(f"filling {path} ...")
        t = time.monotonic()
        try:
            fill_sqlite(path, args, today_midnight())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        print(f"  filled in {time.monotonic() - t:.0f} s, {path.stat().st_size / 2**30:.1f} GiB")
    upgrade_sqlite(path)
    return f"sqlite:{path}"


def upgrade_sqlite(path: Path) -> None:
    """A store filled by an older bench gets the migrations since, here:
    an index over ten million rows takes longer than cdrd's start-up wait."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA cache_size = -1048576")  # as the fill: sorts and indexes of 10M rows
    try:
        (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
        for index in range(version, len(MIGRATIONS)):
            print(f"  migration {index + 1} ...", end="", flush=True)
            began = time.perf_counter()
            conn.execute("BEGIN")
            for statement in migration_statements("sqlite", index):
                conn.execute(statement)
            conn.execute("UPDATE schema_version SET version = ?", (index + 1,))
            conn.execute("COMMIT")
            print(f" {time.perf_counter() - began:.1f} s")
    finally:
        conn.close()


def today_midnight() -> int:
    now = datetime.now(UTC)
    return int(datetime(now.year, now.month, now.day, tzinfo=UTC).timestamp() * 1000)


def timed(url: str, repeat: int) -> tuple[list[float], int]:
    def get() -> int:
        with urllib.request.urlopen(url, timeout=60) as r:
            return len(r.read())

    size = get()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        get()
        times.append((time.perf_counter() - t) * 1000)
    return sorted(times), size


def queries(args) -> list[tuple[str, str]]:
    today = datetime.now(UTC).date()
    day = (today - timedelta(days=2)).isoformat()
    month_from = (today - timedelta(days=30)).isoformat()
    g = gateway_keys(args.gateways)[3]
    per_gw_day = args.records // args.gateways // args.days
    all_day = args.records // args.days
    return [
        (f"report, one gateway, one day (~{per_gw_day} records)",
         f"/report?gateway={g}&from={day}&to={day}"),
        ("API calls, one gateway, one day", f"/api/calls?gateway={g}&from={day}&to={day}"),
        ("API calls, one gateway, one day, Call Out Failed",
         f"/api/calls?gateway={g}&from={day}&to={day}&filter=out-failed"),
        (f"API calls, all gateways, one day (~{all_day} records)",
         f"/api/calls?from={day}&to={day}"),
        ("API calls, all gateways, one day, last page",
         f"/api/calls?from={day}&to={day}&limit=100&offset={max(0, all_day - 100)}"),
        ("API calls, one gateway, 31 days, Only PSTN",
         f"/api/calls?gateway={g}&from={month_from}&to={day}&filter=pstn"),
        ("API calls, all gateways, 31 days",
         f"/api/calls?from={month_from}&to={day}"),
        ("API calls, everything (no dates)", "/api/calls"),
        ("calendar of a month, one gateway", f"/api/calendar?gateway={g}&month={day[:7]}"),
        ("calendar of a month, all gateways", f"/api/calendar?month={day[:7]}"),
        ("CDRs, one gateway, one day", f"/api/cdrs?gateway={g}&from={day}&to={day}"),
        ("CDR page, one CUI, 31 days", f"/cdrs?cui=ACCT-42&from={month_from}&to={day}"),
        ("API CDRs, all gateways, 31 days", f"/api/cdrs?from={month_from}&to={day}"),
        ("API CDRs, everything (no dates)", "/api/cdrs"),
        ("dashboard (last 24 h, all gateways)", "/"),
    ] + search_queries(args)


def search_queries(args) -> list[tuple[str, str]]:
    """Issue 14's searches, totals, summaries and one call whole."""
    today = datetime.now(UTC).date()
    day = (today - timedelta(days=2)).isoformat()
    month_from = (today - timedelta(days=30)).isoformat()
    g = gateway_keys(args.gateways)[3]
    d1 = f"from={day}&to={day}"
    d31 = f"from={month_from}&to={day}"
    d365 = f"from={today - timedelta(days=364)}&to={today}"
    per_month = args.records * 31 // args.days
    return [
        ("search number, one gateway, one day", f"/api/calls?gateway={g}&{d1}&number=4420794612"),
        ("search number, all gateways, one day", f"/api/calls?{d1}&number=4420794612"),
        ("search number, all gateways, one day, last page",
         f"/api/calls?{d1}&number=42079461&limit=100&offset=2600"),
        ("search number, all gateways, 31 days", f"/api/calls?{d31}&number=4420794612"),
        # issue 14's number search through the numbers dictionary: 4420794612
        # is 100 callers (1 % of the calls), 42079461 1 000 (10 %), one
        # caller 0.01 %, one dialled number a single call
        ("search number, all gateways, 31 days, a late page",
         f"/api/calls?{d31}&number=4420794612&offset={per_month // 100 * 8 // 10}"),
        ("search number, all gateways, 365 days", f"/api/calls?{d365}&number=4420794612"),
        ("search number, one gateway, 365 days", f"/api/calls?gateway={g}&{d365}&number=4420794612"),
        ("search number 10 %, all gateways, 31 days", f"/api/calls?{d31}&number=42079461"),
        ("search number 10 %, all gateways, 365 days", f"/api/calls?{d365}&number=42079461"),
        ("search number one caller, all gateways, 365 days", f"/api/calls?{d365}&number=442079461234"),
        ("search number one dialled, all gateways, 365 days", f"/api/calls?{d365}&number={{dialed}}"),
        ("search number, Call Out, all gateways, 31 days", f"/api/calls?{d31}&number=4420794612&filter=out"),
        ("totals, number, all gateways, 31 days", f"/api/totals?{d31}&number=4420794612"),
        ("totals, number, all gateways, 365 days", f"/api/totals?{d365}&number=4420794612"),
        ("report page, number, all gateways, 31 days", f"/report?{d31}&number=4420794612"),
        ("report page, number, all gateways, 365 days", f"/report?{d365}&number=4420794612"),
        ("search CUI prefix, all gateways, one day", f"/api/calls?{d1}&cui=ACCT-42"),
        ("search duration 60-300 s, all gateways, one day",
         f"/api/calls?{d1}&min_duration=60&max_duration=300"),
        ("search time of day 09-10, all gateways, one day",
         f"/api/calls?{d1}&time_from=09:00&time_to=10:00"),
        ("search time of day 09-10, all gateways, 31 days",
         f"/api/calls?{d31}&time_from=09:00&time_to=10:00"),
        ("search cause busy, all gateways, one day", f"/api/calls?{d1}&cause=busy"),
        ("sorted by talk desc, all gateways, one day", f"/api/calls?{d1}&sort=talk&order=desc"),
        ("sorted by talk desc, one gateway, 31 days",
         f"/api/calls?gateway={g}&{d31}&sort=talk&order=desc"),
        ("totals, all gateways, one day", f"/api/totals?{d1}"),
        ("totals, all gateways, 31 days", f"/api/totals?{d31}"),
        ("totals, all gateways, 31 days, Call Out", f"/api/totals?{d31}&filter=out"),
        ("totals, one gateway, 31 days, Call Out", f"/api/totals?gateway={g}&{d31}&filter=out"),
        ("totals, number, all gateways, one day", f"/api/totals?{d1}&number=4420794612"),
        ("summary by gateway, 31 days", f"/api/summary?group=gateway&{d31}"),
        ("summary by hour, one day", f"/api/summary?group=hour&{d1}"),
        ("summary by day, 31 days", f"/api/summary?group=day&{d31}"),
        ("summary by day, 365 days", f"/api/summary?group=day&from={today - timedelta(days=364)}&to={today}"),
        ("summary page by day, 365 days",
         f"/summary?group=day&from={today - timedelta(days=364)}&to={today}&limit=400"),
        ("summary by caller, one gateway, one day", f"/api/summary?group=caller&gateway={g}&{d1}"),
        ("summary by caller, all gateways, one day", f"/api/summary?group=caller&{d1}"),
        ("summary by caller, all gateways, one day, last page",
         f"/api/summary?group=caller&{d1}&offset=9300"),
        ("summary by caller, all gateways, one day, by ASR",
         f"/api/summary?group=caller&{d1}&sort=asr&order=desc"),
        ("summary page by caller, all gateways, one day", f"/summary?group=caller&{d1}"),
        ("summary CSV by caller, all gateways, one day (every group)",
         f"/api/summary.csv?group=caller&{d1}"),
        ("summary by caller, one gateway, 31 days", f"/api/summary?group=caller&gateway={g}&{d31}"),
        ("summary by destination prefix 4, all gateways, one day",
         f"/api/summary?group=destination&prefix=4&{d1}"),
        ("summary by CUI, all gateways, one day", f"/api/summary?group=cui&{d1}"),
        ("summary page by CUI, all gateways, one day", f"/summary?group=cui&{d1}"),
        ("summary by CUI, one gateway, 31 days", f"/api/summary?group=cui&gateway={g}&{d31}"),
        ("summary CSV by hour, one day", f"/api/summary.csv?group=hour&{d1}"),
        ("CDRs by start, CUI prefix, all gateways, 31 days", f"/api/cdrs?{d31}&cui=ACCT-42"),
        ("CDRs by start, number, all gateways, one day", f"/api/cdrs?{d1}&number=4420794612"),
        ("one call whole", "/api/call?id={call_id}"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="cdrd report benchmark on a big store")
    p.add_argument("--records", type=int, default=10_000_000)
    p.add_argument("--gateways", type=int, default=100)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--path", help="the SQLite file (default var/bench/report-N-G-D.sqlite)")
    p.add_argument("--rebuild", action="store_true", help="fill the store again")
    p.add_argument("--match", help="only the queries whose name contains this")
    p.add_argument("--tree", action="append", type=Path,
                   help="serve from this checkout (its .venv); repeat to alternate trees query by query")
    p.add_argument("--rounds", type=int, default=1, help="with --tree: each tree this many times")
    args = p.parse_args(argv)

    database = postgres_store(args) if args.database == "postgresql" else sqlite_store(args)
    trees = [t.resolve() for t in args.tree] if args.tree else [None]
    print(f"{args.records:,} records on {args.gateways} gateways over {args.days} days,"
          f" {args.database}; {args.repeat} requests each (ms; cpu: the server's CPU ms per request)")
    print(f"{'query':<58} {'p50':>7} {'p95':>7} {'max':>7} {'cpu':>6} {'bytes':>9}")
    try:
        for n in range(args.rounds if args.tree else 1):
            for tree in trees if n % 2 == 0 else list(reversed(trees)):
                if tree is not None:
                    print(f"-- {tree} (round {n + 1})", flush=True)
                run_tree(args, database, tree)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        print(f"FAILED: {e}")
        return 1
    return 0


def run_tree(args, database: str, tree: Path | None) -> None:
    """Serve the store from `tree` (None: this checkout) and time the queries."""
    import ingest

    saved = ingest.ROOT, ingest.BIN
    if tree is not None:  # start_cdrd runs ingest.BIN's twistd with ingest.ROOT on the path
        ingest.ROOT, ingest.BIN = tree, tree / ".venv" / "bin"
    with tempfile.TemporaryDirectory(prefix="cdrd-bench-report-") as tmpdir:
        tmp = Path(tmpdir)
        cdrd = None
        try:
            cdrd, _ = start_cdrd(tmp, database)
            web = _web_port(tmp)
            call = _a_call(web)
            for name, path in queries(args):
                if args.match and args.match not in name:
                    continue
                path = path.replace("{call_id}", quote(call["id"], safe="")).replace(
                    "{dialed}", quote(call["dialed"], safe=""))
                cpu = _cpu_ms(cdrd.pid)
                try:
                    times, size = timed(f"http://127.0.0.1:{web}{path}", args.repeat)
                except urllib.error.HTTPError as e:  # a baseline without this query's parameters
                    print(f"{name:<58} HTTP {e.code}", flush=True)
                    continue
                cpu = (_cpu_ms(cdrd.pid) - cpu) / (args.repeat + 1)
                p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
                print(f"{name:<58} {times[len(times) // 2]:>7.1f} {p95:>7.1f} {times[-1]:>7.1f}"
                      f" {cpu:>6.1f} {size:>9,}", flush=True)
        finally:
            stop(cdrd)
            ingest.ROOT, ingest.BIN = saved


def _cpu_ms(pid: int) -> float:
    """The user + system CPU a process has used, in ms (/proc/PID/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _a_call(web: int) -> dict:
    """A call of two days ago, for /api/call (and its dialled number)."""
    import json

    day = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    url = f"http://127.0.0.1:{web}/api/calls?from={day}&to={day}&limit=1&offset=500"
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())["records"][0]


def _web_port(tmp: Path) -> int:
    for line in (tmp / "cdrd.toml").read_text().splitlines():
        if line.startswith("web_endpoint"):
            return int(line.split(":")[1])
    raise RuntimeError("no web_endpoint in the bench config")


if __name__ == "__main__":
    sys.exit(main())
