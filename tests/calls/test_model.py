"""The call-leg model's rules, one by one (call-records.md)."""

from __future__ import annotations

import pytest
from attrs import evolve, fields

from cdrd.calls.model import (
    MAX_TIME_MS,
    MIN_TIME_MS,
    TOMBSTONES_PER_GATEWAY,
    CallModel,
)
from cdrd.values import (
    GATEWAY_RESTART,
    STALE,
    CallEnd,
    CallEvent,
    CallRecord,
    Cdr,
    Leg,
    LegAnswer,
    LegStart,
    LegStop,
    call_id,
    cdr_id,
    rfc3339,
)
from tests.calls.helpers import E1, E4, E5, GW, example_config, parse_events, run, t


def go(text, **config):
    model = CallModel(example_config(**config))
    out = run(model, parse_events(text))
    return model, out


def ends(out):
    return {o.record.ref: o for o in out if isinstance(o, CallEnd)}


def one(text, **config):
    model, out = go(text, **config)
    (end,) = [o for o in out if isinstance(o, CallEnd)]
    return end.record, [c.line for c in end.cdrs], model, out


def synthetic(kind, time, ref=0, boot="b1", id=None):
    return CallEvent(
        gateway=GW,
        seq=None,
        ref=ref,
        type=kind,
        time=time,
        received=time,
        boot=boot,
        id=id,
    )


# -- notation and cause -------------------------------------------------------


def test_hook_on_off():
    r, cdrs, _, _ = one("""
1 09:00:00.000 HOOK_OFF port=1
1 09:00:03.000 HOOK_ON port=1
""")
    assert (r.notation, r.cause, r.dialed, r.talk, cdrs) == (
        "Hook On/Off",
        "",
        "",
        None,
        [],
    )


def test_call_out_failed_with_fail_cause_and_default():
    r, cdrs, _, _ = one("""
1 09:00:00.000 HOOK_OFF port=1
1 09:00:01.000 DIAL digits=999
1 09:00:02.000 FAIL cause=no-route
1 09:00:03.000 HOOK_ON port=1
""")
    assert (r.notation, r.cause, cdrs) == ("Call out failed", "no-route", [])
    r, _, _, _ = one("""
1 09:00:00.000 HOOK_OFF port=1
1 09:00:01.000 DIAL digits=999
1 09:00:02.000 FAIL
1 09:00:03.000 HOOK_ON port=1
""")
    assert r.cause == "failed"


def test_cancelled_call_writes_no_outbound_cdr_but_ringing_counts():
    r, cdrs, _, out = one("""
1 09:00:00.000 HOOK_OFF port=1
1 09:00:01.000 DIAL digits=2252
1 09:00:01.000 RING_BACK
1 09:00:09.000 HOOK_ON port=1
""")
    assert (r.notation, r.cause, cdrs) == ("Call out failed", "cancelled", [])
    stops = [o for o in out if isinstance(o, LegStop)]
    assert [s.cause for s in stops] == ["cancelled", "cancelled"]
    assert all(s.answered is None and s.session_ms == 0 for s in stops)


def test_call_in_answered_untrusted_cui_ignored():
    r, cdrs, _, out = one("""
5 09:00:00.000 CALL_IN cli=07700900111 to=442079460201 port=1 cui=EVIL
5 09:00:00.100 RING port=1
5 09:00:05.000 HOOK_OFF port=1
5 09:00:05.100 TALK
5 09:01:05.100 HOOK_ON port=1
""")
    assert (r.notation, r.cli, r.port, r.cause, r.talk) == (
        "Call in",
        "07700900111",
        1,
        "",
        60_000,
    )
    assert cdrs == []  # a VoIP caller has no CUI unless trusted
    starts = [o.leg for o in out if isinstance(o, LegStart)]
    assert [(leg.direction, leg.cui, leg.dialled, leg.port) for leg in starts] == [
        ("inbound", "", "442079460201", None),
        ("outbound", "", "442079460201", 1),
    ]


def test_call_in_trusted_cui_sticky_even_unanswered():
    r, cdrs, _, _ = one(
        """
5 09:00:00.000 CALL_IN cli=07700900111 to=442079460201 port=1 cui=CUST-9
5 09:00:00.100 RING port=1
5 09:00:20.100 HOOK_ON port=1
""",
        trust_cui=True,
    )
    assert (r.notation, r.cause) == ("Call in", "cancelled")
    assert cdrs == [
        "2026-11-22T09:00:00.000Z,20.000,-cancelled,CUST-9,442079460201,07700900111"
    ]


