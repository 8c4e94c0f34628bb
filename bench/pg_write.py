"""
PostgreSQL write transactions while the reactor is busy (issue 15): how
long a store.write takes when the store thread must win the GIL back from
the reactor thread after every wait for the server.

    .venv/bin/python bench/pg_write.py [--writes 300] [--calls 40] [--busy 0.5]
                                       [--tree /work/base --tree .] [--rounds 2]

Each run is a process of its own (cdrd imported from --tree, with that
tree's .venv) on a fresh database at 127.0.0.1:5432, dropped after: the
reactor thread spins `--busy` of every 4 ms (what parsing and the call
model do to it under load) while --writes batches are written one after
another, as the BatchWriter writes them: each carries --calls calls (6
events each, the call's record and CDR, its gateway's state and model
cursor; 100 gateways).  Printed per run: the write's latency p50 / p99 /
max (ms, on the reactor: from store.write to its result), writes/s, and
the process's CPU ms per write (the reactor's spinning included: with
--busy 0 it is the write's own, the store thread's binding and psycopg's
work).  Trees alternate within a round.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = "postgresql://postgres@127.0.0.1:5432"
GATEWAYS = 100


def batches(writes: int, calls: int):
    from cdrd.interfaces import WriteBatch
    from tests.store.values import DAY, cdr, cursor, event, gateway_state, record

    keys = [f"{8200 + g}_000C2A02{g:04X}" for g in range(GATEWAYS)]
    seq = dict.fromkeys(keys, 0)
    n = 0
    for _ in range(writes):
        events, records, cdrs, states, cursors = [], [], [], [], []
        for _ in range(calls):
            key = keys[n % GATEWAYS]
            ref = n // GATEWAYS + 1
            n += 1
            for kind in ("HOOK_OFF", "DIAL", "RINGING", "CONNECT", "HOOK_ON", "RELEASE"):
                seq[key] += 1
                events.append(event(seq[key], ref=ref, type=kind, gateway=key))
            rec = record(ref, DAY + n, gateway=key)
            records.append(rec)
            cdrs.append(cdr(rec.id, 1, DAY + n, gateway=key))
            states.append(gateway_state(key, last_seq=seq[key]))
            cursors.append(cursor(key, applied=seq[key], replay_from=seq[key] + 1))
        yield WriteBatch(events=events, records=records, cdrs=cdrs, gateways=states, cursors=cursors)


def worker(args) -> dict:
    from twisted.internet import defer, reactor, task

    from cdrd.store.postgresql import PostgresStore

    name = f"cdrd_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c", f"CREATE DATABASE {name}"],
                   check=True, capture_output=True)
    out: dict = {}

    def spin():
        end = time.perf_counter() + 0.004 * args.busy
        while time.perf_counter() < end:
            pass

    async def run():
        store = PostgresStore(f"{SERVER}/{name}", reactor)
        await store.open()
        todo = list(batches(args.writes, args.calls))
        busy = task.LoopingCall(spin)
        busy.start(0.004)
        try:
            for batch in todo[:10]:  # warm up: connections, prepared statements
                await store.write(batch)
            took = []
            cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for batch in todo[10:]:
                began = time.perf_counter()
                await store.write(batch)
                took.append(time.perf_counter() - began)
            wall = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            busy.stop()
            await store.close()
        took.sort()
        cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / len(took)
        out.update(p50=took[len(took) // 2] * 1e3, p99=took[int(len(took) * 0.99)] * 1e3,
                   max=took[-1] * 1e3, rate=len(took) / wall, cpu=cpu * 1e3)

    try:
        task.react(lambda _: defer.ensureDeferred(run()), [])
    except SystemExit:
        pass
    finally:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c",
                        f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)
    return out


def in_tree(tree: Path, args) -> dict | str:
    """One run, cdrd imported from `tree` with its own .venv: the figures, or why not."""
    done = subprocess.run(
        [str(tree / ".venv" / "bin" / "python"), str(ROOT / "bench" / "pg_write.py"), "--worker",
         "--writes", str(args.writes), "--calls", str(args.calls), "--busy", str(args.busy)],
        cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1"),
        capture_output=True, text=True, timeout=600,
    )
    if done.returncode != 0 or not done.stdout.strip():
        return done.stderr.strip()[-500:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writes", type=int, default=300, help="batches written, one after another")
    p.add_argument("--calls", type=int, default=40, help="calls a batch (6 events, a record, a CDR each)")
    p.add_argument("--busy", type=float, default=0.5, help="share of the reactor thread spent spinning")
    p.add_argument("--tree", action="append", type=Path, default=[],
                   help="a checkout with its own .venv to import cdrd from (repeat: alternating)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    print(f"{args.writes} writes of {args.calls} calls ({6 * args.calls} events), reactor busy {args.busy:.0%},"
          f" loadavg before {os.getloadavg()[0]:.2f} (the machine is shared)")
    print(f"{'tree':24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'writes/s':>9} {'CPU ms/write':>13}")
    failed = 0
    for tree in [t.resolve() for _ in range(args.rounds) for t in args.tree or [ROOT]]:
        label = "." if tree == ROOT else tree.name
        r = in_tree(tree, args)
        if isinstance(r, str):
            print(f"{label:24} failed: {r}")
            failed += 1
        else:
            print(f"{label:24} {r['p50']:8.1f} {r['p99']:8.1f} {r['max']:8.1f} {r['rate']:9.1f} {r['cpu']:13.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
