"""
The CUI from RADIUS (accounting.md, "Optional: CUI from RADIUS"; RFC 4372).

Where `[radius] authorize = true`, every incoming call (PSTN_CALL_IN, and
CALL_IN from a gateway) stored in the event log makes one Access-Request:
User-Name = the calling number; Calling-Station-Id, Called-Station-Id (where
known), NAS-Port-Id, NAS-Identifier; Chargeable-User-Identity = one NUL byte
(the client supports CUI, RFC 4372 section 2.1); Message-Authenticator
(RFC 3579, required by the BlastRADIUS countermeasures).

Its answer, or its absence after `auth_retries` resends to each of
`auth_servers` in order, is written to the event log as a synthetic
RADIUS_CUI event of the call (seq None), through the writer like every
event: the call model applies it (a CUI in an Access-Accept makes the
caller's sticky CDR), and a replay after a restart or kill -9 gives the same
CDRs.  Nothing waits for it: ingest and ACKs go on, and a call that ends
before the answer is written keeps its fallback (the line's configured
`cui`, or a trusted `cui=`, else none).  A request in flight at a crash is
not sent again (the call keeps its fallback, as the replay does).

Bounded: at most 256 requests in flight per server socket (one-byte
Identifiers); a call arriving when they are all taken is answered
`overload` at once.  pyrad builds and checks the packets; the I/O is
Twisted UDP.
"""

from __future__ import annotations

import ipaddress

from pyrad.packet import AccessAccept, AccessReject, AccessRequest, AuthPacket, Packet
from twisted.application.service import Service
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from cdrd.accounting import packets
from cdrd.interfaces import WriteBatch
from cdrd.values import RADIUS_CUI, CallEvent

#: One-byte Identifiers: requests in flight per server socket.
IDENTIFIERS = 256
ACCEPT, REJECT, TIMEOUT, OVERLOAD = "accept", "reject", "timeout", "overload"


def asks(config, event: CallEvent) -> bool:
    """Whether `event` is an incoming call whose CUI cdrd asks RADIUS for."""
    if not config.radius.authorize or event.seq is None:
        return False
    if event.type not in ("PSTN_CALL_IN", "CALL_IN") or not event.field("cli"):
        return False
    gc = config.gateways.get(event.gateway)
    if gc is None:
        return True
    if not gc.authorize:
        return False
    if event.type == "PSTN_CALL_IN":
        line = gc.lines.get(event.int_field("pport"))
        return line is None or line.authorize
    return True


def access_attributes(event: CallEvent, nas_ip: str | None) -> list[tuple[str, object]]:
    """The attributes of the Access-Request for incoming call `event`."""
    cli = packets._text(event.field("cli") or "")
    attrs: list[tuple[str, object]] = [
        ("User-Name", cli),
        ("Calling-Station-Id", cli),
    ]
    if event.field("to"):
        attrs.append(("Called-Station-Id", packets._text(event.field("to"))))
    if nas_ip:
        v6 = ipaddress.ip_address(nas_ip).version == 6
        attrs.append(("NAS-IPv6-Address" if v6 else "NAS-IP-Address", nas_ip))
    attrs.append(("NAS-Identifier", packets._text(event.gateway)))
    for name, kind in (("port", "fxs"), ("pport", "fxo")):
        number = event.int_field(name)
        if number is not None and (event.type == "CALL_IN") == (kind == "fxs"):
            attrs.append(("NAS-Port-Id", f"{kind}/{number}"))
    attrs.append(("Chargeable-User-Identity", b"\x00"))
    return attrs


def answer_event(event: CallEvent, result: str, cui: str, now: int) -> CallEvent:
    """The synthetic event that records the answer about `event`'s call."""
    fields = {"result": result}
    if cui:
        fields["cui"] = cui
    return CallEvent(
        gateway=event.gateway,
        seq=None,
        ref=event.ref,
        type=RADIUS_CUI,
        time=event.time,  # the call's own time line: it changes no time
        received=now,
        boot=event.boot,
        fields=fields,
    )


class _Socket(DatagramProtocol):
    def __init__(self, owner, index):
        self.owner = owner
        self.index = index

    def datagramReceived(self, data, addr):
        self.owner._received(self.index, data, addr)


class _Request:
    __slots__ = ("event", "server", "tries", "ident", "packet", "raw", "timer")

    def __init__(self, event):
        self.event = event
        self.server = 0
        self.tries = 0
        self.ident = None
        self.packet = None
        self.raw = b""
        self.timer = None


