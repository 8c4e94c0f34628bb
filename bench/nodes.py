"""
Ingest with 1, 2 and 3 cdrd nodes on one PostgreSQL behind HAProxy
(docs/store.md, "Several nodes": what N nodes carry), in one run, and the
database's own insert rate beside it.

    .venv/bin/python bench/nodes.py [--nodes 1,2,3] [--gateways 60] [--rate 300]
                                    [--duration 10] [--window 64]

For each N: a fresh database on the local PostgreSQL (127.0.0.1:5432, user
postgres, trust), N nodes (``twistd -n cdrd``, [cluster] lease_seconds 10),
HAProxy running etc/haproxy.cfg on loopback, and one ``cdrd-sim load``
through it with the same seed and call count.  Printed per N: events
acknowledged per second, ACK p50/p99, and the CPU seconds each part used
(the cdrd nodes together, PostgreSQL's processes, the load generator,
HAProxy): on a 2-core machine their sum over the elapsed time says what
limits the figure.  Then the database alone: events rows inserted per
second by one connection in transactions of 64 and of 500 rows, the shape
of cdrd's group commits, and commits per second of one-row transactions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import BIN, ROOT, drop_postgres, environment, free_port, postgres_database, stop, wait_port  # noqa: E402

from tests.integration.haproxy import HAProxy  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])  # utime stime cutime cstime
    return total / TICKS


def postgres_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def start_node(tmp: Path, database: str, name: str) -> tuple[subprocess.Popen, int, int]:
    port, web = free_port(), free_port()
    (tmp / name).mkdir()
    config = tmp / name / "cdrd.toml"
    config.write_text(
        "[server]\n"
        f'gateway_endpoint = "tcp:{port}:interface=127.0.0.1:backlog=1024"\n'
        f'web_endpoint = "tcp:{web}:interface=127.0.0.1"\n'
        f'database = "{database}"\n'
        "allow_unknown_gateways = true\n"
        f'[cluster]\nnode = "{name}"\n'
    )
    proc = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", f"--logfile={tmp / name / 'cdrd.log'}", "cdrd",
         "--config", str(config)],
        cwd=ROOT, env=environment(), stdout=open(tmp / name / "cdrd.out", "wb"), stderr=subprocess.STDOUT,
    )
    wait_port(port, proc, 30, f"cdrd {name}")
    return proc, port, web


def run(n: int, args, tmp: Path) -> dict:
    database, pg_name = postgres_database()
    procs: list[subprocess.Popen] = []
    proxy = None
    try:
        nodes = [start_node(tmp, database, f"n{n}-{i}") for i in range(1, n + 1)]
        procs = [p for p, _, _ in nodes]
        proxy = HAProxy(tmp / f"haproxy-{n}", [(port, web) for _, port, web in nodes]).start()
        time.sleep(2.5)  # HAProxy's first health checks
        cpu0 = {"cdrd": cpu_seconds(p.pid for p in procs), "postgresql": cpu_seconds(postgres_pids()),
                "haproxy": cpu_seconds([proxy.proc.pid])}
        cmd = [str(BIN / "cdrd-sim"), "load", "--server", f"tcp:127.0.0.1:{proxy.port}",
               "--gateways", str(args.gateways), "--rate", str(args.rate),
               "--calls", str(round(args.rate * args.duration)), "--duration", str(2 * args.duration + 5),
               "--window", str(args.window), "--seed", "1", "--drain-timeout", "120", "--json"]
        started = time.monotonic()
        sim = subprocess.Popen(cmd, cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
                               stderr=open(tmp / f"sim-{n}.err", "wb"))
        out = sim.stdout.read()  # to its end: the load is over
        # wait4: this child's own CPU time (it ends after --duration + drain)
        _, _, usage = os.wait4(sim.pid, 0)
        sim.returncode = 0
        wall = time.monotonic() - started
        err = (tmp / f"sim-{n}.err").read_bytes()
        lines = out.decode().strip().splitlines()
        if not lines:
            raise RuntimeError(f"cdrd-sim load failed: {err.decode()[-1500:]}")
        result = json.loads(lines[-1])
        cpu = {
            "cdrd": cpu_seconds(p.pid for p in procs) - cpu0["cdrd"],
            "postgresql": cpu_seconds(postgres_pids()) - cpu0["postgresql"],
            "haproxy": cpu_seconds([proxy.proc.pid]) - cpu0["haproxy"],
            "sim": usage.ru_utime + usage.ru_stime,
        }
        result["cpu"] = cpu
        result["wall_s"] = wall
        return result
    finally:
        if proxy is not None:
            proxy.stop()
        for p in procs:
            stop(p)
        drop_postgres(pg_name)


def database_rates() -> dict:
    """The local PostgreSQL alone: rows/s of cdrd's events rows, and commits/s."""
    import psycopg

    database, name = postgres_database()
    try:
        with psycopg.connect(database) as conn:
            conn.execute(
                "CREATE TABLE events (id BIGSERIAL PRIMARY KEY, gateway TEXT NOT NULL, seq BIGINT, boot TEXT,"
                " ref INTEGER, type TEXT, time BIGINT, received BIGINT, fields TEXT, UNIQUE (gateway, seq))")
            # cdrd's indexes since migration 11 (a gateway's events by seq)
            conn.execute("CREATE INDEX events_gateway_unsequenced ON events (gateway, id) WHERE seq IS NULL")
            conn.execute("CREATE INDEX events_gateway_ref ON events (gateway, ref, id)")
            conn.execute("CREATE INDEX events_time ON events (time)")
            conn.commit()
            out = {}
            seq = 0
            for rows_per_txn, total in ((64, 64_000), (500, 100_000), (1, 3_000)):
                started = time.monotonic()
                for _ in range(total // rows_per_txn):
                    params = []
                    for _ in range(rows_per_txn):
                        seq += 1
                        params += [f"g{seq % 60}", seq, "b1", seq // 6, "DIAL", seq, seq, '{"digits":"2252"}']
                    marks = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * rows_per_txn)
                    conn.execute("INSERT INTO events (gateway, seq, boot, ref, type, time, received, fields)"
                                 f" VALUES {marks} ON CONFLICT DO NOTHING", params)
                    conn.commit()
                out[rows_per_txn] = total / (time.monotonic() - started)
            return out
    finally:
        drop_postgres(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="cdrd ingest with 1..N nodes on one PostgreSQL")
    p.add_argument("--nodes", default="1,2,3")
    p.add_argument("--gateways", type=int, default=60)
    p.add_argument("--rate", type=float, default=300.0, help="calls per second offered over all gateways")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--window", type=int, default=64)
    args = p.parse_args(argv)
    print(f"{args.gateways} gateways, {args.rate:g} calls/s offered for {args.duration:g} s"
          f" ({round(args.rate * args.duration)} calls), window {args.window}, through HAProxy;"
          f" {os.cpu_count()} CPUs")
    print(f"{'nodes':>5} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>8} {'acked/events':>15}  "
          f"CPU s: {'cdrd':>6} {'pg':>6} {'sim':>6} {'proxy':>6} / wall s")
    ok = True
    with tempfile.TemporaryDirectory(prefix="cdrd-nodes-") as tmpdir:
        for n in [int(x) for x in args.nodes.split(",")]:
            try:
                r = run(n, args, Path(tmpdir))
            except RuntimeError as e:
                print(f"{n:>5} FAILED: {e}")
                ok = False
                continue
            c = r["cpu"]
            ok = ok and r["complete"]
            print(f"{n:>5} {r['events_acked_per_s']:>9.0f} {r['ack_p50_ms']:>7.1f} {r['ack_p99_ms']:>8.1f}"
                  f" {r['acked']:>7d}/{r['events']:<7d}  CPU s: {c['cdrd']:>6.1f} {c['postgresql']:>6.1f}"
                  f" {c['sim']:>6.1f} {c['haproxy']:>6.1f} / {r['wall_s']:.1f}")
    rates = database_rates()
    print("PostgreSQL alone, one connection, events rows:"
          f" {rates[64]:,.0f} rows/s in 64-row commits, {rates[500]:,.0f} rows/s in 500-row commits,"
          f" {rates[1]:,.0f} one-row commits/s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
