"""
Hypothesis: whatever the events (out of order, duplicated, missing, of
unknown types, on unknown refs), the model never raises, gives one record
per call, no negative duration, and writes each CDR once.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdrd.calls.model import KNOWN_TYPES, CallModel
from cdrd.values import GATEWAY_RESTART, STALE, CallEnd, CallEvent, LegStart, LegStop
from tests.calls.helpers import GW, example_config

T0 = 1_795_000_000_000
# every type, weighted towards the ones that build CDR stacks
TYPES = (
    sorted(KNOWN_TYPES)
    + ["FLASH", "XYZZY", STALE, GATEWAY_RESTART]
    + ["HOOK_OFF", "DIAL", "TALK", "RING_BACK", "DIVERT", "TRANSFER"] * 3
)

fields_st = st.fixed_dictionaries(
    {},
    optional={
        "port": st.sampled_from(["1", "2", "3", "x"]),
        "pport": st.sampled_from(["1", "2"]),
        "digits": st.sampled_from(["202", "2252", "3", "07700900123"]),
        "cli": st.sampled_from(["0201", "07700"]),
        "to": st.sampled_from(["202", "442079460201", "0800"]),
        "by": st.sampled_from(["202", "201", "442079460202", "x"]),
        "cause": st.sampled_from(["cfnr", "busy", "barred"]),
        "cui": st.sampled_from(["CUST-1", "CUST-2"]),
        "with": st.sampled_from(["1", "2", "3", "1", "2", "3", "9", "bad"]),
        "role": st.sampled_from(["caller", "callee"]),
    },
)

raw_event = st.tuples(
    st.sampled_from(TYPES),
    st.integers(1, 3),  # ref
    st.sampled_from(["b1"] * 5 + ["b2"]),  # boot
    st.integers(-5_000, 60_000),  # time step (may go back)
    fields_st,
)


def build(raws, duplicate_ids=False):
    events = []
    time = T0
    for n, (kind, ref, boot, step, fields) in enumerate(raws):
        time += step
        events.append(
            CallEvent(
                gateway=GW,
                seq=None if kind in (STALE, GATEWAY_RESTART) else n + 1,
                ref=ref,
                type=kind,
                time=time,
                received=time,
                boot=boot,
                fields=fields,
                id=None if duplicate_ids else n + 1,
            )
        )
    return events, time


def run_all(events, end_time, max_divert_depth=3):
    model = CallModel(example_config(trust_cui=True, max_divert_depth=max_divert_depth))
    out = []
    for e in events:
        out.extend(model.apply(e))
    for boot in ("b1", "b2"):  # close whatever is open
        out.extend(
            model.apply(
                CallEvent(
                    gateway=GW,
                    seq=None,
                    ref=0,
                    type=GATEWAY_RESTART,
                    time=end_time,
                    received=end_time,
                    boot=boot,
                )
            )
        )
    return model, out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_event, max_size=80), st.booleans())
def test_invariants(raws, duplicate_ids):
    check_invariants(raws, duplicate_ids)


def check_invariants(raws, duplicate_ids):
    events, end = build(raws, duplicate_ids)
    if (
        duplicate_ids and events
    ):  # events resent with no id: a replay the store would have refused
        events = events + events[: len(events) // 2]
    model, out = run_all(events, end)
    assert model.open_calls() == []

    ends = [o for o in out if isinstance(o, CallEnd)]
    keys = [(o.record.boot, o.record.ref) for o in ends]
    assert len(keys) == len(set(keys)), "one record per call"
    calls_seen = {(e.boot, e.ref) for e in events if e.type in KNOWN_TYPES}
    assert set(keys) == calls_seen, "every call gets its record"

    cdrs = [c for o in ends for c in o.cdrs]
    assert len({c.id for c in cdrs}) == len(cdrs), "no CDR written twice"
    for o in ends:
        r = o.record
        for ms in (r.talk, r.pstn_time):
            assert ms is None or ms >= 0
        for c in o.cdrs:
            assert c.ringing >= 0
            assert c.duration is None or c.duration >= 0
            assert (c.duration is None) == (c.status != "")
            assert len(c.line.split("\n")) == 1

    starts = [o.leg.id for o in out if isinstance(o, LegStart)]
    stops = [o.leg.id for o in out if isinstance(o, LegStop)]
    assert len(stops) == len(set(stops)), "a leg stops once"
    assert sorted(starts) == sorted(stops), "every leg started stops"
    assert [c for s in out if isinstance(s, LegStop) for c in s.cdrs] == cdrs

    # deterministic
    _, again = run_all(events, end)
    assert again == out


@settings(max_examples=200, deadline=None)
@given(
    diverts=st.integers(0, 6),
    rings=st.lists(st.booleans(), min_size=7, max_size=7),
    steps=st.lists(st.integers(0, 20_000), min_size=20, max_size=20),
    sticky=st.booleans(),
)
def test_the_cdrs_of_one_divert_chain_share_start_and_duration(
    diverts, rings, steps, sticky
):
    script = [
        ("PSTN_CALL_IN", {"cli": "0201", "pport": "1"})
        if sticky
        else ("HOOK_OFF", {"port": "1"}),
        ("DIAL", {"digits": "202"}),
    ]
    for i in range(diverts):
        if rings[i]:
            script.append(("RING_BACK", {}))
        script.append(("DIVERT", {"to": f"9{i}", "by": "202" if i % 2 else f"8{i}"}))
    script += [("RING_BACK", {}), ("TALK", {}), ("REMOTE_HOOK_ON", {}), ("HOOK_ON", {})]
    time = T0
    events = []
    for n, (kind, fields) in enumerate(script):
        time += steps[n % len(steps)]
        events.append(
            CallEvent(
                gateway=GW,
                seq=n + 1,
                ref=1,
                type=kind,
                time=time,
                received=time,
                boot="b1",
                fields=fields,
                id=n + 1,
            )
        )
    _, out = run_all(events, time, max_divert_depth=8)
    (end,) = [o for o in out if isinstance(o, CallEnd)]
    assert len(end.cdrs) == 1 + diverts
    assert len({(c.start, c.duration) for c in end.cdrs}) == 1
    assert end.cdrs[0].cui == ("CARRIER-ACME" if sticky else "442079460201")
    # ringing counts from the first ring after each CDR's creation:
    # later CDRs ring no longer
    ringing = [c.ringing for c in end.cdrs[1:]]
    assert ringing == sorted(ringing, reverse=True)


# -- plausible calls, interleaved, then damaged --------------------------------

step_st = st.sampled_from(
    [
        ("RING_BACK", {}),
        ("RING", {"port": "2"}),
        ("DIAL", {"digits": "5"}),
        ("DIVERT", {"to": "0700", "by": "202", "port": "2"}),
        ("DIVERT", {"to": "0800", "by": "x"}),
        ("TALK", {}),
        ("HOLD", {}),
        ("REMOTE_HOOK_ON", {}),
        ("BUSY", {}),
        ("PSTN_HOOK_ON", {"pport": "1"}),
    ]
)
opening_st = st.sampled_from(
    [
        [("HOOK_OFF", {"port": "1"}), ("DIAL", {"digits": "202"})],
        [("HOOK_OFF", {"port": "2"}), ("PSTN_DIAL", {"digits": "0207", "pport": "2"})],
        [("PSTN_CALL_IN", {"cli": "0201", "pport": "1"}), ("DIAL", {"digits": "2252"})],
        [("CALL_IN", {"cli": "077", "to": "201", "port": "1", "cui": "CUST"})],
        [("CALL_IN", {"cli": "077", "to": "201", "port": "1"})],
    ]
)
closing_st = st.sampled_from(
    [
        [("HOOK_ON", {})],
        [("REJECT", {})],
        [],
        [("TRANSFER", {"with": "1"})],
        [("TRANSFER", {"with": "2", "role": "caller"})],
        [("TRANSFER", {"with": "3"})],
    ]
)
call_st = st.tuples(opening_st, st.lists(step_st, max_size=12), closing_st)


@settings(max_examples=300, deadline=None)
@given(
    calls=st.lists(call_st, min_size=1, max_size=6),
    order=st.randoms(use_true_random=False),
    drop=st.integers(0, 3),
    dup=st.integers(0, 3),
)
def test_invariants_over_interleaved_calls(calls, order, drop, dup):
    queues = [
        [(ref, k, f) for k, f in opening + steps + closing]
        for ref, (opening, steps, closing) in enumerate(calls, start=1)
    ]
    raws = []
    while any(queues):
        q = order.choice([q for q in queues if q])
        ref, kind, fields = q.pop(0)
        raws.append((kind, ref, "b1", order.randint(0, 30_000), fields))
    for _ in range(drop):
        if raws:
            raws.pop(order.randrange(len(raws)))
    for _ in range(dup):
        if raws:
            raws.insert(
                order.randrange(len(raws) + 1), raws[order.randrange(len(raws))]
            )
    check_invariants(raws, False)


# -- transfers: the CDRs of the joined call end together -------------------------

HANG_UPS = ("REMOTE_HOOK_ON", "PSTN_HOOK_ON", "HOOK_ON")
# what may happen on X (ref 1) before the join, on Y (ref 2) before its
# TRANSFER, and on X after the join; hang-ups anywhere but HOOK_ON
x_before_st = st.lists(
    st.sampled_from(
        [
            ("HOLD", {}),
            ("REMOTE_HOOK_ON", {}),
            ("PSTN_HOOK_ON", {"pport": "1"}),
            ("RING_BACK", {}),
            ("DIAL", {"digits": "5"}),
            ("RESUME", {}),
        ]
    ),
    max_size=4,
)
y_before_st = st.lists(
    st.sampled_from([("REMOTE_HOOK_ON", {}), ("HOLD", {}), ("DIAL", {"digits": "9"})]),
    max_size=3,
)
x_after_st = st.lists(
    st.sampled_from(
        [
            ("RING_BACK", {}),
            ("TALK", {}),
            ("RESUME", {}),
            ("DIAL", {"digits": "7"}),
            ("REMOTE_HOOK_ON", {}),
            ("PSTN_HOOK_ON", {"pport": "1"}),
        ]
    ),
    max_size=5,
)


@settings(max_examples=400, deadline=None)
@given(
    x_answered=st.booleans(),
    y_answered=st.booleans(),
    y_rings=st.booleans(),
    role=st.sampled_from([None, "caller"]),
    x_before=x_before_st,
    y_before=y_before_st,
    x_after=x_after_st,
    late_y=st.integers(-1, 6),
    order=st.randoms(use_true_random=False),
    steps=st.lists(st.integers(0, 20_000), min_size=30, max_size=30),
)
def test_the_cdrs_of_a_joined_call_end_at_its_first_hang_up_after_the_transfer(
    x_answered,
    y_answered,
    y_rings,
    role,
    x_before,
    y_before,
    x_after,
    late_y,
    order,
    steps,
):
    """
    E5-like transfers, hang-ups placed anywhere (on X or Y, before the join
    or after it): every answered CDR of the joined call X ends at X's first
    hang-up after the TRANSFER event; each keeps the start of its own leg's
    answer, or takes X's next answer (rule 3).  The oracle reads the events.
    """
    x_open = [("HOOK_OFF", {"port": "1"}), ("DIAL", {"digits": "202"})]
    x_open += [("TALK", {})] if x_answered else []
    y = [("HOOK_OFF", {"port": "2"}), ("DIAL", {"digits": "07700900999"})]
    y += [("RING_BACK", {})] if y_rings else []
    y += [("TALK", {})] if y_answered else []
    y += y_before
    y.append(("TRANSFER", {"with": "1", **({"role": role} if role else {})}))
    # X's events before the join and Y's, interleaved, each in its order
    script = [(1, k, f) for k, f in x_open]
    queues = [[(1, k, f) for k, f in x_before], [(2, k, f) for k, f in y]]
    while any(queues):
        q = order.choice([q for q in queues if q])
        script.append(q.pop(0))
    after = [(1, k, f) for k, f in x_after] + [(1, "HOOK_ON", {"port": "1"})]
    if late_y >= 0:  # the gateway's HOOK_ON of the consultation call, late
        after.insert(min(late_y, len(after)), (2, "HOOK_ON", {"port": "2"}))
    script += after
    raws = [
        (kind, ref, "b1", steps[n % len(steps)], fields)
        for n, (ref, kind, fields) in enumerate(script)
    ]
    events, end_time = build(raws)
    _, out = run_all(events, end_time)

    # the oracle, from the events alone
    joined = next(n for n, e in enumerate(events) if e.type == "TRANSFER")
    end = next(
        e.time for e in events[joined + 1 :] if e.ref == 1 and e.type in HANG_UPS
    )
    x_talks = [e.time for e in events if e.ref == 1 and e.type == "TALK"]
    next_x_talk = [
        e.time for e in events[joined + 1 :] if e.ref == 1 and e.type == "TALK"
    ]
    y_talk = [e.time for e in events if e.ref == 2 and e.type == "TALK"]
    expected_starts = []  # X's own CDR, then Y's moved in (rule 3)
    if x_talks:
        expected_starts.append(x_talks[0])
    if y_talk:
        expected_starts.append(y_talk[0])
    elif next_x_talk:
        expected_starts.append(next_x_talk[0])

    ends = {o.record.ref: o for o in out if isinstance(o, CallEnd)}
    assert sorted(ends) == [1, 2]
    assert ends[2].cdrs == () and ends[2].record.cause == "transferred"
    cdrs = ends[1].cdrs
    assert [c.start for c in cdrs] == expected_starts
    for c in cdrs:
        assert c.duration == max(0, end - c.start), (
            "ends at X's first hang-up after the join"
        )
    # the record keeps its own rule: the first hang-up after its Connect
    x = ends[1].record
    if x_talks:
        connect = next(
            n for n, e in enumerate(events) if e.ref == 1 and e.type == "TALK"
        )
        hang = next(
            e.time for e in events[connect + 1 :] if e.ref == 1 and e.type in HANG_UPS
        )
        assert x.talk == max(0, hang - events[connect].time)
    else:
        assert x.talk is None
