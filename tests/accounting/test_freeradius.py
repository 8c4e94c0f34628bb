"""
Integration: cdrd's accounting against a real FreeRADIUS started here, its
detail file read back.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from cdrd.accounting.service import AccountingService
from cdrd.config import RadiusConfig, RadiusServer
from tests.accounting import examples
from tests.accounting.freeradius import FreeRadius
from tests.accounting.outbox import OutboxStore, Writer

pytestmark = pytest.mark.integration

SECRET = "s3cret-cdrd"


@pytest.fixture
def radius(tmp_path):
    server = FreeRadius(tmp_path / "radius", secret=SECRET)
    server.start()
    yield server
    server.stop()


def config(*servers, **kw):
    return RadiusConfig(
        servers=tuple(RadiusServer("127.0.0.1", s.port, SECRET) for s in servers),
        nas_ip="192.0.2.10",
        **kw,
    )


def service(cfg, store=None):
    store = store or OutboxStore()
    svc = AccountingService(cfg, store, Writer(store), reactor, reactor)
    return svc, store


async def until(predicate, timeout=20.0, step=0.05):
    for _ in range(int(timeout / step)):
        if predicate():
            return True
        await task.deferLater(reactor, step, lambda: None)
    return predicate()


def spool(svc, store, outputs):
    now = int(reactor.seconds() * 1000)
    store.spooled("radius", svc.spool(outputs, now), created=now)
    svc.committed(outputs)


def by_status(records, status):
    return [r for r in records if r.get("Acct-Status-Type") == [status]]


@pytest_twisted.ensureDeferred
async def test_legs_and_cdrs_arrive_as_specified(radius):
    svc, store = service(config(radius))
    svc.startService()
    try:
        outputs = examples.e1() + examples.e4()
        spool(svc, store, outputs)
        assert await until(lambda: not store.items), store.items
    finally:
        await svc.stopService()
    recs = radius.wait_records(lambda r: len(r) >= 9)
    starts, stops = by_status(recs, "Start"), by_status(recs, "Stop")
    assert len(starts) == 5 and len(stops) == 5, recs
    assert not by_status(recs, "Interim-Update")

    e1_in = next(r for r in starts if r["Acct-Session-Id"] == ['8200_000C2A020082/b1/75/0'])
    assert e1_in["NAS-Identifier"] == ["8200_000C2A020082"]
    assert e1_in["NAS-IP-Address"] == ["192.0.2.10"]
    assert e1_in["NAS-Port"] == ["1"] and e1_in["NAS-Port-Id"] == ["fxs/1"]
    assert e1_in["User-Name"] == ["442079460201"]
    assert e1_in["Chargeable-User-Identity"] == ["0x" + b"442079460201".hex()]
    assert e1_in["Calling-Station-Id"] == ["442079460201"]
    assert e1_in["Called-Station-Id"] == ["2252"]
    assert e1_in["Acct-Multi-Session-Id"] == ["8200_000C2A020082/b1/75"]
    assert e1_in["cdrd-Leg-Direction"] == ["inbound"]
    assert e1_in["cdrd-Call-Ref"] == ["75"]
    assert e1_in["Event-Timestamp"][0].startswith("Nov 22 2026 10:00:00")
    assert int(e1_in["Acct-Delay-Time"][0]) >= 0
    assert "cdrd-CDR" not in e1_in

    # the only packets with CDRs: the Stop of each call's last leg
    with_cdrs = [r for r in recs if "cdrd-CDR" in r]
    assert [r["Acct-Session-Id"] for r in with_cdrs] == [
        ["8200_000C2A020082/b1/75/0"], ["8200_000C2A020082/b1/78/0"]
    ]
    e1_stop, e4_stop = with_cdrs
    assert e1_stop["cdrd-CDR"] == [
        "2026-11-22T10:00:07.250Z,4.250,120.000,442079460201,2252,442079460201"
    ]
    assert e1_stop["Acct-Session-Time"] == ["120"]
    assert e1_stop["Acct-Terminate-Cause"] == ["User-Request"]
    assert e4_stop["cdrd-CDR"] == [
        "2026-11-22T10:20:18.000Z,15.900,300.000,442079460201,202,442079460201",
        "2026-11-22T10:20:18.000Z,5.000,300.000,ACCT-202,07700900123,442079460201",
    ]
    assert len(e4_stop["cdrd-CDR-Id"]) == 2
    replaced = next(r for r in stops if r["Acct-Session-Id"] == ["8200_000C2A020082/b1/78/1"])
    assert replaced["Acct-Terminate-Cause"] == ["Port-Unneeded"]
    assert replaced["Acct-Session-Time"] == ["0"]
    st = svc.status()
    assert st["spool_depth"] == 0 and st["servers"][0]["rtt_ms"] is not None


@pytest_twisted.ensureDeferred
async def test_largest_possible_stop_is_accepted(radius):
    svc, store = service(config(radius))
    leg, stop = examples.largest_stop()
    from cdrd.values import LegStart

    outputs = [LegStart(leg, stop.answered), stop]
    svc.startService()
    try:
        spool(svc, store, outputs)
        assert await until(lambda: not store.items)
    finally:
        await svc.stopService()
    recs = radius.wait_records(lambda r: len(r) >= 2)
    stops = by_status(recs, "Stop")
    assert len(stops) == 1
    assert stops[0]["cdrd-CDR"] == [c.line for c in stop.cdrs]
    assert "cdrd-CDR-Part" not in stops[0]
