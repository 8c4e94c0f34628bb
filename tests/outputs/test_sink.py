"""Unit: SyslogSink over the outbox with a fake datagram target and a TCP
target on a MemoryReactorClock (StringTransport connections)."""

from __future__ import annotations

import json
import re

from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from cdrd.config import SyslogConfig
from cdrd.interfaces import ICdrSink
from cdrd.outputs.messages import CdrEntry
from cdrd.outputs.syslog import SyslogSink
from cdrd.outputs.transports import MessageTooLong, TcpTarget
from tests.outbox import OutboxStore, Writer
from tests.outputs.cdrs import E1_LINE, E4_LINES, e1, e4, numbered


class FakeDatagramTarget:
    """A datagram target whose kernel takes a message or refuses it."""

    streaming = False

    def __init__(self, description="udp:127.0.0.1:514"):
        self.description = description
        self.sent: list[bytes] = []
        self.refuse = False
        self.started = False
        self.last_error = ""
        self.too_long = 10_000

    @property
    def ready(self):
        return self.started

    connected = ready

    def start(self, listener):
        self.started = True
        listener.target_ready()

    def stop(self):
        from twisted.internet import defer

        self.started = False
        return defer.succeed(None)

    def send(self, data):
        if len(data) > self.too_long:
            raise MessageTooLong(len(data))
        if self.refuse:
            self.last_error = "Resource temporarily unavailable"
            return self.last_error
        self.sent.append(data)
        return None


def make(target=None, store=None, reactor=None, **config):
    reactor = reactor or MemoryReactorClock()
    store = store if store is not None else OutboxStore()
    cfg = SyslogConfig(target="udp:127.0.0.1:514", hostname="pbx1", **config)
    target = target or FakeDatagramTarget()
    sink = SyslogSink(cfg, store, Writer(store), reactor, reactor, target=target)
    return sink, store, target, reactor


def commit(sink, store, outputs, now=0):
    store.spooled("syslog", sink.spool(outputs, now), created=now)
    sink.committed(outputs)


def lines(datagrams):
    """The MSG of RFC 5424 messages: the CDR lines."""
    out = []
    for d in datagrams:
        m = re.fullmatch(rb"<134>1 \S+ pbx1 cdrd - [0-9a-f]{32} (?:-|\[cdr@32473 [^]]*\]) (.*)", d, re.S)
        assert m, d
        out.append(m.group(1).decode())
    return out


def cuis(datagrams):
    return [line.split(",")[3] for line in lines(datagrams)]


def settle(reactor, seconds=0.0, steps=50):
    for _ in range(steps):
        reactor.advance(seconds / steps if seconds else 0)


def test_is_an_icdrsink_named_syslog():
    sink, *_ = make()
    assert verifyObject(ICdrSink, sink)
    assert sink.name == "syslog"


def test_spool_is_pure_one_payload_per_cdr():
    sink, *_ = make()
    outputs = [e1(), e4()]
    first = sink.spool(outputs, 123)
    assert first == sink.spool(outputs, 456)
    assert [CdrEntry.from_bytes(p).line for p in first] == [E1_LINE, *E4_LINES]


def test_committed_cdrs_go_out_in_order_and_leave_the_outbox():
    sink, store, target, reactor = make()
    sink.startService()
    commit(sink, store, [e1()])
    commit(sink, store, [e4()])
    assert lines(target.sent) == [E1_LINE, *E4_LINES]
    settle(reactor)
    assert store.payloads() == []
    assert sink.status()["sent"] == 3 and sink.status()["queued"] == 0


def test_message_carries_msgid_time_and_facility():
    sink, store, target, reactor = make(facility="local3")
    sink.startService()
    commit(sink, store, [e1()])
    (msg,) = target.sent
    ident = e1().cdrs[0].id
    sd = f'[cdr@32473 call="{e1().cdrs[0].call}"]'
    assert msg == f"<158>1 2026-11-22T10:02:07.250Z pbx1 cdrd - {ident} {sd} {E1_LINE}".encode()


