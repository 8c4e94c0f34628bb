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

A reconnecting browser is sent what it missed by `Replay`: the stored
events after its last id, a page at a time, as fast as its connection takes
them, then the live ones, with no gap and no duplicate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from twisted.internet import defer, task
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
        self._overflow: Callable[[], None] | None = None
        self._keep: Callable[[Item], bool] | None = None
        self._drained: list[defer.Deferred] = []

    # -- IPushProducer: the connection pushes back -------------------------

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while self.queue and not self.paused and not self.closed:
            self._write(self.queue.popleft())
        self._wake_drained()

    def stopProducing(self):
        self.finish()

    # -- fed by LiveFeed ---------------------------------------------------

    def hold(self, overflow: Callable[[], None] | None = None):
        """
        Queue items (unformatted) until `release`: while a replay is sent.
        When more than `max_queue` pile up, the subscriber is dropped, or,
        with `overflow`, the held items are discarded and `overflow()` is
        called (the replay then reads them from the store).
        """
        self._holding = []
        self._overflow = overflow

    def first_held(self) -> Item | None:
        return self._holding[0] if self._holding else None

    def release(self, keep: Callable[[Item], bool] = lambda item: True):
        """Deliver what was held, then go live; `keep` filters from now on."""
        held, self._holding = self._holding or [], None
        self._overflow = None
        self._keep = keep
        for item in held:
            self.deliver(item)

    def deliver(self, item: Item) -> None:
        if self.closed or item[0] not in self.kinds:
            return
        if self._holding is not None:
            if len(self._holding) < self.max_queue:
                self._holding.append(item)
            elif self._overflow is not None:
                self._holding = []
                self._overflow()
            else:
                self._drop()
            return
        if self._keep is not None and not self._keep(item):
            return
        data = self._format(item)
        if data is not None:
            self.send(data)

    def drained(self) -> defer.Deferred:
        """Fires once the connection took everything queued (or closed)."""
        if self.closed or (not self.paused and not self.queue):
            return defer.succeed(None)
        d = defer.Deferred()
        self._drained.append(d)
        return d

    def _wake_drained(self):
        if self.closed or (not self.paused and not self.queue):
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

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
        self._wake_drained()


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
        if not self._subscribers:
            return  # on the ingest path: nothing to do while no page is open
        for event in events:
            self._fan_out(event.gateway, ("event", event))

    def log_stored(self, entries: Iterable) -> None:
        if not self._subscribers:
            return
        for entry in entries:
            # log entries name a gw id (or ???), not a key: only ALL sees them
            for s in list(self._subscribers.get(ALL, ())):
                s.deliver(("log", entry))

    def records_stored(self, records: Iterable) -> None:
        """Call records another cdrd node stored (cdrd.cluster)."""
        for record in records:
            self._fan_out(record.gateway, ("call", record))

    # -- ICdrSink (in memory: nothing to spool) ---------------------------------

    def spool(self, outputs, now) -> list[bytes]:
        return []

    def committed(self, outputs) -> None:
        if not self._subscribers:
            return
        for output in outputs:
            if isinstance(output, CallEnd):
                self._fan_out(output.record.gateway, ("call", output.record))


class Replay:
    """
    The stored events a reconnecting browser missed, then the live ones:
    no gap, no duplicate, in id order (ids increase in commit order).

    The subscriber is subscribed (and holding live events) before the first
    read, so every event is either read from the store or held.  Pages of
    `page` events go out per reactor turn, the next only once the
    connection took the last one: a long absence is caught up without
    blocking the reactor or queueing without bound.  Over several gateways
    (the all-gateways stream) the pages of each are merged by id; stored
    events from the first held one on are left to the hold, so the stream
    stays in id order at the switch.  If live events overflow the hold
    during a long replay, they are dropped from it and read from the store
    instead.

    `read(gateway, after_id, limit)` is IStore.events_after; `format(event)`
    renders one SSE message.
    """

    log = Logger()
    page = 500

    def __init__(self, subscriber: Subscriber, keys, after: int, read, format, clock):
        self.sub = subscriber
        # the gateways, or an async function returning them (looked up once
        # live events are held)
        self.keys = keys
        self.after = after
        self.read = read
        self.format = format
        self.clock = clock
        self.sent: dict[str, int] = {}  # gateway -> highest id sent
        self.replayed = 0
        self._generation = 0  # hold overflows

    def _overflowed(self):
        self._generation += 1

    def seen(self, event) -> bool:
        return (event.id or 0) <= self.sent.get(event.gateway, self.after)

    def start(self) -> defer.Deferred:
        self.sub.hold(overflow=self._overflowed)
        d = defer.ensureDeferred(self._run())

        def failed(failure):
            self.log.failure("live feed: replay after {after} failed", failure,
                             after=self.after)
            self.sub.finish()

        return d.addErrback(failed)

    async def _run(self):
        sub = self.sub
        keys = await self.keys() if callable(self.keys) else self.keys
        self.keys = list(dict.fromkeys(keys))
        cursor = {k: self.after for k in self.keys}
        buffered = {k: deque() for k in self.keys}
        done: set[str] = set()  # read to the end since the hold last overflowed
        generation = self._generation
        while not sub.closed:
            if self._generation != generation:
                generation = self._generation
                done.clear()  # discarded live events: read them from the store
            need = [k for k in self.keys if not buffered[k] and k not in done]
            if need:
                pages = await defer.gatherResults(
                    [defer.maybeDeferred(self.read, k, cursor[k], self.page) for k in need],
                    consumeErrors=True,
                )
                if sub.closed:
                    return
                for k, events in zip(need, pages, strict=True):
                    buffered[k].extend(events)
                    if events:
                        cursor[k] = events[-1].id
                    if len(events) < self.page and self._generation == generation:
                        done.add(k)
                continue
            first = sub.first_held()
            bound = first[1].id if first is not None else None
            batch, finished = [], False
            while len(batch) < self.page:
                if any(not buffered[k] and k not in done for k in self.keys):
                    break  # a gateway's next event is not read yet
                heads = [(buffered[k][0].id, k) for k in self.keys if buffered[k]]
                if not heads:
                    finished = True
                    break
                event_id, k = min(heads)
                if bound is not None and event_id >= bound:
                    finished = True  # this one and all after it are held
                    break
                batch.append(buffered[k].popleft())
            for event in batch:
                sub.send(self.format(event))
                self.sent[event.gateway] = event.id
            self.replayed += len(batch)
            if finished:
                break
            await sub.drained()
            await task.deferLater(self.clock, 0, lambda: None)  # let others run
        if not sub.closed:
            sub.release(self._new)

    def _new(self, item) -> bool:
        """Live from now on: each event once (a gateway's come in id order)."""
        if item[0] != "event":
            return True
        event = item[1]
        if self.seen(event):
            return False
        self.sent[event.gateway] = event.id
        return True
