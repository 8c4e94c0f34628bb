"""
Group commit: every WriteBatch submitted in one reactor turn, and all that
arrive while a transaction is in flight, go to the store in ONE write.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import fields
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from cdrd.interfaces import WriteBatch, WriteResult

Listener = Callable[[WriteBatch, WriteResult], object]

_FIELDS = [f.name for f in fields(WriteBatch)]


def merge_batches(batches) -> WriteBatch:
    """Concatenate the batches' tuples, field by field, in order."""
    if len(batches) == 1:
        return batches[0]
    return WriteBatch(**{
        name: tuple(item for b in batches for item in getattr(b, name))
        for name in _FIELDS
    })


class BatchWriter(Service):
    """
    The only writer of the store.  At most one transaction in flight; the
    next one takes everything submitted meanwhile.

    ``submit`` returns a Deferred firing with the merged WriteResult once the
    transaction holding the batch has committed, or failing with the store's
    failure (then none of it was applied).  Listeners are called with
    (merged batch, result) after each commit, in commit order, before the
    submitters' Deferreds fire.
    """

    log = Logger()

    def __init__(self, store, clock):
        self.store = store
        self.clock = clock
        self._queue: list[tuple[WriteBatch, defer.Deferred]] = []
        self._queued_events = 0
        self._inflight_events = 0
        self._inflight = False
        self._call = None  # the scheduled flush
        self._listeners: list[Listener] = []
        self._idle: list[defer.Deferred] = []
        self.transactions = 0  # committed, for tests and status pages

    # -- the API -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events submitted and not yet committed: the back-pressure figure."""
        return self._queued_events + self._inflight_events

    @property
    def busy(self) -> bool:
        return self._inflight or bool(self._queue)

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        self._listeners.remove(fn)

    def submit(self, batch: WriteBatch) -> defer.Deferred:
        d = defer.Deferred()
        self._queue.append((batch, d))
        self._queued_events += len(batch.events)
        if not self._inflight and self._call is None:
            # later submissions of this turn join this transaction
            self._call = self.clock.callLater(0, self._flush)
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
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._call = None
            self._flush()
        return self.flushed()

    # -- the machinery -------------------------------------------------------

    def _flush(self) -> None:
        self._call = None
        if self._inflight or not self._queue:
            return
        queue, self._queue = self._queue, []
        self._inflight_events, self._queued_events = self._queued_events, 0
        self._inflight = True
        batch = merge_batches([b for b, _ in queue])
        d = defer.maybeDeferred(self.store.write, batch)
        d.addCallbacks(self._committed, self._failed,
                       callbackArgs=(batch, queue), errbackArgs=(batch, queue))
        d.addErrback(lambda f: self.log.failure("BatchWriter bookkeeping failed", f))

    def _committed(self, result, batch, queue) -> None:
        self.transactions += 1
        self._done()
        for fn in list(self._listeners):
            try:
                fn(batch, result)
            except Exception:
                self.log.failure("commit listener {listener!r} failed", listener=fn)
        for _, d in queue:
            d.callback(result)
        self._next()

    def _failed(self, failure, batch, queue) -> None:
        self._done()
        self.log.error(
            "store write of {events} events, {records} records, {cdrs} CDRs failed: {error}",
            events=len(batch.events), records=len(batch.records), cdrs=len(batch.cdrs),
            error=failure.getErrorMessage(),
        )
        for _, d in queue:
            d.errback(failure)
        self._next()

    def _done(self) -> None:
        self._inflight = False
        self._inflight_events = 0

    def _next(self) -> None:
        if self._queue:
            if self._call is None:
                # a new turn: no recursion through already-fired Deferreds
                self._call = self.clock.callLater(0, self._flush)
        else:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
