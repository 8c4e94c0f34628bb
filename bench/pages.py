"""
Page rendering benchmark: what the templates cost on top of the store.

    .venv/bin/python bench/pages.py [--records 20000] [--gateways 300] [--repeat 30]

A memory store (so the figures are the web layer's: parsing, the view
values, Jinja2) holds --records call records of one day spread over
--gateways gateways, a CDR per two records and a log of bad packets; each
page is requested --repeat times in process through the real Klein
resource (treq's StubTreq) and p50 / p95 / max are printed in ms.  The
store's own query cost over ten million records is bench/report.py's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attrs  # noqa: E402
from treq.testing import StubTreq  # noqa: E402
from twisted.internet import task  # noqa: E402

from cdrd import config as C  # noqa: E402
from cdrd.interfaces import WriteBatch  # noqa: E402
from cdrd.store.memory import MemoryStore  # noqa: E402
from cdrd.values import LogEntry, cdr_id  # noqa: E402
from cdrd.web import views  # noqa: E402
from cdrd.web.app import WebApp  # noqa: E402
from tests.web import fixtures as F  # noqa: E402


def build(records: int, gateways: int):
    keys = [f"{7000 + i}_000C2A02{i:04X}" for i in range(gateways)]
    config = C.parse({"server": {"timezone": "Europe/London"}, "gateways": {k: {} for k in keys}})
    store = MemoryStore()
    base, cdr = F.RECORDS[0], F.E1_CDR
    day = F.t("00:00:00")
    rows, cdrs = [], []
    for i in range(records):
        key = keys[i % gateways]
        r = attrs.evolve(base, id=f"{key}/b1/{i}", gateway=key, ref=i, begin=day + i * 4000,
                         end=day + i * 4000 + 60_000, cli=f"0207946{i % 9000:04d}")
        rows.append(r)
        if i % 2 == 0:
            cdrs.append(attrs.evolve(cdr, id=cdr_id(r.id, 0), call=r.id, gateway=key,
                                     start=r.begin, cui=f"ACCT-{i % 50}"))
    log = [LogEntry(time=day + i * 1000, event="Bad Packet", peer="192.0.2.1:5000", gateway="???")
           for i in range(2000)]
    clock = task.Clock()
    clock.advance(F.t("23:00:00") / 1000)
    return WebApp(config, store, clock), store, WriteBatch(records=rows, cdrs=cdrs, log=log), keys


async def run(args):
    web, store, batch, keys = build(args.records, args.gateways)
    await store.open()
    await store.write(batch)
    http = StubTreq(web.resource())
    one = f"{keys[3]}/b1/3"
    pages = [
        ("report, all gateways, 100 rows", f"/report?from={F.DAY}&to={F.DAY}"),
        ("report, all gateways, 1000 rows", f"/report?from={F.DAY}&to={F.DAY}&limit=1000"),
        ("report, number search, sorted by cli", f"/report?from={F.DAY}&to={F.DAY}&number=02079461&sort=cli"),
        ("summary by caller", f"/summary?group=caller&from={F.DAY}&to={F.DAY}"),
        ("summary by hour", f"/summary?group=hour&from={F.DAY}&to={F.DAY}"),
        ("billing CDRs, 100 rows + totals per CUI", f"/cdrs?from={F.DAY}&to={F.DAY}"),
        ("call page", f"/call?id={one}"),
        (f"dashboard, {args.gateways} gateways, 24 h", "/"),
        (f"dashboard, {args.gateways} gateways, 30 d, sorted by calls", "/?range=30d&sort=calls&order=desc"),
        ("gateways index", "/gateways"),
        ("404 page", "/nowhere"),
    ]
    print(f"{args.records} records, {args.gateways} gateways, memory store, {args.repeat} runs each")
    # the template's share: views.html timed on its own
    spent = []
    html = views.html

    def timed(template, **context):
        t0 = time.perf_counter()
        try:
            return html(template, **context)
        finally:
            spent.append((time.perf_counter() - t0) * 1000)

    views.html = timed
    print(f"{'page':55} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'tmpl p50':>8} {'KiB':>6}")
    for name, path in pages:
        times = []
        size = 0
        spent.clear()
        for _ in range(args.repeat + 1):
            t0 = time.perf_counter()
            r = await http.get("http://127.0.0.1" + path)
            body = await r.content()
            times.append((time.perf_counter() - t0) * 1000)
            size = len(body)
            assert r.code in (200, 404), (path, r.code, body[:200])
        times = sorted(times[1:])  # the first warms the template cache
        p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
        tmpl = statistics.median(spent[1:])
        print(f"{name:55} {statistics.median(times):8.1f} {p95:8.1f} {times[-1]:8.1f} {tmpl:8.1f} {size / 1024:6.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--gateways", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    task.react(lambda reactor: __import__("twisted.internet.defer", fromlist=["x"]).ensureDeferred(run(args)))


if __name__ == "__main__":
    main()
