"""
Integration: cdrd's accounting against a real FreeRADIUS started here, its
detail file read back.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from cdrd.accounting.packets import Payload
from cdrd.accounting.service import AccountingService
from cdrd.config import RadiusConfig, RadiusServer
from tests.accounting import examples
from tests.accounting.freeradius import FreeRadius, distinct, duplicates
from tests.outbox import OutboxStore, Writer

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
    """What the CallService does; the requests spooled."""
    now = int(reactor.seconds() * 1000)
    payloads = svc.spool(outputs, now)
    store.spooled("radius", payloads, created=now)
    svc.committed(outputs)
    return [p for p in map(Payload.from_bytes, payloads) if p.kind == "req"]


def by_status(records, status):
    return [r for r in records if r.get("Acct-Status-Type") == [status]]


def _part(attributes):
    return next((v for n, v in attributes if n == "cdrd-CDR-Part"), None)


def assert_delivered(records, requests, retransmissions):
    """Exactly the requests spooled, each once; a record more only where a
    retransmission of cdrd's also reached FreeRADIUS.  The number of
    duplicates."""
    from collections import Counter

    got = Counter((k[0], k[1], k[3]) for k in distinct(records))
    want = Counter((p.leg, p.status, _part(p.attributes)) for p in requests)
    assert got == want
    return duplicates(records, retransmissions)


@pytest_twisted.ensureDeferred
async def test_legs_and_cdrs_arrive_as_specified(radius):
    svc, store = service(config(radius))
    svc.startService()
    try:
        outputs = examples.e1() + examples.e4()
        sent = spool(svc, store, outputs)
        assert await until(lambda: not store.items), store.items
    finally:
        await svc.stopService()
    recs = radius.wait_records(lambda r: len(r) >= 10)
    assert len(sent) == 10
    assert assert_delivered(recs, sent, svc.status()["retransmissions"]) == 0
    starts, stops = by_status(recs, "Start"), by_status(recs, "Stop")
    assert len(starts) == 5 and len(stops) == 5, recs
    assert not by_status(recs, "Interim-Update")

    e1_in = next(
        r for r in starts if r["Acct-Session-Id"] == ["8200_000C2A020082/b1/75/0"]
    )
    assert e1_in["NAS-Identifier"] == ["8200_000C2A020082"]
    assert e1_in["NAS-IP-Address"] == ["192.0.2.10"]
    assert e1_in["NAS-Port"] == ["1"] and e1_in["NAS-Port-Id"] == ["fxs/1"]
    assert e1_in["User-Name"] == ["442079460201"]
    assert e1_in["Chargeable-User-Identity"] == ["0x" + b"442079460201".hex()]
    assert e1_in["Calling-Station-Id"] == ["442079460201"]
    # its Start waited for the DIAL: a row written from it alone is complete
    assert e1_in["Called-Station-Id"] == ["2252"]
    e1_in_stop = next(
        r for r in stops if r["Acct-Session-Id"] == [e1_in["Acct-Session-Id"][0]]
    )
    assert e1_in_stop["Called-Station-Id"] == ["2252"]  # the first number it dialled
    assert e1_in["Acct-Multi-Session-Id"] == ["8200_000C2A020082/b1/75"]
    assert e1_in["cdrd-Leg-Direction"] == ["inbound"]
    assert e1_in["cdrd-Call-Ref"] == ["75"]
    assert e1_in["Event-Timestamp"][0].startswith("Nov 22 2026 10:00:00")
    assert int(e1_in["Acct-Delay-Time"][0]) >= 0
    assert "cdrd-CDR" not in e1_in

    # the only packets with CDRs: the Stop of each call's last leg (two
    # calls' requests are in flight together: FreeRADIUS's threads may
    # write them to the detail file in either order)
    with_cdrs = sorted((r for r in recs if "cdrd-CDR" in r), key=lambda r: r["Acct-Session-Id"])
    assert [r["Acct-Session-Id"] for r in with_cdrs] == [
        ["8200_000C2A020082/b1/75/1"],
        ["8200_000C2A020082/b1/78/2"],
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
    replaced = next(
        r for r in stops if r["Acct-Session-Id"] == ["8200_000C2A020082/b1/78/1"]
    )
    assert replaced["Acct-Terminate-Cause"] == ["Port-Unneeded"]
    assert replaced["Acct-Session-Time"] == ["0"]
    st = svc.status()
    assert st["spool_depth"] == 0 and st["servers"][0]["rtt_ms"] is not None


@pytest_twisted.ensureDeferred
async def test_largest_possible_stop_is_accepted(radius):
    from attrs import evolve

    from cdrd.accounting import packets
    from cdrd.values import LegStart

    svc, store = service(config(radius))
    leg, stop = examples.largest_stop()
    leg = evolve(leg, peer="[2001:db8:1234:5678:9abc:def0:1234:5678]:65535")
    stop = evolve(stop, leg=leg)
    outputs = [LegStart(leg, stop.answered), stop]
    (payload,) = [packets.Payload.from_bytes(p) for p in svc.spool([stop], 0)]
    assert packets.packet_size(svc.dictionary, payload.attributes) == 3542
    assert len(payload.attributes) + 1 == 38
    svc.startService()
    try:
        sent = spool(svc, store, outputs)
        assert await until(lambda: not store.items)
    finally:
        await svc.stopService()
    recs = radius.wait_records(lambda r: len(r) >= 2)
    assert assert_delivered(recs, sent, svc.status()["retransmissions"]) == 0
    stops = by_status(recs, "Stop")
    assert len(stops) == 1
    assert stops[0]["cdrd-CDR"] == [c.line for c in stop.cdrs]
    assert "cdrd-CDR-Part" not in stops[0]


@pytest_twisted.ensureDeferred
async def test_failover_to_second_server_and_back(tmp_path):
    first = FreeRadius(tmp_path / "first", secret=SECRET)  # down at first
    second = FreeRadius(tmp_path / "second", secret=SECRET)
    second.start()
    svc, store = service(
        config(
            first,
            second,
            initial_timeout=0.2,
            max_timeout=1.0,
            failover_after=2,
            interim_interval=0,
        )
    )
    svc.client.probe_interval = 0.5
    svc.startService()
    try:
        e1 = spool(svc, store, examples.e1())
        assert await until(lambda: not store.items, timeout=15)
        assert svc.client.active == 1
        assert svc.status()["servers"][0]["state"] == "down"
        retransmissions = svc.status()["retransmissions"]
        assert retransmissions >= 2
        got = second.wait_records(lambda r: len(distinct(r)) >= 4)
        assert_delivered(got, e1, retransmissions)
        assert {r["Acct-Session-Id"][0] for r in got} == examples.legs(examples.e1())
        assert not first.records()

        first.start()  # the first answers Status-Server again: back to it
        assert await until(lambda: svc.client.active == 0, timeout=15)
        e4 = spool(svc, store, examples.e4())
        assert await until(lambda: not store.items, timeout=15)
        more = svc.status()["retransmissions"] - retransmissions
        got = first.wait_records(lambda r: len(distinct(r)) >= 6)
        assert_delivered(got, e4, more)
        assert {r["Acct-Session-Id"][0] for r in got} == examples.legs(examples.e4())
        assert second.records() == second.wait_records(lambda r: False, timeout=0.3)
        assert_delivered(second.records(), e1, retransmissions)
    finally:
        await svc.stopService()
        first.stop()
        second.stop()


def test_server_down_kill_9_restart_then_server_up(tmp_path):
    """Nothing lost: cdrd's spool (over a real SQLite store) spools with the
    server down, is killed -9 while retransmitting, restarts; then the
    server comes up and gets every leg's Start and Stop and every CDR, with
    Acct-Delay-Time."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from cdrd.values import LegStop
    from tests.accounting.freeradius import DICTIONARIES

    radius = FreeRadius(tmp_path / "radius", secret=SECRET)  # not started yet
    db = tmp_path / "cdrd.sqlite"
    root = DICTIONARIES.parent
    cmd = [
        sys.executable,
        "-m",
        "tests.accounting.spool_process",
        str(db),
        str(radius.port),
        SECRET,
    ]

    def outbox_depth():
        with sqlite3.connect(db) as c:
            tables = [
                r[0]
                for r in c.execute("select name from sqlite_master where type='table'")
            ]
            table = next(t for t in tables if "outbox" in t)
            return c.execute(f"select count(*) from {table}").fetchone()[0]

    proc = subprocess.Popen(cmd + ["--spool"], cwd=root, stdout=subprocess.PIPE)
    procs = [proc]
    try:
        assert proc.stdout.readline() == b"spooled\n"
        time.sleep(2.5)  # retransmitting into the void
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed_at = time.time()
        assert outbox_depth() == 10  # nothing answered, nothing lost
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL)
        procs.append(proc)
        time.sleep(1.0)
        radius.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and outbox_depth():
            time.sleep(0.1)
        assert outbox_depth() == 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
        radius.stop()
    recs = radius.records()
    outputs = examples.e1() + examples.e4()
    keys = {(k[0], k[1]) for k in distinct(recs)}
    assert keys == {
        (leg, kind) for leg in examples.legs(outputs) for kind in ("Start", "Stop")
    }
    assert len(distinct(recs)) == 10
    # the retransmissions of a killed process cannot be counted: at most one
    # resend per request reached the server, and only as a true resend
    duplicates(recs, retransmissions=10)
    got = {k[0]: r["cdrd-CDR"] for k, r in distinct(recs).items() if "cdrd-CDR" in r}
    want = {
        o.leg.id: [c.line for c in o.cdrs]
        for o in outputs
        if isinstance(o, LegStop) and o.cdrs
    }
    assert got == want and sum(map(len, got.values())) == 3
    # Acct-Delay-Time counts from the event (hours before the test ran)
    first_start = next(
        r
        for r in by_status(recs, "Start")
        if r["Acct-Session-Id"] == ["8200_000C2A020082/b1/75/0"]
    )
    event = examples.t("10:00:00.000") // 1000
    assert int(first_start["Acct-Delay-Time"][0]) >= int(killed_at) - event - 1


