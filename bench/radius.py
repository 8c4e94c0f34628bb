"""
Accounting requests per second answered by a real FreeRADIUS: radclient
(freeradius-utils) against cdrd's spool, the same N distinct
Accounting-Requests, the same server, the same number in flight.

    .venv/bin/python -m bench.radius [-n 20000] [--window 128] [--rounds 3]
                                     [--database memory:|sqlite:{tmp}/b.sqlite]
                                     [--profile FILE]

radclient reads a file of N distinct packets and sends each once (-c 1),
`--window` at a time (its -p).  cdrd's side is the AccountingService with
`[radius] window` = `--window`, delivering the same N payloads from the
store's outbox (stored before the clock starts) through the BatchWriter,
until every one is answered and its deletion committed: the rate includes
building, verifying and the batched deletions.  The two alternate for
`--rounds` rounds on one FreeRADIUS, which writes every request to its
detail file; the file is read back at the end and every round of each
must be there: N distinct requests (Acct-Session-Id), duplicates counted.
`--profile FILE` runs cdrd's rounds under cProfile, writes the stats to
FILE and prints the top of them.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
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


def radclient_file(path: Path, n: int, run: str) -> None:
    with open(path, "w") as f:
        for i in range(n):
            for name, value in attributes(i, run):
                if name == "Event-Timestamp":
                    value = str(value)
                elif isinstance(value, str) and name != "Acct-Status-Type":
                    value = f'"{value}"'
                f.write(f"{name} = {value}\n")
            f.write("Acct-Delay-Time = 0\n\n")


def run_radclient(
    radius: FreeRadius, n: int, parallel: int, tmp: Path, run: str
) -> float:
    packets = tmp / f"{run}.txt"
    radclient_file(packets, n, run)
    cmd = [
        shutil.which("radclient") or "/usr/bin/radclient",
        "-f",
        str(packets),
        "-c",
        "1",
        "-p",
        str(parallel),
        "-q",
        "-s",
        "-t",
        "5",
        "-r",
        "3",
        radius.address,
        "acct",
        SECRET,
    ]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(
            f"radclient failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
        )
    return elapsed


def run_cdrd(
    radius: FreeRadius,
    n: int,
    window: int,
    database: str,
    run: str,
    profile: cProfile.Profile | None,
) -> tuple[float, dict]:
    """One round on a fresh reactor-driven service; the reactor is run and
    stopped once per round (twisted's global reactor cannot restart), so
    each round is a subprocess."""
    cmd = [
        sys.executable,
        "-m",
        "bench.radius",
        "--cdrd-round",
        str(radius.port),
        str(n),
        str(window),
        database,
        run,
    ]
    if profile is not None:
        cmd.append(str(profile))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"cdrd round failed:\n{out.stdout}\n{out.stderr}")
    elapsed, retransmissions, rtt = out.stdout.split()
    return float(elapsed), {"retransmissions": int(retransmissions), "rtt_ms": rtt}


def cdrd_round(
    port: int, n: int, window: int, database: str, run: str, profile_path: str | None
) -> None:
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
        Payload("req", f"leg{i}", "Start", now, tuple(attributes(i, run))).to_bytes()
        for i in range(n)
    ]
    cfg = RadiusConfig(
        servers=(RadiusServer("127.0.0.1", port, SECRET),),
        interim_interval=0,
        window=window,
    )
    svc = AccountingService(cfg, store, writer, reactor, reactor)
    result: dict = {}
    profile = cProfile.Profile() if profile_path else None

    def check():
        # answered = deleted from the outbox (in the store, committed)
        if (
            svc.answered >= n
            and not writer.busy
            and not svc.outbox.deleting
        ):
            store.outbox_stats("radius").addCallback(finished)
        else:
            reactor.callLater(0.002, check)

    def finished(stats):
        if stats[0]:
            reactor.callLater(0.002, check)
            return
        result["elapsed"] = time.perf_counter() - result["start"]
        if profile is not None:
            profile.disable()
        result["status"] = svc.status()
        svc.stopService().addBoth(lambda _: store.close()).addBoth(
            lambda _: reactor.stop()
        )

    @defer.inlineCallbacks
    def begin():
        yield store.open()
        yield store.write(
            WriteBatch(outbox=[OutboxItem("radius", p, now) for p in payloads])
        )
        if profile is not None:
            profile.enable()
        result["start"] = time.perf_counter()
        svc.startService()
        check()

    reactor.callWhenRunning(begin)
    reactor.callLater(600, reactor.stop)
    reactor.run()
    if "elapsed" not in result:
        raise SystemExit("cdrd did not finish")
    if profile is not None:
        profile.dump_stats(profile_path)
    status = result["status"]
    sys.stdout.write(
        f"{result['elapsed']} {status['retransmissions']}"
        f" {status['servers'][0]['rtt_ms']}\n"
    )


def detail_counts(records, runs) -> dict[str, tuple[int, int]]:
    """run -> (records, distinct Acct-Session-Ids) in the detail file."""
    total: Counter = Counter()
    sessions: dict[str, set] = {run: set() for run in runs}
    for r in records:
        session = r.get("Acct-Session-Id", [""])[0]
        run = session.split("/")[1] if session.count("/") >= 2 else ""
        if run in sessions:
            total[run] += 1
            sessions[run].add(session)
    return {run: (total[run], len(sessions[run])) for run in runs}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cdrd-round"]:
        port, n, window, database, run, *profile = argv[1:]
        cdrd_round(
            int(port),
            int(n),
            int(window),
            database,
            run,
            profile[0] if profile else None,
        )
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "-n", type=int, default=20000, help="distinct requests (default 20000)"
    )
    ap.add_argument(
        "--window",
        type=int,
        default=128,
        help="in flight: cdrd's [radius] window and radclient -p (default 128)",
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds of each, alternating (default 3)"
    )
    ap.add_argument(
        "--database",
        default="memory:",
        help="cdrd's store: memory: (default) or sqlite:PATH ({tmp} = a temp dir)",
    )
    ap.add_argument("--profile", help="cProfile cdrd's rounds into this file")
    args = ap.parse_args(argv)
    rates: dict[str, list[float]] = {"radclient": [], "cdrd": []}
    runs = []
    with tempfile.TemporaryDirectory(prefix="cdrd-bench-") as d:
        tmp = Path(d)
        radius = FreeRadius(tmp / "radius", secret=SECRET)
        radius.start()
        try:
            for k in range(args.rounds):
                run = f"radclient{k}"
                t = run_radclient(radius, args.n, args.window, tmp, run)
                rates["radclient"].append(args.n / t)
                runs.append(run)
                sys.stdout.write(
                    f"round {k}: radclient -c 1 -p {args.window}: {t:.2f} s, "
                    f"{args.n / t:,.0f} req/s\n"
                )
                run = f"cdrd{k}"
                database = args.database.replace("{tmp}", str(tmp)).replace(
                    "b.sqlite", f"b{k}.sqlite"
                )
                profile = f"{args.profile}.{k}" if args.profile else None
                t, status = run_cdrd(
                    radius, args.n, args.window, database, run, profile
                )
                rates["cdrd"].append(args.n / t)
                runs.append(run)
                sys.stdout.write(
                    f"round {k}: cdrd window {args.window} ({args.database}):"
                    f" {t:.2f} s, {args.n / t:,.0f} req/s"
                    f" (retransmissions {status['retransmissions']}, "
                    f"rtt {status['rtt_ms']} ms)\n"
                )
                sys.stdout.flush()
            time.sleep(0.5)
            records = radius.records()
        finally:
            radius.stop()
    counts = detail_counts(records, runs)
    missing = [run for run in runs if counts[run][1] != args.n]
    total = sum(c[0] for c in counts.values())
    sys.stdout.write(
        f"detail file: {total} records for {len(runs)} runs of {args.n}: "
        + ", ".join(f"{run} {c[1]} distinct/{c[0]}" for run, c in counts.items())
        + ("; ALL ARRIVED\n" if not missing else f"; MISSING in {missing}\n")
    )
    r_med, c_med = (
        statistics.median(rates["radclient"]),
        statistics.median(rates["cdrd"]),
    )
    sys.stdout.write(
        f"median of {args.rounds}: radclient {r_med:,.0f} req/s,"
        f" cdrd {c_med:,.0f} req/s, "
        f"cdrd / radclient {c_med / r_med:.2f}\n"
    )
    if args.profile:
        stats = pstats.Stats(*(f"{args.profile}.{k}" for k in range(args.rounds)))
        stats.dump_stats(args.profile)
        stats.sort_stats("tottime").print_stats(25)
    if missing:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
