"""
Accounting requests per second answered by a real FreeRADIUS: radclient
(freeradius-utils) against cdrd's spool, the same N distinct
Accounting-Requests, the same server, the same run.

    .venv/bin/python -m bench.radius [-n 20000] [--parallel 32] [--window 128]

radclient reads a file of N distinct packets and sends each once (-c 1),
--parallel at a time (its -p; 32 is its default).  cdrd's side is the
AccountingService delivering the same N payloads from the store's outbox
(MemoryStore by default, --database sqlite:{tmp}/b.sqlite for the embedded
one; stored before the clock starts) through the BatchWriter, until every
one is answered and its deletion committed: the rate includes building,
verifying and the batched deletions.  FreeRADIUS writes
every request to its detail file in both runs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.accounting.freeradius import FreeRadius  # noqa: E402

SECRET = "bench-secret"
EVENT = 1795341600  # 2026-11-22T10:00:00Z


def attributes(i: int, run: str) -> list[tuple[str, object]]:
    """One distinct Accounting-Request (standard attributes only, so that
    radclient and cdrd send the very same packet)."""
    return [
        ("Acct-Status-Type", "Start"),
        ("User-Name", f"4420794{i:05d}"),
        ("NAS-IP-Address", "192.0.2.10"),
        ("NAS-Identifier", "8200_000C2A020082"),
        ("NAS-Port", 1 + i % 8),
        ("NAS-Port-Id", f"fxs/{1 + i % 8}"),
        ("Acct-Session-Id", f"8200_000C2A020082/{run}/{i}/0"),
        ("Acct-Multi-Session-Id", f"8200_000C2A020082/{run}/{i}"),
        ("Calling-Station-Id", f"4420794{i:05d}"),
        ("Called-Station-Id", "07700900123"),
        ("Event-Timestamp", EVENT + i),
    ]


def radclient_file(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            for name, value in attributes(i, "radclient"):
                if name == "Event-Timestamp":
                    value = str(value)
                elif isinstance(value, str) and name != "Acct-Status-Type":
                    value = f'"{value}"'
                f.write(f"{name} = {value}\n")
            f.write("Acct-Delay-Time = 0\n\n")


def run_radclient(radius: FreeRadius, n: int, parallel: int, tmp: Path) -> float:
    packets = tmp / "packets.txt"
    radclient_file(packets, n)
    cmd = [
        shutil.which("radclient") or "/usr/bin/radclient",
        "-f", str(packets), "-c", "1", "-p", str(parallel), "-q", "-s",
        "-t", "5", "-r", "3",
        radius.address, "acct", SECRET,
    ]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"radclient failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return elapsed


def run_cdrd(radius: FreeRadius, n: int, window: int, database: str) -> tuple[float, dict]:
    from twisted.internet import defer, reactor

    from cdrd.accounting.packets import Payload
    from cdrd.accounting.service import AccountingService
    from cdrd.config import RadiusConfig, RadiusServer
    from cdrd.interfaces import OutboxItem, WriteBatch
    from cdrd.store import open_store
    from cdrd.store.writer import BatchWriter

    store = open_store(database, reactor)
    writer = BatchWriter(store, reactor)
    now = int(time.time() * 1000)
    payloads = [
        Payload("req", f"leg{i}", "Start", now, tuple(attributes(i, "cdrd"))).to_bytes()
        for i in range(n)
    ]

    def depth():
        return store.outbox_stats("radius")
    cfg = RadiusConfig(
        servers=(RadiusServer("127.0.0.1", radius.port, SECRET),),
        interim_interval=0, window=window,
    )
    svc = AccountingService(cfg, store, writer, reactor, reactor)
    result: dict = {}

    def check():
        # answered = deleted from the outbox (in the store, committed)
        if svc.answered >= n and not writer.busy and svc._deleting is None and not svc._done:
            depth().addCallback(finished)
        else:
            reactor.callLater(0.002, check)

    def finished(stats):
        if stats[0]:
            reactor.callLater(0.002, check)
            return
        result["elapsed"] = time.perf_counter() - result["start"]
        result["status"] = svc.status()
        svc.stopService().addBoth(lambda _: store.close()).addBoth(lambda _: reactor.stop())

    @defer.inlineCallbacks
    def begin():
        yield store.open()
        yield store.write(WriteBatch(outbox=[OutboxItem("radius", p, now) for p in payloads]))
        result["start"] = time.perf_counter()
        svc.startService()
        check()

    reactor.callWhenRunning(begin)
    reactor.callLater(600, reactor.stop)
    reactor.run()
    if "elapsed" not in result:
        raise SystemExit(f"cdrd did not finish: {len(store.items)} left")
    return result["elapsed"], result["status"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20000, help="distinct requests (default 20000)")
    ap.add_argument("--parallel", type=int, default=32, help="radclient -p (default 32)")
    ap.add_argument("--window", type=int, default=128, help="cdrd [radius] window")
    ap.add_argument("--database", default="memory:",
                    help="cdrd's store: memory: (default) or sqlite:PATH, postgresql://...")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cdrd-bench-") as d:
        tmp = Path(d)
        radius = FreeRadius(tmp / "radius", secret=SECRET)
        radius.start()
        try:
            t_radclient = run_radclient(radius, args.n, args.parallel, tmp)
            database = args.database.replace("{tmp}", str(tmp))
            t_cdrd, status = run_cdrd(radius, args.n, args.window, database)
            time.sleep(0.5)
            records = radius.records()
        finally:
            radius.stop()
    got = {r["Acct-Session-Id"][0].split("/")[1] for r in records}
    count = len(records)
    r_rate, c_rate = args.n / t_radclient, args.n / t_cdrd
    sys.stdout.write(
        f"FreeRADIUS {radius.address}, {args.n} distinct Accounting-Requests each\n"
        f"radclient -c 1 -p {args.parallel}: {t_radclient:.2f} s, {r_rate:,.0f} req/s\n"
        f"cdrd window {args.window} ({args.database}): {t_cdrd:.2f} s, {c_rate:,.0f} req/s"
        f" (retransmissions {status['retransmissions']}, rtt {status['servers'][0]['rtt_ms']} ms)\n"
        f"cdrd / radclient: {c_rate / r_rate:.2f}\n"
        f"detail file: {count} requests, runs {sorted(got)}\n"
    )


if __name__ == "__main__":
    main()
