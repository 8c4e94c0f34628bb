"""
CallService over MemoryStore + BatchWriter + task.Clock: products written
once, in order, to the store and every sink; recovery after a crash gives
the same records, CDRs and outbox as a run that never stopped.
"""

from __future__ import annotations

from attrs import evolve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.logger import LogLevel, capturedLogs
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cdrd.calls.service import CallService
from cdrd.interfaces import ICdrSink, WriteBatch
from cdrd.store.memory import MemoryStore
from cdrd.store.writer import BatchWriter
from cdrd.values import CallEnd, GatewayState, LegAnswer, LegStart, LegStop
from tests.calls.helpers import ALL, E4, E5, GW, example_config, parse_events, t

NOW = t("10:00:00.000") / 1000


@implementer(ICdrSink)
class RecordingSink:
    """A durable sink: one outbox item per product, naming it."""

    def __init__(self, name="rec"):
        self.name = name
        self.seen = []

    def spool(self, outputs, now):
        return [describe(o).encode() for o in outputs]

    def committed(self, outputs):
        self.seen.extend(outputs)


def describe(o) -> str:
    if isinstance(o, CallEnd):
        return (
            "end " + o.record.id + " " + " | ".join(c.id + "=" + c.line for c in o.cdrs)
        )
    if isinstance(o, LegStop):
        return f"stop {o.leg.id} {o.cause} " + " | ".join(c.id for c in o.cdrs)
    if isinstance(o, (LegStart, LegAnswer)):
        return f"{type(o).__name__} {o.leg.id}"
    raise AssertionError(o)


def pump(clock, limit=1000):
    """Run every call due now (the writer's turns), boundedly."""
    for _ in range(limit):
        due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
        if not due:
            return
        clock.advance(0)
    raise AssertionError("the writer never settled")


class Rig:
    """A cdrd as far as calls go: store, writer, service, sink."""

    def __init__(self, store=None, config=None, clock=None, extra_sinks=(), **options):
        self.clock = clock or task.Clock()
        if clock is None:
            self.clock.advance(NOW)
        self.store = store or MemoryStore()
        self.store.open()
        self.writer = BatchWriter(self.store, self.clock)
        self.writer.startService()
        self.sink = RecordingSink()
        self.state = gateway_state()  # what login() stored last
        self.service = CallService(
            config or example_config(),
            self.store,
            self.writer,
            self.clock,
            sinks=[self.sink, *extra_sinks],
            **options,
        )
        d = self.service.startService()
        pump(self.clock)
        assert d.called, "recovery finished"

    def send(self, events, chunk=1):
        """As the gateway session stores them: with the gateway's state."""
        for i in range(0, len(events), chunk):
            part = events[i : i + chunk]
            self.writer.submit(WriteBatch(events=part, gateways=[
                evolve(self.state, last_seq=max(e.seq or 0 for e in part))]))
            pump(self.clock)

    def login(self, state=None):
        """What the gateway session stores at LOGIN, before any event."""
        self.state = state or self.state
        self.writer.submit(WriteBatch(gateways=[self.state]))
        pump(self.clock)

    def crash(self):
        """Lose everything in memory: no stopService, no flush, nothing pending runs."""
        for call in self.clock.getDelayedCalls():
            if call.active():
                call.cancel()
        self.writer.remove_listener(self.service._committed)

    def results(self):
        page = self.store.calls.__self__._records
        records = dict(page)
        _, cdrs = self.store.cdrs.__func__(self.store, _all_cdrs()).result
        outbox = self.store.outbox("rec", 0, 10**9).result
        return records, [c.line for c in cdrs], [i.payload for i in outbox]


def _all_cdrs():
    from cdrd.interfaces import CdrQuery

    return CdrQuery(limit=10**9)


def unstamped(events):
    """Events as a gateway sends them: no store id yet."""
    return [evolve(e, id=None) for e in events]


def gateway_state():
    return GatewayState(key=GW, id="8200", mac="000C2A020082", boot="b1")


