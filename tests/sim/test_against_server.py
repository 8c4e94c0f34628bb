"""
The simulator against cdrd's own GWP/1 server (cdrd.gateway.protocol with the
memory store), in memory: twisted.test.iosim pumps bytes between the two
protocols, a task.Clock drives both.  Checks that the client and the server
agree on the session, and that what the simulator sends is what is stored.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, connect

from cdrd import config as C
from cdrd.gateway.codec import parse_gateway_time
from cdrd.gateway.protocol import GatewayFactory
from cdrd.interfaces import EventQuery
from cdrd.sim.client import GatewayIdentity, LoginRejected, SimGateway
from cdrd.sim.load import LoadRun, fleet
from cdrd.sim.replay import replay
from cdrd.sim.script import parse_script
from cdrd.store.memory import MemoryStore
from cdrd.store.writer import BatchWriter
from tests.sim.test_script import example

NOW = parse_gateway_time("2026-11-22T10:45:00.000") / 1000
KEY = "8200_000C2A020082"
GW = GatewayIdentity(gw="8200", mac="000C2A020082")


class InMemoryServer:
    """An IStreamClientEndpoint that connects to cdrd's GatewayFactory via iosim."""

    def __init__(self, secret: str | None = None) -> None:
        data: dict = {"server": {"allow_unknown_gateways": True}}
        if secret:
            data["gateways"] = {KEY: {"secret": secret}}
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore()
        self.store.open()
        self.writer = BatchWriter(self.store, self.clock)
        self.writer.startService()
        self.factory = GatewayFactory(C.parse(data), self.store, self.writer, self.clock)
        self.pumps = []
        self.port = 30000

    def connect(self, factory):
        self.port += 1
        peer = IPv4Address("TCP", "127.0.0.1", self.port)
        server = self.factory.buildProtocol(peer)
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 6510))
        server_tr = FakeTransport(server, isServer=True, peerAddress=peer)
        client_tr = FakeTransport(client, isServer=False)
        self.pumps.append(connect(server, server_tr, client, client_tr, greet=False, clock=self.clock))
        return defer.succeed(client)

    def run(self, until, steps: int = 20_000, tick: float = 0.002) -> None:
        for _ in range(steps):
            for pump in self.pumps:
                pump.pump()
            if until():
                return
            self.clock.advance(tick)
        raise AssertionError("not reached within the step limit")

    def stored(self, key: str = KEY):
        results = []
        self.store.events(EventQuery(gateway=key, limit=100_000, newest_first=False)).addBoth(
            results.append)
        return [e for e in results[0] if e.seq is not None]


def outcome(d):
    results = []
    d.addBoth(results.append)
    return results


def test_replay_of_the_worked_examples_is_stored_exactly():
    server = InMemoryServer(secret="s3cret")
    events = parse_script(example("all"))
    identity = GatewayIdentity(gw="8200", mac="000C2A020082", secret="s3cret")
    results = outcome(replay(server.clock, server, identity, events, window=5))
    server.run(lambda: results)
    summary = results[0]
    assert summary.acked == 37 and (summary.first_seq, summary.last_seq) == (1, 37), summary
    stored = server.stored()
    assert [e.seq for e in stored] == list(range(1, 38))
    assert [(e.ref, e.type, e.time, dict(e.fields)) for e in stored] == [
        (e.ref, e.type, e.t, dict(e.fields)) for e in events]  # skew 0: the clock is right


def test_wrong_secret_is_rejected_by_cdrd():
    server = InMemoryServer(secret="right")
    identity = GatewayIdentity(gw="8200", mac="000C2A020082", secret="wrong")
    results = outcome(replay(server.clock, server, identity, parse_script(example("e2"))))
    server.run(lambda: results)
    assert results[0].check(LoginRejected) and results[0].value.code == "auth"
    assert server.stored() == []


def test_dropped_connection_resends_and_every_seq_is_stored_once():
    server = InMemoryServer()
    gateway = SimGateway(GW, server.clock, window=6)
    online = gateway.start(server, reconnect_delay=0.5)
    server.run(lambda: online.called)
    events = parse_script(example("all"))
    gateway.submit(events[:8])
    server.run(lambda: gateway.stats.acked == 8)
    gateway.submit(events[8:20])  # 6 go out at once (the window) ...
    assert len(gateway.inflight) == 6
    lost = server.pumps[0].clientIO.getOutBuffer()  # ... and are lost on the way
    assert lost.count(b"EV seq=") == 6
    server.pumps[0].serverIO.loseConnection()
    gateway.submit(events[20:])
    server.run(lambda: gateway.outstanding == 0 and len(server.pumps) == 2)
    stored = server.stored()
    assert [e.seq for e in stored] == list(range(1, 38))
    assert [e.type for e in stored] == [e.type for e in events]
    assert gateway.stats.logins == 2 and gateway.stats.acked == 37
    assert gateway.stats.resent == 6  # in flight when the connection died, sent again
    done = outcome(gateway.finish())
    server.run(lambda: done)


def test_second_run_continues_after_the_servers_last():
    server = InMemoryServer()
    first = outcome(replay(server.clock, server, GW, parse_script(example("e1"))))
    server.run(lambda: first)
    again = outcome(replay(server.clock, server, GW, parse_script(example("e2"))))
    server.run(lambda: again)
    assert (again[0].first_seq, again[0].last_seq) == (7, 10)
    assert [e.seq for e in server.stored()] == list(range(1, 11))


def test_load_run_is_stored_whole():
    server = InMemoryServer()
    run = LoadRun(server.clock, server, fleet(4), rate=40.0, duration=1.0, window=8, seed=5)
    results = outcome(run.run())
    server.run(lambda: results, tick=0.005)
    summary = results[0]
    assert summary.complete and summary.errors == 0, summary
    total = 0
    for identity in fleet(4):
        stored = server.stored(identity.key)
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        total += len(stored)
    assert total == summary.events == summary.acked
