"""
The store the web tests run against: the store room's MemoryStore where it
is committed, else a small stand-in with the same IStore query semantics
(the web room was written while MemoryStore was still being written).
"""

from __future__ import annotations

from twisted.internet.defer import succeed
from zope.interface import implementer

from cdrd.interfaces import CallPage, IStore, WriteResult

try:  # pragma: no cover - depends on the store room's progress
    from cdrd.store.memory import MemoryStore
except ImportError:  # pragma: no cover
    MemoryStore = None

NOTATIONS = {
    "in": "Call in",
    "out": "Call out",
    "out-failed": "Call out failed",
    "in-reject": "Call in reject",
    "other": "Other",
}


@implementer(IStore)
class StandInStore:
    def __init__(self):
        self._events, self._log, self._gateways = [], [], {}
        self._records, self._cdrs = {}, {}
        self._next = 1

    def open(self):
        return succeed(None)

    def close(self):
        return succeed(None)

    def write(self, batch):
        from attrs import evolve

        inserted = []
        seen = {(e.gateway, e.seq) for e in self._events if e.seq is not None}
        for e in batch.events:
            if e.seq is not None and (e.gateway, e.seq) in seen:
                continue
            e = evolve(e, id=self._next)
            self._next += 1
            self._events.append(e)
            inserted.append(e)
        for entry in batch.log:
            self._log.append(evolve(entry, id=len(self._log) + 1))
        for g in batch.gateways:
            self._gateways[g.key] = g
        for r in batch.records:
            self._records.setdefault(r.id, r)
        for c in batch.cdrs:
            self._cdrs.setdefault(c.id, c)
        return succeed(WriteResult(events=tuple(inserted)))

    def gateway(self, key):
        return succeed(self._gateways.get(key))

    def gateways(self):
        return succeed([self._gateways[k] for k in sorted(self._gateways)])

    @staticmethod
    def _within(t, since, until):
        return (since is None or t >= since) and (until is None or t < until)

    def log(self, q):
        out = [
            e for e in self._log
            if self._within(e.time, q.since, q.until)
            and (q.gateway is None or q.gateway in (e.gateway, f"{e.gateway}_{e.mac}"))
        ]
        out.sort(key=lambda e: (e.time, e.id), reverse=True)
        return succeed(out[q.offset:q.offset + q.limit])

    def events(self, q):
        out = [
            e for e in self._events
            if (q.gateway is None or e.gateway == q.gateway)
            and (q.ref is None or e.ref == q.ref)
            and self._within(e.time, q.since, q.until)
        ]
        out.sort(key=lambda e: e.id, reverse=q.newest_first)
        return succeed(out[q.offset:q.offset + q.limit])

    def events_after(self, gateway, after_id, limit):
        return succeed([e for e in self._events if e.gateway == gateway and e.id > after_id][:limit])

    def calls(self, q):
        base = [
            r for r in self._records.values()
            if (q.gateway is None or r.gateway == q.gateway) and self._within(r.begin, q.since, q.until)
        ]
        if q.filter == "all":
            chosen = base
        elif q.filter == "pstn":
            chosen = [r for r in base if r.pstn]
        else:
            chosen = [r for r in base if r.notation == NOTATIONS[q.filter]]
        chosen.sort(key=lambda r: (r.begin, r.id))
        return succeed(CallPage(len(base), len(chosen), tuple(chosen[q.offset:q.offset + q.limit])))

    def call_quarters(self, gateway, since, until):
        return succeed(sorted({
            r.begin // 900_000 * 900_000 for r in self._records.values()
            if (gateway is None or r.gateway == gateway) and since <= r.begin < until
        }))

    def cdrs(self, q):
        out = [
            c for c in self._cdrs.values()
            if (q.gateway is None or c.gateway == q.gateway)
            and (q.cui is None or c.cui == q.cui)
            and (q.call is None or c.call == q.call)
            and self._within(c.start, q.since, q.until)
        ]
        return succeed((len(out), out[q.offset:q.offset + q.limit]))

    def cursors(self):
        return succeed({})

    def ended_calls(self, gateway, since):
        return succeed([])

    def outbox(self, sink, after_id, limit):
        return succeed([])

    def outbox_stats(self, sink):
        return succeed((0, None))


def make_store():
    if MemoryStore is not None:
        return MemoryStore()
    return StandInStore()
