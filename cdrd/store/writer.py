"""
Group commit: every WriteBatch submitted in one reactor turn, and all that
arrive while a transaction is in flight, go to the store in ONE write.

When that write fails, one bad submission must not fail everybody's (a row
the database refuses, e.g. a NUL in a text column for PostgreSQL): the
submissions are written again one by one, in order, so that only the bad
one fails.  A gateway's events must be stored in seq order, so once a
submission carrying a gateway's events has failed, its later submissions
queued behind it fail too without being tried (the gateway resends them
all after its next login, from the last seq stored in order).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cdrd.interfaces import IBatchWriter, IDerivedLane, WriteBatch, WriteResult
from cdrd.store.leases import LeaseLost

Listener = Callable[[WriteBatch, WriteResult], object]

#: seconds: the derived lane begins a transaction at most this often (what
#: comes meanwhile joins the next one).  Measured on PostgreSQL at 2 000
#: calls/s: derived transactions back to back took the server's and the
#: GIL's time from the events' own and the ACK p99 did not fall; a few
#: large ones a second about halved the ACK p50 (docs/benchmarks.md, "Two
#: write lanes").  Records, CDRs and the outputs' rows come that much later.
DERIVED_INTERVAL = 0.15

#: seconds: the events' transactions begin at most this often, unless the
#: caller gives `events_interval` (cdrd gives `[server] commit_interval`).
#: 0 begins the next one the moment one commits.
EVENTS_INTERVAL = 0.0

_FIELDS = [f.name for f in attrs.fields(WriteBatch)]

#: DB-API error classes (and cdrd's StoreClosed) that say the store itself
#: is unavailable (lost connection, full disk, read-only failover), not
#: that one batch is bad: writing the others one by one would fail alike.
_UNAVAILABLE = frozenset({"OperationalError", "InternalError", "StoreClosed"})


class EarlierWriteFailed(Exception):
    """Not tried: an earlier submission with events of the same gateway failed."""

    @classmethod
    def of(cls, gateways) -> EarlierWriteFailed:
        return cls(f"an earlier write of gateway {', '.join(sorted(gateways))} failed")


def store_unavailable(failure: Failure) -> bool:
    if failure.check(OSError) is not None:
        return True
    return any(c.__name__ in _UNAVAILABLE for c in failure.type.__mro__)


def merge_batches(batches) -> WriteBatch:
    """Concatenate the batches' tuples, field by field, in order."""
    if len(batches) == 1:
        return batches[0]
    return WriteBatch(**{
        name: tuple(item for b in batches for item in getattr(b, name))
        for name in _FIELDS
    })


@attrs.define(eq=False)
class _Lane:
    """
    One line of transactions: at most one in flight, the next one takes
    everything submitted meanwhile.  `method` names the store's method for
    it (looked up at each write).
    """

    method: str
    interval: float = 0.0  # seconds at least between the beginnings of two transactions
    queue: list[tuple[WriteBatch, defer.Deferred]] = attrs.field(factory=list, init=False)
    queued_events: int = attrs.field(default=0, init=False)
    inflight_events: int = attrs.field(default=0, init=False)
    inflight: bool = attrs.field(default=False, init=False)
    call: object = attrs.field(default=None, init=False)  # the scheduled flush
    starting_next: bool = attrs.field(default=False, init=False)
    began: float | None = attrs.field(default=None, init=False)  # when the last transaction began

    @property
    def busy(self) -> bool:
        return self.inflight or bool(self.queue)


