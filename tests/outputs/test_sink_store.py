"""Unit: the SyslogSink with cdrd's own MemoryStore and BatchWriter (group
commit on the clock), as cdrd wires it: the CDRs and their outbox items in
one transaction, the sink told after the commit, deletions through the
writer."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from cdrd.config import SyslogConfig
from cdrd.interfaces import OutboxItem, WriteBatch
from cdrd.outputs.syslog import SyslogSink
from cdrd.store.memory import MemoryStore
from cdrd.store.writer import BatchWriter
from tests.outputs.cdrs import numbered
from tests.outputs.test_sink import FakeDatagramTarget, cuis


def stack(buffer=100_000):
    reactor = MemoryReactorClock()
    store = MemoryStore()
    store.open()
    writer = BatchWriter(store, reactor)
    writer.startService()
    target = FakeDatagramTarget()
    sink = SyslogSink(
        SyslogConfig(target="udp:127.0.0.1:514", hostname="pbx1", buffer=buffer),
        store, writer, reactor, reactor, target=target,
    )
    return reactor, store, writer, sink, target


def write_calls(reactor, writer, sink, outputs):
    """What the CallService does: one transaction, then committed()."""
    d = writer.submit(WriteBatch(
        records=[o.record for o in outputs],
        cdrs=[c for o in outputs for c in o.cdrs],
        outbox=[OutboxItem("syslog", p, 0) for p in sink.spool(outputs, 0)],
    ))
    d.addCallback(lambda _: sink.committed(outputs))
    reactor.advance(0)


def depth(store):
    result = []
    store.outbox_stats("syslog").addCallback(result.append)
    return result[0][0]


def test_every_line_once_in_order_and_the_outbox_empties():
    reactor, store, writer, sink, target = stack()
    sink.startService()
    for first in range(0, 90, 30):
        write_calls(reactor, writer, sink, numbered(first, 30))
    for _ in range(20):
        reactor.advance(0.01)
    assert cuis(target.sent) == [f"N{i}" for i in range(90)]
    assert depth(store) == 0
    assert sink.status()["queued"] == 0


def test_restart_resumes_from_the_store_and_the_bound_holds():
    reactor, store, writer, sink, target = stack(buffer=20)
    target.refuse = True
    sink.startService()
    write_calls(reactor, writer, sink, numbered(0, 50))
    for _ in range(20):
        reactor.advance(0.01)
    assert depth(store) == 20  # the 30 oldest dropped
    assert sink.status()["dropped"] == 30
    stopped = []
    sink.stopService().addCallback(stopped.append)
    reactor.advance(0)
    assert stopped == [None]

    target.refuse = False
    again = SyslogSink(sink.config, store, writer, reactor, reactor, target=target)
    again.startService()
    for _ in range(20):
        reactor.advance(0.01)
    assert cuis(target.sent) == [f"N{i}" for i in range(30, 50)]
    assert depth(store) == 0