def test_call_in_trusted_cui_answered():
    r, cdrs, _, _ = one(
        """
5 09:00:00.000 CALL_IN cli=07700900111 to=442079460201 port=1 cui=CUST-9
5 09:00:00.100 RING port=1
5 09:00:02.000 HOOK_OFF port=1
5 09:00:02.100 TALK
5 09:00:12.100 HOOK_ON port=1
""",
        trust_cui=True,
    )
    assert cdrs == [
        "2026-11-22T09:00:02.100Z,2.000,10.000,CUST-9,442079460201,07700900111"
    ]


def test_call_in_missed_without_ring_is_plain_call_in():
    r, cdrs, _, _ = one("""
5 09:00:00.000 CALL_IN cli=07700900111 port=1
5 09:00:01.000 HOOK_ON
""")
    assert (r.notation, r.cause, cdrs) == ("Call in", "", [])


def test_reject_ends_the_call():
    r, cdrs, model, out = one("""
6 09:00:00.000 REJECT cli=07700900222 cause=barred
6 09:00:01.000 HOOK_ON
""")
    assert (r.notation, r.cli, r.cause, r.end, cdrs) == (
        "Call in reject",
        "07700900222",
        "barred",
        t("09:00:00.000"),
        [],
    )
    assert model.open_calls() == []
    r, _, _, _ = one("6 09:00:00.000 REJECT")
    assert (r.notation, r.cause) == ("Call in reject", "rejected")


def test_other_and_pstn_only():
    r, _, _, _ = one("""
7 09:00:00.000 PSTN_CALL_IN cli=0201 pport=2
7 09:00:04.000 HOOK_ON
""")
    assert (r.notation, r.pstn, r.pstn_cli, r.cause, r.pport) == (
        "Other",
        True,
        "0201",
        "",
        2,
    )


def test_pstn_dial_is_the_dialled_number_and_pstn_time_to_end():
    r, cdrs, _, _ = one("""
8 09:00:00.000 HOOK_OFF port=1
8 09:00:01.000 PSTN_HOOK_OFF pport=2
8 09:00:01.500 PSTN_DIAL digits=0207 pport=2
8 09:00:02.000 PSTN_DIAL digits=946 pport=2
8 09:00:03.000 RING_BACK
8 09:00:05.000 TALK
8 09:00:15.000 HOOK_ON port=1
""")
    assert (r.notation, r.pstn_dial, r.pstn, r.pstn_time) == (
        "Call out",
        "0207, 946",
        True,
        14_000,
    )
    assert cdrs == [
        "2026-11-22T09:00:05.000Z,2.000,10.000,442079460201,0207946,442079460201"
    ]


def test_unconfigured_port_and_gateway_fallback_cui():
    r, cdrs, _, _ = one("""
9 09:00:00.000 HOOK_OFF port=4
9 09:00:01.000 DIAL digits=1
9 09:00:02.000 TALK
9 09:00:03.000 HOOK_ON port=4
""")
    assert cdrs == [f"2026-11-22T09:00:02.000Z,0.000,1.000,{GW}-4,1,{GW}-4"]
    model = CallModel(example_config())
    out = run(
        model,
        parse_events(
            """
9 09:00:00.000 HOOK_OFF port=1
9 09:00:01.000 DIAL digits=1
9 09:00:02.000 TALK
9 09:00:03.000 HOOK_ON port=1
""",
            gateway="77_0000000000AA",
        ),
    )
    (end,) = [o for o in out if isinstance(o, CallEnd)]
    assert end.cdrs[0].cui == "77_0000000000AA-1"


def test_cdr_fields_are_quoted_per_rfc4180():
    model = CallModel(example_config())
    out = run(
        model,
        parse_events("""
9 09:00:00.000 HOOK_OFF port=1
9 09:00:01.000 DIAL digits=1
9 09:00:01.500 DIVERT to=a,b by=x%22y
9 09:00:02.000 TALK
9 09:00:03.000 HOOK_ON port=1
"""),
    )
    (end,) = [o for o in out if isinstance(o, CallEnd)]
    assert (
        end.cdrs[1].line
        == '2026-11-22T09:00:02.000Z,0.000,1.000,"x""y","a,b",442079460201'
    )


# -- diverts ------------------------------------------------------------------


def divert_chain(n, answered=True):
    lines = ["1 09:00:00.000 HOOK_OFF port=1", "1 09:00:01.000 DIAL digits=202"]
    for i in range(n):
        lines.append(f"1 09:00:{2 + i:02d}.000 RING_BACK")
        lines.append(
            f"1 09:00:{2 + i:02d}.500 DIVERT to=9{i:03d} by=8{i:03d} cause=cfnr"
        )
    if answered:
        lines.append("1 09:01:00.000 TALK")
        lines.append("1 09:02:00.000 REMOTE_HOOK_ON")
    lines.append("1 09:02:01.000 HOOK_ON port=1")
    return "\n".join(lines)