def test_rfc3164_format():
    sink, store, target, reactor = make(format="rfc3164", app_name="billing")
    sink.startService()
    commit(sink, store, [e1()])
    ident = e1().cdrs[0].id
    assert target.sent == [f"<134>Nov 22 10:02:07 pbx1 billing[{ident}]: {E1_LINE}".encode()]


def test_start_resumes_from_the_outbox():
    store = OutboxStore()
    first, *_ = make(store=store)
    store.spooled("syslog", first.spool(numbered(0, 10), 0))
    sink, store, target, reactor = make(store=store)
    assert sink.status()["queued"] == 0
    sink.startService()
    assert cuis(target.sent) == [f"N{i}" for i in range(10)]
    settle(reactor)
    assert store.payloads() == []


def test_refused_sends_wait_and_retry_with_backoff_in_order():
    sink, store, target, reactor = make()
    sink.startService()
    target.refuse = True
    commit(sink, store, numbered(0, 5))
    assert target.sent == []
    settle(reactor)
    assert len(store.payloads()) == 5
    delays = []
    for _ in range(6):
        (call,) = [c for c in reactor.getDelayedCalls()
                   if c.active() and getattr(c.func, "__name__", "") == "_woken"]
        delays.append(round(call.getTime() - reactor.seconds(), 3))
        reactor.advance(delays[-1])
    assert delays == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16]
    assert sink.status()["last_error"] == "Resource temporarily unavailable"
    target.refuse = False
    commit(sink, store, numbered(5, 2))
    reactor.advance(5)
    settle(reactor)
    assert cuis(target.sent) == [f"N{i}" for i in range(7)]
    assert store.payloads() == []


def test_a_burst_is_sent_a_turn_at_a_time():
    sink, store, target, reactor = make()
    sink.startService()
    commit(sink, store, numbered(0, 600, per_call=8))
    assert len(target.sent) == sink.turn
    settle(reactor)
    assert len(target.sent) == sink.turn  # datagrams are paced
    reactor.advance(sink.datagram_pause)
    assert len(target.sent) == 2 * sink.turn
    settle(reactor, 1.0)
    assert cuis(target.sent) == [f"N{i}" for i in range(600)]
    assert store.payloads() == []
    assert store.reads >= 1


def test_full_buffer_drops_the_oldest_counts_and_logs():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        sink, store, target, reactor = make(buffer=5)
        sink.startService()
        target.refuse = True
        commit(sink, store, numbered(0, 12))
        settle(reactor)
        commit(sink, store, numbered(12, 3))
        settle(reactor)
    finally:
        globalLogPublisher.removeObserver(events.append)
    left = [CdrEntry.from_bytes(p).line.split(",")[3] for p in store.payloads()]
    assert left == ["N10", "N11", "N12", "N13", "N14"]
    status = sink.status()
    assert status["dropped"] == 10
    assert status["queued"] == 5
    warnings = [e for e in events if "buffer of {buffer} CDRs is full" in e.get("log_format", "")]
    assert warnings and warnings[0]["buffer"] == 5
    assert json.loads(json.dumps(status)) == status
    target.refuse = False
    reactor.advance(10)
    settle(reactor)
    assert cuis(target.sent) == ["N10", "N11", "N12", "N13", "N14"]
    assert store.payloads() == []


def test_unreadable_and_too_long_items_are_dropped_not_stuck():
    sink, store, target, reactor = make()
    target.too_long = 300
    store.spooled("syslog", [b"garbage"])
    long = CdrEntry(id="ab" * 16, time=0, line="x" * 400)
    store.spooled("syslog", [long.to_bytes()])
    store.spooled("syslog", sink.spool([e1()], 0))
    sink.startService()
    settle(reactor)
    assert lines(target.sent) == [E1_LINE]
    assert sink.status()["dropped"] == 2
    assert store.payloads() == []


