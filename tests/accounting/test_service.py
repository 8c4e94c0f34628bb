"""Unit: the durable spool (outbox in, verified answers out), interims, restart."""

from __future__ import annotations

import errno
import json
import random

from attrs import evolve
from zope.interface.verify import verifyObject

from cdrd.accounting.packets import load_dictionary
from cdrd.accounting.service import AccountingService
from cdrd.config import RadiusConfig, RadiusServer
from cdrd.interfaces import ICdrSink
from cdrd.values import LegStart
from tests.accounting import examples
from tests.accounting.fakes import FakeReactor, answer, decode
from tests.outbox import OutboxStore, Writer

D = load_dictionary(32473)
SECRET = "sekrit"


def make(store=None, interim=600, reactor=None, **kw):
    reactor = reactor or FakeReactor()
    if reactor.seconds() == 0:
        reactor.advance(examples.t("10:00:00.000") / 1000)
    store = store or OutboxStore()
    cfg = RadiusConfig(
        servers=(RadiusServer("127.0.0.1", 1813, SECRET),),
        interim_interval=interim,
        nas_ip="192.0.2.10",
        **kw,
    )
    svc = AccountingService(
        cfg, store, Writer(store), reactor, reactor, rng=random.Random(2)
    )
    return svc, store, reactor


def commit(svc, store, outputs, now):
    store.spooled("radius", svc.spool(outputs, now), created=now)
    svc.committed(outputs)


def answer_all(reactor, svc, port=None):
    port = port or reactor.ports[-1]
    n = 0
    for raw, _ in list(port.written):
        ident = raw[1]
        if raw[0] == 4 and ident in svc.client.servers[0].inflight:
            req = svc.client.servers[0].inflight[ident]
            if req.raw == raw:
                answer(port, raw, SECRET.encode(), D)
                n += 1
    return n


def crash(reactor):
    """kill -9: nothing of the old process runs any more."""
    for call in list(reactor.getDelayedCalls()):
        call.cancel()
    for port in reactor.ports:
        port.open = False


def interims(reactor):
    """The distinct Interim-Updates sent (retransmissions counted once)."""
    seen = {}
    for p in sent(reactor):
        if p["Acct-Status-Type"] == ["Interim-Update"]:
            seen.setdefault((p["Acct-Session-Id"][0], p["Acct-Session-Time"][0]), p)
    return list(seen.values())


def sent(reactor, port=None):
    port = port or reactor.ports[-1]
    return [decode(raw, D) for raw, _ in port.written]


def test_is_an_icdrsink():
    svc, _, _ = make()
    assert verifyObject(ICdrSink, svc) and svc.name == "radius"


def test_spool_is_pure_json_payloads():
    svc, _, _ = make()
    outputs = examples.e1()
    a, b = svc.spool(outputs, 0), svc.spool(outputs, 0)
    assert a == b and len(a) == 6
    assert [json.loads(p)["s"] for p in a] == [
        "Start",
        "Start",
        "",
        "",
        "Stop",
        "Stop",
    ]


def test_spool_uses_gateway_address():
    """The call model puts the gateway's address on the leg (tests/calls)."""
    svc, store, r = make()
    svc.startService()
    start = examples.e1()[0]
    start = evolve(start, leg=evolve(start.leg, peer="198.51.100.7:40000"))
    payload = svc.spool([start], 0)[0]
    assert ["cdrd-Gateway-Address", "198.51.100.7:40000"] in json.loads(payload)["a"]


def test_sent_after_commit_deleted_only_after_verified_answer():
    svc, store, r = make(interim=0)
    svc.startService()
    outputs = examples.e4()
    commit(svc, store, outputs, r.seconds() * 1000)
    assert len(store.items) == 6  # 6 requests (the inbound Start has its number)
    pkts = sent(r)
    assert [p["Acct-Status-Type"][0] for p in pkts] == [
        "Start",
        "Start",
        "Stop",
        "Start",
        "Stop",
        "Stop",
    ]
    port = r.ports[0]
    answer(port, port.written[0][0], b"wrong", D)
    r.advance(0)
    assert len(store.items) == 6
    assert answer_all(r, svc) == 6
    r.advance(0)  # deletions are batched per reactor turn
    assert not store.items
    deletions = [w for w in store.writes if w.outbox_done]
    assert len(deletions) == 1 and len(deletions[0].outbox_done) == 6
    st = svc.status()
    assert st["spool_depth"] == 0 and st["sent"] == st["answered"] == 6
    json.dumps(st)


