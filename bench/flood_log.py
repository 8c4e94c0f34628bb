"""
Garbage-flood benchmark: what a flood of garbage connections adds to the
gateway log, and a logged-in gateway's ACK latency during it, for this tree
and, in the same run, for another tree (by default the `main` branch, taken
out of git into a temporary directory: /work/main is never touched).

    .venv/bin/python bench/flood_log.py [--connections 3000] [--threads 4] [--rounds 3]
                                        [--baseline main|none] [--json]

--rounds times, for each tree in turn (which goes first alternates: the
machine is shared and its load drifts), and the ACK times of all rounds
pooled per tree:
1. cdrd (``twistd -n cdrd``, the tree first on PYTHONPATH) on a fresh
   SQLite file, unknown gateways allowed;
2. one gateway logs in and sends one event at a time (HOOK_OFF then
   HOOK_ON of a call, 2 ms after the last ACK), timing each until its ACK: for 3 s
   alone ("idle"), then while --threads threads open --connections
   connections from 127.0.0.1 between them, each sending one garbage line
   and reading until cdrd closes it ("flood");
3. cdrd is stopped (SIGTERM: what it holds is written) and the log table
   read: rows, their text bytes, and the entries they stand for (their
   counts); the database file's size once cdrd has stopped (the same
   events in both: the difference is the log).

Everything is bounded: the connections are a count, each socket has a
timeout, cdrd is stopped with SIGTERM then SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import BIN, free_port, stop, wait_port  # noqa: E402

from cdrd.gateway.codec import format_message  # noqa: E402
from tests.integration.daemon import GatewayClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COALESCED = ("Bad Packet", "Gateway Disconnect", "Login Rejected")


def start(tree: Path, tmp: Path) -> tuple[subprocess.Popen, int, Path]:
    port, web = free_port(), free_port()
    db = tmp / "cdrd.sqlite"
    config = tmp / "cdrd.toml"
    config.write_text(
        "[server]\n"
        f'gateway_endpoint = "tcp:{port}:interface=127.0.0.1:backlog=1024"\n'
        f'web_endpoint = "tcp:{web}:interface=127.0.0.1"\n'
        f'database = "sqlite:{db}"\n'
        "allow_unknown_gateways = true\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    out = open(tmp / "cdrd.out", "wb")
    proc = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", f"--logfile={tmp / 'cdrd.log'}", "cdrd", "--config", str(config)],
        cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    wait_port(port, proc, 30, "cdrd")
    return proc, port, db


class Gateway(GatewayClient):
    """One logged-in gateway, one event in flight: the time to each ACK."""

    def __init__(self, port: int):
        super().__init__(port)
        ok = self.login(callref=1)
        if ok.verb != "OK":
            raise RuntimeError(f"login answered {ok.verb} {ok.fields}")
        self.seq = 0

    def event(self) -> float:
        self.seq += 1
        ref = (self.seq + 1) // 2
        kind = "HOOK_OFF" if self.seq % 2 else "HOOK_ON"
        began = time.perf_counter()
        self.sock.sendall(format_message("EV", {"seq": str(self.seq), "ref": str(ref), "type": kind, "port": "1"}))
        while True:
            msg = self.read()
            if msg.verb == "ACK" and int(msg.fields["seq"]) >= self.seq:
                return (time.perf_counter() - began) * 1000

    def for_a_while(self, until) -> list[float]:
        times = []
        while not until():
            times.append(self.event())
            time.sleep(0.002)
        return times


def flood(port: int, connections: int, threads: int) -> float:
    """Open `connections` garbage connections from `threads` threads; seconds it took."""
    share = [connections // threads + (1 if n < connections % threads else 0) for n in range(threads)]

    def run(count: int):
        for _ in range(count):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"GARBAGE\n")
                    while s.recv(4096):
                        pass
            except OSError:
                pass  # refused or reset: still a connection of the flood

    began = time.monotonic()
    workers = [threading.Thread(target=run, args=(n,)) for n in share]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.monotonic() - began


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def size(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def log_table(db: Path) -> dict:
    conn = sqlite3.connect(db)
    try:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(log)")}
        count = "count" if "count" in cols else "1"
        marks = ", ".join("?" * len(COALESCED))
        rows, text, entries = conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(length(event) + length(peer) + length(gateway) + length(mac)"
            f" + length(detail)), 0), COALESCE(SUM({count}), 0) FROM log WHERE event IN ({marks})",
            COALESCED,
        ).fetchone()
    finally:
        conn.close()
    return {"rows": rows, "text_bytes": text, "entries": entries}


def measure(name: str, tree: Path, args) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"cdrd-flood-{name}-") as tmpdir:
        tmp = Path(tmpdir)
        proc, port, db = start(tree, tmp)
        try:
            gw = Gateway(port)
            for _ in range(50):  # warm up
                gw.event()
            t0 = time.monotonic()
            idle = gw.for_a_while(lambda: time.monotonic() - t0 > 3)
            done = threading.Event()
            seconds = []
            flooder = threading.Thread(target=lambda: (seconds.append(flood(port, args.connections, args.threads)),
                                                       done.set()))
            flooder.start()
            during = gw.for_a_while(done.is_set)
            flooder.join()
            gw.sock.close()
        finally:
            stop(proc)
        table = log_table(db)
        return {"flood_s": seconds[0], "idle": idle, "during": during, "file_bytes": size(db), **table}


def pooled(name: str, runs: list[dict], args) -> dict:
    idle = [t for r in runs for t in r["idle"]]
    during = [t for r in runs for t in r["during"]]
    last = runs[-1]
    return {
        "name": name, "connections": args.connections, "rounds": len(runs),
        "flood_s": round(sum(r["flood_s"] for r in runs) / len(runs), 2),
        "rows": last["rows"], "entries": last["entries"], "text_bytes": last["text_bytes"],
        "file_bytes": last["file_bytes"],
        "idle_p50_ms": pct(idle, 0.5), "idle_p99_ms": pct(idle, 0.99), "idle_acks": len(idle),
        "flood_p50_ms": pct(during, 0.5), "flood_p99_ms": pct(during, 0.99), "flood_max_ms": max(during or [0]),
        "flood_acks": len(during),
    }


def tree_of(ref: str, tmp: Path) -> Path:
    """The files of git revision `ref` of this repository, in tmp (read from git, nothing else touched)."""
    out = tmp / ref.replace("/", "_")
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True)
    if archive.returncode:
        why = archive.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise SystemExit(f"flood_log: --baseline {ref}: git archive failed ({why[0]}); name a revision, or 'none'")
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="gateway log growth and ACK latency during a garbage flood")
    p.add_argument("--connections", type=int, default=3000)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", default="main", help="a git revision to compare with, or 'none'")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cdrd-flood-trees-") as trees:
        trees_ = [("this tree", ROOT)]
        if args.baseline != "none":
            trees_.insert(0, (args.baseline, tree_of(args.baseline, Path(trees))))
        runs: dict[str, list[dict]] = {name: [] for name, _ in trees_}
        for n in range(args.rounds):
            for name, tree in trees_ if n % 2 == 0 else trees_[::-1]:
                runs[name].append(measure(name, tree, args))
    results = [pooled(name, runs[name], args) for name, _ in trees_]
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{args.connections} garbage connections from 127.0.0.1 ({args.threads} threads), SQLite,"
          f" one gateway sending one event at a time (ACK latency in ms); {args.rounds} rounds,"
          f" log and file figures of the last, ACK times of all")
    print(f"{'tree':<10} {'flood s':>7} {'log rows':>8} {'entries':>7} {'text B':>8} {'file B':>9}"
          f" {'idle p50':>8} {'idle p99':>8} {'flood p50':>9} {'flood p99':>9} {'max':>7} {'ACKs':>5}")
    for r in results:
        print(f"{r['name']:<10} {r['flood_s']:>7.1f} {r['rows']:>8} {r['entries']:>7} {r['text_bytes']:>8}"
              f" {r['file_bytes']:>9} {r['idle_p50_ms']:>8.2f} {r['idle_p99_ms']:>8.2f}"
              f" {r['flood_p50_ms']:>9.2f} {r['flood_p99_ms']:>9.2f} {r['flood_max_ms']:>7.1f} {r['flood_acks']:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