def test_stop_submits_the_last_deletions():
    sink, store, target, reactor = make()
    sink.startService()
    commit(sink, store, [e1()])
    d = sink.stopService()
    assert self_fired(d)
    assert store.payloads() == []


def self_fired(d):
    result = []
    d.addBoth(result.append)
    return result == [None]


# -- TCP ----------------------------------------------------------------------------


class TcpTransport(StringTransport):
    """A StringTransport that half-closes and aborts as a TCP transport does."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()


def tcp(framing="octet-counting", **kw):
    reactor = MemoryReactorClock()
    target = TcpTarget("127.0.0.1", 6514, reactor, reactor, jitter=lambda: 0)
    sink, store, _, _ = make(target=target, reactor=reactor, framing=framing, **kw)
    return sink, store, target, reactor


def connect(reactor):
    host, port, factory, *_ = reactor.tcpClients[-1]
    assert (host, port) == ("127.0.0.1", 6514)
    protocol = factory.buildProtocol(None)
    transport = TcpTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def collector_closes(protocol, transport):
    """The collector read to our FIN and closed its end."""
    assert transport.write_closed
    protocol.connectionLost(Failure(ConnectionDone()))


def frames(data: bytes) -> list[bytes]:
    """Parse RFC 6587 octet-counted frames; all of `data` must be frames."""
    out = []
    while data:
        length, _, rest = data.partition(b" ")
        n = int(length)
        out.append(rest[:n])
        data = rest[n:]
    return out


def test_tcp_octet_counting_and_confirmation_by_the_collectors_close():
    sink, store, target, reactor = tcp()
    sink.startService()
    commit(sink, store, [e1(), e4()])
    assert sink.status()["connected"] is False
    protocol, transport = connect(reactor)
    assert sink.status()["connected"] is True
    assert lines(frames(transport.value())) == [E1_LINE, *E4_LINES]
    settle(reactor)
    assert len(store.payloads()) == 3  # written, not yet confirmed
    assert sink.status()["in_flight"] == 3
    reactor.advance(sink.confirm_after)
    assert transport.write_closed and not target.ready  # asks for the proof
    settle(reactor, 1.0)
    assert len(store.payloads()) == 3  # the peer's TCP ACK is no proof
    collector_closes(protocol, transport)
    settle(reactor)
    assert store.payloads() == []
    assert sink.status()["in_flight"] == 0
    # a confirmation is no outage: the status does not flicker to disconnected
    assert sink.status()["connected"] is True
    # and the next connection is made at once, for the next lines
    assert len(reactor.tcpClients) == 2
    protocol, transport = connect(reactor)
    commit(sink, store, numbered(0, 2))
    assert cuis(frames(transport.value())) == ["N0", "N1"]
    assert sink.status()["connections"] == 2 and sink.status()["stalled"] == ""


def test_tcp_lf_framing():
    sink, store, target, reactor = tcp(framing="lf")
    sink.startService()
    protocol, transport = connect(reactor)
    commit(sink, store, [e4()])
    assert lines(transport.value().split(b"\n")[:-1]) == E4_LINES
    assert transport.value().endswith(b"\n")


def test_tcp_a_reset_confirms_nothing():
    """The collector was killed with our lines unread in its socket: a reset."""
    sink, store, target, reactor = tcp()
    sink.startService()
    protocol, transport = connect(reactor)
    commit(sink, store, numbered(0, 3))
    reactor.advance(sink.confirm_after)
    protocol.connectionLost(Failure(ConnectionLost()))
    settle(reactor)
    assert len(store.payloads()) == 3
    reactor.advance(0.5)
    protocol, transport = connect(reactor)
    assert cuis(frames(transport.value())) == ["N0", "N1", "N2"]
    assert sink.status()["resent"] == 3


def test_tcp_a_stalled_collector_is_aborted_reported_and_backed_off():
    """It accepts, its kernel ACKs, but it never reads (SIGSTOP)."""
    sink, store, target, reactor = tcp()
    sink.startService()
    protocol, transport = connect(reactor)
    commit(sink, store, numbered(0, 3))
    reactor.advance(sink.confirm_after)
    assert transport.write_closed
    reactor.advance(target.close_timeout)
    assert transport.aborted
    protocol.connectionLost(Failure(ConnectionLost("aborted")))
    status = sink.status()
    assert "did not confirm" in status["stalled"] and status["last_error"] == status["stalled"]
    assert len(store.payloads()) == 3 and status["queued"] == 3
    # still stalled: each new connection that is not confirmed waits longer
    delays = []
    for _ in range(3):
        before = reactor.seconds()
        (call,) = [c for c in reactor.getDelayedCalls()
                   if c.active() and getattr(c.func, "__name__", "") == "_connect"]
        reactor.advance(call.getTime() - reactor.seconds())
        protocol, transport = connect(reactor)
        delays.append(round(reactor.seconds() - before, 2))
        assert cuis(frames(transport.value())) == ["N0", "N1", "N2"]
        reactor.advance(sink.confirm_after + target.close_timeout)
        protocol.connectionLost(Failure(ConnectionLost("aborted")))
    assert delays == [0.5, 1.0, 2.0]
    reactor.advance(4.0)
    protocol, transport = connect(reactor)  # the collector is back
    reactor.advance(sink.confirm_after)
    collector_closes(protocol, transport)
    settle(reactor)
    assert store.payloads() == [] and sink.status()["stalled"] == ""
    assert sink.status()["last_error"] == ""


def test_tcp_reconnects_with_backoff_and_resends_unconfirmed_first():
    sink, store, target, reactor = tcp()
    sink.startService()
    protocol, transport = connect(reactor)
    commit(sink, store, numbered(0, 4))
    reactor.advance(sink.confirm_after)
    collector_closes(protocol, transport)  # N0..N3 confirmed
    reactor.advance(0)
    protocol, transport = connect(reactor)
    commit(sink, store, numbered(4, 3))  # N4..N6 written, unconfirmed
    attempts = len(reactor.tcpClients)
    protocol.connectionLost(Failure(ConnectionLost()))
    assert sink.status()["connected"] is False
    commit(sink, store, numbered(7, 2))  # queued while down
    # retries back off: 0.5, 1, 2, 4, 8 s
    times = []
    start = reactor.seconds()
    for _ in range(100):
        due = min(c.getTime() for c in reactor.getDelayedCalls() if c.active())
        reactor.advance(due - reactor.seconds())
        if len(reactor.tcpClients) > attempts:
            attempts = len(reactor.tcpClients)
            times.append(round(reactor.seconds() - start, 2))
            if len(times) == 6:
                break
            host, port, factory, *_ = reactor.tcpClients[-1]
            factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    delays = [round(b - a, 3) for a, b in zip([0.0, *times[:-1]], times, strict=True)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    protocol, transport = connect(reactor)
    assert cuis(frames(transport.value())) == [f"N{i}" for i in range(4, 9)]
    reactor.advance(sink.confirm_after)
    collector_closes(protocol, transport)
    settle(reactor)
    assert store.payloads() == []
    assert sink.status()["resent"] == 3


def test_tcp_backpressure_pauses_the_sink_and_a_long_pause_is_a_stall():
    sink, store, target, reactor = tcp()
    sink.startService()
    protocol, transport = connect(reactor)
    producer = transport.producer
    assert producer is not None and transport.streaming
    producer.pauseProducing()
    commit(sink, store, numbered(0, 5))
    assert transport.value() == b""
    assert sink.status()["stalled"] == ""
    reactor.advance(target.close_timeout)
    assert len(store.payloads()) == 5
    assert "has not read for 5 s" in sink.status()["stalled"]
    producer.resumeProducing()
    assert sink.status()["stalled"] == ""
    assert cuis(frames(transport.value())) == [f"N{i}" for i in range(5)]


def test_tcp_a_connection_carries_at_most_max_unconfirmed():
    sink, store, target, reactor = tcp()
    sink.window = 4
    sink.max_unconfirmed = 10
    sink.startService()
    commit(sink, store, numbered(0, 25))
    sent = []
    for expect in (10, 10, 5):
        protocol, transport = connect(reactor)
        settle(reactor)
        got = frames(transport.value())
        assert len(got) == expect
        sent += got
        if expect == 10:
            assert transport.write_closed  # full: confirmed at once, not after 0.5 s
        else:
            assert not transport.write_closed
            reactor.advance(sink.confirm_after)
        collector_closes(protocol, transport)
        settle(reactor)
    assert cuis(sent) == [f"N{i}" for i in range(25)]
    assert store.payloads() == []


def test_tcp_stop_waits_for_the_collectors_confirmation():
    sink, store, target, reactor = tcp()
    sink.startService()
    protocol, transport = connect(reactor)
    commit(sink, store, numbered(0, 3))
    d = sink.stopService()
    assert transport.write_closed and not self_fired(d)
    collector_closes(protocol, transport)
    assert self_fired(d)
    assert store.payloads() == []
    assert len(reactor.tcpClients) == 1  # no new connection once stopped


def test_tcp_stop_is_bounded_when_the_collector_is_stalled():
    sink, store, target, reactor = tcp()
    sink.startService()
    protocol, transport = connect(reactor)
    transport.producer.pauseProducing()  # the collector reads nothing
    commit(sink, store, numbered(0, 3))
    transport.producer.resumeProducing()
    d = sink.stopService()
    reactor.advance(target.stop_timeout - 0.1)
    assert not self_fired(d) and not transport.aborted
    reactor.advance(0.1)
    assert transport.aborted
    protocol.connectionLost(Failure(ConnectionLost("aborted")))
    assert self_fired(d)
    assert len(store.payloads()) == 3  # unconfirmed: sent at the next start


def test_tcp_stop_while_connecting_cancels_the_attempt():
    sink, store, target, reactor = tcp()
    sink.startService()
    d = sink.stopService()
    assert self_fired(d)
    reactor.advance(60)
    assert len(reactor.tcpClients) == 1


def test_local_socket_defaults_to_syslog3_format_without_hostname():
    reactor = MemoryReactorClock()
    store = OutboxStore()
    target = FakeDatagramTarget("unix:/dev/log")
    cfg = SyslogConfig(target="unix:/dev/log")
    sink = SyslogSink(cfg, store, Writer(store), reactor, reactor, target=target)
    assert sink.status()["format"] == "rfc3164"
    sink.startService()
    commit(sink, store, [e1()])
    ident = e1().cdrs[0].id
    assert target.sent == [f"<134>Nov 22 10:02:07 cdrd[{ident}]: {E1_LINE}".encode()]


def test_refusal_is_logged_once_and_recovery_too():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        sink, store, target, reactor = make()
        sink.startService()
        target.refuse = True
        commit(sink, store, numbered(0, 3))
        reactor.advance(2)
        target.refuse = False
        reactor.advance(5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    formats = [e.get("log_format", "") for e in events]
    assert sum("refuses messages" in f for f in formats) == 1
    assert sum("takes messages again" in f for f in formats) == 1
    assert cuis(target.sent) == ["N0", "N1", "N2"]


def test_a_read_of_an_earlier_run_is_ignored():
    from twisted.internet import defer

    class SlowStore(OutboxStore):
        def __init__(self):
            super().__init__()
            self.held = []

        def outbox(self, sink, after_id, limit):
            d = defer.Deferred()
            self.held.append((d, super().outbox(sink, after_id, limit)))
            return d

    store = SlowStore()
    sink, store, target, reactor = make(store=store)
    store.spooled("syslog", sink.spool(numbered(0, 3), 0))
    sink.startService()
    sink.stopService()
    sink.startService()
    assert len(store.held) == 2
    for d, inner in store.held:
        inner.addCallback(d.callback)
    settle(reactor)
    assert cuis(target.sent) == ["N0", "N1", "N2"]  # once, not twice
