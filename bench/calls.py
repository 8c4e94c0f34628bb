"""
Call model benchmark: calls per second through the pure model, and through
CallService with a real store (group-committed events, then records, CDRs,
cursors and an outbox per transaction), many gateways; memory per open
call with 100 000 calls open (tracemalloc).

    .venv/bin/python bench/calls.py [--gateways 200] [--calls 20000]
                                    [--concurrent 4] [--open 100000]
                                    [--database sqlite:/tmp/cdrd-bench.sqlite]
                                    [--batch 200] [--only model|service|memory]

The traffic is cdrd-sim's mix of a small office's day (cdrd.sim.load:
calls out, failed calls, calls in, PSTN calls) plus a share of diverted
calls (E4-like, one to three forwards: `--diverted`, default 10 %) and of
attended transfers (E5-like, two calls joined: `--transferred`, default
5 %, each counted as its two calls), `--concurrent` calls at a time per
gateway, all gateways' events merged by time and numbered as the store
would.  Figures go to stdout.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import os
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdrd.calls.model import CallModel  # noqa: E402
from cdrd.config import Config, GatewayConfig, LineConfig, PortConfig  # noqa: E402
from cdrd.sim.load import make_call  # noqa: E402
from cdrd.values import CallEnd, CallEvent, GatewayState  # noqa: E402

T0 = 1_795_000_000_000


def gateway_keys(n: int) -> list[str]:
    return [f"{9000 + i}_0200{i:08X}" for i in range(n)]


def config_for(keys) -> Config:
    ports = {
        1: PortConfig(exten="201", ddi="442079460201"),
        2: PortConfig(exten="202", ddi="442079460202", cui="ACCT-202"),
    }
    lines = {1: LineConfig(cui="CARRIER-ACME")}
    return Config(
        gateways={k: GatewayConfig(key=k, ports=ports, lines=lines) for k in keys}
    )


def _number(rng: random.Random, prefix: str, length: int) -> str:
    return prefix + "".join(
        rng.choice("0123456789") for _ in range(length - len(prefix))
    )


def diverted_call(rng: random.Random, ref: int) -> list[tuple[int, int, str, dict]]:
    """E4-like: 201 calls 202, forwarded one to three times, answered at the last."""
    t = 0
    steps = [(t, ref, "HOOK_OFF", {"port": "1"})]
    t += rng.randint(1500, 6000)
    steps.append((t, ref, "DIAL", {"digits": "202"}))
    for n in range(rng.choice([1, 1, 1, 2, 3])):
        t += rng.randint(100, 900)
        steps.append((t, ref, "RING_BACK", {}))
        t += rng.randint(2000, 20000)
        by = {"by": "202", "port": "2"} if n == 0 else {"by": _number(rng, "07", 11)}
        steps.append(
            (t, ref, "DIVERT", {"to": _number(rng, "07", 11), "cause": "cfnr", **by})
        )
    t += rng.randint(100, 900)
    steps.append((t, ref, "RING_BACK", {}))
    t += rng.randint(2000, 20000)
    steps.append((t, ref, "TALK", {}))
    t += rng.randint(5000, 600000)
    steps.append((t, ref, "REMOTE_HOOK_ON", {}))
    t += rng.randint(100, 2000)
    steps.append((t, ref, "HOOK_ON", {"port": "1"}))
    return steps


def transferred_calls(rng: random.Random, x: int) -> list[tuple[int, int, str, dict]]:
    """E5-like: 201 calls 202 (ref x); 202 consults (ref x+1) and transfers."""
    y = x + 1
    t = 0
    steps = [(t, x, "HOOK_OFF", {"port": "1"})]
    t += rng.randint(1500, 6000)
    steps.append((t, x, "DIAL", {"digits": "202"}))
    t += rng.randint(100, 900)
    steps.append((t, x, "RING_BACK", {}))
    t += rng.randint(2000, 20000)
    steps.append((t, x, "TALK", {}))
    t += rng.randint(5000, 120000)
    steps.append((t, x, "HOLD", {}))
    t += rng.randint(200, 2000)
    steps.append((t, y, "HOOK_OFF", {"port": "2"}))
    t += rng.randint(1500, 6000)
    steps.append((t, y, "DIAL", {"digits": _number(rng, "07", 11)}))
    t += rng.randint(100, 900)
    steps.append((t, y, "RING_BACK", {}))
    t += rng.randint(2000, 20000)
    steps.append((t, y, "TALK", {}))
    t += rng.randint(5000, 120000)
    role = {"role": "caller"} if rng.random() < 0.2 else {}
    steps.append((t, y, "TRANSFER", {"with": str(x), **role}))
    steps.append((t + rng.randint(50, 500), y, "HOOK_ON", {"port": "2"}))  # late
    t += rng.randint(5000, 600000)
    steps.append((t, x, "REMOTE_HOOK_ON", {}))
    steps.append((t + rng.randint(100, 2000), x, "HOOK_ON", {"port": "1"}))
    steps.sort(key=lambda s: s[0])
    return steps


def traffic(
    keys,
    calls_per_gateway: int,
    concurrent: int,
    diverted: float = 0.10,
    transferred: float = 0.05,
    seed: int = 1,
):
    """
    Every gateway's calls, `concurrent` at a time, as CallEvents in time
    order, and how many calls (records) they make.
    """
    rng = random.Random(seed)
    streams = []
    ncalls = 0
    for key in keys:
        events = []
        lanes = [T0 + rng.randint(0, 60_000) for _ in range(concurrent)]
        ref = n = 0
        while ref < calls_per_gateway:
            lane = n % concurrent
            n += 1
            pick = rng.random()
            if pick < transferred and ref + 2 <= calls_per_gateway:
                call = transferred_calls(rng, ref + 1)
                ref += 2
            elif pick < transferred + diverted:
                call = diverted_call(rng, ref + 1)
                ref += 1
            else:
                ref += 1
                call = [
                    (e.t, e.ref, e.type, dict(e.fields))
                    for e in make_call(rng, ref=ref, end_ms=10**6)
                ]
            shift = lanes[lane] - call[0][0]
            for t, r, kind, fields in call:
                events.append((t + shift, key, r, kind, fields))
            lanes[lane] = call[-1][0] + shift + rng.randint(100, 5000)
        ncalls += ref
        events.sort(key=lambda x: x[0])
        streams.append(events)
    out = []
    seqs = dict.fromkeys(keys, 0)
    for t, key, ref, kind, fields in heapq.merge(*streams, key=lambda x: x[0]):
        seqs[key] += 1
        out.append(
            CallEvent(
                gateway=key,
                seq=seqs[key],
                ref=ref,
                type=kind,
                time=t,
                received=t,
                boot="b1",
                fields=fields,
            )
        )
    return out, ncalls


def bench_model(events, config, ncalls):
    model = CallModel(config)
    numbered = [
        CallEvent(
            gateway=e.gateway,
            seq=e.seq,
            ref=e.ref,
            type=e.type,
            time=e.time,
            received=e.received,
            boot=e.boot,
            fields=e.fields,
            id=i + 1,
        )
        for i, e in enumerate(events)
    ]
    gc.collect()
    ends = cdrs = 0
    started = time.perf_counter()
    for e in numbered:
        for o in model.apply(e):
            if type(o) is CallEnd:
                ends += 1
                cdrs += len(o.cdrs)
    elapsed = time.perf_counter() - started
    assert ends == ncalls, (ends, ncalls)
    print(
        f"model:   {ncalls} calls ({len(events)} events, {cdrs} CDRs) "
        f"in {elapsed:.2f} s: {ncalls / elapsed:,.0f} calls/s, "
        f"{len(events) / elapsed:,.0f} events/s (one core)"
    )


def bench_memory(nopen: int, ngateways: int):
    keys = gateway_keys(ngateways)
    config = config_for(keys)
    gc.collect()
    tracemalloc.start()
    model = CallModel(config)
    base = tracemalloc.get_traced_memory()[0]
    eid = 0
    per_gateway = nopen // ngateways
    for key in keys:
        for ref in range(1, per_gateway + 1):
            t = T0 + ref * 1000
            for kind, fields in (
                ("HOOK_OFF", {"port": "1"}),
                ("DIAL", {"digits": "07700900123"}),
                ("RING_BACK", {}),
                ("TALK", {}),
            ):
                eid += 1
                model.apply(
                    CallEvent(
                        gateway=key,
                        seq=eid,
                        ref=ref,
                        type=kind,
                        time=t,
                        received=t,
                        boot="b1",
                        fields=fields,
                        id=eid,
                    )
                )
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    n = model.open_count()
    assert n == per_gateway * ngateways
    print(
        f"memory:  {n} answered calls open on {ngateways} gateways: "
        f"{used / 2**20:.1f} MiB, "
        f"{used / n:,.0f} bytes per open call (two legs, one CDR draft)"
    )


def bench_service(
    events, config, ncalls, database: str, batch: int, with_calls: bool = True
):
    from twisted.internet import defer

    from cdrd.calls.service import CallService
    from cdrd.interfaces import CallQuery, CdrQuery, WriteBatch
    from cdrd.store import open_store
    from cdrd.store.writer import BatchWriter

    if database.startswith("sqlite:"):
        database += "" if with_calls else ".store-only"
        path = database[len("sqlite:") :]

        def fresh():
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
    else:

        def fresh():
            pass

    class OneLinePerCdr:
        """A durable sink as syslog is: one outbox item per CDR."""

        name = "bench"

        def spool(self, outputs, now):
            return [
                c.line.encode() for o in outputs if type(o) is CallEnd for c in o.cdrs
            ]

        def committed(self, outputs):
            pass

    async def main(reactor):
        fresh()
        store = open_store(database, reactor)
        await store.open()
        writer = BatchWriter(store, reactor)
        writer.startService()
        keys = sorted({e.gateway for e in events})
        await writer.submit(
            WriteBatch(
                gateways=[
                    GatewayState(
                        key=k, id=k.split("_")[0], mac=k.split("_")[1], boot="b1"
                    )
                    for k in keys
                ]
            )
        )
        service = CallService(config, store, writer, reactor, sinks=[OneLinePerCdr()])
        if with_calls:
            await service.startService()
        started = time.perf_counter()
        window = []
        for i in range(0, len(events), batch):
            window.append(writer.submit(WriteBatch(events=events[i : i + batch])))
            if len(window) >= 64:  # gateways wait for ACKs: bounded in flight
                await window.pop(0)
        await defer.gatherResults(window)
        await writer.flushed()
        await service.idle()
        await writer.flushed()
        elapsed = time.perf_counter() - started
        if not with_calls:
            print(
                f"store:   the same {len(events)} events stored without CallService "
                f"({database.split(':')[0]}) in {elapsed:.2f} s: "
                f"{len(events) / elapsed:,.0f} events/s "
                f"({ncalls / elapsed:,.0f} calls/s of events), "
                f"{writer.transactions} transactions"
            )
            await writer.stopService()
            await store.close()
            fresh()
            return
        total, _ = await store.cdrs(CdrQuery(limit=1))
        page = await store.calls(CallQuery(limit=1))
        assert page.total == ncalls, (page.total, ncalls)
        print(
            f"service: {ncalls} calls ({len(events)} events, {total} CDRs stored) "
            f"through CallService + {database.split(':')[0]} in {elapsed:.2f} s: "
            f"{ncalls / elapsed:,.0f} calls/s, {len(events) / elapsed:,.0f} events/s, "
            f"{writer.transactions} transactions"
        )
        await service.stopService()
        await writer.stopService()
        await store.close()
        fresh()

    return main


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--gateways", type=int, default=200)
    p.add_argument("--calls", type=int, default=20_000, help="calls in all")
    p.add_argument(
        "--concurrent", type=int, default=4, help="calls at a time per gateway"
    )
    p.add_argument(
        "--open", type=int, default=100_000, help="open calls for the memory figure"
    )
    p.add_argument("--database", default="sqlite:/tmp/cdrd-bench-calls.sqlite")
    p.add_argument("--batch", type=int, default=200, help="events per submitted batch")
    p.add_argument("--only", choices=["model", "service", "memory"])
    p.add_argument(
        "--diverted", type=float, default=0.10, help="share of diverted calls"
    )
    p.add_argument(
        "--transferred",
        type=float,
        default=0.05,
        help="share of attended transfers (two calls each)",
    )
    args = p.parse_args()

    keys = gateway_keys(args.gateways)
    config = config_for(keys)
    per_gateway = max(1, args.calls // args.gateways)
    if args.only in (None, "memory"):
        bench_memory(args.open, min(args.gateways, args.open))
    if args.only in (None, "model", "service"):
        events, ncalls = traffic(
            keys, per_gateway, args.concurrent, args.diverted, args.transferred
        )
        kinds = {"DIVERT": set(), "TRANSFER": set()}
        for e in events:
            if e.type in kinds:
                kinds[e.type].add((e.gateway, e.ref))
        print(
            f"traffic: {args.gateways} gateways, {ncalls} calls "
            f"({len(kinds['DIVERT'])} diverted, {len(kinds['TRANSFER'])} transfers "
            f"joining two calls each), {len(events)} events, "
            f"{args.concurrent} concurrent calls per gateway"
        )
        if args.only in (None, "model"):
            bench_model(events, config, ncalls)
        if args.only in (None, "service"):
            from twisted.internet import defer, task

            runs = [
                bench_service(
                    events, config, ncalls, args.database, args.batch, with_calls=False
                ),
                bench_service(events, config, ncalls, args.database, args.batch),
            ]

            async def both(reactor):
                for run in runs:
                    await run(reactor)

            task.react(lambda reactor: defer.ensureDeferred(both(reactor)))


if __name__ == "__main__":
    main()
