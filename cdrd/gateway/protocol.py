"""
GWP/1 over a stream transport: bytes to lines, lines to the GatewaySession
(cdrd.gateway.session, the rules), its actions to writes and store batches;
ACK once they are durable.

The protocol holds only per-connection plumbing (line buffer, timer,
transport).  A gateway's state lives in the GatewayRegistry; its open calls
in the call model.  The factory keeps the connection budgets: connections
not logged in per source address and in all (the oldest gives way to a new
one), gateways logged in (`server.max_connections`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from cdrd.config import Config
from cdrd.gateway import session as S
from cdrd.gateway.budget import ConnectionBudgets, LogEvery
from cdrd.gateway.coalesce import GatewayLogCoalescer
from cdrd.gateway.codec import MAX_LINE, format_message
from cdrd.gateway.flood import BadPacketFlood
from cdrd.gateway.registry import GatewayLink, GatewayRegistry
from cdrd.interfaces import IBatchWriter, WriteBatch
from cdrd.store.leases import LeaseLost
from cdrd.values import LogEntry

HIGH_WATER = 20_000  # events waiting for the store: stop reading from gateways
LOW_WATER = 5_000  # ... and read again below this
REFUSAL_LOG_INTERVAL = 60.0  # seconds between log lines about refused connections


def _ms(clock: IReactorTime) -> int:
    return int(clock.seconds() * 1000)


def _host(addr) -> str:
    return str(getattr(addr, "host", "?"))


class _Refused(Protocol):
    """cdrd is stopping: say so and close."""

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
        writer: IBatchWriter,
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
        server = config.server
        self.budgets = ConnectionBudgets(
            server.unauthenticated_per_address, server.unauthenticated_total, server.max_connections)
        self.stopping = False
        # read by cdrd.metrics at scrape time; `ack_latency(seconds)` is set there
        self.events_received = self.events_duplicate = 0
        self.connections_given_way = 0  # not logged in, closed for a newer connection
        self.ack_latency = None
        self.flood = BadPacketFlood(clock, config.server.bad_packet_flood)
        self.coalescer = GatewayLogCoalescer(writer, clock)  # repeated log entries: one row with a count
        # operator log lines about refusals and connections that gave way:
        # at most one a minute each, with the count
        self._refusals = LogEvery(REFUSAL_LOG_INTERVAL)
        self._given_way = LogEvery(REFUSAL_LOG_INTERVAL)
        # several nodes (cdrd.cluster): a LOGIN first takes the gateway's
        # lease; fires once this node owns the gateway and its open calls
        self.claim: Callable[[str], Deferred] = lambda key: succeed(None)

    def buildProtocol(self, addr):
        if self.stopping:
            self._refuse(f"{_host(addr)}:{getattr(addr, 'port', '?')}", "cdrd is stopping")
            return _Refused()
        for proto, setting in self.budgets.arriving(S.visible(_host(addr))):
            self._give_way(proto, setting)
        return GatewayProtocol(self, addr)

    def connected(self, proto: GatewayProtocol) -> None:
        self.connections.add(proto)
        self.budgets.waiting(proto, proto.host)

    def admit(self, proto: GatewayProtocol, key: str) -> bool:
        """`proto`'s LOGIN of `key` passed its checks: is there room for one more gateway?"""
        if self.budgets.admit(proto, known=self.registry.get(key) is not None):
            return True
        limit = self.config.server.max_connections
        self._refuse(proto.peer, f"{limit} gateways logged in (server.max_connections)")
        return False

    def _give_way(self, proto: GatewayProtocol, setting: str) -> None:
        proto.giveWay(setting)
        self.connections_given_way += 1
        count = self._given_way.note(self.clock.seconds())
        if count is not None:
            self.log.warn(
                "{count} connection(s) not logged in gave way to newer ones, the last from {peer}:"
                " {limit} not logged in ({setting})",
                count=count, peer=proto.peer, setting=setting,
                limit=getattr(self.config.server, setting.split(".", 1)[1]),
            )

    def _refuse(self, peer: str, why: str) -> None:
        """One log line per minute at most, with the count: a flood must not flood the log."""
        count = self._refusals.note(self.clock.seconds())
        if count is not None:
            self.log.warn(
                "refused {count} gateway connection(s), the last from {peer}: {why}",
                count=count, peer=peer, why=why,
            )

    def moved(self, proto: GatewayProtocol) -> None:
        """
        `proto`'s gateway logged in on another cdrd node (it took the
        lease): this connection goes as a relogin kickout, logged here.
        """
        entry = proto.kickedOut(_ms(self.clock))
        self.submit(WriteBatch(log=[entry])).addErrback(
            lambda f: self.log.warn("logging the kickout of gateway {key} failed: {error}",
                                    key=entry.gateway, error=f.getErrorMessage()))

    def shutdown(self) -> None:
        """
        cdrd is stopping: refuse new connections and close every open one,
        logging it (Gateway Disconnect) and storing its gateway offline now,
        while the writer and the store still run.
        """
        self.stopping = True
        for proto in list(self.connections):
            proto.serverShutdown()
        self.coalescer.close()

    # -- back-pressure: the store is the bottleneck, not memory -------------

    def throttle(self, proto: GatewayProtocol) -> None:
        if self.writer.pending > HIGH_WATER and proto not in self._paused:
            self._paused.add(proto)
            proto.transport.pauseProducing()

    def committed(self) -> None:
        if self._paused and self.writer.pending < LOW_WATER:
            paused, self._paused = self._paused, set()
            for proto in paused:
                if proto.phase != S.CLOSING:
                    proto.transport.resumeProducing()

    def closing(self, proto: GatewayProtocol) -> None:
        """`proto` is closing (its transport may take a while): it counts in no budget now."""
        self.budgets.leave(proto)

    def forget(self, proto: GatewayProtocol) -> None:
        self._paused.discard(proto)
        self.connections.discard(proto)
        self.closing(proto)

    def submit(self, batch: WriteBatch) -> Deferred:
        d = self.coalescer.submit(batch)
        submitted = self.clock.seconds()  # the lines' receipt: this reactor turn

        def done(result):
            self.committed()
            if self.ack_latency is not None and batch.events and not isinstance(result, Failure):
                self.ack_latency(self.clock.seconds() - submitted)
            return result

        return d.addBoth(done)