class CuiAuthorizer(Service):
    """Asks RADIUS for the CUI of incoming calls; records each answer."""

    name = "radius-authorize"
    log = Logger()

    def __init__(self, config, writer, clock, reactor, dictionary=None):
        self.config = config
        self.radius = config.radius
        self.writer = writer
        self.clock = clock
        self.reactor = reactor
        self.dictionary = dictionary or packets.load_dictionary(self.radius.vendor)
        self.servers = self.radius.auth_servers
        self._ports = []
        self._flight: list[dict[int, _Request]] = [{} for _ in self.servers]
        self._next_id = [0] * len(self.servers)
        self.counts = {ACCEPT: 0, REJECT: 0, TIMEOUT: 0, OVERLOAD: 0, "sent": 0}

    # -- service -------------------------------------------------------------

    def startService(self):
        super().startService()
        for i, server in enumerate(self.servers):
            v6 = ipaddress.ip_address(server.host).version == 6
            self._ports.append(
                self.reactor.listenUDP(0, _Socket(self, i), interface="::" if v6 else "")
            )
        self.writer.add_listener(self.committed)

    def stopService(self):
        super().stopService()
        try:
            self.writer.remove_listener(self.committed)
        except ValueError:
            pass
        for flight in self._flight:
            for request in flight.values():
                if request.timer is not None and request.timer.active():
                    request.timer.cancel()
            flight.clear()
        ports, self._ports = self._ports, []
        for port in ports:
            port.stopListening()

    # -- input: the writer's commits -------------------------------------------

    def committed(self, batch, result):
        if not self.running:
            return
        for event in result.events:
            if asks(self.config, event):
                self._ask(_Request(event))

    # -- requests ---------------------------------------------------------------

    def _ask(self, request: _Request):
        flight = self._flight[request.server]
        if len(flight) >= IDENTIFIERS:
            self._record(request, OVERLOAD, "")
            return
        ident = self._next_id[request.server]
        while ident in flight:
            ident = (ident + 1) % IDENTIFIERS
        self._next_id[request.server] = (ident + 1) % IDENTIFIERS
        server = self.servers[request.server]
        packet = AuthPacket(
            code=AccessRequest,
            id=ident,
            secret=server.secret.encode(),
            dict=self.dictionary,
            message_authenticator=True,
        )
        for name, value in access_attributes(request.event, self.radius.nas_ip):
            packet.AddAttribute(name, value)
        request.ident = ident
        request.packet = packet
        request.raw = packet.RequestPacket()
        request.tries = 0
        flight[ident] = request
        self._send(request)

    def _send(self, request: _Request):
        server = self.servers[request.server]
        request.tries += 1
        self.counts["sent"] += 1
        try:
            self._ports[request.server].write(request.raw, (server.host, server.port))
        except OSError as e:  # a refused send is a lost packet
            self.log.warn(
                "radius.auth_servers: sending to {address} failed: {error}",
                address=f"{server.host}:{server.port}",
                error=e,
            )
        request.timer = self.clock.callLater(
            self.radius.auth_timeout, self._timeout, request
        )

    def _timeout(self, request: _Request):
        request.timer = None
        if request.tries <= self.radius.auth_retries:
            self._send(request)
            return
        del self._flight[request.server][request.ident]
        if request.server + 1 < len(self.servers):
            request.server += 1
            self._ask(request)
            return
        self.log.warn(
            "radius.auth_servers: no answer about call {ref} of {gateway}:"
            " it keeps its configured CUI, if any (radius.auth_timeout)",
            ref=request.event.ref,
            gateway=request.event.gateway,
        )
        self._record(request, TIMEOUT, "")

    def _received(self, index, data, addr):
        server = self.servers[index]
        if len(data) < 20:
            return
        request = self._flight[index].get(data[1])
        if request is None:
            return
        try:
            reply = Packet(
                secret=server.secret.encode(), dict=self.dictionary, packet=data
            )
        except Exception:  # noqa: BLE001 - a malformed datagram is dropped, as lost
            self.log.warn("radius.auth_servers: a malformed answer from {addr}", addr=addr)
            return
        if reply.code not in (AccessAccept, AccessReject) or not request.packet.VerifyReply(
            reply, data, enforce_ma=True
        ):
            self.log.warn(
                "radius.auth_servers: an answer from {addr} failed verification"
                " (secret, Message-Authenticator): ignored",
                addr=addr,
            )
            return
        del self._flight[index][request.ident]
        if request.timer is not None and request.timer.active():
            request.timer.cancel()
        if reply.code == AccessReject:
            self._record(request, REJECT, "")
            return
        cui = b"".join(
            v if isinstance(v, bytes) else str(v).encode()
            for v in reply.get("Chargeable-User-Identity", [])[:1]
        )
        text = cui.decode("utf-8", "replace").strip("\x00")
        self._record(request, ACCEPT, text)

    # -- output: the event log ----------------------------------------------------

    def _record(self, request: _Request, result: str, cui: str):
        self.counts[result] += 1
        now = int(self.clock.seconds() * 1000)
        event = answer_event(request.event, result, cui, now)
        d = self.writer.submit(WriteBatch(events=[event]))
        d.addErrback(
            lambda f: self.log.error(
                "radius.authorize: recording the answer about call {ref} of"
                " {gateway} failed: {error}",
                ref=event.ref,
                gateway=event.gateway,
                error=f.getErrorMessage(),
            )
        )

    def status(self) -> dict:
        return {
            "in_flight": sum(len(f) for f in self._flight),
            **self.counts,
        }
