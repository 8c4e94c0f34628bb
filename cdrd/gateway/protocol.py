"""
GWP/1 over a stream transport: bytes in, session rules applied, events
handed to the BatchWriter, ACK written once they are durable.

The protocol holds only per-connection state (line buffer, timers, the
bad-packet meter).  A gateway's state lives in the GatewayRegistry; its
open calls in the call model.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from cdrd.config import Config
from cdrd.gateway import session as S
from cdrd.gateway.codec import MAX_LINE, BadPacket, format_message, parse_line, seq_hint
from cdrd.gateway.flood import BadPacketFlood
from cdrd.gateway.registry import GatewayLink, GatewayRegistry
from cdrd.interfaces import WriteBatch
from cdrd.store.leases import LeaseLost
from cdrd.values import CallEvent, LogEntry, rfc3339

LOGIN_TIMEOUT = 30.0  # seconds a connection may take to log in
MAX_QUEUED_LINES = 256  # lines a client may send before its OK arrives
HIGH_WATER = 20_000  # events waiting for the store: stop reading from gateways
LOW_WATER = 5_000  # ... and read again below this
REFUSAL_LOG_INTERVAL = 60.0  # seconds between log lines about refused connections

AWAITING_LOGIN, LOGGING_IN, LOGGED_IN, CLOSING = range(4)


def _ms(clock: IReactorTime) -> int:
    return int(clock.seconds() * 1000)


def _seq_of(msg) -> int | None:
    """A message's ``seq=`` where it is a valid one, for the ERR answering it."""
    value = msg.fields.get("seq")
    if value is None or not (0 < len(value) <= 18 and value.isascii() and value.isdigit()):
        return None
    return int(value) or None


class _Refused(Protocol):
    """cdrd has `server.max_connections` open: say so and close."""

    def connectionMade(self):
        self.transport.write(format_message(
            "ERR", {"code": "unavailable", "reason": "too many connections; retry later"}))
        self.transport.loseConnection()


class GatewayFactory(Factory):
    """Serves GWP/1 for every gateway of this node."""

    log = Logger()

    def __init__(
        self,
        config: Config,
        store,
        writer,
        clock: IReactorTime,
        registry: GatewayRegistry | None = None,
        open_refs: Callable[[str, str], set[int]] = lambda key, boot: set(),
        make_nonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ):
        self.config = config
        self.store = store
        self.writer = writer
        self.clock = clock
        self.registry = registry if registry is not None else GatewayRegistry()
        self.open_refs = open_refs
        self.make_nonce = make_nonce
        self._paused: set[GatewayProtocol] = set()
        self.connections: set[GatewayProtocol] = set()
        self.stopping = False
        self._refused = 0  # connections refused since the last log line about it
        # read by cdrd.metrics at scrape time; `ack_latency(seconds)` is set there
        self.events_received = self.events_duplicate = 0
        self.ack_latency = None
        self.flood = BadPacketFlood(clock, config.server.bad_packet_flood)
        self._refusal_logged: float | None = None
        # several nodes (cdrd.cluster): a LOGIN first takes the gateway's lease
        self.claim: Callable[[str], Deferred] = lambda key: succeed(None)

    def buildProtocol(self, addr):
        limit = self.config.server.max_connections
        if self.stopping or len(self.connections) >= limit:
            self._refuse(addr, limit)
            return _Refused()
        return GatewayProtocol(self, addr)

    def _refuse(self, addr, limit: int) -> None:
        """One log line per minute at most, with the count: a flood must not flood the log."""
        self._refused += 1
        now = self.clock.seconds()
        if self._refusal_logged is not None and now - self._refusal_logged < REFUSAL_LOG_INTERVAL:
            return
        self.log.warn(
            "refused {count} gateway connection(s), the last from {peer}: {why}",
            count=self._refused,
            peer=f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}",
            why="cdrd is stopping" if self.stopping
            else f"{limit} connections open (server.max_connections)",
        )
        self._refused = 0
        self._refusal_logged = now

    def shutdown(self) -> None:
        """
        cdrd is stopping: refuse new connections and close every open one,
        logging it (Gateway Disconnect) and storing its gateway offline now,
        while the writer and the store still run.
        """
        self.stopping = True
        for proto in list(self.connections):
            proto.serverShutdown()

    # -- back-pressure: the store is the bottleneck, not memory -------------

    def throttle(self, proto: GatewayProtocol) -> None:
        if getattr(self.writer, "pending", 0) > HIGH_WATER and proto not in self._paused:
            self._paused.add(proto)
            proto.transport.pauseProducing()

    def committed(self) -> None:
        if self._paused and getattr(self.writer, "pending", 0) < LOW_WATER:
            paused, self._paused = self._paused, set()
            for proto in paused:
                if proto.phase != CLOSING:
                    proto.transport.resumeProducing()

    def forget(self, proto: GatewayProtocol) -> None:
        self._paused.discard(proto)
        self.connections.discard(proto)

    def submit(self, batch: WriteBatch) -> Deferred:
        d = self.writer.submit(batch)
        submitted = self.clock.seconds()  # the lines' receipt: this reactor turn

        def done(result):
            self.committed()
            if self.ack_latency is not None and batch.events and not isinstance(result, Failure):
                self.ack_latency(self.clock.seconds() - submitted)
            return result

        return d.addBoth(done)


