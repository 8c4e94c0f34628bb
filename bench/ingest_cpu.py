"""
Ingest CPU per call, stage by stage (issue 15): what cdrd's reactor and
store thread spend on the SQLite-without-outputs path, in one process,
as pure CPU (process time): the figure a busy, shared machine disturbs
least, beside bench/capacity.py's end-to-end runs.

    .venv/bin/python bench/ingest_cpu.py [--calls 6000] [--rounds 3]
                                         [--tree /work/base --tree .]

The traffic is bench/capacity.py's: pre-rendered calls (cdrd.sim.load's
shapes), round-robin over `--gateways`, a call's lines in one read.
Stages, each timed alone:

- ``parse``: every line through its gateway's `GatewaySession` (codec,
  event rules) and one `flush` per call: the reactor's share per read;
- ``store``: `SqlStore._write` of the events in transactions of
  about `--batch` events (1/3 to 5/3 of it, seeded: group commit takes
  what arrived meanwhile) on a fresh SQLite file (WAL, synchronous=FULL, cdrd's
  schema), each carrying the previous transaction's derived products
  (records, CDRs, cursors) as the group commit does: the store thread's
  share (the fsyncs' waits are not CPU);
- ``model``: the stored events (with their ids) through `CallModel.apply`.

``--derived-every N`` writes the derived products as the derived lane
does (docs/store.md, "Two write lanes"): in a transaction of their own
before every Nth events' transaction, what the model made meanwhile
together; 0 (the default) carries them in the next events' transaction.

Each --tree (a checkout) runs in a process of its own, alternating; the
median and the least per tree at the end (the least: the run that other
processes disturbed least).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.trees import inner_or_trees, runs, tree_options  # noqa: E402

# cdrd comes from the tree under test (PYTHONPATH; bench/trees.py), not this checkout
sys.path.remove(str(ROOT))

BASE_MS = 1_795_000_000_000


def inner(args) -> dict:
    # cdrd from the tree under test (PYTHONPATH first)
    from cdrd.calls.model import CallModel
    from cdrd.gateway.session import LOGGED_IN, GatewaySession
    from cdrd.interfaces import ModelCursor, WriteBatch
    from cdrd.store.sqlite import SQLiteStore
    from cdrd.values import CallEnd

    sys.path.insert(0, str(ROOT))  # this checkout's bench helpers, after the tree's cdrd
    from bench.calls import config_for, gateway_keys
    from bench.capacity import call_templates

    keys = gateway_keys(args.gateways)
    config = config_for(keys)
    templates = call_templates(500, args.seed, BASE_MS)
    seq = dict.fromkeys(keys, 0)
    reads = []  # (gateway, the call's lines)
    for i in range(args.calls):
        key = keys[i % len(keys)]
        data, n = templates[i % len(templates)]
        values = []
        for _ in range(n):
            seq[key] += 1
            values += [seq[key], i + 1]
        reads.append((key, (data % tuple(values)).split(b"\n")[:-1]))

    sessions = {}
    for key in keys:
        s = GatewaySession(config=config, peer="127.0.0.1:40000", nonce="00000000")
        s.phase, s.key, s.gw, s.boot = LOGGED_IN, key, key.split("_")[0], "r0"
        sessions[key] = s
    t0 = time.process_time()
    stores = []
    for key, lines in reads:
        session = sessions[key]
        for line in lines:
            session.line(BASE_MS, line)
        stores.append(session.flush())
    parse = time.process_time() - t0
    events = [e for s in stores for e in s.events]

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(str(Path(tmp) / "cdrd.sqlite"), reactor=None)
        store._connect()  # the schema, in this thread; the writer's connection
        conn = store._conn
        cur = conn.cursor()
        model = CallModel(config)
        inserted_all = []
        store_cpu = model_cpu = 0.0
        derived = WriteBatch()
        rng = random.Random(args.seed)
        i = written = 0
        while i < len(events):
            # group commit takes what arrived meanwhile: sizes vary
            size = rng.randint(args.batch // 3, args.batch * 5 // 3)
            lane = args.derived_every and (written % args.derived_every == 0 or i + size >= len(events))
            t0 = time.process_time()
            if args.derived_every == 0:
                batch = WriteBatch(
                    events=events[i:i + size], records=derived.records, cdrs=derived.cdrs,
                    cursors=derived.cursors,
                )
            else:
                batch = WriteBatch(events=events[i:i + size])
                if lane and (derived.records or derived.cursors):
                    # the derived lane: what the model made meanwhile, in a transaction of its own
                    cur.execute("BEGIN IMMEDIATE")
                    store._write(cur, derived)
                    cur.execute("COMMIT")
            i += size
            written += 1
            cur.execute("BEGIN IMMEDIATE")
            result = store._write(cur, batch)
            cur.execute("COMMIT")
            t1 = time.process_time()
            products = []
            for e in result.events:
                products.extend(model.apply(e))
            touched = {e.gateway for e in result.events}
            cursors = [ModelCursor(g, model.applied(g), model.replay_from(g) or model.applied(g) + 1)
                       for g in touched]
            t2 = time.process_time()
            store_cpu += t1 - t0
            model_cpu += t2 - t1
            inserted_all.extend(result.events)
            ends = [p for p in products if isinstance(p, CallEnd)]
            made = WriteBatch(records=[p.record for p in ends], cdrs=[c for p in ends for c in p.cdrs],
                              cursors=cursors)
            if args.derived_every and not lane:
                # held for the derived lane's next transaction (a cursor per gateway: the latest)
                kept = {c.gateway: c for c in derived.cursors}
                kept.update((c.gateway, c) for c in made.cursors)
                made = WriteBatch(records=derived.records + made.records, cdrs=derived.cdrs + made.cdrs,
                                  cursors=list(kept.values()))
            derived = made
        conn.close()
    calls = args.calls
    return {"tree": args.inner, "calls": calls, "events": len(inserted_all),
            "parse_us": 1e6 * parse / calls, "store_us": 1e6 * store_cpu / calls,
            "model_us": 1e6 * model_cpu / calls,
            "total_us": 1e6 * (parse + store_cpu + model_cpu) / calls}


COLUMNS = ("parse_us", "store_us", "model_us", "total_us")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=6000)
    p.add_argument("--gateways", type=int, default=100)
    p.add_argument("--batch", type=int, default=300, help="events per store transaction")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--derived-every", type=int, default=0,
                   help="the derived lane: derived rows in a transaction of their own before every"
                        " Nth events' transaction (0: with the next events' transaction, one lane)")
    tree_options(p)
    args = p.parse_args(argv)
    trees = inner_or_trees(args, inner, ROOT)
    if trees is None:
        return 0
    print(f"{'tree':<12} {'calls':>6} {'events':>7}   µs/call: {'parse':>7} {'store':>7} {'model':>7} {'total':>7}")
    results: dict[str, list[dict]] = {str(t): [] for t in trees}
    inner_args = ["--calls", str(args.calls), "--gateways", str(args.gateways),
                  "--batch", str(args.batch), "--seed", str(args.seed),
                  "--derived-every", str(args.derived_every)]
    for tree, r in runs(Path(__file__).resolve(), trees, args.rounds, inner_args):
        results[str(tree)].append(r)
        print(f"{tree.name:<12} {r['calls']:>6} {r['events']:>7}            "
              + " ".join(f"{r[c]:>7.1f}" for c in COLUMNS), flush=True)
    for tree, rs in results.items():
        for name, pick in (("median", statistics.median), ("least", min)):
            print(f"{name:<6} {Path(tree).name:<12}" + "".join(
                f" {c[:-3]} {pick(r[c] for r in rs):.1f}" for c in COLUMNS) + " µs/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
