"""
An in-memory IStore: correct, synchronous and fast, for the unit tests of
every room.  Every method returns an already-fired Deferred.  Nothing
survives the process.
"""

from __future__ import annotations

import bisect

from attrs import evolve
from twisted.internet import defer
from zope.interface import implementer

from cdrd.interfaces import (
    CALL_SORTS,
    CDR_SORTS,
    RETENTION_KINDS,
    SUMMARY_GROUPS,
    CallPage,
    CallStats,
    CallTotals,
    CuiTotals,
    Expired,
    IStore,
    SummaryPage,
    SummaryRow,
    WriteResult,
    shifted,
    summary_sort_key,
)
from cdrd.store import StoreClosed
from cdrd.store.schema import ATTEMPT_NOTATIONS, FILTER_NOTATION, log_gateway_match, quarter
from cdrd.store.sql import NUMBER_COUNT_CAP, postings_serve, uses_dictionary


def _within(t, since, until) -> bool:
    return (since is None or t >= since) and (until is None or t < until)


def _has(text: str, needle: str) -> bool:
    """A substring, ASCII case-insensitive (as SQL LIKE/ILIKE on numbers)."""
    return needle.lower() in text.lower()


def _in_windows(t, windows) -> bool:
    return windows is None or any(a <= t < b for a, b in windows)


def _sort_key(value):
    # NULLs first ascending, as SQLite and PostgreSQL's NULLS FIRST
    return (value is not None, value if value is not None else 0)


def _totals(records) -> CallTotals:
    n = a = t = ta = talk = 0
    for r in records:
        answered = r.connect is not None
        attempt = r.notation in ATTEMPT_NOTATIONS
        n += 1
        a += answered
        t += attempt
        if attempt and answered:
            ta += 1
            talk += r.talk or 0
    return CallTotals(calls=n, answered=a, attempts=t, attempts_answered=ta, talk=talk)