class GatewayProtocol(LineOnlyReceiver, TimeoutMixin):
    """
    Bytes to lines (LineOnlyReceiver), lines to the GatewaySession, and its
    actions to writes, store batches and the registry; the login and idle
    timeouts are TimeoutMixin's, on the factory's clock.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE + 1  # the CR of a CRLF is not counted (GatewaySession checks)
    log = Logger()

    def __init__(self, factory: GatewayFactory, addr):
        self.factory = factory
        self.callLater = factory.clock.callLater  # TimeoutMixin's timers
        self.host = S.visible(str(getattr(addr, "host", "?")))
        self.peer = S.visible(f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}")
        self.session = S.GatewaySession(factory.config, self.peer, factory.make_nonce())
        self.link: GatewayLink | None = None
        self._finished = False  # the connection's end is logged and stored

    @property
    def phase(self) -> str:
        return self.session.phase

    def now(self) -> int:
        return _ms(self.factory.clock)

    # -- connection ----------------------------------------------------------

    def connectionMade(self):
        self.factory.connected(self)
        self.send(self.session.hello(self.now()))
        self.setTimeout(self.factory.config.server.login_timeout)

    def connectionLost(self, reason):
        self._finish(self.now(), "connection lost or closed without LOGOUT")

    def serverShutdown(self) -> None:
        """cdrd is stopping: log the end of this connection, store it, close."""
        self._finish(self.now(), "cdrd is shutting down")
        if self.transport is not None:
            self.transport.loseConnection()

    def giveWay(self, setting: str) -> None:
        """
        Not logged in, the oldest of a full budget (`setting`): make room
        for a newer connection.  Not a gateway log entry (no gateway is
        known; the factory's log line counts them).
        """
        self.send(S.Send("ERR", {"code": "unavailable",
                                 "reason": "too many connections not logged in; retry later"}))
        self.session.close(f"gave way ({setting})")
        self._finish(self.now(), "gave way")
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
        self.setTimeout(None)
        self.factory.forget(self)
        log = self.session.finish(now, why)
        link = self.link
        registry = self.factory.registry
        if link is None or not registry.detach(link, self):
            if log:
                self.factory.submit(WriteBatch(log=log)).addErrback(self._store_failed, "disconnect")
            return
        self.log.info("gateway {key} from {peer} went offline", key=self.session.key, peer=self.peer)

        def offline(_):
            # a newer connection that attached meanwhile stored the state already
            state = [registry.offline_state(link)] if link.connection is None else []
            d = self.factory.submit(WriteBatch(log=log, gateways=state))
            d.addErrback(self._store_failed, "disconnect")
            registry.track(link, d)

        registry.settled(link).addCallback(offline)

    def timeoutConnection(self):
        self._do([self.session.timed_out(self.now())])

    # -- bytes -----------------------------------------------------------------

    def dataReceived(self, data: bytes):
        if self.session.phase == S.CLOSING:
            return
        if self.session.phase == S.LOGGED_IN:
            self.resetTimeout()
            self.factory.registry.hear(self.link, self.now())
        super().dataReceived(data)
        self._flush()

    def lineReceived(self, line: bytes):
        self._do(self.session.line(self.now(), line))

    def lineLengthExceeded(self, line: bytes):
        partial = line is self._buffer
        if partial:  # what is buffered of a line is over the limit: dropped
            self._buffer = b""
        self._do(self.session.too_long(self.now(), line, partial))

    # -- the session's actions -----------------------------------------------------

    def send(self, message: S.Send) -> None:
        if self.transport is not None:
            self.transport.write(format_message(message.verb, message.fields))

    def _do(self, actions) -> None:
        for action in actions:
            handler = self._ACTIONS[type(action)]
            handler(self, action)

    def _close(self, action: S.Close) -> None:
        self.session.close(action.why)
        self.factory.closing(self)
        self._flush()
        self.setTimeout(None)
        if self.transport is not None:
            self.transport.loseConnection()

    def _count_bad_packet(self, action: S.CountBadPacket) -> None:
        self.factory.flood.record(self.host)

    def _rejected(self, action: S.Rejected) -> None:
        self.log.warn(
            "login of gateway {gw} from {peer} rejected: {detail}",
            gw=action.entry.gateway, peer=self.peer, detail=action.entry.detail,
        )

    def _bye(self, action: S.Bye) -> None:
        self._flush()

        def bye(_):
            self.send(S.Send("BYE"))
            self.transport.loseConnection()

        self.factory.registry.settled(self.link).addCallback(bye)

    # -- login -------------------------------------------------------------------

    def _look_up(self, look_up: S.LookUp) -> None:
        key = look_up.request.key
        if not self.factory.admit(self, key):
            self.send(S.Send("ERR", {"code": "unavailable", "reason": "too many connections; retry later"}))
            self._close(S.Close("refused"))
            return
        # the LOGIN is in: the login timeout bounds the client, not the store
        self.setTimeout(None)
        self.transport.pauseProducing()
        registry = self.factory.registry
        registry.begin_login(key)
        d = self.factory.claim(key)
        d.addCallback(lambda _: self.factory.store.gateway(key))
        # wait until the gateway's earlier submissions have committed or failed
        d.addCallback(lambda stored: registry.settled(registry.get(key)).addCallback(lambda _: stored))
        d.addCallback(self._loggedIn, look_up)

        def ended(result):
            registry.end_login(key)
            return result

        d.addBoth(ended)
        d.addErrback(self._store_failed, "login")

    def _loggedIn(self, stored, look_up: S.LookUp):
        if self.session.phase == S.CLOSING:
            return
        factory = self.factory
        now = self.now()
        registry = factory.registry
        key = look_up.request.key
        link = registry.get(key)
        heard = None
        if link is not None:
            # this node's live view is newer than any read of the store
            stored = evolve(link.state, last_seq=link.committed)
            heard = link.heard
        old = registry.connection(key)
        relogin = old is not None and old is not self
        boot = stored.boot if stored is not None else (look_up.request.boot_token or "r0")
        outcome = self.session.decide(now, look_up, stored, factory.open_refs(key, boot), relogin, heard)
        log = list(outcome.log)
        if relogin:
            log.append(old.kickedOut(now))
        self.link = link = registry.attach(outcome.state, self)
        batch = WriteBatch(
            events=[outcome.restart] if outcome.restart else [],
            log=log,
            gateways=[link.state],
        )
        d = factory.submit(batch)
        d.addCallbacks(self._accepted, self._store_failed, callbackArgs=(link,), errbackArgs=("login",))
        registry.track(link, d)

    def _accepted(self, _, link: GatewayLink):
        if self.session.phase == S.CLOSING:
            return
        self.log.info(
            "gateway {key} logged in from {peer} (last={last}, boot={boot}, skew={skew} ms)",
            key=self.session.key, peer=self.peer, last=link.committed, boot=link.state.boot,
            skew=link.state.skew_ms,
        )
        self.setTimeout(self.factory.config.server.idle_timeout)
        self._do(self.session.accepted(self.now(), link.state, link.committed, secrets.token_hex(4)))
        self._flush()
        if self.session.phase == S.LOGGED_IN:
            self.transport.resumeProducing()

    def kickedOut(self, now: int) -> LogEntry:
        """A newer connection of the same gateway logged in: this one goes."""
        entry, close = self.session.kicked_out(now)
        self._close(close)
        return entry

    _ACTIONS = {
        S.Send: send,
        S.Close: _close,
        S.LookUp: _look_up,
        S.Rejected: _rejected,
        S.CountBadPacket: _count_bad_packet,
        S.Bye: _bye,
    }

    # -- the batch ---------------------------------------------------------------

    def _flush(self):
        """Write what this chunk produced as one batch; ACK when it commits."""
        batch = self.session.flush()
        if batch is None:
            return
        factory = self.factory
        factory.events_received += batch.received
        factory.events_duplicate += batch.duplicates
        link = self.link
        registry = factory.registry
        if not batch.events and not batch.log:
            if batch.ack and link is not None:
                self._ack_when_stored(link, batch.ack)
            return
        gateways = []
        if batch.events and link is not None:
            gateways.append(registry.submitting(link, batch.top, batch.heard))
        d = factory.submit(WriteBatch(events=batch.events, log=batch.log, gateways=gateways))
        if link is None:
            d.addErrback(self._store_failed, "log")
            return
        d.addCallbacks(
            self._stored, self._store_failed,
            callbackArgs=(link, batch.top, batch.ack), errbackArgs=("events",),
        )
        registry.track(link, d)
        factory.throttle(self)

    def _stored(self, _, link: GatewayLink, top: int, ack: int):
        if self.factory.registry.stored(link, top) and ack and self.session.talking:
            self.send(S.Send("ACK", {"seq": str(ack)}))

    def _ack_when_stored(self, link: GatewayLink, ack: int):
        if ack <= link.committed:
            self.send(S.Send("ACK", {"seq": str(ack)}))
        elif link.pending is not None:
            self.factory.registry.settled(link).addCallback(lambda _: self._stored(None, link, 0, ack))

    def _store_failed(self, failure, what: str):
        # the writer logged the store's error once per transaction; this
        # says whom it hit (not worth a line per gateway while the writer
        # already says that the store refuses every write)
        refusing = self.factory.writer.refusing is not None
        (self.log.debug if refusing else self.log.warn)(
            "store write failed ({what}) for gateway {gateway} from {peer}: {error}",
            what=what, gateway=self.session.gw, peer=self.peer,
            error=f"{failure.type.__name__}: {failure.getErrorMessage()}",
        )
        if what == "events" and self.link is not None:
            self.factory.registry.fail(self.link)
        if failure.check(LeaseLost) and self.session.phase != S.CLOSING and self.transport is not None:
            self.factory.moved(self)
            return
        if self.session.phase != S.CLOSING and self.transport is not None:
            self.send(S.Send("ERR", {"code": "unavailable", "reason": "store write failed; reconnect and resend"}))
            self._close(S.Close("store"))
