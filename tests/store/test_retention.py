"""
Unit: RetentionService over MemoryStore and task.Clock: when it sweeps, in
what steps, what it logs and counts; and once against a real SQLite file.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import capturedLogs, formatEvent

from cdrd.config import RetentionConfig
from cdrd.interfaces import EventQuery, LogQuery, WriteBatch
from cdrd.store.memory import MemoryStore
from cdrd.store.retention import DAY_MS, RetentionService
from tests.store.values import DAY, HOUR, cursor, event, log_entry, record

NOW = DAY / 1000  # the clock's seconds


def clock_at(seconds=NOW) -> task.Clock:
    clock = task.Clock()
    clock.advance(seconds)
    return clock


def lines(logged) -> list[str]:
    return [formatEvent(e) for e in logged if formatEvent(e).startswith("retention")]


def stored(store, write) -> MemoryStore:
    store.write(write)
    return store


def test_zero_keeps_everything_forever():
    store = stored(MemoryStore(), WriteBatch(
        log=[log_entry(0), log_entry(DAY - 400 * DAY_MS)], events=[event(1, time=0)],
        records=[record(1, 0)], cursors=[cursor(applied=1, replay_from=2)],
    ))
    service = RetentionService(store, clock_at(), RetentionConfig())
    assert not service.active
    with capturedLogs() as logged:
        service.startService()
        service.clock.pump([3600] * 10)
    assert service.sweeps == 11 and lines(logged) == []
    assert service.deleted == {"events": 0, "log": 0, "records": 0, "cdrs": 0}
    assert len(store._log) == 2 and len(store._events) == 1 and len(store._records) == 1
    assert service.kept() == {
        "events": {"days": 0, "oldest": 0}, "log": {"days": 0, "oldest": 0},
        "records": {"days": 0, "oldest": 0},
    }
    service.stopService()


def test_sweeps_at_start_then_every_interval_one_line_each_time_it_deleted():
    store = stored(MemoryStore(), WriteBatch(
        log=[log_entry(DAY - 3 * DAY_MS), log_entry(DAY - DAY_MS + HOUR // 2), log_entry(DAY)],
        events=[event(1, time=DAY - 5 * DAY_MS), event(2, time=DAY)],
        cursors=[cursor(applied=2, replay_from=3)],
        records=[record(1, DAY - 40 * DAY_MS), record(2, DAY - 10 * DAY_MS)],
    ))
    config = RetentionConfig(events_days=2, log_days=1, records_days=30, interval=3600)
    service = RetentionService(store, clock_at(), config)
    with capturedLogs() as logged:
        service.startService()
        assert service.sweeps == 1  # at start-up, before any time passed
        assert [e.time for e in store._log] == [DAY - DAY_MS + HOUR // 2, DAY]
        assert [e.seq for e in store._events] == [2] and list(store._records) == [record(2, 0).id]
        service.clock.advance(1800)
        assert service.sweeps == 1
        service.clock.advance(1800)  # the next hour: the second entry is a day old now
        assert service.sweeps == 2 and [e.time for e in store._log] == [DAY]
        service.clock.advance(3600)  # nothing more to delete: no line
        assert service.sweeps == 3
    said = lines(logged)
    assert len(said) == 2
    assert said[0].startswith("retention: deleted 1 events, 1 log entries, 1 call records with 0 CDRs in ")
    assert said[1].startswith("retention: deleted 0 events, 1 log entries, 0 call records")
    deleted = [e for e in logged if "records" in e and e.get("log_namespace", "").endswith("RetentionService")]
    assert [(e["events"], e["log"], e["records"]) for e in deleted] == [(1, 1, 1), (0, 1, 0)]
    assert service.deleted == {"events": 1, "log": 2, "records": 1, "cdrs": 0}
    assert service.kept()["log"] == {"days": 1, "oldest": DAY}
    service.stopService()


def test_batches_leave_the_writer_to_the_ingest_between_them():
    store = stored(MemoryStore(), WriteBatch(log=[log_entry(DAY - 2 * DAY_MS + n) for n in range(7)]))
    service = RetentionService(store, clock_at(), RetentionConfig(log_days=1, batch=2), min_pause=0.5)
    service.startService()
    assert len(store._log) == 5  # one batch, then a pause
    service.clock.advance(0.49)
    assert len(store._log) == 5
    service.clock.advance(0.01)
    assert len(store._log) == 3
    service.clock.pump([0.5] * 3)
    assert store._log == [] and service.sweeps == 1
    service.stopService()


def test_a_slow_batch_makes_a_long_pause():
    """The pause is at least as long as the batch took: half the writer at most."""
    slow = defer.Deferred()
    store = stored(MemoryStore(), WriteBatch(log=[log_entry(DAY - 2 * DAY_MS + n) for n in range(4)]))
    expire = store.expire

    def expire_slowly(*a, **kw):
        d = expire(*a, **kw)
        return slow.addCallback(lambda _: d) if not slow.called else d

    store.expire = expire_slowly
    service = RetentionService(store, clock_at(), RetentionConfig(log_days=1, batch=2), min_pause=0.01)
    service.startService()
    service.clock.advance(3)  # the first batch takes 3 s
    slow.callback(None)
    assert len(store._log) == 2
    service.clock.advance(2.9)
    assert len(store._log) == 2
    service.clock.advance(0.1)
    assert store._log == []
    service.stopService()


def test_stopping_mid_sweep_ends_it_at_its_next_step():
    store = stored(MemoryStore(), WriteBatch(log=[log_entry(DAY - 2 * DAY_MS + n) for n in range(6)]))
    service = RetentionService(store, clock_at(), RetentionConfig(log_days=1, batch=2), min_pause=1)
    service.startService()
    stopped = service.stopService()
    assert stopped.called and len(store._log) == 4
    service.clock.advance(10)
    assert len(store._log) == 4 and service.sweeps == 0


def test_a_store_that_fails_costs_one_line_and_the_next_sweep_goes_on():
    store = stored(MemoryStore(), WriteBatch(log=[log_entry(DAY - 2 * DAY_MS)]))
    expire = store.expire
    store.expire = lambda *a, **kw: defer.fail(OSError("database or disk is full"))
    service = RetentionService(store, clock_at(), RetentionConfig(log_days=1))
    with capturedLogs() as logged:
        service.startService()
        store.expire = expire
        service.clock.advance(3600)
    said = lines(logged)
    assert said[0] == (
        "retention: sweep stopped after 0 events, 0 log entries, 0 call records: database or disk is full")
    assert said[1].startswith("retention: deleted 0 events, 1 log entries")
    assert all(e.get("log_failure") is None for e in logged)  # no traceback
    service.stopService()


def test_metrics_count_deleted_rows_and_the_age_of_the_oldest():
    from cdrd.metrics import Metrics

    store = stored(MemoryStore(), WriteBatch(
        log=[log_entry(DAY - 2 * DAY_MS), log_entry(DAY - HOUR)],
        records=[record(1, DAY - 3 * DAY_MS)],
    ))
    clock = clock_at()
    service = RetentionService(store, clock, RetentionConfig(log_days=1))
    service.startService()
    metrics = Metrics(process=False, retention=service)
    page = metrics.page()[0].decode()
    assert 'cdrd_retention_deleted_total{kind="log"} 1.0' in page
    assert 'cdrd_retention_deleted_total{kind="records"} 0.0' in page
    assert 'cdrd_retention_oldest_seconds{kind="log"} 3600.0' in page
    assert f'cdrd_retention_oldest_seconds{{kind="records"}} {3 * 86400:.1f}' in page
    assert 'cdrd_retention_oldest_seconds{kind="events"}' not in page  # none held
    assert 'cdrd_retention_kept_days{kind="log"} 1.0' in page
    service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_sweep_over_sqlite_deletes_and_gives_the_space_back(tmp_path):
    from cdrd.store.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "cdrd.sqlite"), reactor)
    await store.open()
    try:
        now = reactor.seconds()
        old = int(now * 1000) - 3 * DAY_MS
        written = await store.write(WriteBatch(
            events=[event(n, ref=n, time=old + n) for n in range(1, 3001)],
            log=[log_entry(old + n, detail="x" * 300) for n in range(3000)],
        ))
        last = written.events[-1].id
        await store.write(WriteBatch(cursors=[cursor(applied=last, replay_from=last)]))
        service = RetentionService(store, reactor, RetentionConfig(events_days=1, log_days=1, batch=400))
        service.startService()
        for _ in range(600):
            if service.sweeps:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        await service.stopService()
        assert service.deleted["events"] == 2999 and service.deleted["log"] == 3000
        assert service.reclaimed > 100
        assert [e.seq for e in await store.events(EventQuery())] == [3000]  # recovery's
        assert await store.log(LogQuery()) == []
        assert service.kept()["events"]["oldest"] == old + 3000
    finally:
        await store.close()