def test_divert_chain_all_share_start_and_duration():
    r, cdrs, _, out = one(divert_chain(5))
    assert r.cause == "" and len(cdrs) == 6
    assert {c.split(",")[0] for c in cdrs} == {"2026-11-22T09:01:00.000Z"}
    assert {c.split(",")[2] for c in cdrs} == {"60.000"}
    assert [c.split(",")[3] for c in cdrs] == ["442079460201"] + [
        f"8{i:03d}" for i in range(5)
    ]
    assert [c.split(",")[4] for c in cdrs] == ["202"] + [f"9{i:03d}" for i in range(5)]
    # each CDR rings from the first ringing after it was created
    assert cdrs[1].split(",")[1] == "57.000"  # RING_BACK 09:00:03 -> TALK 09:01:00
    replaced = [o for o in out if isinstance(o, LegStop) and o.cause == "replaced"]
    assert len(replaced) == 5
    (end,) = [o for o in out if isinstance(o, CallEnd)]
    assert [c.id for c in end.cdrs] == [cdr_id(r.id, n) for n in range(6)]


def test_divert_cui_lookup_by_exten_ddi_and_by_itself():
    _, cdrs, _, _ = one("""
1 09:00:00.000 HOOK_OFF port=1
1 09:00:01.000 DIAL digits=202
1 09:00:02.000 DIVERT to=555 by=202
1 09:00:03.000 DIVERT to=556 by=442079460201
1 09:00:04.000 DIVERT to=557 by=07000
1 09:00:05.000 TALK
1 09:00:06.000 HOOK_ON port=1
""")
    assert [c.split(",")[3] for c in cdrs] == [
        "442079460201",
        "ACCT-202",
        "442079460201",
        "07000",
    ]


def test_divert_loop_is_cut_at_max_depth():
    r, cdrs, _, out = one(divert_chain(12), max_divert_depth=3)
    assert r.cause == "divert-loop" and r.notation == "Call out"
    assert len(cdrs) == 4  # caller + 3 diverts
    assert len([o for o in out if isinstance(o, LegStart)]) == 1 + 1 + 3


def test_unanswered_divert_writes_nothing():
    r, cdrs, _, _ = one(divert_chain(3, answered=False))
    assert (r.notation, r.cause, cdrs) == ("Call out failed", "cancelled", [])


def test_sticky_stays_through_diverts_and_no_caller_cdr():
    _, cdrs, _, _ = one("""
7 09:00:00.000 PSTN_CALL_IN cli=0201 pport=1
7 09:00:01.000 DIAL digits=202
7 09:00:02.000 DIVERT to=07700 by=202 port=2
7 09:00:03.000 RING_BACK
7 09:00:05.000 TALK
7 09:00:15.000 HOOK_ON
""")
    assert cdrs == [
        "2026-11-22T09:00:05.000Z,2.000,10.000,CARRIER-ACME,202,0201",
        "2026-11-22T09:00:05.000Z,2.000,10.000,ACCT-202,07700,0201",
    ]


# -- transfers ----------------------------------------------------------------


def test_transfer_role_caller_replaces_the_inbound_leg():
    model, out = go("""
1 09:00:00.000 HOOK_OFF port=1
1 09:00:01.000 DIAL digits=300
1 09:00:02.000 TALK
2 09:00:10.000 HOOK_OFF port=2
2 09:00:11.000 DIAL digits=400
2 09:00:12.000 TALK
2 09:00:20.000 TRANSFER with=1 role=caller
1 09:01:00.000 HOOK_ON
""")
    e = ends(out)
    assert e[2].record.cause == "transferred" and e[2].cdrs == ()
    assert [c.line for c in e[1].cdrs] == [
        "2026-11-22T09:00:02.000Z,0.000,58.000,442079460201,300,442079460201",
        "2026-11-22T09:00:12.000Z,0.000,48.000,ACCT-202,400,442079460202",
    ]
    replaced = [o for o in out if isinstance(o, LegStop) and o.cause == "replaced"]
    assert [s.leg.id for s in replaced] == [f"{call_id(GW, 'b1', 1)}/0"]
    assert model.open_calls() == []


