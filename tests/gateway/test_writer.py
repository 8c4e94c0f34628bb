"""
The BatchWriter (cdrd/store/writer.py) when a transaction fails: one bad
submission fails alone, and a gateway's later submissions never commit
after one of its own failed.  Against a scripted store and a task.Clock.
"""

from __future__ import annotations

import sqlite3

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cdrd.interfaces import IBatchWriter, IDerivedLane, ModelCursor, WriteBatch
from cdrd.store.leases import LeaseLost
from cdrd.store.memory import MemoryStore
from cdrd.store.writer import BatchWriter, EarlierWriteFailed
from cdrd.values import CallEvent, LogEntry


def ev(gateway: str, seq: int | None) -> CallEvent:
    return CallEvent(gateway=gateway, seq=seq, ref=1, type="HOOK_OFF", time=1, received=1, boot="r0")


def batch(gateway: str, *seqs: int, poison: bool = False, moved: bool = False) -> WriteBatch:
    detail = "POISON" if poison else "MOVED" if moved else "ok"
    log = [LogEntry(time=1, event="Bad Packet", peer="p", detail=detail)]
    return WriteBatch(events=[ev(gateway, s) for s in seqs], log=log)


class ScriptedStore(MemoryStore):
    """
    Refuses a transaction holding a POISON log entry; `down` refuses all;
    `hold` makes writes wait (in `held`) until the test fires them.
    """

    def __init__(self):
        super().__init__()
        self.writes: list[WriteBatch] = []
        self.down = False
        self.hold = False
        self.held: list[defer.Deferred] = []

    def write(self, batch):
        if self.hold:
            d = defer.Deferred()
            self.held.append(d)
            return d.addCallback(lambda _: self._now(batch))
        return self._now(batch)

    def _now(self, batch):
        self.writes.append(batch)
        if self.down:
            return defer.fail(sqlite3.OperationalError("database or disk is full"))
        if any(e.detail == "MOVED" for e in batch.log):
            return defer.fail(LeaseLost([e.gateway for e in batch.events]))
        if any(e.detail == "POISON" for e in batch.log):
            return defer.fail(ValueError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))
        return super().write(batch)


class Rig:
    def __init__(self):
        self.clock = Clock()
        self.store = ScriptedStore()
        self.writer = BatchWriter(self.store, self.clock)
        self.writer.startService()
        self.committed: list[list[int | None]] = []
        self.writer.add_listener(lambda b, r: self.committed.append([e.seq for e in r.events]))
        self.outcomes: dict[str, object] = {}

    def submit(self, name: str, b: WriteBatch) -> defer.Deferred:
        d = self.writer.submit(b)
        d.addCallbacks(lambda r: self.outcomes.__setitem__(name, "ok"),
                       lambda f: self.outcomes.__setitem__(name, f.type))
        return d

    def settle(self):
        for _ in range(10):
            self.clock.advance(0)


def test_a_poison_submission_fails_alone():
    rig = Rig()
    rig.submit("a", batch("A_1", 1))
    rig.submit("poison", batch("???", poison=True))
    rig.submit("b", batch("B_1", 1))
    rig.settle()
    assert rig.outcomes == {"a": "ok", "poison": ValueError, "b": "ok"}
    # the merged transaction, then each alone, in order
    assert len(rig.store.writes) == 4
    assert rig.committed == [[1], [1]]  # listeners per commit, in commit order
    assert rig.writer.pending == 0 and not rig.writer.busy


def test_later_submissions_of_the_failed_gateway_fail_untried():
    rig = Rig()
    rig.submit("a1", batch("A_1", 1))
    rig.submit("a2", batch("A_1", 2, poison=True))
    rig.submit("b", batch("B_1", 1))
    rig.submit("a3", batch("A_1", 3))
    rig.settle()
    assert rig.outcomes == {"a1": "ok", "a2": ValueError, "b": "ok", "a3": EarlierWriteFailed}
    assert len(rig.store.writes) == 1 + 3  # a3 never reached the store
    assert [e.seq for e in rig.store._events] == [1, 1]