@implementer(IStore)
class MemoryStore:
    """
    The same semantics as the SQL stores (see the contract tests in
    tests/store/contract.py): ids increase in commit order, (gateway, seq)
    is unique, a record or CDR id is stored once.
    """

    #: the SQL stores' NUMBER_COUNT_CAP, on the searches where they apply it
    number_count_cap = NUMBER_COUNT_CAP

    def _capped(self, query, count: int) -> bool:
        """Does the SQL stores' count of this search stop at the cap?"""
        return (
            count > self.number_count_cap and query.number is not None
            and uses_dictionary(query.number) and postings_serve(query)
        )

    def __init__(self):
        self._events = []  # in id order
        self._event_keys = set()  # (gateway, seq)
        self._log = []
        self._gateways = {}
        self._records = {}  # id -> CallRecord, insertion order
        self._outbox_marks = {}  # call id -> highest outbox id stored when it was written
        self._cdrs = {}  # id -> Cdr, written order
        self._cursors = {}
        self._outbox = {}  # sink -> {id: OutboxItem}, ids increasing
        self._outbox_ids = {}  # sink -> ids in order, deleted ones included until compacted
        self._next_event = 1
        self._next_log = 1
        self._next_outbox = 1
        self.opened = False
        self.closed = False  # close() was called: writes fail, as on a real store

    # -- lifecycle ---------------------------------------------------------

    def open(self):
        self.opened = True
        return defer.succeed(None)

    def close(self):
        self.opened = False
        self.closed = True
        return defer.succeed(None)

    def activate(self, on_lost=None, poll=None):
        return defer.succeed(None)

    # -- the one way in ----------------------------------------------------

    def write(self, batch):
        if self.closed:
            return defer.fail(StoreClosed("the memory store is closed"))
        try:
            return defer.succeed(self._write(batch))
        except Exception:
            return defer.fail()

    def _write(self, batch) -> WriteResult:
        # Work out everything first, then apply: nothing partially applied.
        inserted = []
        keys = set()
        next_event = self._next_event
        for e in batch.events:
            if e.seq is not None:
                key = (e.gateway, e.seq)
                if key in self._event_keys or key in keys:
                    continue
                keys.add(key)
            inserted.append(evolve(e, id=next_event))
            next_event += 1
        log = []
        next_log = self._next_log
        for entry in batch.log:
            log.append(evolve(entry, id=next_log))
            next_log += 1
        outbox = []
        next_outbox = self._next_outbox
        for item in batch.outbox:
            outbox.append(evolve(item, id=next_outbox))
            next_outbox += 1

        self._events.extend(inserted)
        self._event_keys |= keys
        self._next_event = next_event
        self._log.extend(log)
        self._next_log = next_log
        for c in batch.log_counts:
            self._set_log_count(c)
        for g in batch.gateways:
            self._gateways[g.key] = g
        mark = max((i for items in self._outbox.values() for i in items), default=0)
        if outbox:
            mark = max(mark, outbox[-1].id)
        for r in batch.records:
            if r.id not in self._records:
                self._records[r.id] = r
                self._outbox_marks[r.id] = mark
        for c in batch.cdrs:
            self._cdrs.setdefault(c.id, c)
        for c in batch.cursors:
            self._cursors[c.gateway] = c
        for item in outbox:
            self._outbox.setdefault(item.sink, {})[item.id] = item
            self._outbox_ids.setdefault(item.sink, []).append(item.id)
        self._next_outbox = next_outbox
        for sink, item_id in batch.outbox_done:
            self._outbox.get(sink, {}).pop(item_id, None)
        return WriteResult(events=tuple(inserted))

    def _set_log_count(self, c) -> None:
        key = (c.entry.time, c.entry.event, c.entry.peer, c.entry.gateway, c.entry.mac)
        for i in range(len(self._log) - 1, -1, -1):  # a coalesced entry is a recent one
            e = self._log[i]
            if (e.time, e.event, e.peer, e.gateway, e.mac) == key:
                self._log[i] = evolve(e, count=c.count)

    # -- queries -----------------------------------------------------------

    def gateway(self, key):
        return defer.succeed(self._gateways.get(key))

    def gateways(self):
        return defer.succeed([self._gateways[k] for k in sorted(self._gateways)])

    def log(self, query):
        out = [
            e for e in self._log
            if _within(e.time, query.since, query.until)
            and (query.gateway is None or log_gateway_match(query.gateway, e.gateway, e.mac))
        ]
        out.sort(key=lambda e: (e.time, e.id), reverse=True)
        return defer.succeed(out[query.offset:query.offset + query.limit])

    def events(self, query):
        out = [
            e for e in self._events
            if (query.gateway is None or e.gateway == query.gateway)
            and (query.ref is None or e.ref == query.ref)
            and _within(e.time, query.since, query.until)
        ]
        if query.newest_first:
            out.reverse()
        return defer.succeed(out[query.offset:query.offset + query.limit])

    def events_after(self, gateway, after_id, limit):
        start = bisect.bisect_right(self._events, after_id, key=lambda e: e.id)
        out = []
        for e in self._events[start:]:
            if len(out) >= limit:
                break
            if gateway is None or e.gateway == gateway:
                out.append(e)
        return defer.succeed(out)

    def _search(self, query, chosen):
        """The records of `chosen` that match the query's search terms."""
        prefix = query.cui
        with_cui = None
        if prefix is not None:
            with_cui = {c.call for c in self._cdrs.values() if c.cui.startswith(prefix)}
        out = []
        for r in chosen:
            talk = r.talk or 0
            if query.number is not None and not any(
                _has(x, query.number) for x in (r.dialed, r.cli, r.pstn_dial, r.pstn_cli)
            ):
                continue
            if with_cui is not None and r.id not in with_cui:
                continue
            if query.min_talk is not None and talk < query.min_talk:
                continue
            if query.max_talk is not None and talk > query.max_talk:
                continue
            if not _in_windows(r.begin, query.windows):
                continue
            if query.cause is not None and r.cause != query.cause:
                continue
            out.append(r)
        return out

    def _matching(self, query):
        """(total, the records the whole query matches), or raise ValueError."""
        base = [
            r for r in self._records.values()
            if (query.gateway is None or r.gateway == query.gateway)
            and _within(r.begin, query.since, query.until)
        ]
        if query.filter == "all":
            chosen = base
        elif query.filter == "pstn":
            chosen = [r for r in base if r.pstn]
        elif query.filter in FILTER_NOTATION:
            notation = FILTER_NOTATION[query.filter]
            chosen = [r for r in base if r.notation == notation]
        else:
            raise ValueError(f"unknown call filter {query.filter!r}")
        return len(base), self._search(query, chosen)

    def calls(self, query):
        if query.sort not in CALL_SORTS:
            return defer.fail(ValueError(f"unknown call sort {query.sort!r}"))
        if query.after is not None and query.sort != "begin":
            return defer.fail(ValueError("keyset paging (after) needs sort begin"))
        try:
            total, chosen = self._matching(query)
        except ValueError:
            return defer.fail()
        column = query.sort
        chosen.sort(key=lambda r: (_sort_key(getattr(r, column)), r.id), reverse=query.descending)
        page = chosen
        if query.after is not None:
            if query.descending:
                page = [r for r in chosen if (r.begin, r.id) < query.after]
            else:
                page = [r for r in chosen if (r.begin, r.id) > query.after]
        filtered = len(chosen)
        capped = self._capped(query, filtered)
        if capped:
            filtered = self.number_count_cap
        if query.offset >= filtered:
            page = []
        page = tuple(page[query.offset:query.offset + query.limit])
        return defer.succeed(CallPage(total=total, filtered=filtered, records=page, capped=capped))

    def call_totals(self, query):
        try:
            _, chosen = self._matching(query)
        except ValueError:
            return defer.fail()
        if self._capped(query, len(chosen)):
            return defer.succeed(CallTotals(calls=self.number_count_cap, capped=True))
        return defer.succeed(_totals(chosen))

    def call_summary(self, query, group, prefix=None, bucket=None, limit=1000, offset=0,
                     sort=None, descending=False, shift=None):
        if group not in SUMMARY_GROUPS or (group == "time" and not bucket):
            return defer.fail(ValueError(f"unknown summary group {group!r} (bucket {bucket!r})"))
        try:
            order_key = summary_sort_key(sort, group == "time")
            _, chosen = self._matching(query)
        except ValueError:
            return defer.fail()

        def key(r):
            if group == "caller":
                return r.cli
            if group == "destination":
                return r.dialed[:prefix] if prefix else r.dialed
            if group == "gateway":
                return r.gateway
            return shifted(r.begin, shift) // bucket * bucket

        groups: dict = {}
        for r in chosen:
            groups.setdefault(key(r), []).append(r)
        rows = [SummaryRow(key=str(k), totals=_totals(rs)) for k, rs in groups.items()]
        rows.sort(key=order_key, reverse=descending)
        return defer.succeed(SummaryPage(groups=len(rows), rows=tuple(rows[offset:offset + limit])))

    def call_record(self, call_id):
        return defer.succeed(self._records.get(call_id))

    def outbox_matching(self, sink, text, limit):
        needle = text.encode("utf-8")
        items = [i for i in self._outbox.get(sink, {}).values() if needle in i.payload]
        return defer.succeed(sorted(items, key=lambda i: i.id)[:limit])

    def call_quarters(self, gateway, since, until):
        return defer.succeed(sorted({
            quarter(r.begin) for r in self._records.values()
            if (gateway is None or r.gateway == gateway) and _within(r.begin, since, until)
        }))

    def call_stats(self, since, until, bucket):
        sums = {}
        for r in self._records.values():
            if not _within(r.begin, since, until):
                continue
            key = (r.gateway, r.begin // bucket * bucket)
            n, a, t, ta, talk = sums.get(key, (0, 0, 0, 0, 0))
            answered = r.connect is not None
            attempt = r.notation in ATTEMPT_NOTATIONS
            sums[key] = (
                n + 1, a + answered, t + attempt, ta + (attempt and answered),
                talk + ((r.talk or 0) if attempt and answered else 0),
            )
        return defer.succeed([
            CallStats(gateway=g, start=b, calls=n, answered=a, attempts=t,
                      attempts_answered=ta, talk=talk)
            for (g, b), (n, a, t, ta, talk) in sorted(sums.items())
        ])

    def _cdrs_matching(self, query):
        out = []
        for c in self._cdrs.values():
            duration = c.duration or 0
            if (
                (query.gateway is None or c.gateway == query.gateway)
                and (query.cui is None or c.cui.startswith(query.cui))
                and (query.call is None or c.call == query.call)
                and _within(c.start, query.since, query.until)
                and (query.number is None or _has(c.dialled, query.number) or _has(c.cli, query.number))
                and (query.min_duration is None or duration >= query.min_duration)
                and (query.max_duration is None or duration <= query.max_duration)
                and _in_windows(c.start, query.windows)
                and (query.cause is None or c.status == query.cause)
                and (query.cuis is None or c.cui in query.cuis)
            ):
                out.append(c)
        return out

    def cui_totals(self, query):
        sums: dict[str, list[int]] = {}
        for c in self._cdrs_matching(query):
            row = sums.setdefault(c.cui, [0, 0, 0])
            row[0] += 1
            if c.duration is not None:
                row[1] += 1
                row[2] += c.duration
        return defer.succeed([
            CuiTotals(cui=k, cdrs=n, answered=a, duration=d) for k, (n, a, d) in sorted(sums.items())
        ])

    def cui_summary(self, query, limit=100, offset=0, sort=None, descending=False):
        try:
            order_key = summary_sort_key(sort, False)
        except ValueError:
            return defer.fail()
        rows = [
            SummaryRow(key=t.cui, totals=CallTotals(
                calls=t.cdrs, answered=t.answered, attempts=t.cdrs, attempts_answered=t.answered,
                talk=t.duration))
            for t in self.cui_totals(query).result
        ]
        rows.sort(key=order_key, reverse=descending)
        return defer.succeed(SummaryPage(groups=len(rows), rows=tuple(rows[offset:offset + limit])))

    def cdrs(self, query):
        if query.sort not in CDR_SORTS:
            return defer.fail(ValueError(f"unknown CDR sort {query.sort!r}"))
        if query.after is not None and query.sort != "written":
            return defer.fail(ValueError("keyset paging (after) needs sort written"))
        out = self._cdrs_matching(query)
        if query.sort != "written":
            column = query.sort
            written = {cdr_id: n for n, cdr_id in enumerate(self._cdrs)}
            out.sort(key=lambda c: (_sort_key(getattr(c, column)), written[c.id]), reverse=query.descending)
        elif query.descending:
            out.reverse()
        page = out
        if query.after is not None and query.after in self._cdrs:
            written = {cdr_id: n for n, cdr_id in enumerate(self._cdrs)}
            page = [c for c in out if written[c.id] > written[query.after]]
        return defer.succeed((len(out), page[query.offset:query.offset + query.limit]))

    def cursors(self):
        return defer.succeed(dict(self._cursors))

    def ended_calls(self, gateway, since):
        return defer.succeed([
            (r.boot, r.ref) for r in self._records.values()
            if r.gateway == gateway and r.end >= since
        ])

    def outbox(self, sink, after_id, limit):
        items = self._outbox.get(sink, {})
        ids = self._outbox_ids.get(sink, [])
        if len(ids) > 2 * len(items) + 64:
            ids[:] = [i for i in ids if i in items]  # drop the deleted ones
        out = []
        # a page costs its own length, not the outbox's
        for k in range(bisect.bisect_right(ids, after_id), len(ids)):
            if len(out) >= limit:
                break
            item = items.get(ids[k])
            if item is not None:
                out.append(item)
        return defer.succeed(out)

    def outbox_stats(self, sink):
        items = self._outbox.get(sink, {})
        if not items:
            return defer.succeed((0, None))
        oldest = next(iter(items.values()))  # the lowest id: written first
        return defer.succeed((len(items), oldest.created))


    # -- retention ------------------------------------------------------------

    def expire(self, kind, before, limit, after=None, stale_after=0):
        if kind not in RETENTION_KINDS:
            return defer.fail(ValueError(f"unknown retention kind {kind!r}"))
        if self.closed:
            return defer.fail(StoreClosed("the memory store is closed"))
        return defer.succeed(getattr(self, f"_expire_{kind}")(before, limit, after, stale_after))

    @staticmethod
    def _oldest_first(rows, key, before, limit, after):
        """(time, id, row) of `rows` with time < before after `after`, oldest first."""
        chosen = sorted(
            (key(r), r.id, r) for r in rows
            if key(r) < before and (after is None or (key(r), r.id) > tuple(after))
        )
        return chosen[:limit]

    @staticmethod
    def _next(chosen, limit):
        return chosen[-1][:2] if len(chosen) >= limit else None

    def _expire_log(self, before, limit, after, stale_after):
        chosen = self._oldest_first(self._log, lambda e: e.time, before, limit, after)
        gone = {i for _, i, _ in chosen}
        self._log = [e for e in self._log if e.id not in gone]
        return Expired(deleted=len(gone), after=self._next(chosen, limit))

    def _expire_events(self, before, limit, after, stale_after):
        chosen = self._oldest_first(self._events, lambda e: e.time, before, limit, after)
        replay = {g: c.replay_from for g, c in self._cursors.items()}
        gone = {i for _, i, e in chosen if i < replay.get(e.gateway, 0)}
        self._events = [e for e in self._events if e.id not in gone]
        return Expired(deleted=len(gone), after=self._next(chosen, limit))

    def _expire_records(self, before, limit, after, stale_after):
        chosen = self._oldest_first(self._records.values(), lambda r: r.begin, before, limit, after)
        undelivered = [i for items in self._outbox.values() for i in items]
        first_undelivered = min(undelivered) if undelivered else None
        held_since = {}
        for g, c in self._cursors.items():
            first = next((e for e in self._events if e.gateway == g and e.id >= c.replay_from), None)
            if first is not None:
                held_since[g] = first.time - stale_after
        gone = {
            i for _, i, r in chosen
            if (first_undelivered is None or self._outbox_marks[i] < first_undelivered)
            and (r.gateway not in held_since or r.end < held_since[r.gateway])
        }
        cdrs = [
            c.id for c in self._cdrs.values()
            if c.billed_call in gone or (c.billed_call == "" and c.call in gone)
        ]
        for i in cdrs:
            del self._cdrs[i]
        for i in gone:
            del self._records[i]
            del self._outbox_marks[i]
        return Expired(deleted=len(gone), cdrs=len(cdrs), after=self._next(chosen, limit))

    def oldest(self):
        return defer.succeed({
            "events": min((e.time for e in self._events), default=None),
            "log": min((e.time for e in self._log), default=None),
            "records": min((r.begin for r in self._records.values()), default=None),
        })

    def reclaim(self, pages):
        return defer.succeed((0, 0))