def test_legs_carry_the_gateway_address_of_its_stored_state():
    """The address the gateway's LOGIN stored is on every leg it begins (and
    so in its RADIUS packets); after a restart it is read back from the store."""
    from cdrd.accounting import packets

    peer = "198.51.100.7:40000"
    rig = Rig()
    rig.login(evolve(gateway_state(), peer=peer))
    rig.send(unstamped(parse_events(E4)))
    starts = [o for o in rig.sink.seen if isinstance(o, LegStart)]
    assert starts and {o.leg.peer for o in starts} == {peer}
    payload = packets.spool(starts[:1], 0, None, False)[0].to_bytes()
    assert b'["cdrd-Gateway-Address","198.51.100.7:40000"]' in payload
    rig.crash()
    again = Rig(store=rig.store, clock=rig.clock)
    again.send(unstamped(parse_events(E5)))
    starts = [o for o in again.sink.seen if isinstance(o, LegStart)]
    assert starts and {o.leg.peer for o in starts} == {peer}


def test_sink_interface():
    verifyObject(ICdrSink, RecordingSink())


def test_worked_examples_through_the_service():
    rig = Rig()
    rig.login()
    rig.send(unstamped(parse_events(ALL)), chunk=3)
    records, lines, outbox = rig.results()
    assert lines == [
        "2026-11-22T10:00:07.250Z,4.250,120.000,442079460201,2252,442079460201",
        "2026-11-22T10:10:00.000Z,18.000,-cancelled,CARRIER-ACME,2252,02071234567",
        "2026-11-22T10:20:18.000Z,15.900,300.000,442079460201,202,442079460201",
        "2026-11-22T10:20:18.000Z,5.000,300.000,ACCT-202,07700900123,442079460201",
        "2026-11-22T10:30:04.100Z,3.000,595.900,442079460201,202,442079460201",
        "2026-11-22T10:31:10.000Z,7.000,530.000,ACCT-202,07700900999,442079460202",
    ]
    assert sorted(r.ref for r in records.values()) == [75, 76, 77, 78, 79, 80]
    # the sink saw every product once, in the order of the outbox, CDRs in stack order
    assert [describe(o).encode() for o in rig.sink.seen] == outbox
    ends = [o for o in rig.sink.seen if isinstance(o, CallEnd)]
    assert [c.line for o in ends for c in o.cdrs] == lines
    cursor = rig.store.cursors().result[GW]
    assert (
        cursor.applied == len(parse_events(ALL))
        and cursor.replay_from == cursor.applied + 1
    )
    assert rig.service.open_calls() == []


def test_products_of_one_step_commit_in_one_transaction_with_the_cursor():
    rig = Rig()
    events = unstamped(parse_events(E4))
    rig.send(events[:-1], chunk=len(events))
    before = rig.writer.transactions
    rig.send(events[-1:])
    # the events' transaction, then ONE derived transaction
    assert rig.writer.transactions == before + 2
    assert rig.service.written >= 2
    assert rig.store.cursors().result[GW].applied == len(events)


def test_events_a_lost_commit_stored_are_applied_at_the_next_login():
    # a database failover during COMMIT: the replica has the events, the
    # writer saw a failure, so no listener was told; the gateway's next
    # LOGIN is told last= by the store and never sends them again
    rig = Rig()
    rig.login()
    events = unstamped(parse_events(E4 + E5))
    rig.send(events[:4])
    rig.store.write(WriteBatch(events=events[4:-2]))  # committed, unseen
    pump(rig.clock)
    assert len(rig.results()[0]) < 3
    rig.login()
    rig.send(events[-2:])
    records, lines, outbox = rig.results()
    assert len(records) == 3 and len(lines) == 4
    assert len(outbox) == len(set(outbox))
    assert rig.store.cursors().result[GW].applied == len(events)
    rig.login()  # nothing left to catch up: nothing twice
    assert rig.results()[2] == outbox


