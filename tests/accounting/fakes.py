"""
Deterministic stand-ins for the unit tests: a reactor whose listenUDP gives
ports that record what is written, and a RADIUS answerer built on pyrad that
replies to what was written (the integration tests use real FreeRADIUS).
"""

from __future__ import annotations

from pyrad.packet import AccountingResponse, AcctPacket
from twisted.internet import defer, task


class FakeUdpPort:
    def __init__(self, protocol, interface):
        self.protocol = protocol
        self.interface = interface
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.open = True

    def write(self, data, addr):
        self.written.append((data, addr))

    def stopListening(self):
        self.open = False
        return defer.succeed(None)

    def getHost(self):
        return None


class FakeReactor(task.Clock):
    """task.Clock (time) + listenUDP (fake datagram ports)."""

    def __init__(self):
        super().__init__()
        self.ports: list[FakeUdpPort] = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        p = FakeUdpPort(protocol, interface)
        protocol.makeConnection(p)
        self.ports.append(p)
        return p


def answer(port: FakeUdpPort, raw: bytes, secret: bytes, dictionary, corrupt=False):
    """Reply to `raw` as a RADIUS server would (a broken authenticator if corrupt)."""
    req = AcctPacket(packet=raw, secret=secret, dict=dictionary)
    reply = req.CreateReply()
    reply.code = AccountingResponse
    data = reply.ReplyPacket()
    if corrupt:
        data = data[:4] + bytes(16) + data[20:]
    port.protocol.datagramReceived(data, ("127.0.0.1", 1813))


def decode(raw: bytes, dictionary):
    return AcctPacket(packet=raw, secret=b"", dict=dictionary)
