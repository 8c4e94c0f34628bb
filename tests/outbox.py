"""
The outbox for the sinks' unit tests: the store room's real MemoryStore,
recording what is written (`writes`) and how often the outbox is read
(`reads`), and a writer that implements IBatchWriter but writes each batch
at once (the BatchWriter waits for the end of the reactor turn), so the unit
tests can assert what was stored and when.  The integration tests, the
kill -9 tests and the benchmarks use the BatchWriter itself.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from cdrd.interfaces import IBatchWriter, OutboxItem, WriteBatch
from cdrd.store.memory import MemoryStore


class OutboxStore(MemoryStore):
    def __init__(self):
        super().__init__()
        self.writes: list[WriteBatch] = []
        self.reads = 0

    def write(self, batch: WriteBatch):
        self.writes.append(batch)
        return super().write(batch)

    def outbox(self, sink, after_id, limit):
        self.reads += 1
        return super().outbox(sink, after_id, limit)

    @property
    def items(self) -> dict[int, OutboxItem]:
        """Every sink's items that are not deleted, by id."""
        return dict(sorted((i.id, i) for items in self._outbox.values() for i in items.values()))

    def payloads(self, sink="syslog"):
        return [i.payload for i in self.items.values() if i.sink == sink]

    def spooled(self, sink, payloads, created=0):
        """What the CallService does: store a sink's payloads in one batch."""
        return self.write(WriteBatch(outbox=[OutboxItem(sink, p, created) for p in payloads]))


@implementer(IBatchWriter)
class Writer:
    pending = 0
    busy = False
    refusing = None

    def __init__(self, store):
        self.store = store
        self.batches: list[WriteBatch] = []
        self._listeners = []

    def submit(self, batch):
        self.batches.append(batch)
        d = self.store.write(batch)

        def tell(result):
            for fn in list(self._listeners):
                fn(batch, result)
            return result

        return d.addCallback(tell)

    def flushed(self):
        return defer.succeed(None)

    def add_listener(self, fn):
        self._listeners.append(fn)

    def remove_listener(self, fn):
        self._listeners.remove(fn)
