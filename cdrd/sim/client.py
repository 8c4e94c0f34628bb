"""
A simulated GWP/1 gateway (gateway-protocol.md, "Session"), the client side.

`SimGateway` is the gateway: its identity, its seq counter and the events it
has not yet seen acknowledged.  It outlives connections, as a real gateway
does: after a reconnect it resends, with the same seq and bytes, every event
above the ``last`` of the new ``OK``.  `GatewayClientProtocol` is one TCP
connection of it: HELLO -> LOGIN (signed where a secret is given) -> OK/ERR,
then ``EV`` lines within a window of unacknowledged events, ``PING`` at an
interval, ``LOGOUT`` -> ``BYE``.

A gateway never gives up on a server that cannot take it now: a refused or
dropped connection, and ``ERR code=unavailable`` (the store refusing
writes, no room), are retried with a backoff of 1 s doubling to 60 s, with
jitter; only a rejection (``proto``, ``auth``, ``denied``, ``bad`` at login)
ends it.  A reconnect is not a reboot: the LOGIN keeps its ``boot`` and
says the highest call reference used so far as ``callref``.

The reactor is a parameter throughout; nothing here reads the wall clock
except through ``clock.seconds()``.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Iterable

from attrs import define, field, frozen
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from cdrd.gateway.codec import (
    BadPacket,
    escape,
    format_gateway_time,
    format_message,
    login_auth,
    parse_line,
)

#: ERR codes at login that are a rejection: not retried until reconfigured
#: (gateway-protocol.md, Session step 3).  Any other code (``unavailable``,
#: or one this simulator does not know) means "retry later".
REJECTIONS = frozenset({"proto", "auth", "denied", "bad"})


class LoginRejected(Exception):
    """The server answered LOGIN with ERR (code, reason)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"login rejected: code={code} reason={reason}")
        self.code = code
        self.reason = reason