def test_restart_resends_what_was_not_answered():
    svc, store, r = make(interim=0)
    svc.startService()
    commit(svc, store, examples.e1(), r.seconds() * 1000)
    port = r.ports[0]
    answer(port, port.written[0][0], SECRET.encode(), D)  # only the first Start
    r.advance(0)
    assert len(store.items) == 3  # 3 requests
    crash(r)  # no stopService; a new process reads the same store
    r.advance(300)
    svc2, _, _ = make(store=store, interim=0, reactor=r)
    svc2.startService()
    pkts = sent(r)
    assert len(pkts) == 3
    kinds = [(p["Acct-Status-Type"][0], p["Acct-Session-Id"][0][-1]) for p in pkts]
    assert kinds == [("Start", "1"), ("Stop", "0"), ("Stop", "1")]
    # whole seconds from the event (ms) to this transmission, 10:05:00.000
    now = int(r.seconds() * 1000)
    events = [
        examples.t("10:00:02.500"),
        examples.t("10:02:07.250"),
        examples.t("10:02:07.250"),
    ]
    assert [p["Acct-Delay-Time"][0] for p in pkts] == [
        (now - e) // 1000 for e in events
    ]
    assert [p["Acct-Delay-Time"][0] for p in pkts] == [297, 172, 172]
    assert pkts[-1]["cdrd-CDR"] == [examples.cdr_stop(examples.e1()).cdrs[0].line]
    answer_all(r, svc2)
    r.advance(0)
    assert not store.items


def test_interim_updates_while_answered_until_stop():
    svc, store, r = make(interim=60)
    svc.startService()
    outputs = examples.e1()
    now = examples.t("10:00:07.250")
    commit(svc, store, outputs[:4], now)  # starts and answers
    answer_all(r, svc)
    r.advance(0)
    assert len(store.items) == 2  # the open-leg markers stay
    assert svc.status()["open_legs"] == 2 and svc.status()["spool_depth"] == 0
    r.pump(
        [1] * 70
    )  # answered at 10:00:07.250 (clock 10:00:00): first interim at +60 s
    got = interims(r)
    assert len(got) == 2
    assert all(p["Acct-Session-Time"] == [60] for p in got)
    # stored before sent
    assert any(
        w.outbox and b'"Interim-Update"' in w.outbox[0].payload for w in store.writes
    )
    answer_all(r, svc)
    r.pump([1] * 60)
    got = interims(r)
    assert len(got) == 4 and got[-1]["Acct-Session-Time"] == [120]
    answer_all(r, svc)
    commit(svc, store, outputs[4:], r.seconds() * 1000)
    answer_all(r, svc)
    r.advance(0)
    assert not store.items  # markers deleted with the answered Stops
    assert svc.status()["open_legs"] == 0
    r.advance(600)
    assert len(interims(r)) == 4


def test_open_legs_survive_a_restart():
    svc, store, r = make(interim=60)
    svc.startService()
    commit(svc, store, examples.e1()[:4], examples.t("10:00:07.250"))
    answer_all(r, svc)
    r.advance(0)
    crash(r)  # restart 100 s later
    r.advance(100)
    svc2, _, _ = make(store=store, interim=60, reactor=r)
    svc2.startService()
    assert svc2.status()["open_legs"] == 2
    r.pump([1] * 30)  # next interim due at answer + 120 s
    got = interims(r)
    assert len(got) == 2 and got[0]["Acct-Session-Time"] == [120]


def test_interim_after_stop_is_dropped():
    svc, store, r = make(interim=60)
    svc.startService()
    outputs = examples.e1()
    commit(svc, store, outputs[:4], examples.t("10:00:07.250"))
    answer_all(r, svc)
    # an interim stored after the Stop was committed (a race) is never sent
    commit(svc, store, outputs[4:], r.seconds() * 1000)
    from cdrd.accounting import packets
    from cdrd.interfaces import OutboxItem, WriteBatch

    marker = next(m for m in svc._open.values())[1]
    late = packets.interim(marker, r.seconds() * 1000)
    store.write(WriteBatch(outbox=[OutboxItem("radius", late.to_bytes(), 0)]))
    svc._pump()
    answer_all(r, svc)
    r.advance(0)
    assert not interims(r)
    assert not store.items


