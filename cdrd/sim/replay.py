"""
Replay a script (cdrd.sim.script) as one gateway: log in, send every event
within the window, wait until the last one is acknowledged, LOGOUT.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import frozen
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from cdrd.sim.client import GatewayIdentity, OutgoingEvent, SimGateway, percentile


@frozen
class ReplaySummary:
    gateway: str
    events: int
    first_seq: int | None
    last_seq: int | None
    sent: int
    resent: int
    acked: int
    logins: int
    errors: int
    unavailable: int
    seconds: float
    ack_p50_ms: float
    ack_max_ms: float

    def text(self) -> str:
        seqs = f"seq {self.first_seq}..{self.last_seq}" if self.events else "no events"
        return (
            f"gateway {self.gateway}: {self.events} events ({seqs}) acked in "
            f"{self.seconds:.3f} s; sent {self.sent}, resent {self.resent}, "
            f"logins {self.logins}, ERR {self.errors}{self._unavailable()}; "
            f"ack latency p50 {self.ack_p50_ms:.1f} ms, max {self.ack_max_ms:.1f} ms"
        )

    def _unavailable(self) -> str:
        return f", ERR unavailable {self.unavailable}" if self.unavailable else ""


def default_callref(events: Sequence[OutgoingEvent]) -> int:
    """The LOGIN callref before a script: one below its lowest ref (spec: 74 before 75)."""
    return max(0, min((e.ref for e in events), default=1) - 1)


@defer.inlineCallbacks
def replay(
    reactor: IReactorTime,
    endpoint: IStreamClientEndpoint,
    identity: GatewayIdentity,
    events: Sequence[OutgoingEvent],
    *,
    window: int = 64,
    callref: int | None = None,
    seq: int | None = None,
    timeout: float = 60.0,
    ping_interval: float = 30.0,
    reconnect_delay: float = 1.0,
    speed: float | None = None,
):
    """
    Send `events` as `identity` and return a ReplaySummary once all are
    acknowledged and the session is closed.  Fails with LoginRejected on a
    rejection at login, or with TimeoutError after `timeout` s (a server
    that cannot take the gateway now is retried until then).

    `speed` None sends everything at once (within the window); a number
    paces the events by their ``t=``: an event is submitted (t - first t) /
    speed seconds after login (1.0: real time, 60: a minute per second).
    An event without t, or with a t before the previous one, goes with the
    one before it.
    """
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive")
    started = reactor.seconds()
    gateway = SimGateway(
        identity,
        reactor,
        window=window,
        ping_interval=ping_interval,
        callref=default_callref(events) if callref is None else callref,
        seq=seq,
        started=started,
    )
    done = defer.Deferred()
    if speed is None:
        gateway.submit(events)

    def paced():
        """Submit each event at its time; fires once the last is submitted."""
        finished = defer.Deferred()
        times = [e.t for e in events if e.t is not None]
        start = times[0] if times else 0
        offset = 0.0
        for event in events:
            if event.t is not None:
                offset = max(offset, (event.t - start) / 1000 / speed)
            reactor.callLater(offset, gateway.submit, [event])
        reactor.callLater(offset, finished.callback, None)
        return finished

    def run():
        d = gateway.start(endpoint, reconnect_delay)
        if speed is not None:
            d.addCallback(lambda _: paced())
        d.addCallback(lambda _: gateway.finish())
        return d

    run().chainDeferred(done)
    done.addTimeout(timeout, reactor)
    try:
        yield done
    except defer.TimeoutError:
        gateway.abort()
        raise TimeoutError(
            f"gateway {identity.key}: {gateway.outstanding} of {len(events)} events "
            f"not acknowledged after {timeout} s"
        ) from None
    except BaseException:
        gateway.abort()
        raise
    first = gateway.next_seq - len(events) if events and gateway.next_seq else None
    lat = gateway.stats.latencies_ms
    return ReplaySummary(
        gateway=identity.key,
        events=len(events),
        first_seq=first,
        last_seq=(gateway.next_seq - 1) if events and gateway.next_seq else None,
        sent=gateway.stats.sent,
        resent=gateway.stats.resent,
        acked=gateway.stats.acked,
        logins=gateway.stats.logins,
        errors=gateway.stats.errors,
        unavailable=gateway.stats.unavailable,
        seconds=reactor.seconds() - started,
        ack_p50_ms=percentile(lat, 50),
        ack_max_ms=max(lat, default=0.0),
    )