def test_blind_transfer_unanswered_consultation_takes_the_next_answer():
    _, out = go("""
1 09:00:00.000 HOOK_OFF port=1
1 09:00:01.000 DIAL digits=202
1 09:00:02.000 TALK
2 09:00:10.000 HOOK_OFF port=2
2 09:00:11.000 DIAL digits=400
2 09:00:11.500 RING_BACK
2 09:00:12.000 TRANSFER with=1
1 09:00:20.000 TALK
1 09:01:00.000 HOOK_ON
""")
    e = ends(out)
    assert [c.line for c in e[1].cdrs] == [
        "2026-11-22T09:00:02.000Z,0.000,58.000,442079460201,202,442079460201",
        "2026-11-22T09:00:20.000Z,8.500,40.000,ACCT-202,400,442079460202",
    ]


def test_transfer_to_an_unknown_call_keeps_its_own_cdrs():
    _, out = go("""
2 09:00:10.000 HOOK_OFF port=2
2 09:00:11.000 DIAL digits=400
2 09:00:12.000 TALK
2 09:00:20.000 TRANSFER with=99
""")
    e = ends(out)
    assert e[2].record.cause == "transferred"
    assert [c.line for c in e[2].cdrs] == [
        "2026-11-22T09:00:12.000Z,0.000,8.000,ACCT-202,400,442079460202"
    ]


def test_replay_from_follows_joined_calls():
    model = CallModel(example_config())
    events = parse_events(E5, first_id=100)
    run(model, events[:10])  # up to and including the TRANSFER
    assert [c.ref for c in model.open_calls()] == [79]
    assert model.replay_from(GW) == 100
    events2 = parse_events(
        """
1 09:00:00.000 HOOK_OFF port=1
2 09:00:00.000 HOOK_OFF port=2
1 09:00:01.000 HOOK_ON port=1
""",
        first_id=10,
    )
    model = CallModel(example_config())
    run(model, events2[:2])
    assert model.replay_from(GW) == 10
    run(model, events2[2:])
    assert model.replay_from(GW) == 11
    assert model.replay_from("nope") is None


# -- ends by restart and staleness; late, unknown and repeated events -------------


def test_gateway_restart_ends_every_open_call_of_that_boot():
    model = CallModel(example_config())
    run(
        model,
        parse_events(
            "1 09:00:00.000 HOOK_OFF port=1\n1 09:00:01.000 DIAL digits=5\n"
            "1 09:00:02.000 TALK\n2 09:00:03.000 HOOK_OFF port=2"
        ),
    )
    run(model, parse_events("3 09:00:00.000 HOOK_OFF port=1", boot="b0", first_id=10))
    out = model.apply(synthetic(GATEWAY_RESTART, t("09:00:30.000")))
    e = ends(out)
    assert sorted(e) == [1, 2]
    assert {o.record.cause for o in e.values()} == {"gateway-restart"}
    assert e[1].record.end == t("09:00:30.000") and e[1].record.talk == 28_000
    assert [c.line for c in e[1].cdrs] == [
        "2026-11-22T09:00:02.000Z,0.000,28.000,442079460201,5,442079460201"
    ]
    assert {s.cause for s in out if isinstance(s, LegStop)} == {"gateway-restart"}
    assert [(c.boot, c.ref) for c in model.open_calls()] == [("b0", 3)]
    assert model.open_refs(GW, "b1") == set() and model.open_refs(GW, "b0") == {3}


def test_stale_calls_and_stale_end():
    model = CallModel(example_config())
    run(
        model,
        parse_events(
            "1 09:00:00.000 HOOK_OFF port=1\n1 09:00:01.000 DIAL digits=5\n"
            "2 09:30:00.000 HOOK_OFF port=2"
        ),
    )
    assert model.stale_calls(t("09:40:00.000"), 3_600_000) == []
    assert model.stale_calls(t("10:00:01.000"), 3_600_000) == [
        (GW, "b1", 1, t("09:00:01.000"))
    ]
    e = ends(model.apply(synthetic(STALE, t("09:00:01.000"), ref=1)))
    assert e[1].record.cause == "stale" and e[1].record.end == t("09:00:01.000")
    assert model.apply(synthetic(STALE, t("09:00:01.000"), ref=1)) == []
    assert model.apply(synthetic(STALE, t("09:00:01.000"), ref=42)) == []


def test_late_events_of_an_ended_call_change_nothing():
    model, out = go(E1)
    assert len(ends(out)) == 1
    assert (
        run(model, parse_events("75 10:05:00.000 HOOK_ON port=1\n75 10:05:00.000 TALK"))
        == []
    )
    model2 = CallModel(example_config())
    model2.mark_ended(GW, "b1", 75)
    assert run(model2, parse_events(E1)) == []


def test_unknown_types_are_ignored():
    model = CallModel(example_config())
    assert (
        run(model, parse_events("1 09:00:00.000 FLASH_HOOK x=1\n1 09:00:00.000 GREET"))
        == []
    )
    assert model.open_calls() == []


