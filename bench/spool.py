"""
RADIUS spool CPU per call, split where it is paid (issue 15): on the ingest
path (what the CallService stores in the "radius" outbox for the call
model's products, in its derived transaction) and in the sender (reading
an outbox item back and encoding its packets).  Pure CPU (process time) in
one process: what a busy, shared machine disturbs least.

    .venv/bin/python bench/spool.py [--calls 20000] [--rounds 3]
                                    [--tree /work/h15-base --tree .]

Each --tree (a checkout) runs in a process of its own, alternating, with
the same traffic (bench/calls.py's mix: calls out, failed, in, PSTN,
diverted, transferred) through that tree's call model in batches of 200
events; the ingest path is the tree's own choice (``spool_facts`` where the
sink provides ILazyCdrSink, else ``spool``).  Prints, per run, µs per call
on each path and the bytes stored per call; the median per tree at the end.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.trees import inner_or_trees, runs, tree_options  # noqa: E402

# cdrd comes from the tree under test (PYTHONPATH; bench/trees.py), not this checkout
sys.path.remove(str(ROOT))


def inner(args) -> dict:
    # cdrd from the tree under test (PYTHONPATH), before bench/calls.py
    # puts this checkout on sys.path
    from twisted.internet.task import Clock

    from cdrd.accounting import packets
    from cdrd.accounting.service import AccountingService
    from cdrd.calls.model import CallModel
    from cdrd.config import RadiusConfig, RadiusServer
    from cdrd.values import CallEnd, CallEvent

    try:
        from cdrd.interfaces import ILazyCdrSink
    except ImportError:  # a tree before issue 15
        ILazyCdrSink = None

    spec = importlib.util.spec_from_file_location("bench_calls", ROOT / "bench" / "calls.py")
    calls = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calls)

    keys = calls.gateway_keys(args.gateways)
    config = calls.config_for(keys)
    events, ncalls = calls.traffic(keys, args.calls // args.gateways, 4)
    model = CallModel(config)
    batches, batch = [], []
    for i, e in enumerate(events):
        e = CallEvent(gateway=e.gateway, seq=e.seq, ref=e.ref, type=e.type, time=e.time,
                      received=e.received, boot=e.boot, fields=e.fields, id=i + 1)
        batch.extend(model.apply(e))
        if (i + 1) % 200 == 0:
            batches.append(batch)
            batch = []
    batches.append(batch)
    ends = sum(1 for b in batches for o in b if isinstance(o, CallEnd))

    cfg = RadiusConfig(servers=(RadiusServer("127.0.0.1", 1813, "s"),), nas_ip="192.0.2.10",
                       interim_interval=600)
    clock = Clock()
    svc = AccountingService(cfg, None, None, clock, clock)
    lazy = ILazyCdrSink is not None and ILazyCdrSink.providedBy(svc)
    spool = svc.spool_facts if lazy else svc.spool

    # the traffic is made: as the daemon does with what start-up made
    # (cdrd.gcpauses), the collector no longer walks it at every collection
    gc.collect()
    gc.freeze()
    t0 = time.process_time()
    stored = [p for b in batches for p in spool(b, 0)]
    ingest = time.process_time() - t0

    expand = getattr(packets, "expand", None)
    t0 = time.process_time()
    packets_sent = 0
    for raw in stored:
        p = packets.Payload.from_bytes(raw)
        parts = expand(p, cfg.nas_ip, svc.dictionary) if expand else [p]
        for part in parts:
            if part.kind == "req":
                body = packets.encode_within_limits(svc.dictionary, part)
                assert body is not None
                packets_sent += 1
    sender = time.process_time() - t0
    return {"tree": args.inner, "lazy": lazy, "calls": ends, "items": len(stored),
            "packets": packets_sent, "bytes_per_call": sum(map(len, stored)) / ends,
            "ingest_us_per_call": 1e6 * ingest / ends, "sender_us_per_call": 1e6 * sender / ends}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--gateways", type=int, default=200)
    tree_options(p)
    args = p.parse_args(argv)
    trees = inner_or_trees(args, inner, ROOT)
    if trees is None:
        return 0
    print(f"{'tree':<12} {'stores':<7} {'calls':>6} {'items':>6} {'packets':>7} {'bytes/call':>10} "
          f"{'ingest µs/call':>14} {'sender µs/call':>14}")
    results: dict[str, list[dict]] = {str(t): [] for t in trees}
    inner_args = ["--calls", str(args.calls), "--gateways", str(args.gateways)]
    for tree, r in runs(Path(__file__).resolve(), trees, args.rounds, inner_args):
        results[str(tree)].append(r)
        print(f"{tree.name:<12} {'facts' if r['lazy'] else 'attrs':<7} {r['calls']:>6} {r['items']:>6} "
              f"{r['packets']:>7} {r['bytes_per_call']:>10.0f} {r['ingest_us_per_call']:>14.1f} "
              f"{r['sender_us_per_call']:>14.1f}", flush=True)
    for tree, rs in results.items():
        print(f"median {Path(tree).name}: ingest {statistics.median(r['ingest_us_per_call'] for r in rs):.1f} "
              f"µs/call, sender {statistics.median(r['sender_us_per_call'] for r in rs):.1f} µs/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
