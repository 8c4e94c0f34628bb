"""
Alerts in the log for states an operator must act on that no event
announces: checked every `interval` s, one line when a state begins and one
when it clears (fields ``alert`` and ``state`` = begins/clears, for log
shippers).  The others are logged where they happen: a RADIUS server down,
failover and return (accounting.client), the store refusing writes
(store.writer), a bad-packet flood (gateway.flood, swept from here).

Also keeps the syslog outbox's depth and oldest item fresh for /metrics
(one ``outbox_stats`` query per interval; RADIUS has its own figures).
Bounded: one entry per output.  See docs/monitoring.md.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

INTERVAL = 10.0


@define(eq=False)
class Condition:
    """A state with a begin line and a clear line, logged once each."""

    alert: str
    begins: str  # format strings over the fields given to `check`
    clears: str
    active: bool = False
    log: Logger = field(factory=lambda: Logger(namespace="cdrd.monitor"), repr=False)

    def check(self, active: bool, **fields) -> None:
        if active and not self.active:
            self.log.warn(self.begins, alert=self.alert, state="begins", **fields)
        elif self.active and not active:
            self.log.info(self.clears, alert=self.alert, state="clears", **fields)
        self.active = active


@define
class _Watch:
    """What the monitor remembers between checks."""

    late: dict[str, Condition]  # sink -> its outbox_late condition
    syslog_down: Condition = field(factory=lambda: Condition(
        "syslog_target_down",
        "syslog target {target} is down: {error}; CDR lines wait in the outbox",
        "syslog target {target} is up again",
    ))
    syslog_seen_down: bool = False
    stored: dict[str, tuple[int, int | None]] = field(factory=dict)  # sink -> (depth, created ms of the oldest)
    loop: task.LoopingCall | None = None


def _outbox_late() -> Condition:
    return Condition(
        "outbox_late",
        "output {sink}: the oldest of {items} items waiting has waited {age:.0f} s"
        " (server.outbox_alert_age {limit:g} s)",
        "output {sink}: delivering again, the oldest of {items} items waiting has waited {age:.0f} s",
    )


@define(eq=False, slots=False, repr=False)
class Monitor(Service):
    """
    `outboxes`: sink name -> callable returning (items, age of the oldest
    in s), or None for a sink whose figures this monitor reads from the
    store (then `outboxes` holds a reader of them).  `syslog`: the syslog
    sink's status() callable, or None.
    """

    store: object
    clock: object
    outbox_alert_age: float
    outboxes: dict[str, Callable[[], tuple[int, float]] | None]
    syslog: Callable | None = None
    flood: object | None = None  # the gateways' BadPacketFlood, swept here
    interval: float = INTERVAL
    _from_store: frozenset[str] = field(init=False)
    _watch: _Watch = field(init=False)

    log = Logger()

    def __attrs_post_init__(self):
        self._from_store = frozenset(name for name, read in self.outboxes.items() if read is None)
        self.outboxes = {
            name: read if read is not None else self._reader(name) for name, read in self.outboxes.items()
        }
        self._watch = _Watch(late={name: _outbox_late() for name in self.outboxes})

    def _reader(self, name: str):
        def read() -> tuple[int, float]:
            depth, oldest = self._watch.stored.get(name, (0, None))
            if not depth or oldest is None:
                return depth, 0.0
            return depth, max(0.0, self.clock.seconds() - oldest / 1000)

        return read

    def startService(self):
        super().startService()
        self._watch.loop = task.LoopingCall(self.check)
        self._watch.loop.clock = self.clock
        self._watch.loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("monitor stopped", f))

    def stopService(self):
        super().stopService()
        if self._watch.loop is not None and self._watch.loop.running:
            self._watch.loop.stop()
        self._watch.loop = None
        return defer.succeed(None)

    @defer.inlineCallbacks
    def check(self):
        if self.flood is not None:
            self.flood.sweep()
        for name, read in self.outboxes.items():
            if name in self._from_store:
                try:
                    self._watch.stored[name] = yield self.store.outbox_stats(name)
                except Exception as e:  # the store down: the writer says so; keep the last figures
                    self.log.debug("outbox_stats({sink}) failed: {error}", sink=name, error=str(e))
            items, age = read()
            limit = self.outbox_alert_age
            self._watch.late[name].check(age > limit, sink=name, items=items, age=age, limit=limit)
        if self.syslog is not None:
            status = self.syslog()
            down = not status["connected"]
            # down at two checks in a row: not the moment of a reconnect
            self._watch.syslog_down.check(
                down and self._watch.syslog_seen_down, target=status["target"],
                error=status.get("last_error") or "not connected",
            )
            self._watch.syslog_seen_down = down