def test_a_failed_transaction_fails_the_gateways_submissions_queued_behind_it():
    rig = Rig()
    rig.store.hold = True
    rig.submit("a2", batch("A_1", 2, poison=True))
    rig.clock.advance(0)  # a2 alone in flight ...
    rig.submit("a3", batch("A_1", 3))  # ... these queue behind it
    rig.submit("b", batch("B_1", 1))
    rig.store.hold = False
    rig.store.held.pop().callback(None)
    rig.settle()
    assert rig.outcomes == {"a2": ValueError, "a3": EarlierWriteFailed, "b": "ok"}
    assert [e.gateway for e in rig.store._events] == ["B_1"]
    # the failure is forgotten once dealt with: the gateway's next login writes again
    rig.submit("a2-again", batch("A_1", 2))
    rig.settle()
    assert rig.outcomes["a2-again"] == "ok"


def test_an_unavailable_store_is_not_tried_once_per_submission():
    rig = Rig()
    rig.store.down = True
    for n in range(10):
        rig.submit(f"g{n}", batch(f"G_{n}", 1))
    rig.settle()
    assert set(rig.outcomes.values()) == {sqlite3.OperationalError}
    assert len(rig.store.writes) == 2  # the merged transaction and one alone
    rig.store.down = False
    rig.submit("later", batch("G_0", 2))
    rig.settle()
    assert rig.outcomes["later"] == "ok"


@pytest.fixture
def capture_log():
    """The BatchWriter's log events while the test runs."""
    events: list[dict] = []

    def observe(event):
        if event.get("log_namespace", "").startswith("cdrd.store.writer"):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def test_an_outage_is_two_log_lines_whatever_the_writes_it_fails(capture_log):
    # one line when the store begins refusing, one when it takes writes
    # again (with the count); the writes that fail meanwhile at debug
    rig = Rig()
    rig.store.down = True
    for n in range(5):
        rig.submit(f"g{n}", batch(f"G_{n}", 1))
        rig.settle()
    assert rig.writer.refusing == "OperationalError: database or disk is full"
    rig.store.down = False
    rig.submit("later", batch("G_0", 2))
    rig.settle()
    assert rig.writer.refusing is None
    loud = [e for e in capture_log if e["log_level"] > LogLevel.debug]
    assert [(e["log_level"], e.get("state")) for e in loud] == [
        (LogLevel.critical, "begins"), (LogLevel.info, "clears")]
    assert loud[1]["count"] == 5
    assert sum(1 for e in capture_log if e["log_level"] == LogLevel.debug
               and "failed" in e["log_format"]) == 5
    # a bad row is still an error: it is not an outage
    rig.submit("bad", batch("G_9", 1, poison=True))
    rig.settle()
    assert [e["log_level"] for e in capture_log if e["log_level"] > LogLevel.debug][2:] == [LogLevel.error]


def test_a_write_another_node_took_the_gateway_of_is_no_error(capture_log):
    # a takeover (docs/store.md, several nodes) is expected: info, not error
    rig = Rig()
    rig.submit("moved", batch("M_1", 1, moved=True))
    rig.settle()
    assert rig.outcomes == {"moved": LeaseLost}
    assert rig.writer.refusing is None
    loud = [e for e in capture_log if e["log_level"] > LogLevel.debug]
    assert [e["log_level"] for e in loud] == [LogLevel.info]
    assert "owned by another cdrd node" in loud[0]["error"]


def test_synthetic_events_do_not_tie_a_gateway():
    # the call model's STALE events (seq None) are not a gateway's sequence
    rig = Rig()
    rig.submit("a", batch("A_1", 1, poison=True))
    rig.submit("stale", WriteBatch(events=[ev("A_1", None)]))
    rig.settle()
    assert rig.outcomes == {"a": ValueError, "stale": "ok"}


def test_the_batch_writer_and_the_unit_tests_writer_provide_ibatchwriter():
    from tests.outbox import OutboxStore, Writer

    assert verifyObject(IBatchWriter, BatchWriter(MemoryStore(), Clock()))
    assert verifyObject(IBatchWriter, Writer(OutboxStore()))


# -- two lanes: a store with a derived lane (PostgreSQL's write_derived) -----------