def test_an_events_commit_reads_nothing_back_a_login_reads_once():
    # every events batch carries its gateway's state; only a state stored
    # without the gateway's events (a LOGIN) looks for events no commit told of
    rig = Rig()
    rig.login()
    reads = []
    read = rig.store.events_after
    rig.store.events_after = lambda *a: reads.append(a) or read(*a)
    events = unstamped(parse_events(E4 + E5))
    with capturedLogs() as logs:
        rig.send(events, chunk=3)
        assert reads == []
        rig.login()
    assert len(reads) == 1
    assert not [e for e in logs if e["log_level"] >= LogLevel.warn]
    records, lines, outbox = rig.results()
    assert len(records) == 3 and len(lines) == 4


def test_a_catch_up_the_store_fails_is_tried_again_without_a_traceback():
    rig = Rig()
    rig.login()
    events = unstamped(parse_events(E4 + E5))
    rig.send(events[:4])
    rig.store.write(WriteBatch(events=events[4:]))  # committed, unseen
    read = rig.store.events_after
    rig.store.events_after = lambda *a: defer.fail(OSError("consuming input failed: SSL error"))
    with capturedLogs() as logs:
        rig.login()
    assert [e["log_level"] for e in logs if e["log_level"] >= LogLevel.warn] == [LogLevel.warn]
    assert not any(e.get("log_failure") for e in logs)
    assert len(rig.results()[0]) < 3
    rig.store.events_after = read
    rig.clock.advance(1.0)
    pump(rig.clock)
    assert len(rig.results()[0]) == 3


def test_resent_events_never_duplicate():
    rig = Rig()
    events = unstamped(parse_events(E4 + E5))
    rig.send(events[:8])
    rig.send(events[:8])  # a gateway resending after a reconnect: same seqs
    rig.send(events)
    records, lines, outbox = rig.results()
    assert len(records) == 3 and len(lines) == 4
    assert len(outbox) == len(set(outbox))


def test_open_refs_and_open_calls():
    rig = Rig()
    rig.send(unstamped(parse_events(E5))[:6])
    assert rig.service.open_refs(GW, "b1") == {79, 80}
    assert rig.service.open_refs(GW, "other") == set()
    assert [c.ref for c in rig.service.open_calls()] == [79, 80]


def test_stale_sweep_ends_a_silent_call_through_the_event_log():
    config = example_config(stale_after=3600)
    rig = Rig(config=config)
    events = unstamped(parse_events(E4))[:4]  # until the DIVERT; received at 10:20
    rig.clock.advance(t("10:20:30.000") / 1000 - rig.clock.seconds())
    rig.send(events)
    for _ in range(
        59
    ):  # sweeps until 11:19:30: the last event (10:20:12.100) is not an hour old
        rig.clock.advance(60)
        pump(rig.clock)
    assert rig.service.open_calls()
    assert rig.results()[0] == {}
    for _ in range(3):
        rig.clock.advance(60)
        pump(rig.clock)
    records, lines, _ = rig.results()
    (record,) = records.values()
    assert record.cause == "stale" and record.end == t("10:20:12.100")
    stored = rig.store.events_after(GW, 0, 100).result
    assert [e.type for e in stored][-1] == "STALE" and stored[-1].seq is None
    assert rig.service.open_calls() == []


def test_stop_service_waits_for_products():
    rig = Rig()
    rig.writer.submit(WriteBatch(events=unstamped(parse_events(E4))))
    rig.clock.advance(0)  # the events commit; the products are in flight or queued
    d = rig.service.stopService()
    pump(rig.clock)
    assert d.called
    assert len(rig.results()[1]) == 2


class FlakyStore(MemoryStore):
    def __init__(self):
        super().__init__()
        self.fail_next = 0

    def write(self, batch):
        if self.fail_next and (batch.records or batch.cursors):
            self.fail_next -= 1
            return defer.fail(OSError("disk full"))
        return super().write(batch)


def test_failed_product_write_is_retried_in_order():
    store = FlakyStore()
    rig = Rig(store=store)
    events = unstamped(parse_events(E4 + E5))
    store.fail_next = 2
    rig.send(events, chunk=4)
    for _ in range(5):
        rig.clock.advance(1)
        pump(rig.clock)
    _, lines, outbox = rig.results()
    assert len(lines) == 4
    assert [describe(o).encode() for o in rig.sink.seen] == outbox