@pytest_twisted.ensureDeferred
async def test_oversized_cdrs_arrive_whole_and_own_vendor_number(tmp_path):
    """Lines over one attribute and CDR sets over one packet (beyond
    call-records.md's limits) still arrive whole; and an operator's own
    vendor number, set in cdrd's config and on FreeRADIUS's VENDOR line."""
    from cdrd.values import Cdr, Leg, LegStart, LegStop
    from tests.accounting.test_packets import reassemble_records

    radius = FreeRadius(tmp_path / "radius", secret=SECRET, vendor=99999)
    radius.start()
    svc, store = service(config(radius, vendor=99999, interim_interval=0))
    leg = Leg("g/b/9/0", "g/b/9", examples.GW, 9, "inbound", port=1, cui="c", cli="1")
    cdrs = tuple(
        Cdr(
            f"{n:032x}",
            "g/b/9",
            examples.GW,
            0,
            0,
            1000,
            "",
            f'"quoted, {n}" ' + "x" * (150 + n),
            "2252",
            "1" * 64,
        )
        for n in range(20)
    )
    assert all(len(c.line.encode()) > 247 for c in cdrs)
    outputs = [LegStart(leg, 0), LegStop(leg, 5000, 1000, "", cdrs)]
    svc.startService()
    try:
        sent = spool(svc, store, outputs)
        assert await until(lambda: not store.items)
    finally:
        await svc.stopService()
        recs = radius.wait_records(lambda r: len(r) >= len(sent))
        radius.stop()
    assert assert_delivered(recs, sent, svc.status()["retransmissions"]) == 0
    stops = by_status(recs, "Stop")
    assert len(stops) >= 2
    assert reassemble_records(stops) == ([c.line for c in cdrs], [c.id for c in cdrs])
    assert all(r["Acct-Session-Id"] == ["g/b/9/0"] for r in stops)


