"""Unit: the datagram targets (a real unix socket in tmp, a fake UDP port)."""

from __future__ import annotations

import errno
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, task

from cdrd.outputs.transports import (
    MessageTooLong,
    TcpTarget,
    UdpTarget,
    UnixDatagramTarget,
    make_target,
    parse_target,
)


class Listener:
    def __init__(self):
        self.ready = 0

    def target_ready(self):
        self.ready += 1


def test_parse_target():
    assert parse_target("unix:/dev/log") == ("unix", "/dev/log", None)
    assert parse_target("udp:127.0.0.1:5514") == ("udp", "127.0.0.1", 5514)
    assert parse_target("tcp:[::1]:6514") == ("tcp", "::1", 6514)
    assert parse_target("udp:loghost") == ("udp", "loghost", 514)


def test_make_target_kinds():
    clock = task.Clock()
    assert isinstance(make_target("unix:/dev/log", None, clock), UnixDatagramTarget)
    assert isinstance(make_target("udp:127.0.0.1:514", None, clock), UdpTarget)
    assert isinstance(make_target("tcp:127.0.0.1:514", None, clock), TcpTarget)
    with pytest.raises(ValueError):
        make_target("smtp:x", None, clock)


def test_unix_target_sends_and_reports_a_missing_daemon(tmp_path):
    path = str(tmp_path / "log")
    target = UnixDatagramTarget(path)
    listener = Listener()
    target.start(listener)
    assert listener.ready == 1 and target.ready
    assert target.send(b"<134>x") == target.last_error != ""  # no socket yet
    assert not target.connected
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert target.send(b"<134>hello") is None
        assert server.recv(100) == b"<134>hello"
        assert target.connected
        with pytest.raises(MessageTooLong):
            target.send(b"x" * 10_000_000)
    target.stop()
    assert not target.ready


class FakeUdpPort:
    def __init__(self):
        self.written = []
        self.fail = None

    def write(self, data, addr):
        if self.fail:
            raise OSError(self.fail, "nope")
        self.written.append((data, addr))

    def stopListening(self):
        return defer.succeed(None)


class FakeReactor(task.Clock):
    def __init__(self):
        super().__init__()
        self.ports = []
        self.resolved = {}

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        p = FakeUdpPort()
        self.ports.append((interface, p))
        return p

    def resolve(self, name):
        if name in self.resolved:
            return defer.succeed(self.resolved[name])
        return defer.fail(OSError("unknown host"))


def test_udp_target_binds_loopback_and_sends_datagrams():
    reactor = FakeReactor()
    target = UdpTarget("127.0.0.1", 5514, reactor, reactor)
    listener = Listener()
    target.start(listener)
    (interface, port), = reactor.ports
    assert interface == "127.0.0.1" and listener.ready == 1
    assert target.send(b"one") is None
    port.fail = errno.EAGAIN
    assert target.send(b"two") == "nope" and not target.connected
    port.fail = errno.EMSGSIZE
    with pytest.raises(MessageTooLong):
        target.send(b"three")
    port.fail = None
    assert target.send(b"four") is None and target.connected
    assert port.written == [(b"one", ("127.0.0.1", 5514)), (b"four", ("127.0.0.1", 5514))]


def test_udp_target_resolves_names_and_retries():
    reactor = FakeReactor()
    target = UdpTarget("loghost", 514, reactor, reactor, resolve_retry=5)
    listener = Listener()
    target.start(listener)
    assert not target.ready and "cannot resolve loghost" in target.last_error
    reactor.resolved["loghost"] = "192.0.2.7"
    reactor.advance(5)
    assert target.ready and listener.ready == 1
    (interface, port), = reactor.ports
    assert interface == ""
    target.send(b"x")
    assert port.written == [(b"x", ("192.0.2.7", 514))]


# -- TCP against a real socket that never reads ----------------------------------


@pytest_twisted.ensureDeferred
async def test_tcp_stop_is_bounded_with_a_collector_that_never_reads():
    """A collector that accepts and then reads nothing (hung): stopService
    still returns within the stop timeout, and no line counts as delivered."""
    from twisted.internet import reactor

    from cdrd.config import SyslogConfig
    from cdrd.outputs.syslog import SyslogSink
    from tests.outbox import OutboxStore, Writer
    from tests.outputs.cdrs import numbered

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    store = OutboxStore()
    sink = SyslogSink(SyslogConfig(target=f"tcp:127.0.0.1:{port}", hostname="h"),
                      store, Writer(store), reactor, reactor)
    sink.startService()
    try:
        await task.deferLater(reactor, 0.3, lambda: None)
        conn, _ = server.accept()
        outputs = numbered(0, 20_000)
        store.spooled("syslog", sink.spool(outputs, 0))
        sink.committed(outputs)
        await task.deferLater(reactor, 1.5, lambda: None)
        assert len(store.items) == 20_000  # the kernel took some; none confirmed
        assert sink.status()["in_flight"] > 0
        # it used to hang for good: it ends, by its own timeout (a liveness
        # bound 30 times that, not a stopwatch), with the collector cut off
        stopped = sink.stopService()
        for _ in range(int(sink.target.stop_timeout * 30 / 0.1)):
            if stopped.called:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        assert stopped.called, "stopService waits for a collector that never reads"
        assert len(store.items) == 20_000
        conn.settimeout(30)
        try:
            while conn.recv(1 << 20):  # what the kernel holds, then the end
                pass
        except ConnectionResetError:
            pass  # aborted: the lines in flight are not delivered
    finally:
        conn.close()
        server.close()