def test_calls_without_their_first_events_still_get_one_record():
    _, out = go("""
1 09:00:00.000 TALK
1 09:00:05.000 HOOK_ON port=1
2 09:00:00.000 REMOTE_HOOK_ON
2 09:00:01.000 HOOK_ON
""")
    e = ends(out)
    assert (
        e[1].record.notation == "Call out"
        and e[1].record.talk == 5000
        and e[1].record.port == 1
    )
    assert e[2].record.notation == "Other"


def test_times_that_go_backwards_give_no_negative_durations():
    _, cdrs, _, _ = one("""
1 09:00:10.000 HOOK_OFF port=1
1 09:00:09.000 DIAL digits=5
1 09:00:08.000 RING_BACK
1 09:00:07.000 TALK
1 09:00:06.000 HOOK_ON port=1
""")
    assert cdrs == ["2026-11-22T09:00:07.000Z,0.000,0.000,442079460201,5,442079460201"]


def test_events_replayed_by_id_are_applied_once():
    model = CallModel(example_config())
    events = parse_events(E4)
    first = run(model, events[:5])
    assert run(model, events[:5]) == []
    rest = run(model, events[3:])
    assert len(ends(first + rest)) == 1
    assert model.applied(GW) == len(events)


def test_tombstones_are_bounded():
    model = CallModel(example_config(), tombstones_per_gateway=3)
    for ref in range(10):
        model.mark_ended(GW, "b1", ref)
    assert [model.is_ended(GW, "b1", r) for r in range(10)] == [False] * 7 + [True] * 3


def test_tombstones_per_gateway_a_busy_gateway_evicts_none_of_another():
    busy = "9000_020000000001"
    model = CallModel(example_config())
    run(model, parse_events(E5))  # ends 79 and 80 on the quiet gateway
    for ref in range(5000):  # thousands of calls end on a busy one
        run(model, parse_events(f"{ref} 11:00:00.000 REJECT", busy, first_id=ref + 1))
    assert model.tombstones(busy) == TOMBSTONES_PER_GATEWAY == 1024
    assert model.tombstones(GW) == 2
    # the gateway's late HOOK_ON of the consultation call after its TRANSFER
    late = parse_events("80 10:40:01.000 HOOK_ON port=2", first_id=100)
    assert run(model, late) == []
    assert model.open_calls() == []


def test_tombstones_kept_by_recovery_are_not_evicted():
    model = CallModel(example_config(), tombstones_per_gateway=3)
    model.mark_ended(GW, "b1", 1, keep=True)
    for ref in range(100, 110):
        model.mark_ended(GW, "b1", ref)
    assert model.is_ended(GW, "b1", 1) and model.is_ended(GW, "b1", 109)
    assert not model.is_ended(GW, "b1", 100)
    assert model.tombstones(GW) == 4


def test_open_calls_for_the_dashboard():
    model = CallModel(example_config())
    run(model, parse_events(E5)[:6])
    calls = model.open_calls(GW)
    assert [(c.ref, c.port, c.begin) for c in calls] == [
        (79, 1, t("10:30:00.000")),
        (80, 2, t("10:31:00.500")),
    ]
    assert model.open_calls("other") == []


def test_answer_produces_leg_answers_once():
    _, out = go(E4)
    answers = [o for o in out if isinstance(o, LegAnswer)]
    assert [a.leg.id.rsplit("/", 1)[1] for a in answers] == ["0", "2"]
    starts = [o.leg for o in out if isinstance(o, LegStart)]
    assert [(s.direction, s.cui, s.dialled) for s in starts] == [
        ("inbound", "442079460201", "202"),  # its Start waits for the DIAL
        ("outbound", "442079460201", "202"),
        ("outbound", "ACCT-202", "07700900123"),
    ]


def test_hang_up_on_the_joined_call_before_the_transfer_does_not_cut_its_cdrs():
    # E5 with the far end of call 79 hanging up before the transfer: the
    # CDRs end at the first hang-up of 79 after the join (rule 3), the
    # record's Time at the first hang-up after its Connect (record rule)
    text = E5.replace(
        "80 10:31:00.500 HOOK_OFF port=2",
        "79 10:31:05.000 REMOTE_HOOK_ON\n80 10:31:00.500 HOOK_OFF port=2",
    )
    _, out = go(text)
    e = ends(out)
    assert [c.line for c in e[79].cdrs] == [
        "2026-11-22T10:30:04.100Z,3.000,595.900,442079460201,202,442079460201",
        "2026-11-22T10:31:10.000Z,7.000,530.000,ACCT-202,07700900999,442079460202",
    ]
    assert e[79].record.talk == t("10:31:05.000") - t("10:30:04.100")
    assert e[79].record.end == t("10:40:00.000")


