"""
Unit: alerts in the log are one line when a state begins and one when it
clears, never one per retry (task.Clock, fake UDP ports, MemoryStore).
"""

from __future__ import annotations

from contextlib import contextmanager

from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher

from cdrd.gateway.flood import BadPacketFlood
from cdrd.interfaces import OutboxItem, WriteBatch
from cdrd.monitor import Monitor
from cdrd.store.memory import MemoryStore
from cdrd.store.writer import BatchWriter
from tests.accounting.fakes import answer
from tests.accounting.test_client import SECRET, D, make_client, payloads


@contextmanager
def alerts():
    """(alert, state, text) of every alert line logged meanwhile."""
    lines: list[tuple[str, str, str]] = []

    def observe(event):
        if "alert" in event:
            lines.append((event["alert"], event["state"], formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


# -- RADIUS ------------------------------------------------------------------------


def test_the_only_radius_server_going_silent_is_one_line_and_its_return_one_more():
    c, r = make_client(n=1, failover_after=3)
    with alerts() as lines:
        c.send(payloads(event=0)[0])
        for _ in range(12):  # many retransmissions: still one line
            r.advance(20)
        assert [(a, s) for a, s, _ in lines] == [("radius_server_down", "begins")]
        assert "127.0.0.1:1813 not answering after 3 timeouts; no other server" in lines[0][2]
        port = r.ports[0]
        answer(port, port.written[-1][0], SECRET.encode(), D)
    assert [(a, s) for a, s, _ in lines] == [("radius_server_down", "begins"), ("radius_server_down", "clears")]
    assert lines[1][2] == "RADIUS server 127.0.0.1:1813 answers again"


def test_failover_and_return_are_one_line_each():
    c, r = make_client(n=2, failover_after=2)
    with alerts() as lines:
        c.send(payloads(event=0)[0])
        r.advance(2.3)
        r.advance(4.5)  # fail over to the second server
        first, second = r.ports
        answer(second, second.written[0][0], SECRET.encode(), D)
        r.advance(10)  # a Status-Server probe to the first
        probe = [w for w in first.written if w[0][0] == 12][0]
        answer(first, probe[0], SECRET.encode(), D)
    assert [(a, s) for a, s, _ in lines] == [("radius_failover", "begins"), ("radius_failover", "clears")]
    assert "using 127.0.0.1:1814" in lines[0][2]
    assert "returning to it" in lines[1][2]


def test_radius_requests_are_counted_by_type_for_the_metrics():
    c, r = make_client(n=1)
    c.send(payloads(event=0)[0])
    r.advance(2.3)  # one retransmission
    (server,) = c.servers
    assert server.by_status == {"Start": 2}


# -- the store -------------------------------------------------------------------


class Refusing(MemoryStore):
    def __init__(self):
        super().__init__()
        self.down = False

    def write(self, batch):
        if self.down:
            import sqlite3

            return defer.fail(sqlite3.OperationalError("disk I/O error"))
        return super().write(batch)


def test_the_store_refusing_writes_is_one_line_until_it_takes_them_again():
    clock = task.Clock()
    store = Refusing()
    store.open()
    writer = BatchWriter(store, clock)
    writer.startService()
    with alerts() as lines:
        store.down = True
        for _ in range(5):
            writer.submit(WriteBatch()).addErrback(lambda f: None)
            clock.advance(0)
        assert writer.refusing == "OperationalError: disk I/O error"
        store.down = False
        writer.submit(WriteBatch())
        clock.advance(0)
    assert writer.refusing is None
    assert [(a, s) for a, s, _ in lines] == [("store_refusing_writes", "begins"), ("store_refusing_writes", "clears")]
    assert lines[0][2].startswith("the store refuses writes: OperationalError: disk I/O error")


# -- a bad-packet flood ----------------------------------------------------------


def test_a_flood_from_one_address_begins_once_and_clears_once():
    clock = task.Clock()
    flood = BadPacketFlood(clock, threshold=10, window=60)
    with alerts() as lines:
        for _ in range(9):
            flood.record("192.0.2.7")
        flood.record("192.0.2.8")
        assert lines == []
        for _ in range(200):  # goes on into the next windows: no more lines
            flood.record("192.0.2.7")
            clock.advance(0.5)
        assert [(a, s) for a, s, _ in lines] == [("bad_packet_flood", "begins")]
        assert lines[0][2] == "bad packet flood from 192.0.2.7: 10 bad packets within 60 s"
        assert flood.flooding == ["192.0.2.7"]
        clock.advance(61)
        flood.sweep()  # one window with fewer: still counted as flooding until the next ends
        clock.advance(61)
        flood.sweep()
    assert [(a, s) for a, s, _ in lines] == [("bad_packet_flood", "begins"), ("bad_packet_flood", "clears")]
    assert lines[1][2] == "bad packet flood from 192.0.2.7 is over: 209 bad packets in all"
    assert flood.flooding == [] and flood.total == 210


def test_the_flood_tracks_a_bounded_number_of_addresses():
    clock = task.Clock()
    flood = BadPacketFlood(clock, threshold=2, window=60, max_addresses=3)
    for i in range(10):
        flood.record(f"192.0.2.{i}")
    assert len(flood._addresses) == 3 and flood.total == 10
    clock.advance(60)
    flood.record("198.51.100.1")  # old windows make room
    assert "198.51.100.1" in flood._addresses and len(flood._addresses) <= 3


# -- outbox age and the syslog target ---------------------------------------------


def test_an_old_outbox_is_one_line_until_it_is_delivered():
    clock = task.Clock()
    clock.advance(1_000_000)
    store = MemoryStore()
    store.open()
    store.write(WriteBatch(outbox=[OutboxItem(sink="syslog", payload=b"x", created=1_000_000_000)]))
    monitor = Monitor(store, clock, outbox_alert_age=300, outboxes={"syslog": None}, interval=10)
    with alerts() as lines:
        monitor.startService()
        assert monitor.outboxes["syslog"]() == (1, 0.0)
        for _ in range(29):
            clock.advance(10)
        assert lines == []
        for _ in range(10):
            clock.advance(10)  # older than 300 s, checked again and again
        assert [(a, s) for a, s, _ in lines] == [("outbox_late", "begins")]
        assert "output syslog: the oldest of 1 items waiting has waited 310 s" in lines[0][2]
        (item,) = store.outbox("syslog", 0, 10).result
        store.write(WriteBatch(outbox_done=[("syslog", item.id)]))
        clock.advance(10)
    monitor.stopService()
    assert [(a, s) for a, s, _ in lines] == [("outbox_late", "begins"), ("outbox_late", "clears")]
    assert monitor.outboxes["syslog"]() == (0, 0.0)


def test_the_syslog_target_down_is_one_line_and_up_one_more():
    clock = task.Clock()
    status = {"target": "tcp:192.0.2.9:6514", "connected": True, "last_error": ""}
    monitor = Monitor(MemoryStore(), clock, 300, {}, syslog=lambda: dict(status), interval=10)
    with alerts() as lines:
        monitor.startService()
        status.update(connected=False, last_error="Connection refused")
        clock.advance(10)
        assert lines == []  # once: perhaps a reconnect
        for _ in range(10):
            clock.advance(10)
        assert [(a, s) for a, s, _ in lines] == [("syslog_target_down", "begins")]
        assert lines[0][2] == ("syslog target tcp:192.0.2.9:6514 is down: Connection refused;"
                               " CDR lines wait in the outbox")
        status.update(connected=True, last_error="")
        clock.advance(10)
    monitor.stopService()
    assert [(a, s) for a, s, _ in lines] == [("syslog_target_down", "begins"), ("syslog_target_down", "clears")]
