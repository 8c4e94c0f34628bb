"""
The live feed: stored gateway events, log entries and ended calls, fanned
out to the browsers watching them (server-sent events).

The feed is told of events once they are durable (the BatchWriter's commit
listener calls ``events_stored``/``log_stored``), so a page never shows an
event the store could lose.  It is also an in-memory ICdrSink (``web``):
``committed`` announces ended calls to the pages.

Each subscriber has a bounded queue.  Bytes go straight to the connection
while its transport accepts them; when the transport pushes back (a slow or
stalled browser) items queue, and a subscriber whose queue overflows is
dropped: its connection is closed and the browser reconnects with
Last-Event-ID, replaying from the store.  Memory never grows without bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from twisted.logger import Logger
from zope.interface import implementer

from cdrd.interfaces import ICdrSink, IEventListener
from cdrd.values import CallEnd

#: What a subscriber is sent: ("event", CallEvent) | ("log", LogEntry) | ("call", CallRecord)
Item = tuple[str, object]

ALL = None  # the subscription key for every gateway


class Subscriber:
    """
    One browser connection.  `write(bytes)` sends, `close()` ends the
    connection; `format(item) -> bytes | None` renders an item (None: skip).
    Registered as a streaming producer of its connection, so the transport's
    back-pressure pauses it.
    """

    log = Logger()

    def __init__(
        self,
        write: Callable[[bytes], None],
        close: Callable[[], None],
        format: Callable[[Item], bytes | None],
        kinds: frozenset[str] = frozenset({"event"}),
        max_queue: int = 1000,
    ):
        self._write = write
        self._close = close
        self._format = format
        self.kinds = kinds
        self.max_queue = max_queue
        self.queue: deque[bytes] = deque()
        self.paused = False
        self.closed = False
        self.dropped = False
        self.on_close: Callable[[Subscriber], None] | None = None
        self._holding: list[Item] | None = None

    # -- IPushProducer: the connection pushes back -------------------------

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while self.queue and not self.paused and not self.closed:
            self._write(self.queue.popleft())

    def stopProducing(self):
        self.finish()

    # -- fed by LiveFeed ---------------------------------------------------

    def hold(self):
        """Queue items (unformatted) until `release`: while a replay is sent."""
        self._holding = []

    def release(self, keep: Callable[[Item], bool] = lambda item: True):
        held, self._holding = self._holding or [], None
        for item in held:
            if keep(item):
                self.deliver(item)

    def deliver(self, item: Item) -> None:
        if self.closed or item[0] not in self.kinds:
            return
        if self._holding is not None:
            if len(self._holding) >= self.max_queue:
                self._drop()
            else:
                self._holding.append(item)
            return
        data = self._format(item)
        if data is not None:
            self.send(data)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.paused or self.queue:
            if len(self.queue) >= self.max_queue:
                self._drop()
                return
            self.queue.append(data)
            return
        self._write(data)

    def _drop(self):
        self.log.warn(
            "live feed: dropping a slow subscriber ({n} items queued)",
            n=len(self.queue),
        )
        self.dropped = True
        self.finish()

    def finish(self):
        if self.closed:
            return
        self.closed = True
        self.queue.clear()
        self._holding = None
        if self.on_close is not None:
            self.on_close(self)
        self._close()


@implementer(IEventListener, ICdrSink)
class LiveFeed:
    """Fans stored events out to subscribers, per gateway key (or all)."""

    name = "web"
    log = Logger()

    def __init__(self):
        self._subscribers: dict[str | None, set[Subscriber]] = {}

    # -- subscriptions -------------------------------------------------------

    def subscribe(self, gateway: str | None, subscriber: Subscriber) -> Subscriber:
        self._subscribers.setdefault(gateway, set()).add(subscriber)

        def gone(s, gateway=gateway):
            group = self._subscribers.get(gateway)
            if group is not None:
                group.discard(s)
                if not group:
                    del self._subscribers[gateway]

        subscriber.on_close = gone
        return subscriber

    def subscribers(self) -> list[Subscriber]:
        return [s for group in self._subscribers.values() for s in group]

    def _fan_out(self, gateway: str, item: Item) -> None:
        for key in (gateway, ALL):
            for s in list(self._subscribers.get(key, ())):
                s.deliver(item)

    # -- IEventListener ---------------------------------------------------------

    def events_stored(self, events: Iterable) -> None:
        for event in events:
            self._fan_out(event.gateway, ("event", event))

    def log_stored(self, entries: Iterable) -> None:
        for entry in entries:
            # log entries name a gw id (or ???), not a key: only ALL sees them
            for s in list(self._subscribers.get(ALL, ())):
                s.deliver(("log", entry))

    # -- ICdrSink (in memory: nothing to spool) ---------------------------------

    def spool(self, outputs, now) -> list[bytes]:
        return []

    def committed(self, outputs) -> None:
        for output in outputs:
            if isinstance(output, CallEnd):
                self._fan_out(output.record.gateway, ("call", output.record))
