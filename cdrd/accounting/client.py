"""
The RADIUS accounting client: Twisted UDP, one socket per configured server,
RFC 5080 retransmission, ordered failover with Status-Server probes.

It knows nothing of the store: `send(payload)` returns a Deferred that fires
once a verified Accounting-Response for it arrived (it never fails: accounting
retries until answered).  The service (service.py) feeds it from the outbox
and deletes what it answered.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import socket
from collections import deque

from attrs import define, field
from pyrad.packet import AccountingResponse, AcctPacket, PacketError, StatusServer
from twisted.internet import defer
from twisted.internet.error import InvalidAddressError, MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from cdrd.accounting.packets import (
    Payload,
    encode_attributes,
    request_bytes,
    sent_packet,
)

#: SO_RCVBUF / SO_SNDBUF asked for each socket: a whole window of the largest
#: packets (255 x 4096 bytes) with room to spare, so a burst is not dropped.
SOCKET_BUFFER = 4 * 1024 * 1024
#: Seconds between Status-Server probes of a server we failed over from.
PROBE_INTERVAL = 10.0
#: Weight of a new round-trip sample in the moving average.
RTT_ALPHA = 0.125


def retransmission_timeout(
    previous: float | None, irt: float, mrt: float, rand: float
) -> float:
    """
    RFC 5080 section 2.2.1 (after RFC 3315): RT = IRT + RAND*IRT first, then
    RT = 2*RTprev + RAND*RTprev, capped at MRT + RAND*MRT; RAND in
    [-0.1, 0.1].  MRC and MRD are 0 for accounting: retry until answered.
    """
    if previous is None:
        rt = irt + rand * irt
    else:
        rt = 2 * previous + rand * previous
    if rt > mrt:
        rt = mrt + rand * mrt
    return rt


@define(eq=False)
class Request:
    payload: Payload
    deferred: defer.Deferred
    server: int | None = None  # index of the server it was last sent to
    ident: int | None = None
    body: bytes | None = None  # its attributes, encoded once
    raw: bytes = b""
    delay: int | None = None
    rt: float | None = None
    timer: object = None
    sent_at: float = 0.0
    retransmitted: bool = False
    sends: int = 0
    answered: bool = False


@define(eq=False)
class ServerState:
    host: str
    port: int
    secret: bytes = field(repr=False)
    transport: object = None
    listening: object = None
    inflight: dict = field(factory=dict)  # Identifier -> Request | "probe"
    # Identifiers not in `inflight`: `free` (never used, or answered), least
    # recently used first; `held`: replaced by a resend, or left by a
    # failover, whose answer may still come and still proves delivery
    free: deque = field(factory=lambda: deque(range(256)))
    held: deque = field(factory=deque)
    # Identifier -> (Request, its bytes) or ("probe", packet): the last
    # packet sent with it, so that an answer is verified with that packet's
    # authenticator; kept until the Identifier is taken for another packet
    last_sent: dict = field(factory=dict)
    timeouts: int = 0  # consecutive, reset by any valid answer
    up: bool | None = None  # None: not known yet
    rtt_ms: float | None = None
    answered: int = 0
    sent: int = 0
    retransmissions: int = 0
    requests: int = 0  # Requests (not probes) in `inflight`
    probe_id: int | None = None
    probe: AcctPacket | None = None
    buffer: int = 0
    send_errors: int = 0
    failing: bool = False  # the last write raised: log the next success
    by_status: dict = field(factory=dict)  # Acct-Status-Type -> packets sent (cdrd_radius_requests_total)

    def has_id(self) -> bool:
        return bool(self.free or self.held)

    def take_id(self) -> int | None:
        """An Identifier for a new packet: the least recently used free
        one; one whose old packet may still be answered only when no other
        is left.  Answers to its old packet stop counting now."""
        if self.free:
            ident = self.free.popleft()
        elif self.held:
            ident = self.held.popleft()
        else:
            return None
        self.last_sent.pop(ident, None)
        return ident

    def release(self, ident: int, answered: bool = True) -> None:
        """`ident` is no longer its request's current one: answered, or
        (not `answered`) replaced by a resend or a failover."""
        item = self.inflight.pop(ident, None)
        if item is not None:
            (self.free if answered else self.held).append(ident)
            if isinstance(item, Request):
                self.requests -= 1


class _ServerProtocol(DatagramProtocol):
    def __init__(self, client: RadiusClient, index: int):
        self.client = client
        self.index = index

    def datagramReceived(self, data, addr):
        self.client._received(self.index, data)


class RadiusClient:
    """Sends accounting payloads to the first server that answers, in order."""

    log = Logger()

    def __init__(
        self,
        servers,
        dictionary,
        clock,
        reactor,
        window: int = 128,
        initial_timeout: float = 2.0,
        max_timeout: float = 64.0,
        failover_after: int = 3,
        rng: random.Random | None = None,
        probe_interval: float = PROBE_INTERVAL,
    ):
        self.servers = [
            ServerState(host=s.host, port=s.port, secret=s.secret.encode())
            for s in servers
        ]
        self.dictionary = dictionary
        self.clock = clock
        self.reactor = reactor
        self.window = max(1, min(255, window))
        self.irt = initial_timeout
        self.mrt = max_timeout
        self.failover_after = failover_after
        self.rng = rng or random.Random()
        self.probe_interval = probe_interval
        self.active = 0
        self.queue: deque[Request] = deque()
        self.retransmissions = 0
        self._probe_call = None
        self._running = False

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        for i, s in enumerate(self.servers):
            interface = "::" if ":" in s.host else "0.0.0.0"
            if s.host.startswith("127.") or s.host == "::1":
                interface = s.host if ":" in s.host else "127.0.0.1"
            s.listening = self.reactor.listenUDP(
                0, _ServerProtocol(self, i), interface=interface
            )
            s.transport = s.listening
            s.buffer = _size_buffers(s.listening)
        self._running = True

    def stop(self) -> defer.Deferred:
        self._running = False
        if self._probe_call is not None and self._probe_call.active():
            self._probe_call.cancel()
        self._probe_call = None
        ds = []
        for s in self.servers:
            for req in list(s.inflight.values()):
                if (
                    isinstance(req, Request)
                    and req.timer is not None
                    and req.timer.active()
                ):
                    req.timer.cancel()
            if s.listening is not None:
                d = s.listening.stopListening()
                if isinstance(d, defer.Deferred):
                    ds.append(d)
                s.listening = s.transport = None
        return defer.DeferredList(ds).addCallback(lambda _: None)

    # -- sending --------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(s.requests for s in self.servers)

    @property
    def pending(self) -> int:
        """Requests not answered yet: queued and in flight."""
        return len(self.queue) + self.in_flight

    def send(self, payload: Payload, body: bytes | None = None) -> defer.Deferred:
        """`body`: `encode_attributes` of the payload, if the caller has it."""
        req = Request(payload=payload, deferred=defer.Deferred(), body=body)
        self.queue.append(req)
        self._dispatch()
        return req.deferred

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def _room(self, server: ServerState) -> bool:
        return server.requests < self.window and server.has_id()

    def _dispatch(self) -> None:
        if not self._running or not self.servers:
            return
        server = self.servers[self.active]
        while self.queue and self._room(server):
            self._transmit(self.queue.popleft())

    def _transmit(self, req: Request) -> None:
        """(Re)send `req` to the active server; a new Identifier and
        authenticator whenever Acct-Delay-Time or the server changed."""
        index = self.active
        server = self.servers[index]
        now_ms = self._now_ms()
        delay = max(0, now_ms - req.payload.event) // 1000
        if req.server != index or req.delay != delay or req.ident is None:
            if req.server is not None and req.ident is not None:
                # its answer still proves delivery: held, not free
                self.servers[req.server].release(req.ident, answered=False)
                req.ident = None
            if not self._room(server):
                # the new server's window is full: wait in line (at the front)
                req.server = None
                self.queue.appendleft(req)
                return
            ident = server.take_id()
            if req.body is None:
                req.body = encode_attributes(self.dictionary, req.payload.attributes)
            req.raw = request_bytes(req.body, ident, server.secret, delay)
            req.delay = delay
            req.ident, req.server = ident, index
            server.inflight[ident] = req
            server.last_sent[ident] = (req, req.raw)
            server.requests += 1
        req.rt = retransmission_timeout(
            req.rt, self.irt, self.mrt, self.rng.uniform(-0.1, 0.1)
        )
        req.sent_at = self.clock.seconds()
        req.sends += 1
        server.sent += 1
        server.by_status[req.payload.status] = server.by_status.get(req.payload.status, 0) + 1
        # a refused send (no route, firewall, full buffers) is a lost packet:
        # the retransmission timer runs all the same
        self._write(server, req.raw)
        req.timer = self.clock.callLater(req.rt, self._timeout, req)

    def _write(self, server: ServerState, data: bytes) -> None:
        try:
            server.transport.write(data, (server.host, server.port))
        except (OSError, MessageLengthError, InvalidAddressError) as e:
            server.send_errors += 1
            if not server.failing:
                server.failing = True
                self.log.warn(
                    "sending to RADIUS server {server} failed: {error};"
                    " retransmitting as if lost",
                    server=f"{server.host}:{server.port}",
                    error=str(e),
                )
            return
        if server.failing:
            server.failing = False
            self.log.info(
                "sending to RADIUS server {server} works again",
                server=f"{server.host}:{server.port}",
            )

    def _timeout(self, req: Request) -> None:
        req.timer = None
        index = req.server
        server = self.servers[index]
        server.timeouts += 1
        server.retransmissions += 1
        self.retransmissions += 1
        req.retransmitted = True
        if index == self.active and server.timeouts >= self.failover_after:
            self._fail_over(index)
        self._transmit(req)
        self._dispatch()

    def _fail_over(self, index: int) -> None:
        server = self.servers[index]
        was_down, server.up = server.up is False, False
        if len(self.servers) == 1:
            if not was_down:  # once, not at every retransmission
                self.log.warn(
                    "RADIUS server {server} not answering after {n} timeouts; no other server:"
                    " requests wait in the outbox and are retransmitted",
                    server=f"{server.host}:{server.port}", n=server.timeouts,
                    alert="radius_server_down", state="begins",
                )
            return
        self.active = (index + 1) % len(self.servers)
        nxt = self.servers[self.active]
        nxt.timeouts = 0
        self.log.warn(
            "RADIUS server {failed} not answering after {n} timeouts; using {next}",
            failed=f"{server.host}:{server.port}",
            n=server.timeouts,
            next=f"{nxt.host}:{nxt.port}",
            alert="radius_failover", state="begins",
        )
        # what waited for the failed server goes to the new one at its next
        # retransmission; what was queued goes now
        self._schedule_probe()

    # -- answers --------------------------------------------------------------

    def _received(self, index: int, data: bytes) -> None:
        server = self.servers[index]
        if len(data) < 20 or data[0] != AccountingResponse:
            return
        ident = data[1]
        sent = server.last_sent.get(ident)
        if sent is None:
            return  # an Identifier reused since, or never ours
        req, packet = sent
        if req != "probe" and len(data) == 20 and data[2:4] == b"\x00\x14":
            # no attributes (FreeRADIUS's usual answer): only the Response
            # Authenticator to check (RFC 2866 section 3)
            valid = hmac.compare_digest(
                data[4:20],
                hashlib.md5(data[:4] + packet[4:20] + server.secret).digest(),
            )
        else:
            try:
                if req != "probe":
                    packet = sent_packet(self.dictionary, packet, server.secret)
                reply = packet.CreateReply(packet=data)
                valid = packet.VerifyReply(reply, data)
            except (PacketError, KeyError, IndexError, ValueError):
                valid = False
        if not valid:
            self.log.warn(
                "invalid Accounting-Response from {server} (wrong secret?)",
                server=f"{server.host}:{server.port}",
            )
            return
        server.timeouts = 0
        if server.up is not True:
            if server.up is False and index >= self.active:
                self.log.info(
                    "RADIUS server {server} answers again", server=f"{server.host}:{server.port}",
                    alert="radius_server_down", state="clears",
                )
            server.up = True
        server.answered += 1
        if req == "probe":
            if server.probe_id == ident:
                server.release(ident)
                server.probe = None
                server.probe_id = None
        elif not req.answered:
            # the answer to its current packet, or to an earlier one (a
            # resend with a new Acct-Delay-Time, or sent before a
            # failover): either proves delivery
            req.answered = True
            if req.timer is not None and req.timer.active():
                req.timer.cancel()
            req.timer = None
            if not req.retransmitted:  # Karn: only unambiguous samples
                sample = (self.clock.seconds() - req.sent_at) * 1000
                server.rtt_ms = (
                    sample
                    if server.rtt_ms is None
                    else (1 - RTT_ALPHA) * server.rtt_ms + RTT_ALPHA * sample
                )
            if req.ident is not None:
                self.servers[req.server].release(req.ident)
            else:  # between two servers, waiting at the front for room
                self.queue.remove(req)
            req.deferred.callback(None)
        if index < self.active:
            self.log.info(
                "RADIUS server {server} answers again; returning to it",
                server=f"{server.host}:{server.port}",
                alert="radius_failover", state="clears",
            )
            self.active = index
        self._dispatch()

    # -- probes ---------------------------------------------------------------

    def _schedule_probe(self) -> None:
        if self._probe_call is None or not self._probe_call.active():
            self._probe_call = self.clock.callLater(self.probe_interval, self._probe)

    def _probe(self) -> None:
        """Status-Server (RFC 5997) to every server before the active one."""
        self._probe_call = None
        if not self._running or self.active == 0:
            return
        for server in self.servers[: self.active]:
            if server.probe_id is not None:
                server.release(server.probe_id, answered=False)
                server.probe_id = None
            ident = server.take_id()
            if ident is None:
                continue
            pkt = AcctPacket(
                code=StatusServer, id=ident, secret=server.secret, dict=self.dictionary
            )
            server.probe, server.probe_id = pkt, ident
            server.inflight[ident] = "probe"
            server.last_sent[ident] = ("probe", pkt)
            self._write(server, pkt.RequestPacket())
        self._schedule_probe()

    # -- visibility -----------------------------------------------------------

    def status(self) -> list[dict]:
        return [
            {
                "address": f"{s.host}:{s.port}",
                "active": i == self.active,
                "state": {True: "up", False: "down", None: "unknown"}[s.up],
                "rtt_ms": None if s.rtt_ms is None else round(s.rtt_ms, 3),
                "sent": s.sent,
                "answered": s.answered,
                "retransmissions": s.retransmissions,
                "in_flight": s.requests,
                "socket_buffer": s.buffer,
                "send_errors": s.send_errors,
            }
            for i, s in enumerate(self.servers)
        ]


def _size_buffers(port) -> int:
    """Grow the socket's buffers for bursts; the size the kernel granted."""
    sock = getattr(port, "socket", None)
    if sock is None:
        return 0
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)  # *BUFFORCE: root
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
