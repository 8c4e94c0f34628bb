"""
Load: N simulated gateways making calls at a fixed total rate.

Each call is one of a few realistic shapes (call-records.md): a call out
with DTMF (E1-like), a failed call out (busy / unreachable), a VoIP call in
answered on a phone, a PSTN call in routed out over VoIP.  A gateway sends a
call as the burst of its events at the moment the call is placed, with
``t=`` times spread as the call's real durations would be, ending now (as a
gateway that reports a call when it ends).  Calls go round-robin over the
gateways.  The run stops placing calls after `duration` s or `calls` calls,
waits until everything is acknowledged (at most `drain_timeout` s), logs
every gateway out and returns a LoadSummary.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence

from attrs import asdict, frozen
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cdrd.sim.client import (
    ClientStats,
    GatewayIdentity,
    OutgoingEvent,
    SimGateway,
    percentile,
)

log = Logger()

Step = tuple[int, str, tuple[tuple[str, str], ...]]  # (ms from the call's start, type, fields)


def _number(rng: random.Random, prefix: str, length: int) -> str:
    return prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix)))


def call_out(rng: random.Random, fxs: int, fxo: int) -> list[Step]:
    """A phone dials out, the far end answers, DTMF, hang-up (E1)."""
    port = str(rng.randint(1, max(1, fxs)))
    t = 0
    steps: list[Step] = [(t, "HOOK_OFF", (("port", port),))]
    t += rng.randint(1500, 6000)
    steps.append((t, "DIAL", (("digits", _number(rng, rng.choice(["0", "00", "07"]), 11)),)))
    t += rng.randint(100, 900)
    steps.append((t, "RING_BACK", ()))
    t += rng.randint(2000, 20000)
    steps.append((t, "TALK", (("info", "C(18) M(17)"),)))
    talk = rng.randint(5000, 600000)
    if rng.random() < 0.3:
        steps.append((t + rng.randint(500, talk // 2), "DIAL", (("digits", rng.choice("0123456789*#")),)))
    t += talk
    if rng.random() < 0.5:
        steps.append((t, "REMOTE_HOOK_ON", ()))
        t += rng.randint(100, 2000)
    steps.append((t, "HOOK_ON", (("port", port),)))
    return steps


def call_out_failed(rng: random.Random, fxs: int, fxo: int) -> list[Step]:
    """A phone dials; the far end is busy or unreachable (E2)."""
    port = str(rng.randint(1, max(1, fxs)))
    t = rng.randint(1500, 6000)
    steps: list[Step] = [(0, "HOOK_OFF", (("port", port),)),
                         (t, "DIAL", (("digits", _number(rng, "0", 11)),))]
    t += rng.randint(200, 3000)
    if rng.random() < 0.6:
        steps.append((t, "BUSY", (("cause", "busy"),)))
    else:
        steps.append((t, "FAIL", (("cause", rng.choice(["unreachable", "no-route"])),)))
    t += rng.randint(500, 4000)
    steps.append((t, "HOOK_ON", (("port", port),)))
    return steps


def call_in(rng: random.Random, fxs: int, fxo: int) -> list[Step]:
    """A VoIP call comes in for a phone, which answers."""
    port = str(rng.randint(1, max(1, fxs)))
    t = 0
    steps: list[Step] = [(t, "CALL_IN", (("cli", _number(rng, "07", 11)),
                                         ("to", _number(rng, "4420", 12)), ("port", port)))]
    t += rng.randint(50, 300)
    steps.append((t, "RING", (("port", port),)))
    t += rng.randint(2000, 25000)
    steps.append((t, "HOOK_OFF", (("port", port),)))
    steps.append((t + rng.randint(20, 200), "TALK", ()))
    t += rng.randint(5000, 900000)
    if rng.random() < 0.5:
        steps.append((t, "REMOTE_HOOK_ON", ()))
        t += rng.randint(100, 2000)
    steps.append((t, "HOOK_ON", (("port", port),)))
    return steps


def pstn_call(rng: random.Random, fxs: int, fxo: int) -> list[Step]:
    """A call in on a PSTN line, routed out over VoIP (E3, answered)."""
    pport = str(rng.randint(1, max(1, fxo)))
    t = 0
    steps: list[Step] = [(t, "PSTN_CALL_IN", (("cli", _number(rng, "020", 11)), ("pport", pport)))]
    t += rng.randint(300, 1500)
    steps.append((t, "PSTN_HOOK_OFF", (("pport", pport),)))
    t += rng.randint(50, 300)
    steps.append((t, "PSTN_CONNECTED", (("pport", pport),)))
    t += rng.randint(1000, 5000)
    steps.append((t, "DIAL", (("digits", _number(rng, "2", 4)),)))
    t += rng.randint(100, 900)
    steps.append((t, "RING_BACK", ()))
    t += rng.randint(2000, 20000)
    steps.append((t, "TALK", ()))
    t += rng.randint(5000, 600000)
    steps.append((t, "PSTN_HOOK_ON", (("pport", pport),)))
    steps.append((t, "HOOK_ON", ()))
    return steps


#: (weight, shape): the mix of a small office gateway's day
SHAPES: Sequence[tuple[int, Callable[[random.Random, int, int], list[Step]]]] = (
    (45, call_out),
    (15, call_out_failed),
    (30, call_in),
    (10, pstn_call),
)


def make_call(rng: random.Random, ref: int, end_ms: int, fxs: int = 2, fxo: int = 2) -> list[OutgoingEvent]:
    """One call's events with ref `ref`, ending at `end_ms` (gateway clock)."""
    weights = [w for w, _ in SHAPES]
    shape = rng.choices([s for _, s in SHAPES], weights)[0]
    steps = shape(rng, fxs, fxo)
    start = end_ms - steps[-1][0]
    return [OutgoingEvent(ref, etype, start + offset, fields) for offset, etype, fields in steps]


