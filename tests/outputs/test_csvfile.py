"""Unit: the CSV file sink (one file a day, in the configured zone), durable
through its outbox: a row leaves the outbox only once it is in the file."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, task
from zope.interface.verify import verifyObject

from cdrd.interfaces import ICdrSink, OutboxItem, WriteBatch
from cdrd.outputs.csvfile import CsvFileSink
from cdrd.store.memory import MemoryStore
from cdrd.store.writer import BatchWriter
from tests.outputs.cdrs import E1_LINE, E4_LINES, call_end, cdr, e1, e4


class HeldWrites:
    """The reactor's thread pool, but each append waits until released."""

    def __init__(self):
        self.calls: list[tuple[defer.Deferred, tuple]] = []

    def __call__(self, f, *args):
        d = defer.Deferred()
        self.calls.append((d, (f, *args)))
        return d

    def release(self):
        while self.calls:
            d, (f, *args) = self.calls.pop(0)
            d.callback(f(*args))


def sink_on(directory, zone="UTC", store=None, in_thread=None):
    clock = task.Clock()
    store = store or MemoryStore()
    writer = BatchWriter(store, clock)
    sink = CsvFileSink(directory, store, writer, clock, clock, zone,
                       in_thread=in_thread or defer.maybeDeferred)
    return sink, store, writer, clock


def commit(sink, writer, clock, outputs):
    """What the CallService does: the sink's payloads in the outbox, then committed()."""
    writer.submit(WriteBatch(outbox=[OutboxItem(sink.name, p, 0) for p in sink.spool(outputs, 0)]))
    clock.advance(0)
    sink.committed(outputs)


def outbox(store, sink):
    return store.outbox(sink.name, 0, 100).result


def test_lines_of_a_turn_go_to_the_file_of_their_day(tmp_path):
    held = HeldWrites()
    sink, store, writer, clock = sink_on(tmp_path / "cdr", in_thread=held)
    assert verifyObject(ICdrSink, sink) and len(sink.spool([e1()], 0)) == 1
    sink.startService()
    writer.submit(WriteBatch(outbox=[OutboxItem("csv", p, 0) for p in sink.spool([e1(), e4()], 0)]))
    clock.advance(0)
    sink.committed([e1()])
    sink.committed([e4()])
    path = tmp_path / "cdr" / "cdrs-2026-11-22.csv"
    assert not path.exists()  # one write per page, in a thread
    held.release()
    clock.advance(0)
    # the FireBrick line byte for byte, then the creating and the billed call
    rows = [c.csv_row for c in e1().cdrs + e4().cdrs]
    assert [r.rsplit(",", 2)[0] for r in rows] == [E1_LINE, *E4_LINES]
    assert path.read_text() == "\n".join(rows) + "\n"
    commit(sink, writer, clock, [e1()])
    d = sink.stopService()  # flushes
    held.release()
    clock.advance(0)
    assert d.called
    assert path.read_text().count(E1_LINE) == 2
    assert sink.status()["written"] == 4


def test_the_day_is_the_call_end_in_the_zone(tmp_path):
    sink, store, writer, clock = sink_on(tmp_path, "America/New_York")
    sink.startService()
    late = call_end(90, "03:30:00.000", cdr("c", 1, "03:00:00.000", 0, 1000, "A", "1", "2"))
    commit(sink, writer, clock, [late])  # 22:30 on the 21st in New York
    clock.advance(0)
    assert (tmp_path / "cdrs-2026-11-21.csv").read_text().startswith("2026-11-22T03:00:00.000Z,")


def test_an_unwritable_directory_is_logged_and_counted(tmp_path):
    sink, store, writer, clock = sink_on(tmp_path / "f")
    sink.startService()
    (tmp_path / "f").rmdir()
    (tmp_path / "f").write_text("not a directory")
    commit(sink, writer, clock, [e1()])
    clock.advance(0)
    assert sink.status()["errors"] == 1 and sink.status()["written"] == 0
    # kept in the outbox, and written once the directory is back
    assert len(outbox(store, sink)) == 1
    (tmp_path / "f").unlink()
    (tmp_path / "f").mkdir()
    clock.advance(sink.retry_initial)
    clock.advance(0)
    assert sink.status()["written"] == 1 and not outbox(store, sink)
    assert (tmp_path / "f" / "cdrs-2026-11-22.csv").read_text().count(E1_LINE) == 1


def test_a_crash_before_the_append_completes_loses_no_committed_line(tmp_path):
    """The item stays in the outbox until its line is written and synced: a
    crash (kill -9) while the append is in the thread loses nothing; the next
    start appends it."""
    held = HeldWrites()
    store = MemoryStore()
    sink, _, writer, clock = sink_on(tmp_path, store=store, in_thread=held)
    sink.startService()
    commit(sink, writer, clock, [e1()])
    assert len(held.calls) == 1  # the append is in the thread, not done
    clock.advance(10)
    assert len(outbox(store, sink)) == 1  # committed, not yet in the file: still in the outbox
    path = tmp_path / "cdrs-2026-11-22.csv"
    assert not path.exists()
    # kill -9: the old process is gone, its thread's write never happened
    again, _, _, clock2 = sink_on(tmp_path, store=store)
    again.startService()
    clock2.advance(0)
    assert path.read_text().count(E1_LINE) == 1
    assert not outbox(store, again)


@pytest_twisted.inlineCallbacks
def test_appends_in_the_reactor_thread_pool(tmp_path):
    from twisted.internet import reactor

    store = MemoryStore()
    writer = BatchWriter(store, reactor)
    sink = CsvFileSink(tmp_path, store, writer, reactor, reactor)
    sink.startService()
    rows = sink.spool([e1(), e4()], 0)
    yield writer.submit(WriteBatch(outbox=[OutboxItem("csv", p, 0) for p in rows]))
    sink.committed([e1(), e4()])
    writing = sink._writing
    assert writing is not None and not writing.called  # in a thread, not on this one
    yield writing
    yield sink.stopService()  # submits the deletions and waits for their commit
    assert (tmp_path / "cdrs-2026-11-22.csv").read_text().count("\n") == 3
    assert not (yield store.outbox("csv", 0, 10))