def test_pstn_dial_after_the_answer_is_dtmf_not_the_billed_number():
    r, cdrs, _, out = one("""
8 09:00:00.000 HOOK_OFF port=1
8 09:00:01.000 PSTN_HOOK_OFF pport=2
8 09:00:01.500 PSTN_DIAL digits=0207 pport=2
8 09:00:03.000 RING_BACK
8 09:00:05.000 TALK
8 09:00:07.000 PSTN_DIAL digits=1 pport=2
8 09:00:08.000 PSTN_DIAL digits=# pport=2
8 09:00:15.000 HOOK_ON port=1
""")
    assert r.pstn_dial == "0207, 1, #"  # the record joins them all
    assert cdrs == [
        "2026-11-22T09:00:05.000Z,2.000,10.000,442079460201,0207,442079460201"
    ]
    (outbound,) = [
        o.leg for o in out if isinstance(o, LegStart) and o.leg.direction == "outbound"
    ]
    assert outbound.dialled == "0207"


def test_answered_call_without_dial_writes_the_callers_cdr():
    # a hotline / auto-dial port, or a call whose DIAL was lost
    r, cdrs, _, out = one("""
3 09:00:00.000 HOOK_OFF port=1
3 09:00:00.500 RING_BACK
3 09:00:04.000 TALK
3 09:00:05.000 DIAL digits=9
3 09:01:04.000 HOOK_ON port=1
""")
    assert (r.notation, r.cause, r.dialed, r.talk) == ("Call out", "", "9", 60_000)
    assert cdrs == ["2026-11-22T09:00:04.000Z,3.500,60.000,442079460201,,442079460201"]
    starts = [o.leg for o in out if isinstance(o, LegStart)]
    assert [(s.direction, s.cui, s.dialled) for s in starts] == [
        ("inbound", "442079460201", ""),
        ("outbound", "442079460201", ""),
    ]
    answers = [o.leg.direction for o in out if isinstance(o, LegAnswer)]
    assert answers == ["inbound", "outbound"]


def test_pstn_call_in_arriving_late_still_makes_the_sticky_cdr():
    # the inbound leg came from a fallback event (no CUI); the carrier
    # line's CUI arrives after it
    _, cdrs, _, _ = one("""
9 09:00:00.000 DIAL digits=2252
9 09:00:00.500 PSTN_CALL_IN cli=0201 pport=1
9 09:00:01.000 RING_BACK
9 09:00:03.000 TALK
9 09:00:13.000 HOOK_ON
""")
    assert cdrs == ["2026-11-22T09:00:03.000Z,2.000,10.000,CARRIER-ACME,2252,0201"]
    # after the answer: the sticky CDR takes the call's answer and first ring
    _, cdrs, _, _ = one("""
9 09:00:00.000 RING_BACK
9 09:00:01.000 TALK
9 09:00:02.000 PSTN_CALL_IN cli=0201 pport=1
9 09:00:11.000 HOOK_ON
""")
    assert cdrs == ["2026-11-22T09:00:01.000Z,1.000,10.000,CARRIER-ACME,,0201"]
    # never answered: still written, as rule 4 says
    _, cdrs, _, _ = one("""
9 09:00:00.000 DIAL digits=2252
9 09:00:00.500 PSTN_CALL_IN cli=0201 pport=1
9 09:00:05.000 HOOK_ON
""")
    assert cdrs == ["2026-11-22T09:00:00.000Z,0.000,-cancelled,CARRIER-ACME,2252,0201"]


def test_phone_cache_holds_configured_ports_only():
    # a hostile gateway naming every port number grows nothing per port
    model = CallModel(example_config())
    for n in range(1, 3001):
        run(model, parse_events(f"{n} 09:00:00.000 HOOK_OFF port={n * 7}", first_id=n))
    assert model.open_count() == 3000
    assert len(model._phone_cache) <= 2  # ports 1 and 2 of the example gateway
    assert model._phone(GW, 7) == (f"{GW}-7", f"{GW}-7")


@pytest.mark.parametrize(
    "when", [253_402_300_800_000, 10**30, -62_135_596_800_001, -(10**30)]
)
def test_times_beyond_year_9999_or_before_1970_never_break_a_product(when):
    # a gateway clock far out (the gateway room bounds times at ingest; the
    # model must not depend on it): every time it puts in a product renders
    events = parse_events(E4)
    events[5] = evolve(events[5], time=when)  # the TALK
    events[-1] = evolve(events[-1], time=when + 1)  # the HOOK_ON
    model = CallModel(example_config())
    out = run(model, events)
    (end,) = [o for o in out if isinstance(o, CallEnd)]
    r = end.record
    for ms in (r.begin, r.connect, r.end):
        assert MIN_TIME_MS <= ms <= MAX_TIME_MS
        rfc3339(ms)
    for c in end.cdrs:
        assert c.line.count(",") == 5
    for o in out:
        if isinstance(o, (LegStart, LegAnswer, LegStop)):
            rfc3339(o.time)