def test_a_store_refusing_for_a_while_is_one_error_line_not_one_per_retry():
    store = FlakyStore()
    rig = Rig(store=store)
    store.fail_next = 30  # half a minute of retries
    with capturedLogs() as logged:
        rig.send(unstamped(parse_events(E4)))
        for _ in range(40):
            rig.clock.advance(1)
            pump(rig.clock)
    mine = [e for e in logged if e["log_namespace"].startswith("cdrd.calls")]
    loud = [e for e in mine if e["log_level"] >= LogLevel.warn]
    assert [e["log_format"] for e in loud] == [
        "calls: writing {products} products failed ({error}); retrying every {delay}s"]
    assert [e["tries"] for e in mine if "tries" in e] == [30]
    assert len(rig.results()[1]) == 2 and rig.service.failed_writes == 0


def test_stopping_does_not_wait_for_a_store_that_refuses_and_the_next_start_makes_it_all():
    store = FlakyStore()
    rig = Rig(store=store)
    rig.login()
    store.fail_next = 10**6  # the store refuses every product write
    rig.send(unstamped(parse_events(E4)))
    rig.clock.advance(1)
    pump(rig.clock)
    assert rig.results()[1] == []  # nothing written yet, retrying
    with capturedLogs() as logged:
        d = rig.service.stopService()
        pump(rig.clock)
    assert d.called  # did not wait for the store
    assert any("the next start makes them again" in e["log_format"] for e in logged)
    rig.writer.stopService()
    store.fail_next = 0  # the operator freed the disk; cdrd starts again
    again = Rig(store=store)
    _, lines, outbox = again.results()
    assert len(lines) == 2 and len(outbox) == len(
        [o for o in run_model(parse_events(E4))])


# -- restart safety --------------------------------------------------------


def uninterrupted(events, chunk):
    rig = Rig()
    rig.login()
    rig.send(events, chunk=chunk)
    return rig.results()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_crash_and_recovery_gives_the_same_records_cdrs_and_outbox(data):
    events = unstamped(parse_events(E4 + E5))
    events += unstamped(parse_events(ALL, first_seq=len(events) + 1, boot="b2"))
    chunk = data.draw(st.integers(1, 5), label="chunk")
    applied = data.draw(st.integers(0, len(events)), label="applied before the crash")
    unapplied = data.draw(
        st.integers(0, len(events) - applied), label="stored, not applied"
    )
    resend = data.draw(
        st.integers(0, applied + unapplied), label="resent after restart"
    )
    lost = data.draw(st.booleans(), label="the last products' transaction never ran")
    expected = uninterrupted(events, chunk)

    rig = Rig()
    rig.login()
    if lost and applied:
        rig.send(events[: applied - 1], chunk=chunk)
        rig.writer.submit(WriteBatch(events=events[applied - 1 : applied]))
        # run the writer's turn by hand: the events commit, their products are
        # submitted for the next turn, which never comes
        (turn,) = [
            c
            for c in rig.clock.getDelayedCalls()
            if c.active() and c.getTime() <= rig.clock.seconds()
        ]
        func, args, kw = turn.func, turn.args, turn.kw
        turn.cancel()
        func(*args, **kw)
        assert (
            rig.store.events_after(GW, 0, 10**6).result[-1].seq
            == events[applied - 1].seq
        )
        cursor = rig.store.cursors().result.get(GW)
        assert cursor is None or cursor.applied < applied, "the crash did lose products"
    else:
        rig.send(events[:applied], chunk=chunk)
    rig.crash()
    # committed by the gateway session, but cdrd died before the model saw them
    if unapplied:
        rig.store.write(WriteBatch(events=events[applied : applied + unapplied]))

    again = Rig(store=rig.store, clock=rig.clock)
    again.send(events[applied + unapplied - resend :], chunk=chunk)
    got = again.results()
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    assert got[2] == expected[2]
    assert again.service.open_calls() == []