def fleet(count: int, gw_base: int = 9000, secret: str | None = None, boot: str | None = None,
          mac_prefix: str = "0200") -> list[GatewayIdentity]:
    """`count` gateways: gw 9000, 9001, ...; MAC 020000000000, 020000000001, ..."""
    width = 12 - len(mac_prefix)
    return [
        GatewayIdentity(gw=str(gw_base + i), mac=f"{mac_prefix}{i:0{width}X}", secret=secret,
                        boot=boot, fw="cdrd-sim")
        for i in range(count)
    ]


@frozen
class LoadSummary:
    gateways: int
    calls: int
    events: int  # generated
    sent: int
    resent: int
    acked: int
    logins: int
    errors: int  # ERR for bad packets
    unavailable: int  # ERR code=unavailable (the server could not take a gateway then)
    connect_failures: int  # attempts that ended before OK: refused, dropped, unavailable
    placing_s: float  # how long calls were placed
    elapsed_s: float  # from the first call to the last ACK
    events_acked_per_s: float
    ack_p50_ms: float
    ack_p99_ms: float
    ack_max_ms: float
    complete: bool  # everything acknowledged before the drain timeout
    per_second: tuple[tuple[int, int, int], ...]  # (second, sent, acked)
    # every time a gateway was not logged in: (gateway, began, resumed,
    # failed attempts, when the last failed one began, the backoff before
    # the attempt that got OK); times are the run's clock (Unix seconds)
    outages: tuple[tuple[str, float, float, int, float | None, float], ...] = ()

    def text(self) -> str:
        lines = ["second  sent/s  acked/s"]
        lines += [f"{s:6d}  {sent:6d}  {acked:7d}" for s, sent, acked in self.per_second]
        lines.append(
            f"{self.gateways} gateways, {self.calls} calls, {self.events} events: "
            f"sent {self.sent} (+{self.resent} resent), acked {self.acked} in {self.elapsed_s:.2f} s "
            f"= {self.events_acked_per_s:.0f} events/s; ack latency p50 {self.ack_p50_ms:.1f} ms, "
            f"p99 {self.ack_p99_ms:.1f} ms, max {self.ack_max_ms:.1f} ms; logins {self.logins}, "
            f"ERR {self.errors}; {'complete' if self.complete else 'INCOMPLETE'}"
        )
        if self.outages or self.unavailable or self.connect_failures:
            longest = max((resumed - began for _, began, resumed, *_ in self.outages), default=0.0)
            lines.append(
                f"reconnects: {len(self.outages)} outages over "
                f"{len({o[0] for o in self.outages})} gateways, longest {longest:.1f} s; "
                f"{self.connect_failures} failed attempts, {self.unavailable} ERR unavailable"
            )
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps(asdict(self))