class GatewayProtocol(Protocol):
    log = Logger()

    def __init__(self, factory: GatewayFactory, addr):
        self.factory = factory
        self.peer = S.visible(f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}")
        self.phase = AWAITING_LOGIN
        self.key: str | None = None
        self.gw = "???"
        self.mac = ""
        self.link: GatewayLink | None = None
        self._buffer = b""
        self._queued: list[bytes] = []
        self._timer = None
        self._meter = S.BadPacketMeter()
        self._closed_why: str | None = None  # the log already says why
        self._finished = False  # the connection's end is logged and stored
        # collected while handling one chunk of data, written as one batch
        self._events: list[CallEvent] = []
        self._log: list[LogEntry] = []
        self._ack = 0

    # -- connection ----------------------------------------------------------

    def connectionMade(self):
        self.factory.connections.add(self)
        self.nonce = self.factory.make_nonce()
        now = self.now()
        self.send("HELLO", proto="1", nonce=self.nonce, time=rfc3339(now))
        self._timer = self.factory.clock.callLater(LOGIN_TIMEOUT, self._timed_out)

    def connectionLost(self, reason):
        self._finish(self.now(), "connection lost or closed without LOGOUT")

    def serverShutdown(self) -> None:
        """cdrd is stopping: log the end of this connection, store it, close."""
        self._finish(self.now(), "cdrd is shutting down")
        if self.transport is not None:
            self.transport.loseConnection()

    def _finish(self, now: int, why: str) -> None:
        """
        The end of the connection, once: its Gateway Disconnect entry (unless
        the log already says why it closed) and, if it spoke for its gateway,
        the gateway offline.  The offline state is stored after the
        gateway's submissions in flight have settled, with the last seq
        stored in order, so the store's `last` never runs ahead of it.
        """
        if self._finished:
            return
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.factory.forget(self)
        self.phase = CLOSING
        log = [] if self._closed_why is not None else [self.entry(S.DISCONNECT, why, now)]
        self._closed_why = self._closed_why or S.DISCONNECT
        self._events, self._ack = [], 0
        log, self._log = self._log + log, []
        link = self.link
        registry = self.factory.registry
        if link is None or not registry.detach(link, self):
            if log:
                self.factory.submit(WriteBatch(log=log)).addErrback(self._store_failed, "disconnect")
            return
        self.log.info("gateway {key} from {peer} went offline", key=self.key, peer=self.peer)

        def offline(_=None):
            # a newer connection that attached meanwhile stored the state already
            state = [registry.offline_state(link)] if link.connection is None else []
            d = self.factory.submit(WriteBatch(log=log, gateways=state))
            d.addErrback(self._store_failed, "disconnect")
            self._track(d, link)

        if link.pending is not None:
            link.pending.addCallback(offline)
        else:
            offline()

    def now(self) -> int:
        return _ms(self.factory.clock)

    def send(self, verb: str, **fields) -> None:
        if self.transport is not None:
            self.transport.write(format_message(verb, fields))

    def close(self, why: str | None) -> None:
        """Close; `why` is the log event already written for it (None: Disconnect is logged)."""
        if self.phase == CLOSING:
            return
        self.phase = CLOSING
        self._closed_why = why
        self.transport.loseConnection()

    def entry(self, event: str, detail: str, now: int) -> LogEntry:
        return S.log_entry(now, event, self.peer, self.gw, self.mac, detail)

    def _timed_out(self):
        now = self.now()
        if self.phase == LOGGED_IN:
            silent = f"silent for {self.factory.config.server.idle_timeout:g} s"
            self._log.append(self.entry(S.IDLE_TIMEOUT, silent, now))
        else:
            self._log.append(self.entry(S.DISCONNECT, f"no LOGIN within {LOGIN_TIMEOUT:g} s", now))
        self._flush()
        self.close(S.IDLE_TIMEOUT)

    # -- bytes -----------------------------------------------------------------

    def dataReceived(self, data: bytes):
        if self.phase == CLOSING:
            return
        if self.phase == LOGGED_IN:
            self._timer.reset(self.factory.config.server.idle_timeout)
            if self.link is not None:
                self.link.hear(self.now())
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            if self.phase == CLOSING:
                break
            self.lineReceived(line)
        if self.phase != CLOSING and len(self._buffer) > MAX_LINE + 1:
            seq = seq_hint(self._buffer)
            self._buffer = b""
            self.badPacket(f"line longer than {MAX_LINE} bytes", seq, close=True)
        self._flush()

    def lineReceived(self, line: bytes):
        if self.phase == LOGGING_IN:
            if len(self._queued) >= MAX_QUEUED_LINES:
                self.badPacket("too many lines before OK", seq_hint(line), close=True)
            else:
                self._queued.append(line)
            return
        if len(line) > MAX_LINE + (1 if line.endswith(b"\r") else 0):
            self.badPacket(f"line longer than {MAX_LINE} bytes", seq_hint(line), close=True)
            return
        try:
            msg = parse_line(line)
        except BadPacket as e:
            self.badPacket(e.reason, e.seq)
            return
        if msg is None:
            return
        if self.phase == AWAITING_LOGIN:
            if msg.verb == "LOGIN":
                self.loginReceived(msg)
            else:
                self.badPacket(f"expected LOGIN, got {msg.verb}", _seq_of(msg))
        elif msg.verb == "EV":
            self.eventReceived(msg)
        elif msg.verb == "PING":
            self.send("PONG")
        elif msg.verb == "LOGOUT":
            self.logoutReceived()
        elif msg.verb == "LOGIN":
            self.badPacket("already logged in", _seq_of(msg))
        else:
            self.badPacket(f"unknown verb {msg.verb}", _seq_of(msg))

    def badPacket(self, reason: str, seq: int | None, close: bool = False):
        now = self.now()
        self.factory.flood.record(self.peer.rsplit(":", 1)[0])
        fields = {"code": "bad"}
        if seq is not None:
            fields["seq"] = str(seq)
        fields["reason"] = reason
        self.send("ERR", **fields)
        detail = reason if seq is None else f"seq {seq}: {reason}"
        self._log.append(self.entry(S.BAD_PACKET, detail, now))
        if self.phase != LOGGED_IN:
            self.close(S.BAD_PACKET)
        elif close or self._meter.record(now):
            if not close:
                self._log.append(self.entry(S.BAD_PACKET, f"{S.BAD_PACKET_LIMIT} bad packets within 60 s: closed", now))
            self.close(S.BAD_PACKET)

    # -- login -------------------------------------------------------------------

    def loginReceived(self, msg):
        received = self.now()  # the skew is measured here, not after the lookups
        try:
            req = S.check_login(msg, self.nonce, self.factory.config)
        except S.LoginRefused as e:
            self.gw, self.mac = e.gateway, e.mac
            self.send("ERR", code=e.code, reason=e.reason)
            entry = self.entry(S.LOGIN_REJECTED, f"code={e.code} {e.reason}", received)
            self._log.append(entry)
            self.log.warn(
                "login of gateway {gw} from {peer} rejected: {detail}",
                gw=entry.gateway, peer=self.peer, detail=entry.detail,
            )
            self.close(S.LOGIN_REJECTED)
            return
        self.phase = LOGGING_IN
        self.gw, self.mac, self.key = req.gw, req.mac, req.key
        self.transport.pauseProducing()
        registry = self.factory.registry
        registry.begin_login(req.key)
        d = self.factory.claim(req.key)
        d.addCallback(lambda _: self.factory.store.gateway(req.key))
        d.addCallback(self._settled, req)
        d.addCallback(self._loggedIn, req, received)

        def ended(result):
            registry.end_login(req.key)
            return result

        d.addBoth(ended)
        d.addErrback(self._store_failed, "login")

    def _settled(self, stored, req):
        """Wait until the gateway's earlier submissions have committed or failed."""
        link = self.factory.registry.get(req.key)
        if link is None or link.pending is None:
            return stored
        waiter = Deferred()
        link.pending.addBoth(lambda _: waiter.callback(stored))
        return waiter

    def _loggedIn(self, stored, req, received: int):
        if self.phase == CLOSING:
            return
        factory = self.factory
        now = self.now()
        registry = factory.registry
        link = registry.get(req.key)
        heard = None
        if link is not None:
            # this node's live view is newer than any read of the store
            stored = evolve(link.state, last_seq=link.committed)
            heard = link.heard
        old = registry.connection(req.key)
        relogin = old is not None and old is not self
        boot = stored.boot if stored is not None else (req.boot_token or "r0")
        outcome = S.decide_login(
            req,
            stored,
            factory.open_refs(req.key, boot),
            now,
            self.peer,
            int(factory.config.server.clock_tolerance * 1000),
            relogin,
            received=received,
            heard=heard,
        )
        log = list(outcome.log)
        if relogin:
            log.append(old.kickedOut(now))
        self.link = link = registry.attach(outcome.state, self)
        link.state = evolve(link.state, last_seq=link.committed)
        batch = WriteBatch(
            events=[outcome.restart] if outcome.restart else [],
            log=log,
            gateways=[link.state],
        )
        d = factory.submit(batch)
        d.addCallbacks(self._accepted, self._store_failed, callbackArgs=(link,), errbackArgs=("login",))
        self._track(d, link)

    def _accepted(self, _, link: GatewayLink):
        if self.phase == CLOSING:
            return
        self.phase = LOGGED_IN
        self.send("OK", session=secrets.token_hex(4), last=str(link.committed))
        self.log.info(
            "gateway {key} logged in from {peer} (last={last}, boot={boot}, skew={skew} ms)",
            key=self.key, peer=self.peer, last=link.committed, boot=link.state.boot,
            skew=link.state.skew_ms,
        )
        self._timer.reset(self.factory.config.server.idle_timeout)
        queued, self._queued = self._queued, []
        for line in queued:
            if self.phase != LOGGED_IN:
                break
            self.lineReceived(line)
        self._flush()
        if self.phase == LOGGED_IN:
            self.transport.resumeProducing()

    def kickedOut(self, now: int) -> LogEntry:
        """A newer connection of the same gateway logged in: this one goes."""
        entry = self.entry(S.RELOGIN_KICKOUT, f"Gateway[{self.gw}] from [{self.peer}] Relogin Kickout", now)
        self._events, self._log = [], []
        self.close(S.RELOGIN_KICKOUT)
        return entry

    def logoutReceived(self):
        now = self.now()
        self._log.append(self.entry(S.LOGOUT, f"[Logout: {self.gw}] [IP:{self.peer.rsplit(':', 1)[0]}]", now))
        link = self.link
        self._flush()
        self.phase = CLOSING  # nothing more is read; BYE once all is stored
        self._closed_why = S.LOGOUT

        def bye(_=None):
            self.send("BYE")
            self.transport.loseConnection()

        if link is not None and link.pending is not None:
            link.pending.addBoth(bye)
        else:
            bye()

    # -- events ------------------------------------------------------------------

    def eventReceived(self, msg):
        link = self.link
        now = self.now()
        try:
            parsed = S.parse_event(msg, self.key, link.state.boot, link.state.skew_ms, now)
        except BadPacket as e:
            self.badPacket(e.reason, e.seq)
            return
        seq = parsed.seq
        self.factory.events_received += 1
        if parsed.problems:
            reason = "; ".join(parsed.problems)
            self.send("ERR", code="bad", seq=str(seq), reason=reason)
            self._log.append(self.entry(S.BAD_PACKET, f"seq {seq}: {reason} (event stored)", now))
        if seq > self._ack:
            self._ack = seq
        if seq <= link.submitted:
            self.factory.events_duplicate += 1
            return  # a duplicate: acked, not stored again
        if seq > link.submitted + 1:
            self._log.append(self.entry(S.SEQUENCE_GAP, f"expected seq {link.submitted + 1}, got {seq}", now))
        link.submitted = seq
        # heard "at" the event's own time when that is later (a clock ahead
        # within the tolerance): a restart never ends a call before its events
        link.hear(parsed.event.time)
        self._events.append(parsed.event)

    def _flush(self):
        """Write what this chunk produced as one batch; ACK when it commits."""
        events, log, ack = self._events, self._log, self._ack
        self._events, self._log, self._ack = [], [], 0
        link = self.link
        if not events and not log:
            if ack and link is not None:
                self._ack_when_stored(link, ack)
            return
        gateways = []
        if events and link is not None:
            link.state = evolve(link.state, last_seq=link.submitted, last_heard=link.heard)
            gateways.append(link.state)
        d = self.factory.submit(WriteBatch(events=events, log=log, gateways=gateways))
        if link is None:
            d.addErrback(self._store_failed, "log")
            return
        top = events[-1].seq if events else 0
        d.addCallbacks(
            self._stored, self._store_failed,
            callbackArgs=(link, top, ack), errbackArgs=("events",),
        )
        self._track(d, link)
        self.factory.throttle(self)

    def _track(self, d: Deferred, link: GatewayLink) -> Deferred:
        """
        Make `link.pending` fire once `d` has settled (its own callbacks,
        which update `link.committed`/`link.failed`, run first); then drop
        the link if nothing needs it any more.
        """
        settled = Deferred()
        link.pending = settled
        registry = self.factory.registry

        def done(result):
            if link.pending is settled:
                link.pending = None
            settled.callback(None)
            registry.release(link.state.key)
            return result

        return d.addBoth(done)

    def _stored(self, _, link: GatewayLink, top: int, ack: int):
        if top and not link.failed:
            link.committed = max(link.committed, top)
        if ack and not link.failed and self._open():
            self.send("ACK", seq=str(ack))

    def _open(self) -> bool:
        """Still talking to the gateway (a LOGOUT waits for its ACKs before BYE)."""
        return self.phase == LOGGED_IN or self._closed_why == S.LOGOUT

    def _ack_when_stored(self, link: GatewayLink, ack: int):
        if ack <= link.committed:
            self.send("ACK", seq=str(ack))
        elif link.pending is not None:
            link.pending.addCallback(lambda _: self._stored(None, link, 0, ack))

    def _store_failed(self, failure, what: str):
        # the writer logged the store's error once per transaction; this
        # says whom it hit
        self.log.warn(
            "store write failed ({what}) for gateway {gateway} from {peer}: {error}",
            what=what, gateway=self.gw, peer=self.peer,
            error=f"{failure.type.__name__}: {failure.getErrorMessage()}",
        )
        if failure.check(LeaseLost) and self.phase != CLOSING and self.transport is not None:
            self.close(S.RELOGIN_KICKOUT)  # it logged in on another cdrd node
            return
        if what == "events" and self.link is not None:
            # `committed` stops here until the next login (the writer fails
            # this gateway's later submissions already queued, too)
            self.link.failed = True
        if self.phase != CLOSING and self.transport is not None:
            self.send("ERR", code="unavailable", reason="store write failed; reconnect and resend")
            self.close("store")