def test_recovery_keeps_a_transfer_whose_consultation_call_ended_before_the_crash():
    events = unstamped(parse_events(E5))
    expected = uninterrupted(events, 1)
    rig = Rig()
    rig.login()
    rig.send(events[:10])  # through the TRANSFER: call 80 is recorded, 79 open
    records, _, _ = rig.results()
    assert [r.ref for r in records.values()] == [80]
    assert rig.store.cursors().result[GW].replay_from == 1
    rig.crash()
    again = Rig(store=rig.store, clock=rig.clock)
    assert [c.ref for c in again.service.open_calls()] == [79]
    again.send(events[10:])
    assert again.results() == expected


def test_late_event_of_a_call_ended_before_the_crash_is_ignored_after_it():
    events = unstamped(parse_events(E4 + "\n90 10:30:00.000 HOOK_OFF port=2"))
    rig = Rig()
    rig.login()
    rig.send(events)
    rig.crash()
    again = Rig(store=rig.store, clock=rig.clock)
    late = unstamped(
        parse_events(
            "78 10:31:00.000 HOOK_ON port=1\n90 10:31:00.000 HOOK_ON port=2",
            first_seq=len(events) + 1,
        )
    )
    again.send(late)
    records, lines, _ = again.results()
    assert sorted(r.ref for r in records.values()) == [78, 90]
    assert len(lines) == 2


def test_recovery_after_a_long_pause_keeps_late_events_of_old_calls_ignored():
    config = example_config(stale_after=3600)
    events = unstamped(
        parse_events("""
2 08:59:00.000 HOOK_OFF port=2
2 08:59:30.000 HOOK_ON port=2
1 09:00:00.000 HOOK_OFF port=1
2 09:05:00.000 REMOTE_HOOK_ON
""")
    )
    clock = task.Clock()
    clock.advance(t("09:06:00.000") / 1000)
    rig = Rig(config=config, clock=clock)
    rig.login()
    rig.send(events)
    assert [c.ref for c in rig.service.open_calls()] == [1]
    assert rig.store.cursors().result[GW].replay_from == 3
    rig.crash()
    clock.advance(
        3 * 3600
    )  # cdrd was down for hours: call 2 ended long before now - stale_after
    again = Rig(store=rig.store, config=config, clock=clock)
    assert [c.ref for c in again.service.open_calls()] == [1]
    records, _, _ = again.results()
    assert [r.ref for r in records.values()] == [2]


def test_recovery_keeps_every_tombstone_it_loads_beyond_the_per_gateway_bound():
    # call 1 stays open, so the replay starts at its HOOK_OFF and goes over
    # five calls that ended before the crash, and late events of each
    # after all five ended: more than the bound of 2
    text = "1 09:00:00.000 HOOK_OFF port=1\n"
    for ref in range(2, 7):
        text += f"{ref} 09:00:0{ref}.000 HOOK_OFF port=2\n"
        text += f"{ref} 09:00:0{ref}.500 HOOK_ON port=2\n"
    for ref in range(2, 7):
        text += f"{ref} 09:00:10.000 REMOTE_HOOK_ON\n"
    events = unstamped(parse_events(text))
    rig = Rig()
    rig.login()
    rig.send(events)
    rig.crash()
    again = Rig(store=rig.store, clock=rig.clock, tombstones_per_gateway=2)
    assert [c.ref for c in again.service.open_calls()] == [1], "no ghost calls"
    again.send(unstamped(parse_events("1 09:01:00.000 HOOK_ON port=1", first_seq=17)))
    records, _, outbox = again.results()
    assert sorted(r.ref for r in records.values()) == [1, 2, 3, 4, 5, 6]
    assert len(outbox) == len(set(outbox))


# -- a sink that cannot spool a product -----------------------------------------


