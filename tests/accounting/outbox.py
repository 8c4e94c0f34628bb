"""
A small in-process outbox with the IStore methods the accounting service
calls (outbox, outbox_stats, gateways, write) and a writer whose submit()
writes one batch: the accounting tests' store until cdrd.store's
MemoryStore/BatchWriter land.  It can also persist to a JSON file, so a
separate process (the kill -9 test) finds its outbox again.
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
        return self.write(WriteBatch(outbox=[OutboxItem(sink, p, created) for p in payloads]))


class Writer:
    def __init__(self, store):
        self.store = store

    def submit(self, batch):
        return self.store.write(batch)



class FileOutboxStore(OutboxStore):
    """OutboxStore persisted to a JSON file (fsync + rename per write), so a
    process killed with -9 leaves its outbox for the next one."""

    def __init__(self, path):
        super().__init__()
        import json
        import os

        self.path = str(path)
        self._json, self._os = json, os
        if os.path.exists(self.path):
            with open(self.path) as f:
                data = json.load(f)
            self.next_id = data["next_id"]
            for i in data["items"]:
                self.items[i["id"]] = OutboxItem(
                    i["sink"], bytes.fromhex(i["payload"]), i["created"], i["id"]
                )

    def write(self, batch):
        d = super().write(batch)
        data = {
            "next_id": self.next_id,
            "items": [
                {"id": i.id, "sink": i.sink, "payload": i.payload.hex(), "created": i.created}
                for i in self.items.values()
            ],
        }
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            self._json.dump(data, f)
            f.flush()
            self._os.fsync(f.fileno())
        self._os.replace(tmp, self.path)
        return d
