"""
cdrd.service's wiring over a MemoryReactorClock: what listens when, the order
of shut-down, and endpoints checked at config time.  The same over a real
twistd process is in tests/integration/test_lifecycle.py.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from cdrd import config as C
from cdrd.gateway.codec import parse_line
from cdrd.interfaces import LogQuery
from cdrd.service import build_service
from cdrd.store import StoreClosed
from cdrd.store.memory import MemoryStore
from cdrd.tap import build_config

LOGIN = b"LOGIN proto=1 gw=8200 mac=000C2A020082 fxs=2 fxo=2 isdn=0 callref=74 time=2026-11-22T10:00:00\n"


class JournalStore(MemoryStore):
    """A MemoryStore whose open() and first cursors() (recovery) wait for the test,
    that refuses writes once closed (as the real ones do), and keeps a journal."""

    def __init__(self):
        super().__init__()
        self.opening = defer.Deferred()
        self.recovering = defer.Deferred()
        self.journal: list[str] = []

    def open(self):
        self.journal.append("open")
        return self.opening.addCallback(lambda _: MemoryStore.open(self))

    def cursors(self):
        result = MemoryStore.cursors(self).result
        waiter = defer.Deferred()
        self.recovering.addCallback(lambda _: waiter.callback(result))
        return waiter

    def write(self, batch):
        if not self.opened:
            self.journal.append("write after close")
            return defer.fail(StoreClosed("closed"))
        self.journal.append(f"write {[e.event for e in batch.log]}")
        return MemoryStore.write(self, batch)

    def close(self):
        self.journal.append("close")
        return MemoryStore.close(self)


def service(store, **server):
    config = C.parse({"server": {"database": "memory:", "allow_unknown_gateways": True, **server}})
    reactor = MemoryReactorClock()
    return build_service(config, reactor, store=store), reactor


def listening(reactor) -> list[int]:
    return [port for port, *_ in reactor.tcpServers]


def test_nothing_listens_before_the_store_is_open_and_the_calls_recovered():
    store = JournalStore()
    svc, reactor = service(store)
    svc.privilegedStartService()  # twistd's first step binds nothing
    svc.startService()
    assert listening(reactor) == []
    store.opening.callback(None)
    assert listening(reactor) == []  # the call model is still recovering
    store.recovering.callback(None)
    reactor.advance(0)
    assert listening(reactor) == [6510, 8080]  # gateways first, then the web
    assert svc.ready.called


def test_a_store_that_does_not_open_is_one_line_naming_the_setting():
    store = JournalStore()
    svc, reactor = service(store)
    svc.startService()
    failures = []
    svc.ready.addErrback(failures.append)
    store.opening.errback(OSError(111, "Connection refused"))
    (failure,) = failures
    assert failure.getErrorMessage() == "server.database memory:: [Errno 111] Connection refused"
    assert listening(reactor) == []


def test_shutdown_logs_gateways_off_before_the_store_closes():
    store = JournalStore()
    store.opening.callback(None)
    store.recovering.callback(None)
    svc, reactor = service(store)
    svc.startService()
    reactor.advance(0)
    proto = svc.gateways.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2348))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(LOGIN + b"EV seq=1 ref=75 type=HOOK_OFF port=1\n")
    for _ in range(5):  # each transaction of events begins a commit interval after the last
        reactor.advance(C.ServerConfig().commit_interval + 0.001)
    assert [parse_line(x).verb for x in transport.value().splitlines()] == ["HELLO", "OK", "ACK"]
    stopped = svc.stopService()
    for _ in range(5):
        reactor.advance(0.001)
    assert stopped.called
    assert transport.disconnecting
    journal = store.journal
    assert "write after close" not in journal
    assert journal.index("write ['Gateway Disconnect']") < journal.index("close") == len(journal) - 1
    (entry,) = [e for e in MemoryStore.log(store, LogQuery()).result if e.event == "Gateway Disconnect"]
    assert entry.detail == "cdrd is shutting down"
    assert not MemoryStore.gateways(store).result[0].online
    proto.connectionLost(None)  # the socket closes later: nothing more is written
    assert store.journal == journal


@pytest.mark.parametrize("setting", ["gateway-endpoint", "web-endpoint"])
def test_an_ssl_endpoint_without_its_key_file_is_a_config_error(setting, tmp_path):
    endpoint = f"ssl:6511:privateKey={tmp_path}/key.pem:certKey={tmp_path}/cert.pem"
    with pytest.raises(C.ConfigError) as e:
        build_config({"config": None, setting: endpoint})
    assert e.value.setting == f"server.{setting.replace('-', '_')}"
    assert "No such file or directory" in str(e.value) and "\n" not in str(e.value)


class UDPMemoryReactor(MemoryReactorClock):
    """A MemoryReactorClock that also takes UDP ports (the RADIUS client's); writes are kept."""

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        from twisted.internet.address import IPv4Address as Address

        class Port:
            written = []

            def write(self, data, addr):
                self.written.append((data, addr))

            def stopListening(self):
                return None

            def getHost(self):
                return Address("UDP", interface or "0.0.0.0", 40000)

        transport = Port()
        protocol.makeConnection(transport)
        return transport


def test_no_secret_of_the_config_reaches_any_log_event():
    from twisted.logger import formatEvent, globalLogPublisher

    from cdrd.gateway.codec import login_auth
    from cdrd.web.auth import hash_password

    secrets = ["Db-Pass-4711", "Db-Query-4712", "Gw-Secret-4713", "Radius-Secret-4714"]
    web_hash = hash_password("Web-Pass-4715", n=2, r=1, p=1)
    secrets += ["Web-Pass-4715", web_hash]
    config = C.parse({
        "server": {"database": "postgresql://cdrd:Db-Pass-4711@db.example/cdrd?password=Db-Query-4712"},
        "gateways": {"8200_000C2A020082": {"secret": "Gw-Secret-4713"}},
        "radius": {"servers": [{"address": "127.0.0.1:1813", "secret": "Radius-Secret-4714"}]},
        "web": {"users": {"admin": web_hash}},
    })
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        store = JournalStore()
        store.opening.callback(None)
        store.recovering.callback(None)
        reactor = UDPMemoryReactor()
        svc = build_service(config, reactor, store=store)
        svc.startService()
        reactor.advance(0)
        for auth_secret in ("Gw-Secret-4713", "wrong"):
            proto = svc.gateways.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2348))
            transport = StringTransport()
            proto.makeConnection(transport)
            nonce = parse_line(transport.value().splitlines()[0]).fields["nonce"]
            line = LOGIN.rstrip(b"\n").decode()
            proto.dataReceived(f"{line} auth={login_auth(auth_secret, nonce, line)}\n".encode())
            proto.dataReceived(b"EV seq=1 ref=75 type=HOOK_OFF port=1\n")
            reactor.advance(0.01)
        svc.stopService()
        reactor.advance(1)
        reactor.advance(10)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("logged in" in e.get("log_format", "") for e in events)
    assert any("cdrd started" in e.get("log_format", "") for e in events)
    for event in events:
        text = repr(event) + (formatEvent(event) or "")
        for secret in secrets:
            assert secret not in text, event


def test_retention_sweeps_once_the_calls_are_recovered_and_stops_with_cdrd():
    from cdrd.interfaces import WriteBatch
    from tests.store.values import DAY, log_entry

    store = JournalStore()
    MemoryStore.write(store, WriteBatch(log=[log_entry(DAY - 3 * 86_400_000), log_entry(DAY)]))
    config = C.parse({"server": {"database": "memory:"}, "retention": {"log_days": 2}})
    reactor = MemoryReactorClock()
    reactor.advance(DAY / 1000)
    svc = build_service(config, reactor, store=store)
    svc.startService()
    store.opening.callback(None)
    assert svc.retention.sweeps == 0 and len(store._log) == 2  # recovering: no sweep yet
    store.recovering.callback(None)
    reactor.advance(0)
    assert svc.retention.sweeps == 1 and [e.time for e in store._log] == [DAY]
    assert 'cdrd_retention_deleted_total{kind="log"} 1.0' in svc.metrics.page()[0].decode()
    stopped = svc.stopService()
    for _ in range(5):
        reactor.advance(0.001)
    assert stopped.called and not svc.retention.running
