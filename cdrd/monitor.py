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


class Monitor(Service):
    """
    `outboxes`: sink name -> callable returning (items, age of the oldest
    in s), or None for a sink whose figures this monitor reads from the
    store.  `syslog`: the syslog sink's status() callable, or None.
    """

    log = Logger()

    def __init__(self, store, clock, outbox_alert_age: float, outboxes: dict[str, Callable | None],
                 syslog=None, flood=None, interval: float = INTERVAL):
        self.store = store
        self.clock = clock
        self.alert_age = outbox_alert_age
        self.interval = interval
        self.syslog = syslog
        self.flood = flood
        self._stored: dict[str, tuple[int, int | None]] = {}  # sink -> (depth, created ms of the oldest)
        self._from_store = {name for name, read in outboxes.items() if read is None}
        self.outboxes: dict[str, Callable[[], tuple[int, float]]] = {
            name: read if read is not None else self._reader(name) for name, read in outboxes.items()
        }
        self._late = {
            name: Condition(
                "outbox_late",
                "output {sink}: the oldest of {items} items waiting has waited {age:.0f} s"
                " (server.outbox_alert_age {limit:g} s)",
                "output {sink}: delivering again, the oldest of {items} items waiting has waited {age:.0f} s",
            )
            for name in self.outboxes
        }
        self._syslog_down = Condition(
            "syslog_target_down",
            "syslog target {target} is down: {error}; CDR lines wait in the outbox",
            "syslog target {target} is up again",
        )
        self._syslog_seen_down = False
        self._loop = None

    def _reader(self, name: str):
        def read() -> tuple[int, float]:
            depth, oldest = self._stored.get(name, (0, None))
            if not depth or oldest is None:
                return depth, 0.0
            return depth, max(0.0, self.clock.seconds() - oldest / 1000)

        return read

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("monitor stopped", f))

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return defer.succeed(None)

    @defer.inlineCallbacks
    def check(self):
        if self.flood is not None:
            self.flood.sweep()
        for name, read in self.outboxes.items():
            if name in self._from_store:
                try:
                    self._stored[name] = yield self.store.outbox_stats(name)
                except Exception as e:  # the store down: the writer says so; keep the last figures
                    self.log.debug("outbox_stats({sink}) failed: {error}", sink=name, error=str(e))
            items, age = read()
            self._late[name].check(age > self.alert_age, sink=name, items=items, age=age, limit=self.alert_age)
        if self.syslog is not None:
            status = self.syslog()
            down = not status["connected"]
            # down at two checks in a row: not the moment of a reconnect
            self._syslog_down.check(
                down and self._syslog_seen_down, target=status["target"],
                error=status.get("last_error") or "not connected",
            )
            self._syslog_seen_down = down