def test_status_reports_depth_age_and_servers():
    svc, store, r = make(interim=0)
    svc.startService()
    commit(svc, store, examples.e1()[:2], r.seconds() * 1000)
    r.advance(7)
    st = svc.status()
    assert st["spool_depth"] == 2
    assert st["oldest_age"] == 7.0
    assert st["retransmissions"] >= 2
    assert st["servers"][0]["address"] == "127.0.0.1:1813"
    assert "secret" not in json.dumps(st) and SECRET not in json.dumps(st)


def test_disabled_without_servers():
    r = FakeReactor()
    store = OutboxStore()
    svc = AccountingService(RadiusConfig(), store, Writer(store), r, r)
    svc.startService()
    assert svc.spool(examples.e1(), 0) == [] and not r.ports
    assert svc.status()["enabled"] is False


def test_stop_service_waits_briefly_and_flushes():
    svc, store, r = make(interim=0)
    svc.startService()
    commit(svc, store, examples.e1()[:1], r.seconds() * 1000)
    answer_all(r, svc)
    d = svc.stopService()
    r.advance(0)
    r.pump([0.1] * 30)
    assert d.called and not store.items


def test_send_errors_at_commit_are_retransmitted():
    """The outbox reader has moved past the items when sendto fails
    (ENETUNREACH): the client's retransmission still delivers them."""
    from tests.accounting.test_client import FailingWrites

    svc, store, r = make(interim=0)
    svc.startService()
    net = FailingWrites(r.ports[0], errno.ENETUNREACH)
    commit(svc, store, examples.e4(), r.seconds() * 1000)
    assert not r.ports[0].written and svc.status()["in_flight"] == 6
    net.down = False
    for _ in range(10):
        r.advance(1)
        answer_all(r, svc)
    r.advance(0)
    assert not store.items
    st = svc.status()
    assert st["in_flight"] == 0 and st["servers"][0]["send_errors"] == 6


def test_oversized_stop_stored_by_an_older_cdrd_is_split_when_sent():
    """An older cdrd estimated sizes and stored Stops FreeRADIUS drops (one
    5 kB CDR in one packet, a 300-byte CLI in one attribute): they are sent
    as the numbered Stops spool() makes now, and deleted once all are
    answered."""
    from cdrd.accounting.packets import Payload, spool
    from tests.accounting.test_packets import reassemble_records

    svc, store, r = make(interim=0)
    svc.startService()
    stop = examples.e1()[5]
    line = "x" * 5000
    cont = [
        ("cdrd-CDR-Continued", "1:" + line[i : i + 245]) for i in range(247, 5000, 245)
    ]
    attrs = [
        a
        for a in spool([stop], 0, "192.0.2.10", False)[0].attributes
        if not a[0].startswith("cdrd-CDR")
    ]
    attrs = [(n, "3" * 300 if n == "Calling-Station-Id" else v) for n, v in attrs]
    old = Payload(
        "req",
        stop.leg.id,
        "Stop",
        stop.time,
        tuple(attrs + [("cdrd-CDR-Id", "f" * 32), ("cdrd-CDR", line[:247]), *cont]),
    )
    assert len(old.to_bytes()) > 5000
    store.spooled("radius", [old.to_bytes()], created=0)
    svc._pump()
    pkts = sent(r)
    assert len(pkts) == 2 and all(len(raw) <= 4096 for raw, _ in r.ports[0].written)
    assert reassemble_records(pkts) == ([line], ["f" * 32])
    assert pkts[0]["Calling-Station-Id"] == ["3" * 253]
    deleted_once_every_part_is_answered(svc, store, r, 2)


def deleted_once_every_part_is_answered(svc, store, r, parts):
    """The one item of a Stop sent in `parts` packets stays until all are answered."""
    answer(r.ports[0], r.ports[0].written[0][0], SECRET.encode(), D)
    r.advance(0)
    assert len(store.items) == 1  # not before every part is answered
    answer_all(r, svc)
    r.advance(0)
    assert not store.items
    assert svc.status()["sent"] == svc.status()["answered"] == parts


