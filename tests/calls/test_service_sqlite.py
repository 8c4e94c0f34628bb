"""
Restart safety over the real SQLite store (file, WAL, its own thread) and
the real reactor: cdrd stops after part of E4/E5 (some events even stored
without being applied), a new store and service on the same file finish
the calls, and the records, CDRs and outbox equal an uninterrupted run.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from cdrd.calls.service import CallService
from cdrd.interfaces import CdrQuery, WriteBatch
from cdrd.store.sqlite import SQLiteStore
from cdrd.store.writer import BatchWriter
from tests.calls.helpers import E4, E5, GW, example_config, parse_events
from tests.calls.test_service import RecordingSink, describe, gateway_state, unstamped

EVENTS = unstamped(parse_events(E4 + E5))


class Node:
    def __init__(self, path):
        self.store = SQLiteStore(str(path), reactor)
        self.writer = BatchWriter(self.store, reactor)
        self.sink = RecordingSink()
        self.service = CallService(
            example_config(), self.store, self.writer, reactor, sinks=[self.sink]
        )

    async def start(self):
        await self.store.open()
        self.writer.startService()
        await self.service.startService()
        return self

    async def send(self, events, chunk=2):
        for i in range(0, len(events), chunk):
            await self.writer.submit(WriteBatch(events=events[i : i + chunk]))
        await self.settle()

    async def settle(self):
        for _ in range(5):
            await self.writer.flushed()
            await self.service.idle()

    async def stop(self, clean=True):
        if clean:
            await self.service.stopService()
        else:  # the process dies: nothing more is applied
            self.writer.remove_listener(self.service._committed)
            if self.service._sweep.looping is not None and self.service._sweep.looping.running:
                self.service._sweep.looping.stop()
        await self.writer.stopService()
        await self.store.close()

    async def results(self):
        _, cdrs = await self.store.cdrs(CdrQuery(limit=1000))
        outbox = await self.store.outbox("rec", 0, 10_000)
        from cdrd.interfaces import CallQuery

        page = await self.store.calls(CallQuery(limit=1000))
        return (
            sorted(page.records, key=lambda r: r.id),
            [c.line for c in cdrs],
            [i.payload for i in outbox],
        )


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("cut, unapplied", [(3, 0), (6, 2), (10, 0), (12, 3), (14, 1)])
async def test_stop_and_restart_on_sqlite(tmp_path, cut, unapplied):
    whole = await Node(tmp_path / "whole.sqlite").start()
    await whole.writer.submit(WriteBatch(gateways=[gateway_state()]))
    await whole.send(EVENTS)
    expected = await whole.results()
    assert len(expected[1]) == 4 and len(expected[0]) == 3
    await whole.stop()

    path = tmp_path / "cut.sqlite"
    first = await Node(path).start()
    await first.writer.submit(WriteBatch(gateways=[gateway_state()]))
    await first.send(EVENTS[:cut])
    await first.stop(clean=False)
    if unapplied:
        # stored by the gateway session just before the crash, never applied
        s = SQLiteStore(str(path), reactor)
        await s.open()
        await s.write(WriteBatch(events=EVENTS[cut : cut + unapplied]))
        await s.close()

    second = await Node(path).start()
    await second.settle()
    # the gateway resends what it had not seen acknowledged, and more
    await second.send(EVENTS[max(0, cut - 2) :])
    got = await second.results()
    cursor = (await second.store.cursors())[GW]
    stored = await second.store.events_after(GW, 0, 1000)
    await second.stop()
    assert got == expected
    assert [e.seq for e in stored] == [e.seq for e in EVENTS], "stored once each"
    assert cursor.applied == stored[-1].id and cursor.replay_from == cursor.applied + 1
    # what the restarted node's sink was told is exactly the outbox's tail
    told = [describe(o).encode() for o in second.sink.seen]
    assert got[2][len(got[2]) - len(told) :] == told