def _wait(clock: IReactorTime, d: defer.Deferred, seconds: float) -> defer.Deferred:
    """
    `d`'s result, or TimeoutError after `seconds`; `d` is left alone (not
    cancelled).  A FirstError of gatherResults is unwrapped.
    """
    out: defer.Deferred = defer.Deferred()

    def expire() -> None:
        if not out.called:
            out.errback(TimeoutError(f"nothing after {seconds} s"))

    timer = clock.callLater(seconds, expire)

    def fired(result):
        if timer.active():
            timer.cancel()
        if isinstance(result, Failure) and result.check(defer.FirstError):
            result = result.value.subFailure
        if not out.called:
            out.callback(result) if not isinstance(result, Failure) else out.errback(result)
        return None

    d.addBoth(fired)
    return out


class LoadRun:
    """
    The load of one run; `run()` returns a Deferred firing with its
    LoadSummary.  `rate` is calls per second over all gateways.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: IStreamClientEndpoint,
        identities: Sequence[GatewayIdentity],
        *,
        rate: float,
        duration: float | None = None,
        calls: int | None = None,
        window: int = 64,
        seed: int = 1,
        tick: float = 0.01,
        drain_timeout: float = 30.0,
        connect_timeout: float = 30.0,
        ping_interval: float = 30.0,
        connect_batch: int = 25,
    ) -> None:
        if duration is None and calls is None:
            raise ValueError("give a duration or a number of calls")
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.reactor = reactor
        self.endpoint = endpoint
        self.rate = rate
        self.duration = duration
        self.calls_limit = calls
        self.tick = tick
        self.drain_timeout = drain_timeout
        self.connect_timeout = connect_timeout
        self.connect_batch = connect_batch
        self.rng = random.Random(seed)
        jitter = random.Random(seed * 7919 + 1)  # the backoffs' own stream: the call mix stays the seed's
        now = reactor.seconds()
        self.gateways = [
            SimGateway(i, reactor, window=window, ping_interval=ping_interval,
                       callref=self.rng.randint(0, 1000), started=now,
                       rng=random.Random(jitter.getrandbits(64)))
            for i in identities
        ]
        self.placed = 0
        self.events = 0
        self._next = 0
        self._started = now
        self._placing_done: defer.Deferred[None] = defer.Deferred()

    def _place(self) -> None:
        elapsed = self.reactor.seconds() - self._started
        due = int(self.rate * elapsed) + 1 - self.placed
        stop = self.duration is not None and elapsed >= self.duration
        if self.calls_limit is not None:
            due = min(due, self.calls_limit - self.placed)
            stop = stop or self.placed >= self.calls_limit
        if stop:
            self._placer.stop()
            self._placing_s = elapsed
            self._placing_done.callback(None)
            return
        for _ in range(max(0, due)):
            gw = self.gateways[self._next]
            self._next = (self._next + 1) % len(self.gateways)
            gw.callref += 1
            events = make_call(self.rng, gw.callref, gw.gateway_time(), gw.identity.fxs, gw.identity.fxo)
            self.events += len(events)
            self.placed += 1
            gw.submit(events)

    @defer.inlineCallbacks
    def run(self):
        # log in a batch at a time: a burst of hundreds of SYNs overflows a
        # listen backlog (Twisted's default is 50) and TCP's retry backoff
        # then takes seconds
        def start_all():
            batches = [self.gateways[i:i + self.connect_batch]
                       for i in range(0, len(self.gateways), self.connect_batch)]
            d = defer.succeed(None)
            for batch in batches:
                d.addCallback(lambda _, b=batch: defer.gatherResults(
                    [g.start(self.endpoint) for g in b], consumeErrors=True))
            return d

        try:
            yield _wait(self.reactor, start_all(), self.connect_timeout)
        except TimeoutError:
            for g in self.gateways:
                g.abort()
            waiting = sum(1 for g in self.gateways if g.stats.logins == 0)
            raise TimeoutError(
                f"{waiting} of {len(self.gateways)} gateways not logged in after "
                f"{self.connect_timeout} s (is the server up?)"
            ) from None
        except BaseException:
            for g in self.gateways:
                g.abort()
            raise
        self._started = self.reactor.seconds()
        for g in self.gateways:
            g.started = self._started
        self._placer = LoopingCall(self._place)
        self._placer.clock = self.reactor
        self._placer.start(self.tick, now=True)
        yield self._placing_done
        drained = defer.gatherResults([g.when_drained() for g in self.gateways], consumeErrors=True)
        complete = True
        try:
            yield _wait(self.reactor, drained, self.drain_timeout)
        except TimeoutError:
            complete = False
            log.warn("load: not everything acknowledged after {t} s", t=self.drain_timeout)
        summary = self.summary(complete)
        if complete:
            bye = defer.gatherResults([g.finish() for g in self.gateways], consumeErrors=True)
            try:
                yield _wait(self.reactor, bye, 5.0)
            except TimeoutError:
                log.warn("load: some gateways did not get BYE within 5 s")
        for g in self.gateways:
            g.abort()
        return summary

    def summary(self, complete: bool) -> LoadSummary:
        total = ClientStats()
        sent_ps: dict[int, int] = {}
        acked_ps: dict[int, int] = {}
        last_ack = None
        for g in self.gateways:
            s = g.stats
            total.sent += s.sent
            total.resent += s.resent
            total.acked += s.acked
            total.errors += s.errors
            total.unavailable += s.unavailable
            total.connect_failures += s.connect_failures
            total.logins += s.logins
            total.latencies_ms.extend(s.latencies_ms)
            for k, v in s.sent_per_second.items():
                sent_ps[k] = sent_ps.get(k, 0) + v
            for k, v in s.acked_per_second.items():
                acked_ps[k] = acked_ps.get(k, 0) + v
            if s.last_ack_at is not None:
                last_ack = s.last_ack_at if last_ack is None else max(last_ack, s.last_ack_at)
        elapsed = (last_ack - self._started) if last_ack is not None else 0.0
        lat = total.latencies_ms
        seconds = sorted(set(sent_ps) | set(acked_ps))
        return LoadSummary(
            gateways=len(self.gateways),
            calls=self.placed,
            events=self.events,
            sent=total.sent,
            resent=total.resent,
            acked=total.acked,
            logins=total.logins,
            errors=total.errors,
            unavailable=total.unavailable,
            connect_failures=total.connect_failures,
            placing_s=round(getattr(self, "_placing_s", 0.0), 3),
            elapsed_s=round(elapsed, 3),
            events_acked_per_s=round(total.acked / elapsed, 1) if elapsed > 0 else 0.0,
            ack_p50_ms=round(percentile(lat, 50), 3),
            ack_p99_ms=round(percentile(lat, 99), 3),
            ack_max_ms=round(max(lat, default=0.0), 3),
            complete=complete,
            per_second=tuple((s, sent_ps.get(s, 0), acked_ps.get(s, 0)) for s in seconds),
            outages=tuple(
                (g.identity.key, round(o.began, 3), round(o.resumed, 3), o.failed_attempts,
                 None if o.last_failed_attempt is None else round(o.last_failed_attempt, 3),
                 round(o.retry_delay, 3))
                for g in self.gateways for o in g.stats.outages
            ),
        )