@pytest_twisted.ensureDeferred
async def test_interim_updates_reach_freeradius(radius):
    # the parser allows no interval under 60 s; the service itself takes 1 s
    svc, store = service(config(radius, interim_interval=1))
    from cdrd.values import Leg, LegAnswer, LegStart, LegStop

    now = int(reactor.seconds() * 1000)
    leg = Leg("g/b/7/0", "g/b/7", examples.GW, 7, "inbound", port=1, cui="c", cli="1")
    svc.startService()
    try:
        spool(svc, store, [LegStart(leg, now - 500), LegAnswer(leg, now)])
        assert await until(
            lambda: len(by_status(radius.records(), "Interim-Update")) >= 2, timeout=10
        )
        spool(svc, store, [LegStop(leg, now + 2500, now, "")])
        assert await until(lambda: not store.items)
    finally:
        await svc.stopService()
    recs = radius.records()
    duplicates(recs, svc.status()["retransmissions"])
    recs = list(distinct(recs).values())
    kinds = [r["Acct-Status-Type"][0] for r in recs]
    # one Interim-Update a second from the answer until the Stop is
    # committed (2 s, or 3 s on a slow machine), each once
    interims = by_status(recs, "Interim-Update")
    assert kinds == ["Start"] + ["Interim-Update"] * len(interims) + ["Stop"]
    assert [r["Acct-Session-Time"] for r in interims] in (
        [["1"], ["2"]],
        [["1"], ["2"], ["3"]],
    )
    assert by_status(recs, "Stop")[0]["Acct-Session-Time"] == ["2"]


