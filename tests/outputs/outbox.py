"""
An in-process store with the IStore methods the syslog sink calls (outbox,
outbox_stats, write) and a writer whose submit() writes one batch, for the
unit tests: it answers synchronously and counts reads and writes.  The
rsyslog integration tests run over cdrd's MemoryStore and BatchWriter (and
the kill -9 test over SQLite).
"""

from __future__ import annotations

from twisted.internet import defer

from cdrd.interfaces import OutboxItem, WriteBatch, WriteResult


class OutboxStore:
    def __init__(self):
        self.items: dict[int, OutboxItem] = {}
        self.next_id = 1
        self.writes: list[WriteBatch] = []
        self.reads = 0

    def write(self, batch: WriteBatch):
        self.writes.append(batch)
        for item in batch.outbox:
            self.items[self.next_id] = OutboxItem(item.sink, item.payload, item.created, self.next_id)
            self.next_id += 1
        for sink, i in batch.outbox_done:
            if i in self.items and self.items[i].sink == sink:
                del self.items[i]
        return defer.succeed(WriteResult())

    def outbox(self, sink, after_id, limit):
        self.reads += 1
        out = []
        for k, i in self.items.items():  # ids ascend in insertion order
            if k > after_id and i.sink == sink:
                out.append(i)
                if len(out) >= limit:
                    break
        return defer.succeed(out)

    def outbox_stats(self, sink):
        mine = [i for i in self.items.values() if i.sink == sink]
        return defer.succeed((len(mine), min((i.created for i in mine), default=None)))

    def payloads(self, sink="syslog"):
        return [i.payload for _, i in sorted(self.items.items()) if i.sink == sink]

    def spooled(self, sink, payloads, created=0):
        """What the CallService does: store a sink's payloads in one batch."""
        return self.write(WriteBatch(outbox=[OutboxItem(sink, p, created) for p in payloads]))


class Writer:
    def __init__(self, store):
        self.store = store
        self.batches = []

    def submit(self, batch):
        self.batches.append(batch)
        return self.store.write(batch)