def test_facts_from_the_ingest_path_send_the_same_packets():
    """The CallService stores spool_facts (ILazyCdrSink): the service sends
    exactly the packets of the requests spool() builds, in the same order."""
    from cdrd.interfaces import ILazyCdrSink

    outputs = examples.all_examples()
    wire = []
    for lazy in (False, True):
        svc, store, r = make(interim=600)
        assert ILazyCdrSink.providedBy(svc)
        svc.startService()
        now = int(r.seconds() * 1000)
        spooled = svc.spool_facts(outputs, now) if lazy else svc.spool(outputs, now)
        store.spooled("radius", spooled, created=now)
        svc.committed(outputs)
        answer_all(r, svc)
        r.advance(0)
        assert not store.items  # every call of the examples ends
        wire.append([{k: v for k, v in p.items() if k != "Acct-Delay-Time"} for p in sent(r)])
    assert wire[0] == wire[1] and len(wire[0]) > 20


def test_a_stop_of_facts_over_one_packet_is_deleted_once_every_part_is_answered():
    from cdrd.values import Cdr, Leg, LegStop

    svc, store, r = make(interim=0)
    svc.startService()
    leg = Leg("c/0", "c", "g", 1, "inbound", port=1, cui="a", cli="b")
    cdrs = tuple(Cdr(f"{n:032x}", "c", "g", 0, 1000, 5000, "", "a", "7" * 60, "b") for n in range(40))
    store.spooled("radius", svc.spool_facts([LegStop(leg, 5000, 1000, "", cdrs)], 0), created=0)
    assert len(store.items) == 1
    svc._pump()
    pkts = sent(r)
    assert len(pkts) > 1 and [p["cdrd-CDR-Part"][0] for p in pkts][-1] == f"{len(pkts)}/{len(pkts)}"
    assert [line for p in pkts for line in p["cdrd-CDR"]] == [c.line for c in cdrs]
    deleted_once_every_part_is_answered(svc, store, r, len(pkts))


def test_an_item_that_cannot_be_encoded_stays_and_the_rest_is_sent():
    """A Stop whose Event-Timestamp is past 2106 (a gateway's clock): the
    ingest path stores its facts without building it; the sender logs the
    item, leaves it in the outbox and sends the items after it."""
    from twisted.logger import LogLevel, capturedLogs

    from cdrd.values import Leg, LegStart, LegStop

    svc, store, r = make(interim=0)
    svc.startService()
    leg = Leg("c/0", "c", "g", 1, "inbound", port=1, cli="b")
    far = 253_402_300_799_999  # 9999-12-31, the model's last time
    # built when read (an inbound Stop keeps room for a number), and encoded
    out = evolve(leg, id="c/2", direction="outbound", dialled="2252")
    for o in (LegStop(leg, far, None, ""), LegStop(out, far, None, ""), LegStart(evolve(leg, id="c/1"), 0)):
        store.spooled("radius", svc.spool_facts([o], 0), created=0)
    with capturedLogs() as logs:
        svc._pump()
    assert [p["Acct-Session-Id"] for p in sent(r)] == [["c/1"]]
    assert [e["id"] for e in logs if e.get("log_level") == LogLevel.error] == [1, 2]
    answer_all(r, svc)
    r.advance(0)
    assert sorted(store.items) == [1, 2]


def called(pkts, leg_suffix, status):
    return [
        p.get("Called-Station-Id")
        for p in pkts
        if p["Acct-Session-Id"][0].endswith(leg_suffix)
        and p["Acct-Status-Type"] == [status]
    ]


def test_inbound_leg_carries_the_first_dialled_number_once_known():
    """E1 as an older cdrd's model made it: the phone's leg started at
    HOOK_OFF, before the DIAL: its Start has no Called-Station-Id, its
    Interim-Updates and Stop carry 2252 (the number it dialled first, from
    the dial note), also after a restart; the note goes with the answered
    Stop."""
    svc, store, r = make(interim=60)
    svc.startService()
    outputs = examples.before_issue_13(examples.e1())
    commit(svc, store, outputs[:4], examples.t("10:00:07.250"))
    answer_all(r, svc)
    r.advance(0)
    crash(r)  # restart before the first interim
    svc, _, _ = make(store=store, interim=60, reactor=r)
    svc.startService()
    r.pump([1] * 70)
    answer_all(r, svc)
    commit(svc, store, outputs[4:], r.seconds() * 1000)
    answer_all(r, svc)
    r.advance(0)
    pkts = [decode(raw, D) for port in r.ports for raw, _ in port.written]
    assert called(pkts, "/75/0", "Start") == [None]
    assert called(pkts, "/75/0", "Interim-Update") == [["2252"]]
    assert called(pkts, "/75/0", "Stop") == [["2252"]]
    assert called(pkts, "/75/1", "Stop") == [["2252"]]  # its own, from its Start
    assert not store.items
    r.advance(1)  # the outbox statistics, refreshed after deletions
    assert svc.status()["spool_depth"] == 0


