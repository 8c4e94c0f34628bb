"""The worked examples of call-records.md through the model, byte for byte."""

from __future__ import annotations

import pytest

from cdrd.calls.model import CallModel
from cdrd.values import CallEnd, LegStop, hhmmss, rfc3339
from tests.calls.helpers import (
    ALL,
    E1,
    E2,
    E3,
    E4,
    E5,
    GW,
    example_config,
    parse_events,
    run,
    t,
)


def ends(text):
    model = CallModel(example_config())
    out = run(model, parse_events(text))
    assert model.open_calls() == []
    return {o.record.ref: o for o in out if isinstance(o, CallEnd)}, out


def test_e1_call_out_with_dtmf():
    calls, _ = ends(E1)
    r = calls[75].record
    assert (r.notation, r.port, r.dialed) == ("Call out", 1, "2252, 3")
    assert (r.begin, r.connect, r.end) == (
        t("10:00:00.000"),
        t("10:00:07.250"),
        t("10:02:07.250"),
    )
    assert hhmmss(r.talk) == "00:02:00" and r.cause == "" and not r.pstn
    assert [c.line for c in calls[75].cdrs] == [
        "2026-11-22T10:00:07.250Z,4.250,120.000,442079460201,2252,442079460201"
    ]


def test_e2_call_out_failed():
    calls, _ = ends(E2)
    r = calls[76].record
    assert (r.notation, r.dialed, r.cause, r.talk, r.connect) == (
        "Call out failed",
        "2253",
        "busy",
        None,
        None,
    )
    assert calls[76].cdrs == ()


def test_e3_sticky_cdr_never_answered():
    calls, _ = ends(E3)
    r = calls[77].record
    assert (r.notation, r.pstn, r.pstn_cli, r.dialed, r.talk) == (
        "Call out failed",
        True,
        "02071234567",
        "2252",
        None,
    )
    assert hhmmss(r.pstn_time) == "00:00:19" and r.cause == "cancelled" and r.pport == 1
    assert [c.line for c in calls[77].cdrs] == [
        "2026-11-22T10:10:00.000Z,18.000,-cancelled,CARRIER-ACME,2252,02071234567"
    ]


def test_e4_divert():
    calls, _ = ends(E4)
    r = calls[78].record
    assert (r.notation, r.dialed, hhmmss(r.talk)) == ("Call out", "202", "00:05:00")
    assert [c.line for c in calls[78].cdrs] == [
        "2026-11-22T10:20:18.000Z,15.900,300.000,442079460201,202,442079460201",
        "2026-11-22T10:20:18.000Z,5.000,300.000,ACCT-202,07700900123,442079460201",
    ]


def test_e5_attended_transfer():
    calls, _ = ends(E5)
    x, y = calls[79].record, calls[80].record
    assert (x.notation, x.dialed, hhmmss(x.talk)) == ("Call out", "202", "00:09:55")
    assert (y.notation, y.port, y.dialed, hhmmss(y.talk), rfc3339(y.end), y.cause) == (
        "Call out",
        2,
        "07700900999",
        "00:00:50",
        "2026-11-22T10:32:00.000Z",
        "transferred",
    )
    assert calls[80].cdrs == ()
    assert [c.line for c in calls[79].cdrs] == [
        "2026-11-22T10:30:04.100Z,3.000,595.900,442079460201,202,442079460201",
        "2026-11-22T10:31:10.000Z,7.000,530.000,ACCT-202,07700900999,442079460202",
    ]
    # the moved CDR keeps the id of the call that created it
    assert [c.call for c in calls[79].cdrs] == [f"{GW}/b1/79", f"{GW}/b1/80"]


def test_all_examples_in_one_stream():
    calls, out = ends(ALL)
    assert sorted(calls) == [75, 76, 77, 78, 79, 80]
    lines = [c.line for o in out if isinstance(o, CallEnd) for c in o.cdrs]
    assert (
        len(lines) == 6
        and len({c.id for o in out if isinstance(o, CallEnd) for c in o.cdrs}) == 6
    )


@pytest.mark.parametrize("text", [E1, E2, E3, E4, E5])
def test_cdrs_ride_on_the_last_stop_only(text):
    _, out = ends(text)
    for i, o in enumerate(out):
        if isinstance(o, CallEnd):
            before = out[i - 1]
            assert isinstance(before, LegStop), "a call's Stops come before its CallEnd"
            assert before.cdrs == o.cdrs
    stops = [o for o in out if isinstance(o, LegStop)]
    carried = [c for s in stops for c in s.cdrs]
    written = [c for o in out if isinstance(o, CallEnd) for c in o.cdrs]
    assert carried == written, "no other Stop carries CDRs"
    assert len({s.leg.id for s in stops}) == len(stops), "a leg stops once"
