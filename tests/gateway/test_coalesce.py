"""
Repeated gateway log entries stored as one with a count
(cdrd/gateway/coalesce.py): the BatchWriter and the memory store, driven by
a task.Clock; and the same through GatewayFactory over StringTransport.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from cdrd.gateway.coalesce import ANY, INTERVAL, WINDOW, GatewayLogCoalescer
from cdrd.interfaces import LogQuery, WriteBatch
from cdrd.store.memory import MemoryStore
from cdrd.store.writer import BatchWriter
from cdrd.values import CallEvent, LogEntry
from tests.gateway.test_protocol import LOGIN, Harness, run

NOW = 1795341600.0


class Counting(MemoryStore):
    """The memory store, keeping each batch written."""

    def __init__(self):
        super().__init__()
        self.writes: list[WriteBatch] = []
        self.fail = False

    def write(self, batch):
        if self.fail:
            return defer.fail(OSError(28, "No space left on device"))
        self.writes.append(batch)
        return super().write(batch)


class Rig:
    def __init__(self, **kw):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = Counting()
        self.writer = BatchWriter(self.store, self.clock)
        self.writer.startService()
        self.coalescer = GatewayLogCoalescer(self.writer, self.clock, **kw)

    def entry(self, event="Bad Packet", host="203.0.113.9", port=4000, gateway="???", mac="", detail="unknown verb"):
        return LogEntry(time=int(self.clock.seconds() * 1000), event=event, peer=f"{host}:{port}",
                        gateway=gateway, mac=mac, detail=detail)

    def submit(self, *entries, **batch):
        return self.coalescer.submit(WriteBatch(log=entries, **batch))

    def advance(self, seconds):
        """`seconds` pass, in steps of a second (the writer runs in between)."""
        for _ in range(int(seconds)):
            self.clock.advance(1)
        self.clock.advance(seconds - int(seconds))
        self.clock.advance(0)

    def rows(self):
        return sorted(((e.event, e.peer, e.gateway, e.count) for e in run(self.store.log(LogQuery(limit=100_000)))),
                      key=lambda r: (r[0], r[1], r[2]))

    def count_writes(self):
        return [b for b in self.store.writes if b.log_counts]


def test_a_flood_from_one_address_is_one_row_with_its_count():
    r = Rig()
    for n in range(2_597):
        r.submit(r.entry(port=4000 + n % 20_000))
        if n % 50 == 49:
            r.advance(1)  # 2 597 in 52 s: one window
    r.advance(WINDOW)
    assert r.rows() == [("Bad Packet", "203.0.113.9:4000", "???", 2_597)]
    [row] = run(r.store.log(LogQuery()))
    assert row.detail == "unknown verb" and row.time == int(NOW * 1000)
    # the counts went to the store every INTERVAL s while it lasted, not per repeat
    assert 1 <= len(r.count_writes()) <= 52 / INTERVAL + 2
    assert r.coalescer.counted == {"Bad Packet": 2_597}


def test_the_first_entry_is_written_at_once_and_the_count_within_the_interval():
    r = Rig()
    r.submit(r.entry())
    r.advance(0)
    assert r.rows() == [("Bad Packet", "203.0.113.9:4000", "???", 1)]
    r.submit(r.entry(port=4001), r.entry(port=4002))
    r.advance(0)
    assert r.rows()[0][3] == 1  # counted in memory only
    r.advance(INTERVAL)
    assert r.rows()[0][3] == 3


def test_events_gateways_and_hosts_are_counted_apart_and_other_entries_pass():
    r = Rig()
    for _ in range(3):
        r.submit(
            r.entry(),
            r.entry(event="Gateway Disconnect", detail="connection lost"),
            r.entry(event="Login Rejected", gateway="8200", mac="000C2A020082", detail="code=auth"),
            r.entry(event="Login Rejected", gateway="8201", mac="000C2A020083", detail="code=auth"),
            r.entry(host="203.0.113.10"),
            r.entry(event="Login", gateway="8202", detail="Login!"),
        )
    r.advance(WINDOW + INTERVAL)
    assert r.rows() == [
        ("Bad Packet", "203.0.113.10:4000", "???", 3),
        ("Bad Packet", "203.0.113.9:4000", "???", 3),
        ("Gateway Disconnect", "203.0.113.9:4000", "???", 3),
        ("Login", "203.0.113.9:4000", "8202", 1),
        ("Login", "203.0.113.9:4000", "8202", 1),
        ("Login", "203.0.113.9:4000", "8202", 1),
        ("Login Rejected", "203.0.113.9:4000", "8200", 3),
        ("Login Rejected", "203.0.113.9:4000", "8201", 3),
    ]
    assert r.coalescer.counted["Login"] == 3 and sum(r.coalescer.counted.values()) == 18


def test_a_new_window_is_a_new_row_and_the_old_one_keeps_its_final_count():
    r = Rig()
    r.submit(r.entry())
    r.advance(WINDOW - 1)
    r.submit(r.entry(port=4001))  # the last second of the first window
    r.advance(1)
    r.submit(r.entry(port=4002))  # the first of the next: its own row
    r.advance(INTERVAL)
    assert [(e.peer, e.count) for e in run(r.store.log(LogQuery()))] == [
        ("203.0.113.9:4002", 1), ("203.0.113.9:4000", 2)]


def test_rows_and_memory_stay_within_the_caps():
    r = Rig(max_windows=8, per_address=3)
    # one host with 20 gateway ids, and 30 hosts: 5 minutes of it
    for _ in range(5):
        for n in range(20):
            r.submit(r.entry(event="Login Rejected", gateway=str(8200 + n), detail="code=auth"))
        for h in range(30):
            r.submit(r.entry(host=f"198.51.100.{h}"))
        assert r.coalescer.tracked <= 8 + 3  # and the catch-alls of each event
        r.advance(WINDOW)
    r.advance(INTERVAL)
    rows = r.rows()
    assert sum(n for *_, n in rows) == 5 * 50
    # per window: at most max_windows + 3 (the catch-alls of each event) rows
    assert len(rows) <= 5 * (8 + 3)
    per_host = [p for _, p, _, _ in rows if p.startswith("203.0.113.9:")]
    assert len(per_host) <= 5 * (3 + 3)
    assert ("Login Rejected", "203.0.113.9:4000", ANY, 17) in rows  # gateways over the host's share
    assert any(p == ANY for _, p, _, _ in rows)  # hosts over the table's size


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["Bad Packet", "Gateway Disconnect", "Login Rejected", "Login", "Sequence Gap"]),
    st.integers(0, 5),  # host
    st.sampled_from(["???", "8200", "8201"]),
    st.sampled_from([0, 0, 0, 0.5, 3, 17, 61]),  # seconds before it
), max_size=120))
def test_nothing_counted_is_lost_and_rows_stay_bounded(entries):
    r = Rig(max_windows=4, per_address=2)
    for event, host, gateway, wait in entries:
        if wait:
            r.advance(wait)
        r.submit(r.entry(event=event, host=f"127.0.0.{host + 1}", gateway=gateway))
    r.coalescer.close()
    r.advance(0)
    stored = run(r.store.log(LogQuery(limit=1000)))
    assert sum(e.count for e in stored) == len(entries)
    minutes = 1 + sum(w for *_, w in entries) // WINDOW
    assert len([e for e in stored if e.count and e.event in ("Bad Packet", "Gateway Disconnect", "Login Rejected")]) \
        <= minutes * (4 + 3) + sum(1 for *_, w in entries if w)  # a window may end at each pause


def test_close_writes_every_count_and_lets_later_entries_through():
    r = Rig()
    for n in range(10):
        r.submit(r.entry(port=5000 + n))
    r.advance(0)
    assert r.rows()[0][3] == 1
    r.coalescer.close()
    r.advance(0)
    assert r.rows() == [("Bad Packet", "203.0.113.9:5000", "???", 10)]
    r.submit(r.entry(port=6000), r.entry(port=6001))
    r.advance(0)
    assert len(r.rows()) == 3
    assert r.clock.getDelayedCalls() == []


def test_a_count_the_store_refused_is_written_again():
    r = Rig()
    r.submit(r.entry())
    r.advance(0)
    r.submit(r.entry(port=4001))
    r.store.fail = True
    r.advance(INTERVAL)
    r.store.fail = False
    r.advance(INTERVAL)
    assert r.rows()[0][3] == 2


def test_a_batch_left_empty_fires_after_the_batches_before_it():
    r = Rig()
    order = []
    event = CallEvent(gateway="8200_000C2A020082", seq=1, ref=1, type="HOOK_OFF", time=1, received=1, boot="b")
    r.submit(r.entry()).addCallback(lambda _: order.append("first"))
    r.advance(0)
    events = r.submit(events=[event])
    events.addCallback(lambda _: order.append("events"))
    empty = r.submit(r.entry(port=4001))  # a repeat only: nothing to write
    empty.addCallback(lambda _: order.append("empty"))
    assert order == ["first"]
    r.advance(0)
    assert order == ["first", "events", "empty"]
    # with nothing before it in flight, at once
    r.submit(r.entry(port=4002)).addCallback(lambda _: order.append("at once"))
    assert order[-1] == "at once"


# -- through the gateway factory ----------------------------------------------


def test_garbage_connections_add_a_bounded_number_of_rows_and_gateways_still_ack():
    h = Harness()
    gw = h.login()
    h.replies(gw)
    before = len(h.log())
    for n in range(1_000):
        proto = h.connect()
        proto.dataReceived(b"GARBAGE\n")
        proto.connectionLost(None)  # StringTransport does not call it
        if n % 100 == 0:
            h.send(gw, f"EV seq={n // 100 + 1} ref=1 type=HOOK_OFF port=1")
            assert [m.verb for m in h.replies(gw)] == ["ACK"]
    h.settle()
    h.clock.advance(INTERVAL)
    h.settle()
    added = [e for e in h.log()[: len(h.log()) - before]]
    assert [(e.event, e.count) for e in added] == [("Bad Packet", 1_000)]
    assert h.factory.flood.total == 1_000
    assert h.factory.coalescer.counted["Bad Packet"] == 1_000


def test_shutdown_stores_the_counts_held():
    h = Harness()
    for _ in range(5):
        h.connect().dataReceived(b"GARBAGE\n")
    h.settle()
    h.factory.shutdown()
    h.settle()
    assert [(e.event, e.count) for e in h.log()] == [("Bad Packet", 5)]


def test_a_rejected_gateway_retrying_is_one_row():
    h = Harness(secret="s3cret")
    for _ in range(7):
        h.login(LOGIN + " auth=" + "0" * 64)
    h.clock.advance(INTERVAL)
    h.settle()
    [entry] = h.log()
    assert (entry.event, entry.gateway, entry.count) == ("Login Rejected", "8200", 7)


def test_an_ack_behind_a_coalesced_bad_packet_waits_for_the_events_before_it():
    from tests.gateway.test_writer import ScriptedStore

    store = ScriptedStore()
    h = Harness(store=store)
    gw = h.login()
    h.replies(gw)
    gw.dataReceived(b"BOGUS\n")  # the window's first Bad Packet: written
    h.settle()
    h.replies(gw)
    store.hold = True
    gw.dataReceived(b"EV seq=1 ref=1 type=HOOK_OFF port=1\n")
    h.settle()
    gw.dataReceived(b"BOGUS\nEV seq=1 ref=1 type=HOOK_OFF port=1\n")  # a repeat and a duplicate: nothing to write
    h.settle()
    assert [m.verb for m in h.replies(gw)] == ["ERR"]  # no ACK while seq 1 is not stored
    while store.held:
        store.held.pop(0).callback(None)
        h.settle()
    assert [(m.verb, m.fields["seq"]) for m in h.replies(gw)] == [("ACK", "1"), ("ACK", "1")]
