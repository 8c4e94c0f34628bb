"""
A small in-test GWP/1 server for the simulator's unit tests: it speaks to
client protocols over StringTransports, delivers its answers through a
task.Clock (so nothing re-enters the client), checks LOGIN signatures and
keeps what it "stored".
"""

from __future__ import annotations

import hashlib
import hmac

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from cdrd.gateway.codec import parse_line

NONCE = "5f0c3b9d2e8a4f61a7b3c2d1e0f9a8b7"


def verify_auth(secret: str, nonce: str, raw: str) -> bool:
    """Checks a LOGIN's auth independently of cdrd.gateway.codec's helpers."""
    before, _, auth = raw.rpartition(" auth=")
    want = hmac.new(secret.encode(), f"{nonce} {before}".encode(), hashlib.sha256).hexdigest()
    return bool(before) and hmac.compare_digest(want, auth)


class ServerTransport(StringTransport):
    def __init__(self, link: FakeLink) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.link = link

    def write(self, data: bytes) -> None:
        super().write(data)
        self.link.from_client(data)

    def loseConnection(self) -> None:
        if not self.disconnecting:
            super().loseConnection()
            self.link.close()

    def abortConnection(self) -> None:
        self.loseConnection()


class FakeLink:
    """One connection: the client protocol on one side, FakeServer on the other."""

    def __init__(self, server: FakeServer, protocol) -> None:
        self.server = server
        self.protocol = protocol
        self.buffer = b""
        self.lines: list[bytes] = []  # every line the client sent
        self.logged_in = False
        self.closing = False  # close() called: what was queued still arrives
        self.closed = False
        self.acked = 0
        self.transport = ServerTransport(self)

    def to_client(self, data: bytes) -> None:
        def deliver():
            if not self.closed:
                if data.startswith(b"ACK seq="):
                    seq = int(data[8:].strip())
                    self.server.delivered_ack = max(self.server.delivered_ack, seq)
                self.protocol.dataReceived(data)

        self.server.clock.callLater(0, deliver)

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True

        def lost():
            self.closed = True
            from twisted.internet.error import ConnectionDone
            from twisted.python.failure import Failure

            self.protocol.connectionLost(Failure(ConnectionDone()))

        self.server.clock.callLater(0, lost)

    def from_client(self, data: bytes) -> None:
        if self.closing:  # the connection is gone: what the client writes now is lost
            return
        self.buffer += data
        top = self.acked
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.lines.append(line)
            msg = parse_line(line)
            if msg.verb == "LOGIN":
                self.server.logins.append(msg)
                secret = self.server.secret
                if secret is not None and not verify_auth(secret, self.server.nonce, msg.raw):
                    self.to_client(b"ERR code=auth reason=wrong%20auth\n")
                    self.close()
                    return
                if self.server.login_error is not None:
                    self.to_client(b"ERR code=%s reason=retry%%20later\n" % self.server.login_error.encode())
                    self.close()
                    return
                self.logged_in = True
                self.to_client(b"OK session=1 last=%d\n" % self.server.last)
            elif msg.verb == "EV" and self.logged_in:
                seq = int(msg.fields["seq"])
                self.server.received.append(line)
                if seq > self.server.last:
                    self.server.stored[seq] = line
                    self.server.last = seq
                top = max(top, seq)
            elif msg.verb == "PING":
                self.to_client(b"PONG\n")
            elif msg.verb == "LOGOUT":
                self.to_client(b"BYE\n")
        if top > self.acked and self.server.auto_ack:
            self.acked = top
            self.server.clock.callLater(0, self.commit, top)

    def commit(self, top: int) -> None:
        """The batch is durable now (what a crash has not rolled back); ACK it."""
        top = min(top, self.server.last)
        self.server.durable = max(self.server.durable, top)
        if not self.closing and top > 0:
            self.to_client(b"ACK seq=%d\n" % top)


class FakeServer:
    """Also an IStreamClientEndpoint: connect() makes a new FakeLink."""

    def __init__(self, clock: Clock, secret: str | None = None, last: int = 0, auto_ack: bool = True):
        self.clock = clock
        self.secret = secret
        self.nonce = NONCE
        self.last = last
        self.auto_ack = auto_ack
        self.links: list[FakeLink] = []
        self.logins = []
        self.received: list[bytes] = []  # every EV line, resends included
        self.stored: dict[int, bytes] = {}  # seq -> EV line, first copy
        self.refuse = False
        self.login_error: str | None = None  # an ERR code answering every LOGIN
        self.connects: list[float] = []  # clock.seconds() of every connect, refused ones too
        self.delivered_ack = 0  # the highest ACK the client has actually read
        self.durable = 0  # the highest seq acknowledged (or committed): never lost

    def crash(self, keep: int) -> None:
        """
        The connection dies and the server keeps only events up to `keep`
        (clamped to what it may lose: nothing committed, so nothing it has
        acknowledged).
        """
        keep = max(self.durable, min(keep, self.last))
        for seq in [s for s in self.stored if s > keep]:
            del self.stored[seq]
        self.last = keep
        if self.links:
            self.links[-1].close()

    def connect(self, factory):
        self.connects.append(self.clock.seconds())
        if self.refuse:
            from twisted.internet.error import ConnectionRefusedError

            return defer.fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 6510))
        link = FakeLink(self, protocol)
        self.links.append(link)
        protocol.makeConnection(link.transport)
        link.to_client(f"HELLO proto=1 nonce={self.nonce} time=2026-11-22T10:00:00.000Z\n".encode())
        return defer.succeed(protocol)

    def run(self, until, limit: int = 100_000, step: float = 0.0) -> None:
        """Advance the clock until `until()` is true (bounded)."""
        for _ in range(limit):
            if until():
                return
            self.clock.advance(step)
        raise AssertionError("fake server: condition not reached")
