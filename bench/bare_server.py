"""
A bare GWP/1 server, the baseline of bench/ingest.py: HELLO, any LOGIN is
accepted without checks (OK last=0), every line is parsed with the codec,
and events are acknowledged cumulatively once per dataReceived chunk.
Nothing is stored.  This is the floor cdrd's ingest is compared against:
the same framing and parsing cost, without the session rules or the store.

    python bench/bare_server.py [--endpoint tcp:0:interface=127.0.0.1] [--lifetime 300]

Prints ``listening on <port>`` once ready; stops on SIGTERM/SIGINT or after
--lifetime seconds.
"""

from __future__ import annotations

import argparse
import secrets
import sys

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from cdrd.gateway.codec import MAX_LINE, BadPacket, format_message, parse_line


class BareGatewayServer(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE + 1

    def connectionMade(self) -> None:
        self.logged_in = False
        self.top = 0
        self.acked = 0
        self.transport.write(format_message("HELLO", [("proto", "1"), ("nonce", secrets.token_hex(16)),
                                                      ("time", "2026-11-22T10:00:00.000Z")]))

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.top > self.acked and self.transport is not None:
            self.acked = self.top
            self.transport.write(b"ACK seq=%d\n" % self.top)

    def lineReceived(self, line: bytes) -> None:
        try:
            msg = parse_line(line)
        except BadPacket as e:
            self.transport.write(format_message("ERR", [("code", "bad"), ("reason", e.reason)]))
            return
        if msg is None:
            return
        if msg.verb == "EV":
            seq = msg.fields.get("seq", "")
            if seq.isdigit() and int(seq) > self.top:
                self.top = int(seq)
        elif msg.verb == "LOGIN" and not self.logged_in:
            self.logged_in = True
            self.transport.write(b"OK session=1 last=0\n")
        elif msg.verb == "PING":
            self.transport.write(b"PONG\n")
        elif msg.verb == "LOGOUT":
            self.transport.write(b"BYE\n")
            self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()


def main(argv: list[str] | None = None) -> int:
    from twisted.internet import reactor

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default="tcp:0:interface=127.0.0.1:backlog=1024")
    p.add_argument("--lifetime", type=float, default=600.0, help="stop after this many seconds")
    args = p.parse_args(argv)

    def listening(port):
        print(f"listening on {port.getHost().port}", flush=True)

    def failed(failure):
        print(f"bare_server: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.stop()

    d = serverFromString(reactor, args.endpoint).listen(Factory.forProtocol(BareGatewayServer))
    d.addCallbacks(listening, failed)
    reactor.callLater(args.lifetime, reactor.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
