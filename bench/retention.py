"""
Retention benchmark: ACK latency while a sweep deletes millions of rows,
against the same ingest with no sweep, in the same run; and the SQLite
file's size before and after the sweep and its incremental vacuum.

    .venv/bin/python bench/retention.py [--events 2000000] [--log 500000] [--records 500000]
                                        [--gateways 50] [--rate 200] [--duration 20]
                                        [--batch 200] [--json]

1. Fill a fresh SQLite store (cdrd's schema, incremental auto_vacuum, as a
   new cdrd makes it) directly with SQL: --events raw events of 20
   gateways (their cursors past them: nothing open), --log gateway log
   entries, --records call records with one CDR each, and the hourly
   sums, all 40 days old.
2. Baseline: cdrd (twistd, bench/ingest.py's pieces) on that file with
   retention off; `cdrd-sim load` for --duration s; ACK p50/p99/max.
3. Sweep: cdrd again with events_days = log_days = records_days = 30: the
   sweep starts at start-up and deletes everything filled; the same load
   at once, while it runs.  Then wait for the sweep's log line, and run
   the same load once more on that cdrd, its sweep over.
4. File size (database + WAL) after the fill, and after the sweep and its
   incremental vacuum (cdrd stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import load, stop  # noqa: E402
from ingest import start_cdrd as ingest_start_cdrd  # noqa: E402

from cdrd.store.schema import MIGRATIONS, SCHEMA_VERSION_DDL, migration_statements  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAY_MS = 86_400_000
FILL_GATEWAYS = 20


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def fill(path: Path, n_events: int, n_log: int, n_records: int) -> float:
    """The store, 40 days old; seconds it took."""
    began = time.monotonic()
    old = int(time.time() * 1000) - 40 * DAY_MS
    span = 9 * DAY_MS  # the rows spread over 9 days
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # what a new cdrd sets
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    conn.execute(SCHEMA_VERSION_DDL)
    for index in range(len(MIGRATIONS)):
        for statement in migration_statements("sqlite", index):
            conn.execute(statement)
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS),))
    keys = [f"{7000 + g}_02000000{g:04X}" for g in range(FILL_GATEWAYS)]
    fields = json.dumps({"port": 1, "dialed": "02079460000", "cli": "201", "cause": "normal"})
    conn.executemany(
        "INSERT INTO events (id, gateway, seq, boot, ref, type, time, received, fields)"
        " VALUES (?, ?, ?, 'b1', ?, 'HOOK_OFF', ?, ?, ?)",
        ((i + 1, keys[i % FILL_GATEWAYS], i // FILL_GATEWAYS + 1, i // 6, old + i * span // n_events,
          old + i * span // n_events + 40, fields) for i in range(n_events)),
    )
    conn.executemany(
        "INSERT INTO cursors (gateway, applied, replay_from) VALUES (?, ?, ?)",
        ((k, n_events, n_events + 1) for k in keys),
    )
    conn.executemany(
        "INSERT INTO log (time, event, peer, gateway, mac, detail) VALUES (?, 'Bad Packet', ?, ?, ?, ?)",
        ((old + i * span // n_log, f"203.0.113.{i % 250}:{1024 + i % 60000}", "", "",
          "line too long: 4096 bytes without LF") for i in range(n_log)),
    )
    conn.executemany(
        "INSERT INTO calls (id, gateway, boot, ref, port, pport, notation, pstn, dialed, begin_ms,"
        " connect_ms, end_ms, talk, pstn_dial, pstn_time, cli, pstn_cli, cause, outbox_mark)"
        " VALUES (?, ?, 'b1', ?, 1, NULL, 'Call out', 0, '02079460000', ?, ?, ?, 58000, '', NULL,"
        " '201', '', '', 0)",
        ((f"{keys[i % FILL_GATEWAYS]}/b1/{i}", keys[i % FILL_GATEWAYS], i, old + i * span // n_records,
          old + i * span // n_records + 2000, old + i * span // n_records + 60_000) for i in range(n_records)),
    )
    conn.executemany(
        "INSERT INTO cdrs (id, call, gateway, start, ringing, duration, status, cui, dialled, cli, billed_call)"
        " VALUES (?, ?, ?, ?, 1500, 58000, '', 'ACCT-201', '02079460000', '201', ?)",
        ((f"{i:032x}", f"{keys[i % FILL_GATEWAYS]}/b1/{i}", keys[i % FILL_GATEWAYS],
          old + i * span // n_records, f"{keys[i % FILL_GATEWAYS]}/b1/{i}") for i in range(n_records)),
    )
    # the hourly sums, as migration 2 computes them from the records
    conn.execute("DELETE FROM call_hours")
    for statement in MIGRATIONS[1][2:]:
        conn.execute(statement)
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    # the fill wrote without syncing: its dirty pages must not be written
    # back during the baseline's fsyncs
    os.sync()
    return time.monotonic() - began


def start_cdrd(tmp: Path, database: Path, retention: str, batch: int) -> tuple[subprocess.Popen, int, Path]:
    """cdrd on the SQLite file `database` with a [retention] section; its log file is new each time."""
    logfile = tmp / f"cdrd-{time.monotonic_ns()}.log"
    proc, port = ingest_start_cdrd(tmp, f"sqlite:{database}", f"[retention]\n{retention}\nbatch = {batch}\n",
                                   logfile=logfile, timeout=60)
    return proc, port, logfile


SWEPT = re.compile(
    r"retention: deleted (\d+) events, (\d+) log entries, (\d+) call records with (\d+) CDRs"
    r" in ([0-9.]+) s; (\d+) free pages given back")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ACK latency while retention deletes millions of rows")
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--log", type=int, default=500_000)
    p.add_argument("--records", type=int, default=500_000, help="call records, one CDR each")
    p.add_argument("--gateways", type=int, default=50)
    p.add_argument("--rate", type=float, default=200.0, help="calls per second over all gateways")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--drain", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=200, help="[retention] batch")
    p.add_argument("--sweep-timeout", type=float, default=1800.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    out: dict = {"params": vars(args)}
    with tempfile.TemporaryDirectory(prefix="cdrd-bench-retention-") as tmpdir:
        tmp = Path(tmpdir)
        db = tmp / "cdrd.sqlite"
        out["fill_s"] = round(fill(db, args.events, args.log, args.records), 1)
        out["size_filled"] = size(db)
        cdrd = None
        try:
            cdrd, port, _ = start_cdrd(tmp, db, "events_days = 0", args.batch)
            out["baseline"] = load(port, args)
            stop(cdrd)
            cdrd, port, logfile = start_cdrd(
                tmp, db, "events_days = 30\nlog_days = 30\nrecords_days = 30", args.batch)
            began = time.monotonic()
            out["sweeping"] = load(port, args)
            load_s = time.monotonic() - began
            deadline = time.monotonic() + args.sweep_timeout
            swept = None
            while swept is None and time.monotonic() < deadline:
                swept = SWEPT.search(logfile.read_text(errors="replace"))
                time.sleep(0.5)
            if swept is None:
                raise RuntimeError(f"no sweep line in {args.sweep_timeout:g} s")
            events, log, records, cdrs, seconds, pages = swept.groups()
            out["sweep"] = {"events": int(events), "log": int(log), "records": int(records), "cdrs": int(cdrs),
                            "seconds": float(seconds), "pages": int(pages), "load_s": round(load_s, 1)}
            out["after sweep"] = load(port, args)  # the same cdrd, its sweep over
            stop(cdrd)
            cdrd = None
            out["size_after"] = size(db)
        finally:
            stop(cdrd)

    if args.json:
        print(json.dumps(out))
        return 0
    rows = args.events + args.log + 2 * args.records
    print(f"filled {rows:,} rows ({args.events:,} events, {args.log:,} log, {args.records:,} records"
          f" + CDRs) in {out['fill_s']} s; then {args.gateways} gateways, {args.rate:g} calls/s"
          f" for {args.duration:g} s, batch {args.batch}")
    print(f"{'run':<18} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'acked/events':>19}")
    for name in ("baseline", "sweeping", "after sweep"):
        r = out[name]
        print(f"{name:<18} {r['events_acked_per_s']:>9.0f} {r['ack_p50_ms']:>8.1f} {r['ack_p99_ms']:>8.1f}"
              f" {r['ack_max_ms']:>8.1f} {r['acked']:>9d}/{r['events']:<9d}"
              f"{'' if r['complete'] else ' INCOMPLETE'}")
    s = out["sweep"]
    print(f"sweep: {s['events']:,} events, {s['log']:,} log, {s['records']:,} records, {s['cdrs']:,} CDRs"
          f" deleted in {s['seconds']:.1f} s ({(s['events'] + s['log'] + s['records'] + s['cdrs']) / s['seconds']:,.0f}"
          f" rows/s); {s['pages']:,} pages given back; the load ran in its first {s['load_s']:.0f} s")
    print(f"file: {out['size_filled'] / 2**20:,.1f} MiB filled, {out['size_after'] / 2**20:,.1f} MiB after"
          " the sweep and its incremental vacuum")
    ok = all(out[n]["complete"] for n in ("baseline", "sweeping", "after sweep"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