@implementer(IDerivedLane)
class TwoLaneStore(ScriptedStore):
    """
    A ScriptedStore with a derived lane: `write_derived` takes the batches
    of derived rows; `hold_derived` makes those wait (in `held_derived`).
    Each write is noted with its lane.
    """

    def __init__(self):
        super().__init__()
        self.lanes: list[tuple[str, WriteBatch]] = []
        self.hold_derived = False
        self.held_derived: list[defer.Deferred] = []

    def write(self, batch):
        self.lanes.append(("events", batch))
        return super().write(batch)

    def write_derived(self, batch):
        assert batch.derived()
        self.lanes.append(("derived", batch))
        if self.hold_derived:
            d = defer.Deferred()
            self.held_derived.append(d)
            return d.addCallback(lambda _: self._now(batch))
        return self._now(batch)


class LaneRig(Rig):
    def __init__(self, derived_interval: float = 0.0):
        self.clock = Clock()
        self.store = TwoLaneStore()
        self.writer = BatchWriter(self.store, self.clock, derived_interval=derived_interval)
        self.writer.startService()
        self.told: list[WriteBatch] = []
        self.writer.add_listener(lambda b, r: self.told.append(b))
        self.outcomes = {}


def derived(gateway: str, applied: int) -> WriteBatch:
    return WriteBatch(cursors=[ModelCursor(gateway=gateway, applied=applied, replay_from=applied + 1)])


def test_a_store_without_a_derived_lane_writes_everything_in_one_line():
    rig = Rig()
    assert rig.writer.lanes == 1
    rig.submit("events", batch("A_1", 1))
    rig.submit("derived", derived("A_1", 1))
    rig.settle()
    assert rig.outcomes == {"events": "ok", "derived": "ok"}
    assert len(rig.store.writes) == 1  # one transaction for both


def test_derived_rows_commit_beside_an_events_transaction_in_flight():
    rig = LaneRig()
    assert rig.writer.lanes == 2
    rig.store.hold = True
    rig.submit("events", batch("A_1", 1))
    rig.clock.advance(0)
    assert rig.writer.busy and rig.writer.pending == 1
    # the events' transaction waits for its commit; the derived rows do not wait for it
    rig.submit("derived", derived("B_1", 7))
    rig.settle()
    assert rig.outcomes == {"derived": "ok"}
    assert [lane for lane, _ in rig.store.lanes] == ["events", "derived"]
    assert rig.store._cursors["B_1"].applied == 7
    assert rig.writer.pending == 1  # the events are still the back-pressure figure
    flushed = rig.writer.flushed()
    assert not flushed.called
    rig.store.hold = False
    rig.store.held.pop().callback(None)
    rig.settle()
    assert rig.outcomes == {"derived": "ok", "events": "ok"}
    assert flushed.called and not rig.writer.busy and rig.writer.pending == 0
    assert [b.derived() for b in rig.told] == [True, False]  # listeners per commit, as they commit


def test_each_lane_merges_its_own_submissions_and_keeps_their_order():
    rig = LaneRig()
    rig.submit("e1", batch("A_1", 1))
    rig.submit("d1", derived("A_1", 1))
    rig.submit("e2", batch("B_1", 1))
    rig.submit("d2", derived("B_1", 1))
    rig.submit("mixed", WriteBatch(events=[ev("C_1", 1)], cursors=[ModelCursor("C_1", 1, 2)]))
    rig.settle()
    assert set(rig.outcomes.values()) == {"ok"}
    (l1, events), (l2, rows) = rig.store.lanes
    assert (l1, l2) == ("events", "derived")
    # a batch with events (whatever else it holds) goes with the events
    assert [(e.gateway, e.seq) for e in events.events] == [("A_1", 1), ("B_1", 1), ("C_1", 1)]
    assert [c.gateway for c in events.cursors] == ["C_1"]
    assert [c.gateway for c in rows.cursors] == ["A_1", "B_1"]


