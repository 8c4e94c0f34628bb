"""The load generator: call shapes and a whole run against the in-test server."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from cdrd.gateway.codec import parse_gateway_time, parse_line
from cdrd.sim.load import SHAPES, LoadRun, fleet, make_call
from tests.sim.fake_server import FakeServer

T0 = parse_gateway_time("2026-11-22T10:00:00.000")

FIRST = {"HOOK_OFF", "CALL_IN", "PSTN_CALL_IN"}
LAST = {"HOOK_ON"}


@given(st.integers(0, 2**32), st.integers(1, 8), st.integers(1, 4))
def test_every_call_shape_is_a_whole_call(seed, fxs, fxo):
    rng = random.Random(seed)
    for _, shape in SHAPES:
        steps = shape(rng, fxs, fxo)
        types = [s[1] for s in steps]
        assert types[0] in FIRST and types[-1] in LAST
        assert [s[0] for s in steps] == sorted(s[0] for s in steps)  # times never go back
        for _, _etype, fields in steps:
            f = dict(fields)
            if "port" in f:
                assert 1 <= int(f["port"]) <= fxs
            if "pport" in f:
                assert 1 <= int(f["pport"]) <= fxo
            for key in ("digits", "cli", "to"):
                if key in f:
                    assert 1 <= len(f[key]) <= 64 and f[key].isprintable()
        if "TALK" in types:
            assert types.index("TALK") < len(types) - 1


def test_make_call_ends_now_with_one_ref():
    rng = random.Random(3)
    events = make_call(rng, 812, T0)
    assert {e.ref for e in events} == {812}
    assert events[-1].t == T0 and all(e.t <= T0 for e in events)


def test_shapes_mix_covers_every_shape():
    rng = random.Random(1)
    firsts = defaultdict(int)
    for ref in range(400):
        events = make_call(rng, ref, T0)
        kind = events[0].type
        if kind == "HOOK_OFF":
            kind = "FAILED" if {"BUSY", "FAIL"} & {e.type for e in events} else "OUT"
        firsts[kind] += 1
    assert set(firsts) == {"OUT", "FAILED", "CALL_IN", "PSTN_CALL_IN"}
    assert 120 < firsts["OUT"] < 240 and 70 < firsts["CALL_IN"] < 170


def test_fleet_ids_and_macs():
    gws = fleet(3, gw_base=9000, boot="b1")
    assert [(g.gw, g.mac, g.boot) for g in gws] == [
        ("9000", "020000000000", "b1"), ("9001", "020000000001", "b1"), ("9002", "020000000002", "b1")]
    assert len({g.key for g in fleet(300)}) == 300


def test_load_run_places_calls_at_rate_and_stops_by_itself():
    clock = Clock()
    clock.advance(T0 / 1000)
    server = FakeServer(clock)
    run = LoadRun(clock, server, fleet(5), rate=50.0, duration=2.0, window=8, seed=7, tick=0.01)
    d = run.run()
    for _ in range(1000):  # bounded: 10 s of clock in 10 ms steps
        if d.called:
            break
        clock.advance(0.01)
    results = []
    d.addBoth(results.append)
    summary = results[0]
    assert summary.complete, summary
    assert 99 <= summary.calls <= 101  # 50 calls/s for 2 s
    assert summary.acked == summary.sent == summary.events == len(server.received)
    assert summary.gateways == 5 and summary.logins == 5 and summary.errors == 0
    assert summary.ack_max_ms <= 20.0  # the fake server acks at once; only the 10 ms tick shows
    assert sum(acked for _, _, acked in summary.per_second) == summary.acked
    # each gateway: seqs 1..n in order, every call whole, refs one per call and increasing
    per_gateway = defaultdict(list)
    for link in server.links:
        login = parse_line(link.lines[0])
        assert login.verb == "LOGIN" and link.lines[-1] == b"LOGOUT"
        per_gateway[login.fields["gw"]] += [parse_line(x) for x in link.lines if x.startswith(b"EV")]
    assert sorted(per_gateway) == ["9000", "9001", "9002", "9003", "9004"]
    for msgs in per_gateway.values():
        assert [int(m.fields["seq"]) for m in msgs] == list(range(1, len(msgs) + 1))
        calls = defaultdict(list)
        for m in msgs:
            calls[int(m.fields["ref"])].append(m.fields["type"])
        assert list(calls) == sorted(calls)
        for types in calls.values():
            assert types[0] in FIRST and types[-1] == "HOOK_ON"
    assert json.loads(summary.json())["calls"] == summary.calls


def test_load_run_by_number_of_calls():
    clock = Clock()
    server = FakeServer(clock)
    run = LoadRun(clock, server, fleet(2), rate=1000.0, calls=25, seed=1)
    d = run.run()
    for _ in range(200):
        if d.called:
            break
        clock.advance(0.01)
    results = []
    d.addBoth(results.append)
    assert results[0].calls == 25 and results[0].complete


def test_load_run_incomplete_when_server_never_acks():
    clock = Clock()
    server = FakeServer(clock, auto_ack=False)
    run = LoadRun(clock, server, fleet(1), rate=10.0, calls=3, drain_timeout=1.0)
    d = run.run()
    for _ in range(300):
        if d.called:
            break
        clock.advance(0.01)
    results = []
    d.addBoth(results.append)
    assert not results[0].complete and results[0].acked == 0 and results[0].sent > 0
    assert "INCOMPLETE" in results[0].text()


def test_load_needs_a_bound():
    with pytest.raises(ValueError):
        LoadRun(Clock(), FakeServer(Clock()), fleet(1), rate=1.0)
