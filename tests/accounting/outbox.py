"""
A small in-process outbox with the IStore methods the accounting service
calls (outbox, outbox_stats, gateways, write) and a writer whose submit()
writes one batch at once: it records every batch (`writes`), so the unit
tests can assert what was stored and when.  The store room's MemoryStore,
SQLiteStore and BatchWriter are used in test_service_store.py, the kill -9
tests and the benchmark.
"""

from __future__ import annotations

from twisted.internet import defer

from cdrd.interfaces import OutboxItem, WriteBatch, WriteResult


class OutboxStore:
    def __init__(self):
        self.items: dict[int, OutboxItem] = {}
        self.next_id = 1
        self.gateway_states = []
        self.writes: list[WriteBatch] = []

    def write(self, batch: WriteBatch):
        self.writes.append(batch)
        for item in batch.outbox:
            self.items[self.next_id] = OutboxItem(
                item.sink, item.payload, item.created, self.next_id
            )
            self.next_id += 1
        for sink, i in batch.outbox_done:
            if i in self.items and self.items[i].sink == sink:
                del self.items[i]
        return defer.succeed(WriteResult())

    def outbox(self, sink, after_id, limit):
        # ids only grow and dicts keep insertion order: scan from after_id
        out = []
        for k in range(after_id + 1, self.next_id):
            item = self.items.get(k)
            if item is not None and item.sink == sink:
                out.append(item)
                if len(out) >= limit:
                    break
        return defer.succeed(out)

    def outbox_stats(self, sink):
        mine = [i for i in self.items.values() if i.sink == sink]
        return defer.succeed((len(mine), min((i.created for i in mine), default=None)))

    def gateways(self):
        return defer.succeed(list(self.gateway_states))

    def spooled(self, sink, payloads, created=0):
        """What the CallService does: store a sink's payloads in one batch."""
        return self.write(
            WriteBatch(outbox=[OutboxItem(sink, p, created) for p in payloads])
        )


class Writer:
    def __init__(self, store):
        self.store = store

    def submit(self, batch):
        return self.store.write(batch)
