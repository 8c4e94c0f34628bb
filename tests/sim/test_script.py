"""Event scripts (the worked-example form of call-records.md) and their replay."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from cdrd.gateway.codec import parse_gateway_time, parse_line
from cdrd.sim.client import GatewayIdentity, LoginRejected, OutgoingEvent
from cdrd.sim.replay import default_callref, replay
from cdrd.sim.script import ScriptError, format_script, parse_script
from tests.sim.fake_server import FakeServer, verify_auth

SPEC = Path("/work/shared/spec/call-records.md")
DAY = parse_gateway_time("2026-11-22T00:00:00")


def example(name: str) -> str:
    return (files("cdrd.sim") / "examples" / f"{name}.gwp").read_text()


def test_e1_parsed_exactly():
    assert parse_script(example("e1")) == [
        OutgoingEvent(75, "HOOK_OFF", DAY + 36_000_000, (("port", "1"),)),
        OutgoingEvent(75, "DIAL", DAY + 36_002_500, (("digits", "2252"),)),
        OutgoingEvent(75, "RING_BACK", DAY + 36_003_000, ()),
        OutgoingEvent(75, "TALK", DAY + 36_007_250, (("info", "C(18) M(17)"),)),
        OutgoingEvent(75, "DIAL", DAY + 36_009_000, (("digits", "3"),)),
        OutgoingEvent(75, "HOOK_ON", DAY + 36_127_250, (("port", "1"),)),
    ]


def spec_blocks() -> list[list[str]]:
    """The event lines of E1..E5, straight from the spec's code blocks."""
    text = SPEC.read_text()
    blocks = re.findall(r"\*\*E\d[^\n]*\*\*\n```\n(.*?)```", text, re.S)
    return [b.strip().splitlines() for b in blocks]


def test_shipped_examples_are_the_spec_examples():
    blocks = spec_blocks()
    assert len(blocks) == 5
    for n, lines in enumerate(blocks, 1):
        shipped = [x for x in example(f"e{n}").splitlines() if x and not x.startswith("#")]
        assert shipped == lines
        assert len(parse_script(lines, "2026-11-22")) == len(lines)
    everything = parse_script(example("all"))
    assert [e.ref for e in everything] == [int(x.split()[0]) for b in blocks for x in b]


def test_date_option_header_full_time_and_no_time():
    events = parse_script(
        "75 10:00:00 HOOK_OFF port=1\n"
        "# date: 2026-11-23\n"
        "75 10:00:00.5 DIAL digits=1\n".replace("10:00:00.5", "10:00:00.500")
        + "75 2000-01-02T08:17:40.120 RING_BACK\n"
        "75 - HOOK_ON  # the server stamps it\n",
        date="2026-11-22",
    )
    assert [e.t for e in events] == [
        DAY + 36_000_000,
        DAY + 86_400_000 + 36_000_500,
        parse_gateway_time("2000-01-02T08:17:40.120"),
        None,
    ]
    assert events[3] == OutgoingEvent(75, "HOOK_ON", None, ())


@pytest.mark.parametrize(
    "text, lineno, reason",
    [
        ("75 10:00:00 HOOK_OFF", 1, "time of day without a date"),
        ("# date: 2026-11-22\n\n75 10:00 HOOK_OFF", 3, "bad time '10:00'"),
        ("# date: 2026-02-30\n", 1, "bad date '2026-02-30'"),
        ("# date: 22.11.2026\n", 1, "bad date '22.11.2026'"),
        ("x 2026-11-22T10:00:00 HOOK_OFF", 1, "bad ref 'x'"),
        ("75 2026-11-22T10:00:00 hook_off", 1, "bad type 'hook_off'"),
        ("75 2026-11-22T10:00:00", 1, "want REF TIME TYPE"),
        ("75 - DIAL digits", 1, "bad field 'digits'"),
        ("75 - DIAL Digits=1", 1, "bad field 'Digits=1'"),
        ("75 - DIAL digits=", 1, "bad field 'digits='"),
        ("75 - DIAL digits=1 digits=2", 1, "field 'digits' given twice or reserved"),
        ("75 - DIAL seq=4", 1, "field 'seq' given twice or reserved"),
        ("75 - DIAL digits=%4", 1, "bad escape in 'digits'"),
    ],
)
def test_script_errors_name_the_line(text, lineno, reason):
    with pytest.raises(ScriptError) as e:
        parse_script(text)
    assert e.value.lineno == lineno and e.value.reason.startswith(reason)
    assert str(e.value).startswith(f"line {lineno}: ")