def test_inbound_start_carries_the_first_dialled_number():
    """E1 and E3: the caller's Start waits for its first DIAL, so a row
    written from the Start alone has the number; every packet of the leg
    carries the same one, and no dial note is spooled."""
    svc, store, r = make(interim=60)
    svc.startService()
    for products, leg in ((examples.e1(), "/75/0"), (examples.e3(), "/77/0")):
        assert not [p for p in svc.spool(products, 0) if b'"k":"dial"' in p]
        commit(svc, store, products, r.seconds() * 1000)
        answer_all(r, svc)
        for status in ("Start", "Stop"):
            assert called(sent(r), leg, status) == [["2252"]]
    starts = [o for o in examples.e1() if isinstance(o, LegStart)]
    # Event-Timestamp is still when the leg was created (HOOK_OFF)
    assert starts[0].time == examples.t("10:00:00.000")


def test_pstn_caller_gets_the_number_call_in_has_its_own():
    svc, store, r = make(interim=0)
    svc.startService()
    commit(svc, store, examples.e3(), r.seconds() * 1000)
    answer_all(r, svc)
    assert called(sent(r), "/77/0", "Stop") == [["2252"]]
    call_in = examples.outputs(
        "81 10:50:00.000 CALL_IN cli=02071234567 to=201 port=1\n"
        "81 10:50:05.000 HOOK_ON port=1"
    )
    payloads = svc.spool(call_in, 0)
    assert not [p for p in payloads if b'"k":"dial"' in p]  # its Start has it
    commit(svc, store, call_in, r.seconds() * 1000)
    assert called(sent(r), "/81/0", "Start") == [["201"]]


def test_oldest_age_is_time_since_the_oldest_unanswered_request_was_stored():
    """One definition: seconds since the oldest request not yet answered
    was stored in the outbox.  Not its event's age (Acct-Delay-Time says
    that), and open-leg markers and dial notes, however old, are no
    requests."""
    svc, store, r = make(interim=600)
    svc.startService()
    outputs = examples.e1()
    commit(svc, store, outputs[:4], examples.t("10:00:00.000"))  # starts, answers
    answer_all(r, svc)
    r.advance(500)  # the legs are up for 500 s: their markers are that old
    st = svc.status()
    assert len(store.items) == 2 and st["open_legs"] == 2
    assert st["spool_depth"] == 0 and st["oldest_age"] == 0.0
    # the Stops of a call that ended minutes ago (its events' time), stored
    # now, unanswered for 7 s
    assert outputs[4].time < r.seconds() * 1000 - 300_000
    commit(svc, store, outputs[4:], int(r.seconds() * 1000))
    r.advance(7)
    st = svc.status()
    assert st["spool_depth"] == 2 and st["oldest_age"] == 7.0


def test_outbox_is_read_in_pages_not_per_answer():
    """2000 requests in the outbox: a handful of reads (pages of up to
    512), none per answer once the outbox has been read to its end."""
    from cdrd.accounting.packets import Payload

    svc, store, r = make(interim=0)
    reads = []
    outbox = store.outbox
    store.outbox = lambda sink, after, limit: (
        reads.append(limit) or outbox(sink, after, limit)
    )
    p = Payload.from_bytes(svc.spool(examples.e1()[:1], 0)[0])
    store.spooled(
        "radius",
        [
            Payload("req", f"leg{i}", p.status, p.event, p.attributes).to_bytes()
            for i in range(2000)
        ],
        created=0,
    )
    svc.startService()
    for _ in range(100):
        if not store.items:
            break
        answer_all(r, svc)
        r.advance(0)
    assert not store.items
    assert len(reads) <= 6, reads