def test_default_max_divert_depth_is_8_eight_diverts_nine_cdrs_the_ninth_loops():
    r, cdrs, _, out = one(divert_chain(8))  # the default config: depth 8
    assert (r.cause, len(cdrs)) == ("", 9)
    assert len([o for o in out if isinstance(o, LegStart)]) == 1 + 1 + 8
    r9, cdrs9, _, out9 = one(divert_chain(9))
    assert r9.cause == "divert-loop" and r9.notation == "Call out"
    # the 9th pushes no CDR (the 8th's rang once more before it) ...
    assert [c.split(",")[3:] for c in cdrs9] == [c.split(",")[3:] for c in cdrs]
    assert cdrs9[:8] == cdrs[:8]
    starts9 = [o for o in out9 if isinstance(o, LegStart)]
    assert len(starts9) == 1 + 1 + 8  # ... and starts no leg
    assert starts9[-1].leg.dialled == "9007"  # the call carries on with the 8th


# -- a leg's accounting agrees with its CDR and record (issue 13) -----------------


def test_session_time_ends_at_the_hang_up_that_ends_the_cdr():
    """The far end hangs up first: the CDR is 60 s, and so is every leg's
    answered span, not the 62.5 s to the phone's HOOK_ON."""
    _, out = go(
        "90 04:00:00.000 HOOK_OFF port=1\n"
        "90 04:00:02.000 DIAL digits=2252\n"
        "90 04:00:05.000 TALK\n"
        "90 04:01:05.000 REMOTE_HOOK_ON\n"
        "90 04:01:07.500 HOOK_ON port=1"
    )
    (end,) = [o for o in out if isinstance(o, CallEnd)]
    assert [c.duration for c in end.cdrs] == [60_000]
    stops = [o for o in out if isinstance(o, LegStop)]
    assert [(s.time, s.session_ms) for s in stops] == [(t("04:01:07.500"), 60_000)] * 2


def test_session_time_of_a_transfer_is_each_cdrs_duration():
    """E5: the moved leg's span is its CDR's (530 s), the caller's its
    own (595.9 s); the consultation call's legs end at the transfer."""
    _, out = go(E5)
    stops = {s.leg.id.split("/", 2)[2]: s for s in out if isinstance(s, LegStop)}
    by_line = {c.dialled: c.duration for e in out if isinstance(e, CallEnd) for c in e.cdrs}
    assert stops["79/0"].session_ms == by_line["202"] == 595_900
    assert stops["80/1"].session_ms == by_line["07700900999"] == 530_000
    assert stops["80/0"].session_ms == t("10:32:00.000") - t("10:31:10.000")


def test_inbound_start_waits_for_the_number_dialled():
    """A phone's leg starts at HOOK_OFF but its Start goes out with the
    first DIAL, carrying that number, timed at HOOK_OFF; with nothing
    dialled it goes out when the leg ends (or is answered)."""
    _, out = go(E1)
    kinds = [type(o).__name__ for o in out]
    assert kinds[:2] == ["LegStart", "LegStart"]
    inbound = out[0]
    assert (inbound.leg.direction, inbound.leg.dialled, inbound.time) == (
        "inbound", "2252", t("10:00:00.000")
    )
    # the same Leg, frozen at its Start, in its answer and Stop
    assert {o.leg for o in out if not isinstance(o, CallEnd) and o.leg.id.endswith("/0")} == {
        inbound.leg
    }
    _, out = go("91 11:00:00.000 HOOK_OFF port=1\n91 11:00:04.000 HOOK_ON port=1")
    assert [type(o).__name__ for o in out] == ["LegStart", "LegStop", "CallEnd"]
    assert out[0].time == t("11:00:00.000") and out[0].leg.dialled == ""


def test_rejected_caller_is_on_the_leg():
    _, out = go("92 11:00:00.000 REJECT cli=0211112222 cause=barred")
    start, stop, end = out
    assert start.leg.cli == stop.leg.cli == end.record.cli == "0211112222"
    assert stop.cause == "barred"


def test_billed_call_is_the_call_whose_end_wrote_the_cdr():
    """E5: the second CDR was created by call 80 and billed by call 79,
    whose final Stop carries it."""
    _, out = go(E5)
    (end,) = [o for o in out if isinstance(o, CallEnd) and o.cdrs]
    c79, c80 = call_id(GW, "b1", 79), call_id(GW, "b1", 80)
    assert [(c.call, c.billed_call) for c in end.cdrs] == [(c79, c79), (c80, c79)]
    (last,) = [o for o in out if isinstance(o, LegStop) and o.cdrs]
    assert last.cdrs == end.cdrs