def test_a_failed_derived_write_leaves_the_events_lane_alone():
    rig = LaneRig()
    rig.store.hold_derived = True
    rig.submit("d", derived("A_1", 1))
    rig.clock.advance(0)
    rig.store.down = True
    rig.store.hold_derived = False
    rig.store.held_derived.pop().callback(None)
    rig.settle()
    assert rig.outcomes == {"d": sqlite3.OperationalError}
    rig.store.down = False
    rig.submit("e", batch("A_1", 1))
    rig.submit("d-again", derived("A_1", 1))
    rig.settle()
    assert rig.outcomes == {"d": sqlite3.OperationalError, "e": "ok", "d-again": "ok"}
    assert rig.writer.refusing is None and not rig.writer.busy


def test_stopping_writes_what_each_lane_holds():
    rig = LaneRig()
    rig.submit("e", batch("A_1", 1))
    rig.submit("d", derived("A_1", 1))
    stopped = rig.writer.stopService()  # before the turn that would flush them
    assert stopped.called
    assert rig.outcomes == {"e": "ok", "d": "ok"}


def test_the_derived_lane_begins_a_transaction_at_most_once_an_interval():
    rig = LaneRig(derived_interval=0.15)
    rig.submit("d1", derived("A_1", 1))
    rig.settle()
    assert rig.outcomes == {"d1": "ok"}  # the first one at once
    rig.clock.advance(0.05)
    rig.submit("d2", derived("A_1", 2))
    rig.submit("e", batch("A_1", 1))
    rig.settle()
    assert rig.outcomes == {"d1": "ok", "e": "ok"}  # the events' lane does not wait
    assert rig.writer.busy and not rig.writer.flushed().called
    rig.clock.advance(0.09)
    rig.submit("d3", derived("A_1", 3))
    rig.settle()
    assert "d2" not in rig.outcomes
    rig.clock.advance(0.01)  # 0.15 s after d1's transaction began: d2 and d3 in one
    rig.settle()
    assert rig.outcomes == {"d1": "ok", "e": "ok", "d2": "ok", "d3": "ok"}
    assert [len(b.cursors) for lane, b in rig.store.lanes if lane == "derived"] == [1, 2]
    assert not rig.writer.busy


def test_stopping_does_not_wait_for_the_derived_lanes_interval():
    rig = LaneRig(derived_interval=0.15)
    rig.submit("d1", derived("A_1", 1))
    rig.settle()
    rig.submit("d2", derived("A_1", 2))
    rig.settle()
    assert rig.writer.stopService().called
    assert rig.outcomes == {"d1": "ok", "d2": "ok"}


def test_the_events_begin_a_transaction_at_most_once_a_commit_interval():
    """`[server] commit_interval`: what comes meanwhile joins the next
    transaction; the first one after a quiet spell begins at once."""
    clock = Clock()
    store = ScriptedStore()
    writer = BatchWriter(store, clock, events_interval=0.01)
    writer.startService()
    acked = []
    writer.submit(batch("A_1", 1)).addCallback(lambda _: acked.append(1))
    clock.advance(0)
    assert acked == [1] and len(store.writes) == 1  # at once
    for seq in (2, 3):
        writer.submit(batch("A_1", seq)).addCallback(lambda _, seq=seq: acked.append(seq))
        clock.advance(0.004)
    assert acked == [1] and len(store.writes) == 1  # 8 ms after the first began
    clock.advance(0.002)  # 10 ms: 2 and 3 in one transaction
    assert acked == [1, 2, 3] and [len(b.events) for b in store.writes] == [1, 2]
    clock.advance(0.5)
    writer.submit(batch("A_1", 4)).addCallback(lambda _: acked.append(4))
    clock.advance(0)
    assert acked == [1, 2, 3, 4]  # a quiet spell: at once
    writer.submit(batch("A_1", 5)).addCallback(lambda _: acked.append(5))
    assert writer.stopService().called  # stopping does not wait for the interval
    assert acked == [1, 2, 3, 4, 5]


def test_cdrd_gives_the_writer_its_commit_interval(tmp_path):
    from cdrd.config import parse
    from cdrd.service import build_service

    config = parse({"server": {"database": f"sqlite:{tmp_path / 'c.sqlite'}", "commit_interval": 0.02}})
    service = build_service(config, Clock())
    assert service.parts.writer._events.interval == 0.02
