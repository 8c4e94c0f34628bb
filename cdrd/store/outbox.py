"""
OutboxConsumer: the one reader of a durable sink's outbox.

Every durable ICdrSink (RADIUS, syslog, CSV files) delivers the same way:
read its outbox in id order a page at a time, remembering the highest id
read, hand the items to the sink's sending policy, and delete what the sink
says was delivered, in batches through the writer.  A failed read is retried
after `retry_delay`; a failed deletion is retried too (until it commits the
items stay, so a crash meanwhile only sends them again: at least once).

The consumer owns that loop and nothing else; how, when and whether an item
counts as delivered is the sink's (a verified RADIUS answer, a syslog
collector's confirmation, a line written and fsynced).  Data flows one way:
the consumer reads the store and submits to the writer, and calls back into
its sink only with what it read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from cdrd.interfaces import OutboxItem, WriteBatch


@attrs.define(eq=False)
class _Reading:
    """Where the reader is in the outbox."""

    after: int = 0  # highest outbox id read
    reading: bool = False
    caught_up: bool = False  # the last page was short and nothing came meanwhile
    generation: int = 0  # bumped when items may have been added during a read
    run: int = 0  # start() calls: a read of an earlier run is ignored
    retry_call: object = None


@attrs.define(eq=False)
class _Deleting:
    """Ids delivered and not yet deleted, and the deletion in flight."""

    done: list[int] = attrs.Factory(list)
    inflight: defer.Deferred | None = None
    flush_call: object = None
    stopping: bool = False


@attrs.define(eq=False)
class OutboxConsumer:
    """
    Reads the outbox of `sink` for a sink's sending policy.

    `received(items)` is called with each page's new items (in id order);
    `retry()` is called `retry_delay` seconds after a failed read (the sink
    reads again from there); `deleted()` after each committed deletion batch.
    """

    sink: str
    store: object  # IStore: outbox()
    writer: object  # IBatchWriter: submit()
    clock: object  # IReactorTime
    received: Callable[[Sequence[OutboxItem]], object]
    retry: Callable[[], object]
    deleted: Callable[[], object] = lambda: None
    retry_delay: float = 1.0
    _read: _Reading = attrs.field(factory=_Reading, init=False)
    _delete: _Deleting = attrs.field(factory=_Deleting, init=False)

    log = Logger()

    # -- reading ----------------------------------------------------------------

    @property
    def after(self) -> int:
        return self._read.after

    @property
    def reading(self) -> bool:
        return self._read.reading

    @property
    def caught_up(self) -> bool:
        """The last read ended at the outbox's end and nothing was added since."""
        return self._read.caught_up

    def start(self) -> None:
        """Read from the beginning again (a new run of the sink's service)."""
        self._cancel_retry()
        self._read = _Reading(run=self._read.run + 1)
        self._delete.stopping = False

    def added(self) -> None:
        """Items were committed to the outbox: the end is further on."""
        self._read.caught_up = False
        self._read.generation += 1

    def read(self, limit: int) -> None:
        """Read the next page of at most `limit` items (once a read is done)."""
        r = self._read
        if r.reading:
            r.generation += 1  # asked again meanwhile: read on after this page
            return
        r.reading = True
        d = defer.maybeDeferred(self.store.outbox, self.sink, r.after, limit)
        d.addCallbacks(
            self._page, self._failed,
            callbackArgs=(limit, r.generation, r.run), errbackArgs=(r.run,),
        )
        d.addErrback(lambda f: self.log.failure("{sink}: outbox page handling failed", f, sink=self.sink))

    def _page(self, items, limit, generation, run) -> None:
        r = self._read
        if run != r.run:
            return  # read by an earlier run of the service
        r.reading = False
        new = [item for item in items if item.id > r.after]
        if new:
            r.after = new[-1].id
        r.caught_up = len(items) < limit and generation == r.generation
        self.received(new)

    def _failed(self, failure, run) -> None:
        r = self._read
        if run != r.run:
            return
        r.reading = False
        if self._delete.stopping:
            return
        self.log.failure("{sink}: reading the outbox failed; retrying", failure, sink=self.sink)
        self._cancel_retry()
        r.retry_call = self.clock.callLater(self.retry_delay, self._retry)

    def _retry(self) -> None:
        self._read.retry_call = None
        self.retry()

    def _cancel_retry(self) -> None:
        call = self._read.retry_call
        if call is not None and call.active():
            call.cancel()
        self._read.retry_call = None

    # -- deleting what was delivered ------------------------------------------------

    @property
    def deleting(self) -> bool:
        """Deletions wait or are in flight."""
        return self._delete.inflight is not None or bool(self._delete.done)

    def delete(self, item_id: int) -> None:
        """The sink delivered this item: delete it (batched, next turn)."""
        s = self._delete
        s.done.append(item_id)
        if s.flush_call is None and s.inflight is None and not s.stopping:
            s.flush_call = self.clock.callLater(0, self.flush)

    def flush(self) -> defer.Deferred:
        s = self._delete
        s.flush_call = None
        if s.inflight is not None or not s.done:
            return defer.succeed(None)
        ids, s.done = s.done, []
        d = defer.maybeDeferred(
            self.writer.submit, WriteBatch(outbox_done=[(self.sink, i) for i in ids])
        )
        s.inflight = d

        def done(_):
            s.inflight = None
            self.deleted()
            if s.done and s.flush_call is None and not s.stopping:
                s.flush_call = self.clock.callLater(0, self.flush)

        def failed(failure):
            # not deleted: a crash now means they are delivered again (at least once)
            self.log.failure("{sink}: deleting delivered outbox items failed; retrying",
                             failure, sink=self.sink)
            s.inflight = None
            s.done[:0] = ids
            if s.flush_call is None and not s.stopping:
                s.flush_call = self.clock.callLater(self.retry_delay, self.flush)

        d.addCallbacks(done, failed)
        return d

    # -- stopping -------------------------------------------------------------------

    def stop(self) -> None:
        """No more reads retried nor deletions scheduled; drain() submits the rest."""
        self._delete.stopping = True
        self._cancel_retry()
        call = self._delete.flush_call
        if call is not None and call.active():
            call.cancel()
        self._delete.flush_call = None

    @defer.inlineCallbacks
    def drain(self):
        """Wait for the deletion in flight, then submit the rest (bounded)."""
        for _ in range(10):
            if self._delete.inflight is not None:
                yield self._delete.inflight
                continue
            if not self._delete.done:
                return
            yield self.flush()