# -- the CUI from RADIUS (RFC 4372) --------------------------------------------------


def cui_answer(ref, time, fields, id=None):
    return CallEvent(
        gateway=GW, seq=None, ref=ref, type="RADIUS_CUI", time=time, received=time,
        boot="b1", fields=fields, id=id,
    )


def with_answer(text, after: int, answer):
    """The events of `text` with the synthetic answer inserted after the
    `after`-th event, as the log holds them."""
    model = CallModel(example_config())
    events = parse_events(text)
    events = events[:after] + [answer] + events[after:]
    return run(model, events)


PSTN_IN = (
    "97 10:10:00.000 PSTN_CALL_IN cli=02071234567 pport=1\n"
    "97 10:10:00.500 PSTN_HOOK_OFF pport=1\n"
    "97 10:10:01.000 DIAL digits=2252\n"
    "97 10:10:02.000 RING_BACK\n"
    "97 10:10:05.000 TALK\n"
    "97 10:11:05.000 HOOK_ON\n"
)


def test_cui_from_radius_makes_the_sticky_cdr_ahead_of_the_line_cui():
    """Line 1 has cui=CARRIER-ACME; RADIUS says RADIUS-0207: the sticky
    CDR is RADIUS's, and the caller's leg (its Start still held) too."""
    out = with_answer(
        PSTN_IN, 1, cui_answer(97, t("10:10:00.000"), {"result": "accept", "cui": "RADIUS-0207"})
    )
    (end,) = [o for o in out if isinstance(o, CallEnd)]
    assert [c.line for c in end.cdrs] == [
        "2026-11-22T10:10:05.000Z,3.000,60.000,RADIUS-0207,2252,02071234567"
    ]
    inbound = next(o for o in out if isinstance(o, LegStart) and o.leg.direction == "inbound")
    assert inbound.leg.cui == "RADIUS-0207"


def test_cui_from_radius_for_a_caller_without_one():
    """A VoIP caller (CALL_IN, untrusted gateway): no CDR without a CUI;
    with RADIUS's, the sticky CDR is written, even unanswered."""
    text = (
        "98 11:00:00.000 CALL_IN cli=07700900111 to=201 port=1\n"
        "98 11:00:00.100 RING port=1\n"
        "98 11:00:09.000 HOOK_ON port=1\n"
    )
    _, out = go(text)
    assert [o.cdrs for o in out if isinstance(o, CallEnd)] == [()]
    out = with_answer(
        text, 1, cui_answer(98, t("11:00:00.000"), {"result": "accept", "cui": "VOIP-9"})
    )
    (end,) = [o for o in out if isinstance(o, CallEnd)]
    assert [c.line for c in end.cdrs] == [
        "2026-11-22T11:00:00.000Z,8.900,-cancelled,VOIP-9,201,07700900111"
    ]


def test_radius_reject_is_a_cause_and_keeps_the_record_timeout_changes_nothing():
    plain = [o for o in go(PSTN_IN)[1] if isinstance(o, CallEnd)]
    out = with_answer(PSTN_IN, 1, cui_answer(97, t("10:10:00.000"), {"result": "reject"}))
    (end,) = [o for o in out if isinstance(o, CallEnd)]
    assert end.record.cause == "cui-rejected"  # answered: no other cause
    assert end.cdrs == plain[0].cdrs  # the line's cui, as without RADIUS
    assert evolve(end.record, cause="") == plain[0].record
    out = with_answer(PSTN_IN, 1, cui_answer(97, t("10:10:00.000"), {"result": "timeout"}))
    assert [o for o in out if isinstance(o, CallEnd)] == plain


def test_radius_answer_after_the_end_or_for_no_call_changes_nothing():
    model, out = go(PSTN_IN)
    assert model.apply(cui_answer(97, t("10:12:00.000"), {"result": "accept", "cui": "X"})) == []
    assert model.apply(cui_answer(4242, t("10:12:00.000"), {"result": "accept", "cui": "X"})) == []
    assert model.open_calls() == []


def test_the_products_have_no_check_the_model_would_skip():
    # the model builds its products with values.unchecked (issue 15): a
    # validator or converter added to one of them would not run there
    for cls in (Leg, LegStart, LegAnswer, LegStop, CallEnd, CallRecord, Cdr):
        for a in fields(cls):
            assert a.validator is None and a.converter is None, f"{cls.__name__}.{a.name}"
