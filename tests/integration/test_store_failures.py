"""
What one client's bad data does to everybody's group commit, on the real
stores: memory, SQLite and the machine's PostgreSQL (a database per test).
GWP/1 connections over StringTransport, the real reactor and store threads.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from cdrd import config as C
from cdrd.gateway.codec import parse_line
from cdrd.gateway.protocol import GatewayFactory
from cdrd.interfaces import EventQuery, LogQuery, WriteBatch
from cdrd.store import open_store
from cdrd.store.writer import BatchWriter, EarlierWriteFailed
from cdrd.values import CallEvent, LogEntry

pytestmark = pytest.mark.integration

LOGIN = "LOGIN proto=1 gw={gw} mac={mac} fxs=2 fxo=2 isdn=0 callref=74 time=2026-11-22T10:00:00"


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "memory":
        return "memory:"
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'cdrd.sqlite'}"
    return request.getfixturevalue("pg_database")[1]


class Node:
    def __init__(self, url):
        self.store = open_store(url, reactor)
        self.config = C.parse({"server": {"allow_unknown_gateways": True}})
        self.writer = BatchWriter(self.store, reactor)
        self.factory = GatewayFactory(self.config, self.store, self.writer, reactor)
        self.port = 40000

    async def start(self):
        await self.store.open()
        self.writer.startService()
        return self

    async def stop(self):
        for proto in list(self.factory.connections):
            proto.connectionLost(None)
        await self.settle()
        await self.writer.stopService()
        await self.store.close()

    def connect(self):
        self.port += 1
        addr = IPv4Address("TCP", "127.0.0.1", self.port)
        proto = self.factory.buildProtocol(addr)
        proto.tr = StringTransport(peerAddress=addr)
        proto.makeConnection(proto.tr)
        return proto

    async def settle(self):
        for _ in range(3):
            await task.deferLater(reactor, 0.01, lambda: None)
            await self.writer.flushed()
            await self.writer.flushed()

    @staticmethod
    def replies(proto):
        data, _ = proto.tr.value(), proto.tr.clear()
        return [parse_line(line) for line in data.split(b"\n") if line]


async def logged_in(node, gw, mac):
    proto = node.connect()
    node.replies(proto)
    proto.dataReceived((LOGIN.format(gw=gw, mac=mac) + "\n").encode())
    await node.settle()
    assert [m.verb for m in node.replies(proto)] == ["OK"]
    return proto


@pytest_twisted.ensureDeferred
async def test_control_bytes_from_an_unauthenticated_client_fail_nobody(store_url):
    node = await Node(store_url).start()
    try:
        gateway = await logged_in(node, "8200", "000C2A020082")
        stranger = node.connect()
        node.replies(stranger)
        # one reactor turn: one group commit for both
        gateway.dataReceived(
            b"EV seq=1 ref=75 type=HOOK_OFF port=1\n"
            b"EV seq=2 ref=75 type=TALK info=C(18)%20M(17)%20\xc3\xa9\xf0\x9f\x98\x80%22%5C'%7B%7D\n"
        )
        stranger.dataReceived(
            b"LOGIN proto=%00 gw=1 mac=000000000001 fxs=0 fxo=0 isdn=0 callref=0 time=2026-11-22T10:00:00\n")
        await node.settle()
        assert [(m.verb, dict(m.fields)) for m in node.replies(gateway)] == [("ACK", {"seq": "2"})]
        assert not gateway.tr.disconnecting
        assert node.replies(stranger)[0].fields["code"] == "proto"
        log = await node.store.log(LogQuery(limit=100))
        (rejected,) = [e for e in log if e.event == "Login Rejected"]
        assert rejected.detail == "code=proto unsupported protocol \\x00"
        # event fields go through JSON: what a gateway sent comes back exactly
        events = await node.store.events(EventQuery(gateway="8200_000C2A020082", newest_first=False))
        assert events[1].fields == {"info": "C(18) M(17) é😀\"\\'{}"}
    finally:
        await node.stop()


def poison_event(store_url) -> CallEvent:
    """An event the database refuses (NUL in text for PostgreSQL; an integer
    beyond 64 bits for SQLite)."""
    if store_url.startswith("postgresql"):
        return CallEvent(gateway="9999_000000009999", seq=1, ref=1, type="TALK", time=1,
                         received=1, boot="nul\x00", fields={})
    return CallEvent(gateway="9999_000000009999", seq=1, ref=2**64, type="TALK", time=1,
                     received=1, boot="r0", fields={})


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_a_submission_the_database_refuses_fails_alone(kind, tmp_path, request):
    url = f"sqlite:{tmp_path / 'cdrd.sqlite'}" if kind == "sqlite" else request.getfixturevalue("pg_database")[1]
    node = await Node(url).start()
    try:
        good = await logged_in(node, "8200", "000C2A020082")
        other = await logged_in(node, "8201", "000C2A020083")
        outcomes = {}

        def submit(name, batch):
            d = node.writer.submit(batch)
            d.addCallbacks(lambda _: outcomes.__setitem__(name, "ok"),
                           lambda f: outcomes.__setitem__(name, f.type))

        good.dataReceived(b"EV seq=1 ref=1 type=HOOK_OFF port=1\n")
        submit("poison", WriteBatch(events=[poison_event(url)], log=[
            LogEntry(time=1, event="Bad Packet", peer="p", detail="x")]))
        other.dataReceived(b"EV seq=1 ref=1 type=HOOK_OFF port=1\n")
        bad_next = CallEvent(gateway="9999_000000009999", seq=2, ref=1, type="HOOK_ON", time=1,
                             received=1, boot="r0", fields={})
        submit("poison's next", WriteBatch(events=[bad_next]))
        await node.settle()
        assert outcomes["poison"] not in ("ok", EarlierWriteFailed)
        assert outcomes["poison's next"] is EarlierWriteFailed
        for proto in (good, other):
            assert [(m.verb, dict(m.fields)) for m in node.replies(proto)] == [("ACK", {"seq": "1"})]
            assert not proto.tr.disconnecting
        stored = await node.store.events(EventQuery(limit=100, newest_first=False))
        assert sorted(e.gateway for e in stored) == ["8200_000C2A020082", "8201_000C2A020083"]
        states = {g.key: g.last_seq for g in await node.store.gateways()}
        assert states == {"8200_000C2A020082": 1, "8201_000C2A020083": 1}
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_gateway_failing_mid_stream_never_stores_past_the_gap(pg_database):
    """Item 2 on PostgreSQL: the gateway's own write fails; what it sent after is not stored either."""
    node = await Node(pg_database[1]).start()
    try:
        gw = await logged_in(node, "8200", "000C2A020082")
        gw.dataReceived(b"EV seq=1 ref=1 type=HOOK_OFF port=1\n")
        await node.settle()
        node.replies(gw)
        # seq 2 carries a value PostgreSQL refuses, seq 3 follows in the next turn
        refused = node.store.write

        def write(batch):
            if any(e.seq == 2 for e in batch.events):
                batch = WriteBatch(events=[poison_event(pg_database[1])] + list(batch.events),
                                   gateways=batch.gateways)
            return refused(batch)

        node.store.write = write
        gw.dataReceived(b"EV seq=2 ref=1 type=DIAL digits=1\n")
        reactor.callLater(0, gw.dataReceived, b"EV seq=3 ref=1 type=RING_BACK\n")
        await node.settle()
        assert node.replies(gw)[-1].fields["code"] == "unavailable"
        stored = await node.store.events(EventQuery(limit=100, newest_first=False))
        assert [e.seq for e in stored] == [1]
        gw.connectionLost(None)
        await node.settle()
        (state,) = await node.store.gateways()
        assert (state.last_seq, state.online) == (1, False)
    finally:
        await node.stop()