@pytest_twisted.ensureDeferred
async def test_worked_examples_through_the_call_model(radius):
    """E1-E5 through the real call model (cdrd.calls.model): every leg's
    Start and Stop, and each call's CDRs, exactly call-records.md's lines,
    in the Stop of its last leg only."""
    from cdrd.values import LegStop

    outputs = examples.all_examples()
    legs = examples.legs(outputs)
    cdr_lines = examples.cdr_lines(outputs)
    assert len(cdr_lines) == 6 and len(legs) == 13  # E1 2, E2 2, E3 2, E4 3, E5 2 + 2

    svc, store = service(config(radius, interim_interval=0))
    svc.startService()
    try:
        sent = spool(svc, store, outputs)
        assert await until(lambda: not store.items)
    finally:
        await svc.stopService()
    recs = radius.wait_records(lambda r: len(r) >= 2 * len(legs))
    assert len(sent) == 2 * len(legs)
    assert assert_delivered(recs, sent, svc.status()["retransmissions"]) == 0
    assert len(recs) == 2 * len(legs)
    # CDRs only in the Stop of each call's last leg, in written order
    last_stops = {}
    for o in outputs:
        if isinstance(o, LegStop) and o.cdrs:
            last_stops[o.leg.id] = [c.line for c in o.cdrs]
    got = {r["Acct-Session-Id"][0]: r["cdrd-CDR"] for r in recs if "cdrd-CDR" in r}
    assert got == last_stops
    # billing grouping CDRs by Acct-Multi-Session-Id books each to its call
    # (E5: call 79's CDRs ride on 80/1, a leg the transfer moved into 79)
    from cdrd.values import CallEnd

    by_call = {}
    for r in recs:
        by_call.setdefault(r["Acct-Multi-Session-Id"][0], []).extend(
            r.get("cdrd-CDR", [])
        )
    assert {k: v for k, v in by_call.items() if v} == {
        o.record.id: [c.line for c in o.cdrs]
        for o in outputs
        if isinstance(o, CallEnd) and o.cdrs
    }
    assert got["8200_000C2A020082/b1/80/1"] == by_call["8200_000C2A020082/b1/79"]
    # (FreeRADIUS's threads may write the calls' Stops in any order)
    assert sorted(line for lines in got.values() for line in lines) == sorted(cdr_lines)
    assert got["8200_000C2A020082/b1/75/1"] == [
        "2026-11-22T10:00:07.250Z,4.250,120.000,442079460201,2252,442079460201"
    ]
    assert got["8200_000C2A020082/b1/77/1"] == [
        "2026-11-22T10:10:00.000Z,18.000,-cancelled,CARRIER-ACME,2252,02071234567"
    ]
    # E3's inbound leg: a carrier line with a CUI
    e3_in = next(
        r
        for r in by_status(recs, "Start")
        if r["Acct-Session-Id"] == ["8200_000C2A020082/b1/77/0"]
    )
    assert e3_in["User-Name"] == ["CARRIER-ACME"]
    assert e3_in["NAS-Port-Id"] == ["fxo/1"]
    assert e3_in["Calling-Station-Id"] == ["02071234567"]
    # every inbound leg's Stop carries the number its caller dialled first
    called = {
        r["Acct-Session-Id"][0].split("/", 2)[2]: r.get("Called-Station-Id")
        for r in by_status(recs, "Stop")
        if r["cdrd-Leg-Direction"] == ["inbound"]
    }
    assert called == {
        "75/0": ["2252"],
        "76/0": ["2253"],
        "77/0": ["2252"],
        "78/0": ["202"],
        "79/0": ["202"],
        "80/0": ["07700900999"],
    }
    # E2 busy, E4 divert, E5 transfer: the Stops' causes
    causes = {
        r["Acct-Session-Id"][0]: r["Acct-Terminate-Cause"][0]
        for r in by_status(recs, "Stop")
    }
    assert causes["8200_000C2A020082/b1/76/1"] == "Service-Unavailable"
    assert causes["8200_000C2A020082/b1/78/1"] == "Port-Unneeded"
    assert causes["8200_000C2A020082/b1/80/0"] == "Port-Unneeded"
    assert causes["8200_000C2A020082/b1/75/0"] == "User-Request"