class RefusingSink(RecordingSink):
    """Cannot render the end of call `refuse` (as a CDR line of a time out of range)."""

    def __init__(self, name="bad", refuse=78):
        super().__init__(name)
        self.refuse = refuse

    def spool(self, outputs, now):
        for o in outputs:
            if isinstance(o, CallEnd) and o.record.ref == self.refuse:
                raise ValueError("year 10000 is out of range")
        return super().spool(outputs, now)


def is_refused(payload: bytes) -> bool:
    return payload.startswith(b"end ") and b"/78 " in payload


def outbox_of(store, name):
    return [i.payload for i in store.outbox(name, 0, 10**9).result]


def test_a_sink_that_cannot_spool_a_product_loses_nothing():
    bad = RefusingSink()
    store = MemoryStore()
    rig = Rig(store=store, extra_sinks=[bad])
    events = unstamped(parse_events(E4 + E5))
    with capturedLogs() as logs:
        rig.send(events[:5])
        rig.send(events[5:], chunk=len(events))  # 78 ends, 79/80 run to their end
    records, lines, outbox = rig.results()
    # the records, the CDRs and the other sink's items are all written
    assert sorted(r.ref for r in records.values()) == [78, 79, 80]
    assert len(lines) == 4
    assert outbox == [describe(o).encode() for o in run_model(events)]
    assert [describe(o).encode() for o in rig.sink.seen] == outbox
    # the refusing sink has every product but call 78's end, and is told of
    # those only; the refused one is held for it
    assert outbox_of(store, "bad") == [p for p in outbox if not is_refused(p)]
    assert [describe(o).encode() for o in bad.seen] == outbox_of(store, "bad")
    assert rig.service.held() == {"bad": 1}
    failures = [e for e in logs if e.get("log_failure") is not None]
    assert [(e["sink"], e["product"]) for e in failures] == [
        ("bad", f"CallEnd {GW}/b1/78")
    ]
    assert rig.store.cursors().result[GW].applied == len(events)
    # the sink recovers: the held product goes with the next write, first
    bad.refuse = None
    more = unstamped(parse_events("81 10:50:00.000 REJECT", first_seq=len(events) + 1))
    rig.send(more)
    held = [p for p in outbox if is_refused(p)]
    assert outbox_of(store, "bad")[-4:-3] == held  # then 81's Start, Stop, end
    assert sorted(outbox_of(store, "bad")) == sorted(outbox_of(store, "rec"))
    assert rig.service.held() == {}
    assert [describe(o).encode() for o in bad.seen[-4:]] == outbox_of(store, "bad")[-4:]


def test_what_a_sink_still_refuses_at_stop_is_logged_as_lost_to_it():
    bad = RefusingSink()
    rig = Rig(extra_sinks=[bad])
    rig.send(unstamped(parse_events(E4)))
    with capturedLogs() as logs:
        d = rig.service.stopService()
        pump(rig.clock)
    assert d.called
    (lost,) = [e for e in logs if e.get("sink") == "bad"]
    assert lost["count"] == 1 and lost["products"] == [f"CallEnd {GW}/b1/78"]
    assert rig.service.held() == {}


def test_a_failure_building_the_write_loses_nothing_and_moves_no_cursor():
    rig = Rig()
    events = unstamped(parse_events(E4))
    broken = [True]
    real = rig.service._batch

    def batch(pending, now):
        if broken[0]:
            raise RuntimeError("cannot build")
        return real(pending, now)

    rig.service._batch = batch
    with capturedLogs() as logs:
        rig.send(events)
    assert rig.results()[0] == {} and rig.store.cursors().result == {}
    assert any(e.get("log_failure") is not None for e in logs)
    broken[0] = False
    rig.clock.advance(1)
    pump(rig.clock)
    records, lines, outbox = rig.results()
    assert len(records) == 1 and len(lines) == 2
    assert outbox == [describe(o).encode() for o in run_model(events)]
    assert rig.store.cursors().result[GW].applied == len(events)


def run_model(events):
    from cdrd.calls.model import CallModel

    model = CallModel(example_config())
    return [o for e in evolve_ids(events) for o in model.apply(e)]


def evolve_ids(events):
    return [evolve(e, id=n) for n, e in enumerate(events, start=1)]
