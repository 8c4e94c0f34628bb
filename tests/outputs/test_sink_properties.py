"""
Unit, hypothesis: whatever the interleaving of commits, refusals, lost,
closed and paused connections, stalled collectors, restarts and time,
every CDR line reaches the target in written order: exactly once over
datagrams, at least once and in order of first appearance over TCP, and
the outbox ends empty.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from cdrd.config import SyslogConfig
from cdrd.outputs.syslog import SyslogSink
from cdrd.outputs.transports import TcpTarget
from tests.outbox import OutboxStore, Writer
from tests.outputs.cdrs import numbered
from tests.outputs.test_sink import FakeDatagramTarget, TcpTransport, frames

CUI = re.compile(rb",(N\d+),")


def cui_order(messages):
    return [int(CUI.search(m).group(1)[1:]) for m in messages]


datagram_ops = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.integers(1, 40)),
        st.tuples(st.just("refuse"), st.booleans()),
        st.tuples(st.just("advance"), st.sampled_from([0, 0.05, 0.5, 3.0])),
        st.tuples(st.just("restart"), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=datagram_ops)
def test_datagrams_every_line_exactly_once_in_order(ops):
    reactor = MemoryReactorClock()
    store = OutboxStore()
    target = FakeDatagramTarget()
    cfg = SyslogConfig(target="udp:127.0.0.1:514", hostname="h")

    def new_sink():
        s = SyslogSink(cfg, store, Writer(store), reactor, reactor, target=target)
        s.window = 16
        s.turn = 8
        s.startService()
        return s

    sink = new_sink()
    n = 0
    for op, arg in ops:
        if op == "commit":
            outputs = numbered(n, arg)
            n += arg
            store.spooled("syslog", sink.spool(outputs, 0))
            sink.committed(outputs)
        elif op == "refuse":
            target.refuse = arg
        elif op == "advance":
            reactor.advance(arg)
        else:  # a clean restart: what was sent is deleted before it stops
            sink.stopService()
            sink = new_sink()
    target.refuse = False
    for _ in range(200):
        reactor.advance(1.0)
    assert cui_order(target.sent) == list(range(n))
    assert store.payloads() == []


tcp_ops = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.integers(1, 40)),
        st.tuples(st.just("connect"), st.just(0)),
        st.tuples(st.just("lose"), st.just(0)),
        # the collector closes its end: a confirmation after our FIN, else a
        # close of its own (a restart) that proves nothing
        st.tuples(st.just("close"), st.just(0)),
        st.tuples(st.just("pause"), st.booleans()),
        st.tuples(st.just("advance"), st.sampled_from([0, 0.3, 1.0, 5.0])),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=tcp_ops)
def test_tcp_every_line_at_least_once_in_order(ops):
    reactor = MemoryReactorClock()
    store = OutboxStore()
    target = TcpTarget("127.0.0.1", 6514, reactor, reactor, jitter=lambda: 0)
    cfg = SyslogConfig(target="tcp:127.0.0.1:6514", hostname="h")
    sink = SyslogSink(cfg, store, Writer(store), reactor, reactor, target=target)
    sink.window = 16
    sink.max_unconfirmed = 24
    sink.turn = 8
    sink.startService()
    received: list[bytes] = []
    conn = None
    attempts = 0

    def connect():
        nonlocal conn, attempts
        if conn is not None or len(reactor.tcpClients) == attempts:
            return
        attempts = len(reactor.tcpClients)
        protocol = reactor.tcpClients[-1][2].buildProtocol(None)
        transport = TcpTransport()
        protocol.makeConnection(transport)
        conn = (protocol, transport)

    def lose(reason=ConnectionLost):
        nonlocal conn
        if conn is None:
            return
        protocol, transport = conn
        received.extend(frames(transport.value()))
        conn = None
        protocol.connectionLost(Failure(reason()))

    n = 0
    for op, arg in ops:
        if op == "commit":
            outputs = numbered(n, arg)
            n += arg
            store.spooled("syslog", sink.spool(outputs, 0))
            sink.committed(outputs)
        elif op == "connect":
            connect()
        elif op == "lose":
            lose()
        elif op == "close":
            lose(ConnectionDone)
        elif op == "pause" and conn is not None:
            producer = conn[1].producer
            producer.pauseProducing() if arg else producer.resumeProducing()
        elif op == "advance":
            reactor.advance(arg)
    for _ in range(100):  # the collector is healthy from now on
        reactor.advance(1.0)
        connect()
        if conn is not None and conn[1].producer is not None:
            conn[1].producer.resumeProducing()
        if conn is not None and conn[1].write_closed:
            lose(ConnectionDone)
        if conn is not None and conn[1].aborted:
            lose()
    lose()
    seen = cui_order(received)
    first = list(dict.fromkeys(seen))
    assert first == list(range(n))
    assert store.payloads() == []