_FIELD_VALUES = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)


@given(st.lists(st.builds(
    OutgoingEvent,
    ref=st.integers(0, 10**6),
    type=st.from_regex(r"[A-Z][A-Z_]{0,12}", fullmatch=True),
    t=st.one_of(st.none(), st.integers(0, 253402300799999)),
    fields=st.dictionaries(st.sampled_from(["port", "digits", "cli", "info", "to", "x_1"]),
                           _FIELD_VALUES, max_size=4).map(lambda d: tuple(d.items())),
), max_size=8))
def test_format_script_round_trip(events):
    assert parse_script(format_script(events)) == events


def test_default_callref_is_one_below_first_ref():
    assert default_callref(parse_script(example("e1"))) == 74
    assert default_callref([]) == 0


def run(server: FakeServer, d):
    server.run(lambda: d.called)
    results = []
    d.addBoth(results.append)
    return results[0]


def test_replay_sends_the_script_and_waits_for_every_ack():
    clock = Clock()
    clock.advance(DAY / 1000 + 40_000)
    server = FakeServer(clock, secret="s3cret", last=1041)
    events = parse_script(example("all"))
    identity = GatewayIdentity(gw="8200", mac="000C2A020082", secret="s3cret")
    summary = run(server, replay(clock, server, identity, events, window=4))
    assert summary.events == 37 and summary.acked == 37 and summary.sent == 37
    assert (summary.first_seq, summary.last_seq) == (1042, 1078)
    assert "37 events (seq 1042..1078)" in summary.text()
    stored = [parse_line(server.stored[s]) for s in sorted(server.stored)]
    assert [int(m.fields["seq"]) for m in stored] == list(range(1042, 1079))
    assert [(int(m.fields["ref"]), m.fields["type"], parse_gateway_time(m.fields["t"]))
            for m in stored] == [(e.ref, e.type, e.t) for e in events]
    assert stored[3].fields["info"] == "C(18) M(17)"
    (login,) = server.logins
    assert login.fields["callref"] == "74" and verify_auth("s3cret", server.nonce, login.raw)
    link = server.links[0]
    assert link.lines[-1] == b"LOGOUT" and link.closed


def test_replay_rejected_login_fails():
    clock = Clock()
    server = FakeServer(clock, secret="right")
    identity = GatewayIdentity(gw="8200", mac="000C2A020082", secret="wrong")
    outcome = run(server, replay(clock, server, identity, parse_script(example("e2"))))
    assert outcome.check(LoginRejected) and outcome.value.code == "auth"


def test_replay_times_out_when_never_acked():
    clock = Clock()
    server = FakeServer(clock, auto_ack=False)
    identity = GatewayIdentity(gw="8200", mac="000C2A020082")
    d = replay(clock, server, identity, parse_script(example("e2")), timeout=5.0)
    clock.advance(0)
    clock.advance(0)
    assert not d.called
    clock.advance(5.0)
    failures = []
    d.addErrback(failures.append)
    assert failures[0].check(TimeoutError) and "4 of 4 events" in str(failures[0].value)


def test_replay_paced_by_event_times():
    clock = Clock()
    clock.advance(DAY / 1000 + 40_000)
    server = FakeServer(clock)
    events = parse_script(example("e1"))  # 10:00:00.000 ... 10:02:07.250
    identity = GatewayIdentity(gw="8200", mac="000C2A020082")
    d = replay(clock, server, identity, events, speed=10.0, timeout=600)
    clock.advance(0)
    clock.advance(0)
    assert [len(server.received)] == [1]  # HOOK_OFF at once
    clock.advance(0.25)  # DIAL is 2.5 s in: 0.25 s at speed 10
    clock.advance(0)
    assert len(server.received) == 2
    clock.advance(0.5)  # RING_BACK 3.0 s, TALK 7.25 s in (DIAL 9.0 s not yet)
    clock.advance(0)
    assert len(server.received) == 4
    clock.advance(11.9)  # DIAL 9.0 s; HOOK_ON at 127.25 s: 12.725 s at speed 10
    clock.advance(0)
    assert len(server.received) == 5 and not d.called
    clock.advance(0.1)
    clock.advance(0)
    assert len(server.received) == 6
    server.run(lambda: d.called)
    results = outcome_of(d)
    assert results.acked == 6 and 12.725 <= results.seconds <= 12.8


def outcome_of(d):
    results = []
    d.addBoth(results.append)
    return results[0]