def _send_raw(radius, raw, timeout=1.0):
    """One datagram to FreeRADIUS; its answer's code, or None if dropped."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(raw, ("127.0.0.1", radius.port))
        try:
            return s.recv(4096)[0]
        except TimeoutError:
            return None


def test_freeradius_limits_are_4096_bytes_and_200_attributes(radius):
    """The limits packets.py keeps to, measured on the real server: a request
    of exactly 4096 bytes and one of exactly 200 attributes (Acct-Delay-Time
    included) are answered and written; one byte or one attribute more and
    FreeRADIUS drops it without a word."""
    from cdrd.accounting import packets
    from cdrd.accounting.packets import Payload, encode_request, load_dictionary

    d = load_dictionary(32473)

    def stop(session, fill):
        attrs = [
            ("Acct-Status-Type", "Stop"),
            ("Acct-Session-Id", session),
            ("NAS-Identifier", examples.GW),
            *fill,
        ]
        return Payload("req", session, "Stop", 0, tuple(attrs))

    def raw(payload, ident):
        return encode_request(d, payload, SECRET.encode(), ident, 0)[1]

    def by_bytes(session, size):
        fill, left = [], size - packets.packet_size(d, stop(session, []).attributes)
        while left:
            n = min(left, 255)  # one vendor attribute: 8 + "1:" + 1..245 bytes
            if 0 < left - n < 11:
                n = left - 11  # leave enough for one more
            fill.append(("cdrd-CDR-Continued", "1:" + "x" * (n - 10)))
            left -= n
        p = stop(session, fill)
        assert packets.packet_size(d, p.attributes) == size
        return p

    def by_count(session, count):
        p = stop(session, [("cdrd-CDR-Continued", "1:x")] * (count - 4))
        assert len(p.attributes) + 1 == count
        return p

    cases = [
        (by_bytes("bytes-4096", 4096), 5),
        (by_bytes("bytes-4097", 4097), None),
        (by_count("attrs-200", 200), 5),
        (by_count("attrs-201", 201), None),
    ]
    for ident, (payload, want) in enumerate(cases):
        data = raw(payload, ident)
        assert _send_raw(radius, data) == want, (payload.leg, len(data))
    assert len(raw(cases[0][0], 9)) == packets.MAX_PACKET == 4096
    assert packets.MAX_ATTRIBUTES == 200
    got = radius.wait_records(lambda r: len(r) >= 2)
    assert sorted(r["Acct-Session-Id"][0] for r in got) == ["attrs-200", "bytes-4096"]
    assert len(got[0]["cdrd-CDR-Continued"]) + len(got[1]["cdrd-CDR-Continued"]) > 196


@pytest_twisted.ensureDeferred
async def test_a_5kB_cdr_and_a_call_over_4kB_arrive_whole(radius):
    """Beyond call-records.md's bounds (a gateway's long dialled number, a
    long transfer chain): a 5 kB CDR, and a call whose CDRs total over 4 kB,
    arrive whole in the detail file as numbered Stops, none dropped."""
    from attrs import evolve

    from cdrd.values import Cdr, Leg, LegStart, LegStop
    from tests.accounting.test_packets import reassemble_records

    svc, store = service(config(radius, interim_interval=0))
    leg1 = Leg("g/b/1/1", "g/b/1", examples.GW, 1, "outbound", cui="c", cli="1")
    big = Cdr(
        "a" * 32,
        "g/b/1",
        examples.GW,
        0,
        0,
        1000,
        "",
        "c",
        "0123456789" * 500,
        "442079460201",
    )
    leg2 = Leg("g/b/2/1", "g/b/2", examples.GW, 2, "outbound", cui="c", cli="1")
    chain = tuple(
        evolve(big, id=f"{n:032x}", call="g/b/2", dialled=f"{n}" + "7" * 300)
        for n in range(12)
    )
    assert len(big.line) > 5000 and sum(len(c.line) for c in chain) > 4096
    outputs = [
        LegStart(leg1, 0),
        LegStop(leg1, 5000, 1000, "", (big,)),
        LegStart(leg2, 0),
        LegStop(leg2, 5000, 1000, "", chain),
    ]
    svc.startService()
    try:
        spool(svc, store, outputs)
        assert await until(lambda: not store.items)
    finally:
        await svc.stopService()
    recs = radius.wait_records(lambda r: len(r) >= 6)
    for leg, cdrs in ((leg1, (big,)), (leg2, chain)):
        stops = [r for r in by_status(recs, "Stop") if r["Acct-Session-Id"] == [leg.id]]
        assert len(stops) > 1
        assert reassemble_records(stops) == (
            [c.line for c in cdrs],
            [c.id for c in cdrs],
        )
    assert svc.status()["retransmissions"] == 0  # none dropped, none retried