class ServerUnavailable(Exception):
    """The server answered ERR with a code that means "retry later"."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"server unavailable: code={code} reason={reason}")
        self.code = code
        self.reason = reason


def backoff_delay(retry: int, rng: random.Random, base: float = 1.0, cap: float = 60.0) -> float:
    """
    Seconds to wait before the `retry`-th attempt since the gateway was last
    logged in (1, 2, ...): `base` doubling up to `cap`, times a jitter
    factor in [0.5, 1] so
    that a fleet cut off at once does not come back at once ("equal
    jitter": never longer than the schedule, never below half of it).
    """
    step = min(cap, base * 2 ** min(max(retry, 1) - 1, 32))
    return step * (0.5 + 0.5 * rng.random())


@frozen
class Outage:
    """
    A time a gateway was not logged in, from the loss of its connection (or
    its first failed attempt) to its next OK; times are ``clock.seconds()``.
    """

    began: float
    resumed: float
    failed_attempts: int  # connects that ended before OK (refused, dropped, unavailable)
    last_failed_attempt: float | None  # when the last of them began
    retry_delay: float  # the backoff waited before the attempt that got OK

    @property
    def seconds(self) -> float:
        return self.resumed - self.began


@frozen
class GatewayIdentity:
    """What a gateway says in its LOGIN."""

    gw: str
    mac: str
    fxs: int = 2
    fxo: int = 2
    isdn: int = 0
    secret: str | None = field(default=None, repr=False)
    fw: str | None = None
    boot: str | None = None
    clock_offset_ms: int = 0  # how wrong the gateway's clock is (skew tests)

    @property
    def key(self) -> str:
        return f"{self.gw}_{self.mac.upper()}"


@frozen
class OutgoingEvent:
    """An event before it has a seq: ``t`` is the gateway's clock (ms), or None."""

    ref: int
    type: str
    t: int | None = None
    fields: tuple[tuple[str, str], ...] = ()


@define
class ClientStats:
    """Counters of one gateway (or, summed, of a fleet)."""

    sent: int = 0  # events sent for the first time
    resent: int = 0  # events sent again after a reconnect
    acked: int = 0  # events covered by an ACK or by the `last` of an OK
    errors: int = 0  # ERR lines after login (bad packets), not counting unavailable
    unavailable: int = 0  # ERR code=unavailable (at login or after it)
    connect_failures: int = 0  # attempts that ended before OK, unavailable included
    logins: int = 0
    outages: list[Outage] = field(factory=list)
    # ms from the (last) send of an event to the ACK that covered it
    latencies_ms: list[float] = field(factory=list)
    # whole seconds since the start of the run -> events sent / acked in it
    sent_per_second: dict[int, int] = field(factory=dict)
    acked_per_second: dict[int, int] = field(factory=dict)
    last_ack_at: float | None = None  # clock.seconds() of the last ACK that covered events


def encode_event(seq: int, event: OutgoingEvent) -> bytes:
    """The EV line of `event` with `seq`, ending in LF."""
    head = f"EV seq={seq} ref={event.ref} type={event.type}"
    if event.t is not None:
        head += f" t={format_gateway_time(event.t)}"
    if event.fields:
        head += "".join(f" {k}={escape(v)}" for k, v in event.fields if v)
    return (head + "\n").encode("utf-8")


class SimGateway:
    """
    One simulated gateway, across its connections.

    `submit` queues events; they get their seq when first sent, within
    `window` unacknowledged events.  `seq` is the next seq to use; None (the
    default) continues at the ``last`` of the first ``OK`` plus one, as a
    gateway that lost its counter does.  The counter never goes below
    ``last + 1`` of any OK: the server would take lower seqs as duplicates.
    """

    log = Logger()

    def __init__(
        self,
        identity: GatewayIdentity,
        clock: IReactorTime,
        *,
        window: int = 64,
        ping_interval: float = 30.0,
        callref: int = 0,
        seq: int | None = None,
        started: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.identity = identity
        self.clock = clock
        self.window = window
        self.ping_interval = ping_interval
        # the LOGIN's callref: the gateway's call reference counter, which
        # never goes below a ref it has sent (a lower one, while that call
        # is open, would tell the server the gateway has rebooted)
        self.callref = callref
        self.rng = rng if rng is not None else random.Random()
        self.next_seq = seq
        self.started = clock.seconds() if started is None else started
        self.pending: deque[OutgoingEvent] = deque()
        self.inflight: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
        self.connection: GatewayClientProtocol | None = None
        self.stats = ClientStats()
        self.last_ok: int | None = None
        self.rejected: LoginRejected | None = None
        self._drain_waiters: list[defer.Deferred[None]] = []
        # reconnecting (see `start`)
        self._endpoint: IStreamClientEndpoint | None = None
        self._reconnect_delay = 1.0
        self._max_delay = 60.0
        self._stopping = False
        self._retry = None
        self._failures = 0  # failed attempts since the last OK
        self._retries = 0  # retries scheduled since the last OK: the backoff's step
        self._delay = 0.0  # the backoff last scheduled
        self._down_since: float | None = None
        self._attempt_began = 0.0
        self._last_failed_attempt: float | None = None

    # -- what the gateway says -------------------------------------------

    def login_line(self, nonce: str) -> bytes:
        i = self.identity
        now = int(self.clock.seconds() * 1000) + i.clock_offset_ms
        fields = [
            ("proto", "1"),
            ("gw", i.gw),
            ("mac", i.mac),
            ("fxs", str(i.fxs)),
            ("fxo", str(i.fxo)),
            ("isdn", str(i.isdn)),
            ("callref", str(self.callref)),
            ("time", format_gateway_time(now)),
        ]
        if i.boot:
            fields.append(("boot", i.boot))
        if i.fw:
            fields.append(("fw", i.fw))
        line = format_message("LOGIN", fields)
        if i.secret:
            before = line[:-1].decode("utf-8")
            line = f"{before} auth={login_auth(i.secret, nonce, before)}\n".encode()
        return line

    def gateway_time(self) -> int:
        """The gateway's clock now, ms (wrong by `clock_offset_ms`)."""
        return int(self.clock.seconds() * 1000) + self.identity.clock_offset_ms

    # -- events ----------------------------------------------------------

    def submit(self, events: Iterable[OutgoingEvent]) -> None:
        self.pending.extend(events)
        self.pump()

    @property
    def outstanding(self) -> int:
        """Events not yet acknowledged (queued or in flight)."""
        return len(self.pending) + len(self.inflight)

    def pump(self) -> None:
        """Send queued events while the window has room."""
        conn = self.connection
        if conn is None or not conn.ready or not self.pending:
            return
        room = self.window - len(self.inflight)
        if room <= 0:
            return
        now = self.clock.seconds()
        lines = []
        pending, inflight = self.pending, self.inflight
        seq = self.next_seq
        assert seq is not None  # set by the first OK
        callref = self.callref
        while room and pending:
            event = pending.popleft()
            if event.ref > callref:
                callref = event.ref
            line = encode_event(seq, event)
            inflight[seq] = (line, now)
            lines.append(line)
            seq += 1
            room -= 1
        self.next_seq = seq
        self.callref = callref
        self.stats.sent += len(lines)
        second = int(now - self.started)
        per = self.stats.sent_per_second
        per[second] = per.get(second, 0) + len(lines)
        conn.transport.write(b"".join(lines))

    def acked(self, upto: int) -> None:
        """A cumulative ACK: every event up to `upto` is stored."""
        now = self.clock.seconds()
        inflight = self.inflight
        latencies = self.stats.latencies_ms
        count = 0
        while inflight:
            seq = next(iter(inflight))
            if seq > upto:
                break
            _, (_, sent_at) = inflight.popitem(last=False)
            latencies.append((now - sent_at) * 1000.0)
            count += 1
        if count:
            self._count_acked(count, now)
        self.pump()
        self._check_drained()

    def _count_acked(self, count: int, now: float) -> None:
        self.stats.acked += count
        self.stats.last_ack_at = now
        second = int(now - self.started)
        per = self.stats.acked_per_second
        per[second] = per.get(second, 0) + count

    def logged_in(self, conn: GatewayClientProtocol, last: int) -> None:
        """OK last=`last`: forget what is stored, resend the rest, go on."""
        self.connection = conn
        self.last_ok = last
        self.stats.logins += 1
        now = self.clock.seconds()
        if self._down_since is not None:
            self.stats.outages.append(Outage(
                began=self._down_since, resumed=now, failed_attempts=self._failures,
                last_failed_attempt=self._last_failed_attempt, retry_delay=self._delay,
            ))
        self._down_since = self._last_failed_attempt = None
        self._failures = self._retries = 0
        self._delay = 0.0
        stored = 0
        while self.inflight and next(iter(self.inflight)) <= last:
            self.inflight.popitem(last=False)
            stored += 1
        if stored:
            self._count_acked(stored, now)
        if self.next_seq is None or self.next_seq <= last:
            if self.next_seq is not None:
                self.log.warn(
                    "gateway {key}: server has seq {last}, our counter was at {seq}; jumping",
                    key=self.identity.key, last=last, seq=self.next_seq,
                )
            self.next_seq = last + 1
        if self.inflight:
            lines = []
            for seq, (line, _) in list(self.inflight.items()):
                self.inflight[seq] = (line, now)
                lines.append(line)
            self.stats.resent += len(lines)
            conn.transport.write(b"".join(lines))
        self.pump()
        self._check_drained()

    def lost(self, conn: GatewayClientProtocol) -> None:
        if self.connection is conn:
            self.connection = None

    def login_failed(self, error: LoginRejected) -> None:
        self.rejected = error
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            if not d.called:
                d.errback(Failure(error))

    # -- completion ------------------------------------------------------

    def when_drained(self) -> defer.Deferred[None]:
        """Fires once nothing is queued or unacknowledged."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.rejected is not None:
            d.errback(Failure(self.rejected))
        elif not self.outstanding:
            d.callback(None)
        else:
            self._drain_waiters.append(d)
        return d

    def _check_drained(self) -> None:
        if not self.outstanding and self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                if not d.called:  # a waiter may have been cancelled (defer.race)
                    d.callback(None)

    # -- connections -----------------------------------------------------

    def connect(self, endpoint: IStreamClientEndpoint) -> defer.Deferred[GatewayClientProtocol]:
        """Connect and log in once; fires with the connection once OK arrived."""
        factory = Factory.forProtocol(lambda: GatewayClientProtocol(self))
        d = endpoint.connect(factory)
        return d.addCallback(lambda proto: proto.ready_d)

    def start(self, endpoint: IStreamClientEndpoint, reconnect_delay: float = 1.0,
              max_delay: float = 60.0) -> defer.Deferred[None]:
        """
        Stay connected until `finish` or `abort`.  A lost connection, a
        failed attempt and ``ERR code=unavailable`` are retried after a
        backoff, `reconnect_delay` s doubling up to `max_delay` s with
        jitter (`backoff_delay`), for ever; a rejected login is not retried.
        Fires at the first login, or fails with LoginRejected.
        """
        self._endpoint = endpoint
        self._reconnect_delay = reconnect_delay
        self._max_delay = max_delay
        self._stopping = False
        self._retry = None
        self._online: defer.Deferred[None] = defer.Deferred()
        self._attempt()
        return self._online

    def _attempt(self) -> None:
        self._retry = None
        self._attempt_began = self.clock.seconds()
        self.connect(self._endpoint).addCallbacks(self._connected, self._connect_failed)

    def _connected(self, conn: GatewayClientProtocol) -> None:
        if not self._online.called:
            self._online.callback(None)
        conn.closed.addCallback(lambda _: self._schedule_retry())

    def _connect_failed(self, failure: Failure) -> None:
        if failure.check(LoginRejected):
            if not self._online.called:
                self._online.errback(failure)
            return
        self.stats.connect_failures += 1
        self._failures += 1
        if self._down_since is None:  # never logged in yet: down since it tried
            self._down_since = self._attempt_began
        self._last_failed_attempt = self._attempt_began
        self._schedule_retry(failure.getErrorMessage())

    def _schedule_retry(self, why: str = "connection lost") -> None:
        if self._stopping or self.rejected is not None or self._retry is not None:
            return
        now = self.clock.seconds()
        if self._down_since is None:
            self._down_since = now
        self._retries += 1
        self._delay = backoff_delay(self._retries, self.rng, self._reconnect_delay, self._max_delay)
        self.log.info("gateway {key}: {why}; retrying in {delay:.1f} s",
                      key=self.identity.key, why=why, delay=self._delay)
        self._retry = self.clock.callLater(self._delay, self._attempt)

    @defer.inlineCallbacks
    def finish(self):
        """Wait until everything is acknowledged, then LOGOUT (and BYE)."""
        yield self.when_drained()
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.connection is not None:
            yield self.connection.logout()

    def abort(self) -> None:
        """Stop now: no retry, connection dropped, waiters left as they are."""
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.connection is not None and self.connection.transport is not None:
            self.connection.transport.abortConnection()


class GatewayClientProtocol(LineOnlyReceiver):
    """One connection of a SimGateway; all state that outlives it is there."""

    log = Logger()
    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024

    def __init__(self, gateway: SimGateway) -> None:
        self.gateway = gateway
        self.phase = "connecting"
        self.session: str | None = None
        self.ready_d: defer.Deferred[GatewayClientProtocol] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._ping: LoopingCall | None = None
        self.pongs = 0

    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    def connectionMade(self) -> None:
        self.phase = "hello"

    def lineReceived(self, line: bytes) -> None:
        try:
            msg = parse_line(line)
        except BadPacket as e:
            self.log.warn("gateway {key}: bad line from server: {reason}",
                          key=self.gateway.identity.key, reason=e.reason)
            return
        if msg is None:
            return
        verb, f = msg.verb, msg.fields
        if verb == "ACK" and self.phase in ("ready", "logout"):
            seq = f.get("seq", "")
            if seq.isdigit():
                self.gateway.acked(int(seq))
        elif verb == "HELLO" and self.phase == "hello":
            self.phase = "login"
            self.transport.write(self.gateway.login_line(f.get("nonce", "")))
        elif verb == "OK" and self.phase == "login":
            self.phase = "ready"
            self.session = f.get("session")
            last = f.get("last", "0")
            self.gateway.logged_in(self, int(last) if last.isdigit() else 0)
            if self.gateway.ping_interval > 0:
                self._ping = LoopingCall(self.sendPing)
                self._ping.clock = self.gateway.clock
                self._ping.start(self.gateway.ping_interval, now=False)
            self.ready_d.callback(self)
        elif verb == "ERR":
            code, reason = f.get("code", "?"), f.get("reason", "")
            if code not in REJECTIONS:
                # retry later: the server closes; the gateway reconnects
                # with a backoff and resends what is unacknowledged
                self.gateway.stats.unavailable += 1
                self.log.info("gateway {key}: ERR code={code} reason={reason} in phase {phase}",
                              key=self.gateway.identity.key, code=code, reason=reason,
                              phase=self.phase)
                if self.phase in ("hello", "login"):
                    self.phase = "unavailable"
                    self.ready_d.errback(Failure(ServerUnavailable(code, reason)))
                self.transport.loseConnection()
            elif self.phase in ("hello", "login"):
                error = LoginRejected(code, reason)
                self.phase = "rejected"
                self.gateway.login_failed(error)
                self.ready_d.errback(Failure(error))
                self.transport.loseConnection()
            else:
                self.gateway.stats.errors += 1
                self.log.warn("gateway {key}: ERR code={code} reason={reason} seq={seq}",
                              key=self.gateway.identity.key, code=code, reason=reason,
                              seq=f.get("seq"))
        elif verb == "PONG":
            self.pongs += 1
        elif verb == "BYE":
            self.transport.loseConnection()
        else:
            self.log.warn("gateway {key}: unexpected {verb} in phase {phase}",
                          key=self.gateway.identity.key, verb=verb, phase=self.phase)

    def sendPing(self) -> None:
        if self.transport is not None:
            self.transport.write(b"PING\n")

    def logout(self) -> defer.Deferred[None]:
        """Send LOGOUT; fires when the connection has closed (after BYE)."""
        if self.phase == "ready":
            self.phase = "logout"
            self.transport.write(b"LOGOUT\n")
        return self.closed

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.warn("gateway {key}: line from server too long", key=self.gateway.identity.key)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is None:
            reason = Failure(ConnectionDone())
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        self.gateway.lost(self)
        if not self.ready_d.called:
            self.ready_d.errback(reason)
        phase, self.phase = self.phase, "closed"
        if phase not in ("logout", "rejected", "unavailable"):
            self.log.info("gateway {key}: connection lost in phase {phase}: {why}",
                          key=self.gateway.identity.key, phase=phase,
                          why=reason.getErrorMessage())
        self.closed.callback(None)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile `p` (0..100) of `values`; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil
    return ordered[int(min(rank, len(ordered))) - 1]


__all__ = [
    "ClientStats",
    "GatewayClientProtocol",
    "GatewayIdentity",
    "LoginRejected",
    "Outage",
    "OutgoingEvent",
    "REJECTIONS",
    "ServerUnavailable",
    "SimGateway",
    "backoff_delay",
    "encode_event",
    "percentile",
]