@implementer(IBatchWriter)
class BatchWriter(Service):
    """
    The only writer of the store.  At most one transaction in flight; the
    next one takes everything submitted meanwhile.

    On a store with a derived lane (IDerivedLane: PostgreSQL), the
    batches that hold only derived rows (records, CDRs, cursors, the
    outboxes: ``WriteBatch.derived``) go in a second line of transactions
    of their own, at most one every `derived_interval` seconds, beside the
    events' (docs/store.md, "Two write lanes"): an ACK then waits for the
    events' transaction only.  Each line keeps its own order; the derived
    rows of an event are always submitted after its commit, so they never
    commit before it.

    ``submit`` returns a Deferred firing with the merged WriteResult once the
    transaction holding the batch has committed, or failing with the store's
    failure (then none of it was applied).  Listeners are called with
    (merged batch, result) after each commit, in each lane's commit order,
    before the submitters' Deferreds fire.

    With `events_interval`, the events' transactions begin at most that
    often: what comes meanwhile joins the next one.  Each transaction
    rewrites the hot pages of the events' indexes whatever its size, so
    fewer and larger ones cost less CPU a call at a moderate load, for at
    most that much more wait (docs/store.md, "The commit interval").
    """

    log = Logger()

    def __init__(self, store, clock, derived_interval: float = DERIVED_INTERVAL,
                 events_interval: float = EVENTS_INTERVAL):
        self.store = store
        self.clock = clock
        self._events = _Lane("write", events_interval)
        self._derived = (
            _Lane("write_derived", derived_interval) if IDerivedLane.providedBy(store) else None
        )
        self._lanes = (self._events,) if self._derived is None else (self._events, self._derived)
        self._listeners: list[Listener] = []
        self._idle: list[defer.Deferred] = []
        self.transactions = 0  # committed, for tests and status pages
        self.commit_seconds = 0.0  # of the last transaction, for the metrics
        # why the store refuses writes (unavailable, not one bad row), or
        # None: logged once when it begins and once when it clears
        self.refusing: str | None = None
        self._refused = 0  # writes failed since the store began refusing (logged at debug)

    # -- the API -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events submitted and not yet committed: the back-pressure figure."""
        return self._events.queued_events + self._events.inflight_events

    @property
    def busy(self) -> bool:
        return any(lane.busy for lane in self._lanes)

    @property
    def lanes(self) -> int:
        """1, or 2 on a store with a derived lane."""
        return len(self._lanes)

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        self._listeners.remove(fn)

    def submit(self, batch: WriteBatch) -> defer.Deferred:
        lane = self._derived if self._derived is not None and batch.derived() else self._events
        d = defer.Deferred()
        lane.queue.append((batch, d))
        lane.queued_events += len(batch.events)
        if not lane.inflight and lane.call is None:
            # later submissions of this turn join this transaction
            lane.call = self.clock.callLater(self._wait(lane), self._flush, lane)
        return d

    def flushed(self) -> defer.Deferred:
        """Fires once everything submitted so far (and since) is committed."""
        if not self.busy:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d

    def stopService(self):
        super().stopService()
        for lane in self._lanes:
            if lane.call is not None and lane.call.active():
                lane.call.cancel()
                lane.call = None
                self._flush(lane)
        return self.flushed()

    # -- the machinery -------------------------------------------------------

    def _wait(self, lane: _Lane) -> float:
        """Seconds before `lane` may begin its next transaction."""
        if not lane.interval or lane.began is None:
            return 0
        return max(0.0, lane.began + lane.interval - self.clock.seconds())

    def _flush(self, lane: _Lane) -> None:
        lane.call = None
        if lane.inflight or not lane.queue:
            return
        queue, lane.queue = lane.queue, []
        lane.inflight_events, lane.queued_events = lane.queued_events, 0
        lane.inflight = True
        lane.began = self.clock.seconds()
        batch = merge_batches([b for b, _ in queue])
        d = defer.maybeDeferred(getattr(self.store, lane.method), batch)
        d.addCallbacks(self._settled, self._settled,
                       callbackArgs=(self._committed, lane, batch, queue),
                       errbackArgs=(self._failed, lane, batch, queue))
        d.addErrback(lambda f: self.log.failure("BatchWriter bookkeeping failed", f))

    def _settled(self, result, handler, lane, batch, queue) -> None:
        if lane.starting_next:
            # a store that answers at once (MemoryStore), inside _committed:
            # after the transaction before it has been told, in order
            self.clock.callLater(0, handler, result, lane, batch, queue)
        else:
            handler(result, lane, batch, queue)

    def _committed(self, result, lane, batch, queue) -> None:
        self.commit_seconds = self.clock.seconds() - lane.began
        self._done(lane)
        if lane.queue and not self._wait(lane):
            # Start the next transaction now, not on the next reactor turn:
            # its statements and fsync run in the store's thread while this
            # one's listeners (the call model) and ACKs run here.
            if lane.call is not None and lane.call.active():
                lane.call.cancel()
            lane.starting_next = True
            try:
                self._flush(lane)
            finally:
                lane.starting_next = False
        self._tell(batch, result)
        for _, d in queue:
            d.callback(result)
        self._next(lane)  # a lane with an interval: its next transaction, once that is up

    def _tell(self, batch, result) -> None:
        self.transactions += 1
        if self.refusing is not None:
            self.log.info(
                "the store takes writes again ({count} writes failed meanwhile)",
                count=self._refused, alert="store_refusing_writes", state="clears",
            )
            self.refusing, self._refused = None, 0
        for fn in list(self._listeners):
            try:
                fn(batch, result)
            except Exception:
                self.log.failure("commit listener {listener!r} failed", listener=fn)

    def _failed(self, failure, lane, batch, queue) -> None:
        self._report(failure, batch, len(queue))
        if len(queue) == 1:
            self._done(lane)
            queue[0][1].errback(failure)
            self._after_failure(lane, queue[0][0].senders())
            return
        d = defer.ensureDeferred(self._one_by_one(lane, queue))
        d.addCallback(lambda failed: self._after_failure(lane, failed))
        d.addErrback(lambda f: self.log.failure("BatchWriter bookkeeping failed", f))

    async def _one_by_one(self, lane, queue) -> set[str]:
        """
        Write the submissions of a failed transaction again, each alone and
        in order; returns the gateways whose events failed.
        """
        failed: set[str] = set()
        unavailable: Failure | None = None
        for batch, d in queue:
            gateways = batch.senders()
            if unavailable is not None or gateways & failed:
                failed |= gateways
                lane.inflight_events -= len(batch.events)
                d.errback(unavailable or Failure(EarlierWriteFailed.of(gateways & failed)))
                continue
            try:
                result = await defer.maybeDeferred(getattr(self.store, lane.method), batch)
            except Exception:
                f = Failure()
                self._report(f, batch, 1)
                failed |= gateways
                if store_unavailable(f):
                    unavailable = f  # the store is down: the rest would fail alike
                lane.inflight_events -= len(batch.events)
                d.errback(f)
            else:
                lane.inflight_events -= len(batch.events)
                self._tell(batch, result)
                d.callback(result)
        self._done(lane)
        return failed

    def _after_failure(self, lane, failed: set[str]) -> None:
        """Fail the queued submissions with events of the gateways that failed."""
        if failed:
            queue, lane.queue = lane.queue, []
            keep = []
            for batch, d in queue:
                gateways = batch.senders()
                if gateways & failed:
                    failed |= gateways
                    lane.queued_events -= len(batch.events)
                    d.errback(EarlierWriteFailed.of(gateways & failed))
                else:
                    keep.append((batch, d))
            # what the errbacks submitted comes after
            lane.queue = keep + lane.queue
        self._next(lane)

    def _report(self, failure, batch, submissions: int) -> None:
        # an outage is two lines, when it begins and when it ends (with the
        # count): not one per write, 20 a second under load
        level = self.log.error
        if failure.check(LeaseLost) is not None:
            # another node took the gateway (a takeover, expected): the
            # protocol logs the Relogin Kickout; not an error of the store
            level = self.log.info
        elif store_unavailable(failure):
            if self.refusing is None:
                self.refusing = f"{failure.type.__name__}: {failure.getErrorMessage()}"
                self.log.critical(
                    "the store refuses writes: {error}; gateways get ERR unavailable until it takes them again",
                    error=self.refusing, alert="store_refusing_writes", state="begins",
                )
            self._refused += 1
            level = self.log.debug
        level(
            "store write of {events} events, {log} log entries, {records} records, {cdrs} CDRs"
            " ({submissions} submissions) failed: {error}{then}",
            events=len(batch.events), log=len(batch.log), records=len(batch.records),
            cdrs=len(batch.cdrs), submissions=submissions,
            error=f"{failure.type.__name__}: {failure.getErrorMessage()}",
            then="; writing them one by one" if submissions > 1 else "",
        )

    def _done(self, lane) -> None:
        lane.inflight = False
        lane.inflight_events = 0

    def _next(self, lane) -> None:
        if lane.inflight:
            return  # its end comes here again
        if lane.queue:
            if lane.call is None:
                # a new turn: no recursion through already-fired Deferreds
                lane.call = self.clock.callLater(self._wait(lane), self._flush, lane)
        elif not self.busy:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
