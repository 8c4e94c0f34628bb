"""The simulated gateway's side of a GWP/1 session, against an in-test server."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from cdrd.gateway.codec import parse_gateway_time, parse_line
from cdrd.sim.client import (
    REJECTIONS,
    GatewayClientProtocol,
    GatewayIdentity,
    LoginRejected,
    OutgoingEvent,
    SimGateway,
    backoff_delay,
    encode_event,
    percentile,
)
from tests.sim.fake_server import NONCE, FakeServer, verify_auth

T0 = parse_gateway_time("2026-11-22T10:00:00.000")
GW = GatewayIdentity(gw="8200", mac="000C2A020082", secret="s3cret", boot="b7", fw="1.2 beta")


def clock_at(seconds: float = T0 / 1000) -> Clock:
    clock = Clock()
    clock.advance(seconds)
    return clock


def events(n: int, ref: int = 75) -> list[OutgoingEvent]:
    return [OutgoingEvent(ref, "DIAL", T0 + i, (("digits", str(i)),)) for i in range(n)]


def seqs(lines) -> list[int]:
    return [int(parse_line(line).fields["seq"]) for line in lines if line.startswith(b"EV ")]


def connected(identity=GW, **kw) -> tuple[SimGateway, GatewayClientProtocol, StringTransport]:
    clock = kw.pop("clock", None) or clock_at()
    gateway = SimGateway(identity, clock, **kw)
    proto = GatewayClientProtocol(gateway)
    tr = StringTransport()
    proto.makeConnection(tr)
    return gateway, proto, tr


def login(proto, tr, last: int = 0) -> list:
    proto.dataReceived(f"HELLO proto=1 nonce={NONCE} time=2026-11-22T10:00:00.000Z\n".encode())
    sent = tr.value()
    tr.clear()
    proto.dataReceived(b"OK session=7f3a last=%d\n" % last)
    return [parse_line(line) for line in sent.splitlines()]


def written(tr) -> list[bytes]:
    lines = tr.value().splitlines()
    tr.clear()
    return lines


def test_login_line_signed_as_the_spec_says():
    gateway, proto, tr = connected(callref=74)
    assert tr.value() == b""  # nothing before HELLO
    (msg,) = login(proto, tr)
    assert msg.verb == "LOGIN"
    assert list(msg.fields) == ["proto", "gw", "mac", "fxs", "fxo", "isdn", "callref", "time",
                                "boot", "fw", "auth"]
    assert msg.fields["gw"] == "8200" and msg.fields["mac"] == "000C2A020082"
    assert msg.fields["callref"] == "74" and msg.fields["boot"] == "b7"
    assert msg.fields["fw"] == "1.2 beta"
    assert msg.fields["time"] == "2026-11-22T10:00:00.000"
    assert verify_auth("s3cret", NONCE, msg.raw)
    assert not verify_auth("other", NONCE, msg.raw)
    assert proto.ready and gateway.connection is proto


def test_login_without_secret_has_no_auth_and_clock_offset():
    identity = GatewayIdentity(gw="8200", mac="000C2A020082", clock_offset_ms=-3_600_000)
    _, proto, tr = connected(identity)
    (msg,) = login(proto, tr)
    assert "auth" not in msg.fields and "boot" not in msg.fields
    assert msg.fields["time"] == "2026-11-22T09:00:00.000"


def test_lost_counter_continues_at_last_plus_one():
    gateway, proto, tr = connected()
    login(proto, tr, last=1041)
    gateway.submit(events(2))
    assert seqs(written(tr)) == [1042, 1043]


def test_window_limits_events_in_flight_and_acks_are_cumulative():
    gateway, proto, tr = connected(window=3, seq=1)
    login(proto, tr)
    gateway.submit(events(10))
    assert seqs(written(tr)) == [1, 2, 3]
    assert gateway.outstanding == 10
    proto.dataReceived(b"ACK seq=2\n")
    assert seqs(written(tr)) == [4, 5]
    assert gateway.stats.acked == 2 and list(gateway.inflight) == [3, 4, 5]
    proto.dataReceived(b"ACK seq=2\n")  # a repeated ACK changes nothing
    assert written(tr) == [] and gateway.stats.acked == 2
    proto.dataReceived(b"ACK seq=9\n")  # beyond what was sent: all in flight are covered
    assert seqs(written(tr)) == [6, 7, 8]
    assert gateway.stats.acked == 5


def test_events_encoded_exactly():
    line = encode_event(1042, OutgoingEvent(75, "TALK", T0 + 7250, (("info", "C(18) M(17)"),)))
    assert line == b"EV seq=1042 ref=75 type=TALK t=2026-11-22T10:00:07.250 info=C(18)%20M(17)\n"
    assert encode_event(3, OutgoingEvent(76, "RING_BACK")) == b"EV seq=3 ref=76 type=RING_BACK\n"


def test_ack_latency_measured_from_send_to_covering_ack():
    clock = clock_at()
    gateway, proto, tr = connected(clock=clock, window=10, seq=1)
    login(proto, tr)
    gateway.submit(events(2))
    clock.advance(0.040)
    gateway.submit(events(1))
    clock.advance(0.010)
    proto.dataReceived(b"ACK seq=3\n")
    assert gateway.stats.latencies_ms == pytest.approx([50.0, 50.0, 10.0])
    assert percentile(gateway.stats.latencies_ms, 50) == pytest.approx(50.0)


def test_drained_fires_once_everything_is_acked():
    gateway, proto, tr = connected(seq=1)
    login(proto, tr)
    gateway.submit(events(3))
    d = gateway.when_drained()
    proto.dataReceived(b"ACK seq=2\n")
    assert not d.called
    proto.dataReceived(b"ACK seq=3\n")
    assert d.called and gateway.outstanding == 0


def test_resend_after_reconnect_only_above_new_last():
    clock = clock_at()
    gateway = SimGateway(GW, clock, window=10, seq=1)
    first = GatewayClientProtocol(gateway)
    tr1 = StringTransport()
    first.makeConnection(tr1)
    login(first, tr1)
    gateway.submit(events(5))
    sent = {int(parse_line(line).fields["seq"]): line for line in written(tr1)}
    first.dataReceived(b"ACK seq=2\n")
    first.connectionLost()
    assert gateway.connection is None
    gateway.submit(events(2, ref=76))  # queued while offline
    assert gateway.outstanding == 5

    second = GatewayClientProtocol(gateway)
    tr2 = StringTransport()
    second.makeConnection(tr2)
    login(second, tr2, last=3)  # the server had stored seq 3 before the ACK got out
    lines = written(tr2)
    assert seqs(lines) == [4, 5, 6, 7]
    assert lines[:2] == [sent[4].rstrip(b"\n"), sent[5].rstrip(b"\n")]  # same bytes
    assert [parse_line(x).fields["ref"] for x in lines[2:]] == ["76", "76"]
    assert gateway.stats.resent == 2 and gateway.stats.acked == 3 and gateway.stats.logins == 2


def test_resend_nothing_when_server_has_all():
    gateway, proto, tr = connected(seq=1)
    login(proto, tr)
    gateway.submit(events(2))
    written(tr)
    proto.connectionLost()
    again = GatewayClientProtocol(gateway)
    tr2 = StringTransport()
    again.makeConnection(tr2)
    login(again, tr2, last=2)
    assert seqs(written(tr2)) == [] and gateway.outstanding == 0
    gateway.submit(events(1))
    assert seqs(written(tr2)) == [3]


def test_counter_never_below_servers_last():
    gateway, proto, tr = connected(seq=5)
    login(proto, tr, last=100)
    gateway.submit(events(1))
    assert seqs(written(tr)) == [101]


def test_err_at_login_rejects_and_fails_waiters():
    gateway, proto, tr = connected()
    gateway.submit(events(1))
    waiting = gateway.when_drained()
    failures = []
    waiting.addErrback(failures.append)
    proto.ready_d.addErrback(lambda f: None)
    proto.dataReceived(f"HELLO proto=1 nonce={NONCE}\n".encode())
    proto.dataReceived(b"ERR code=auth reason=wrong%20auth\n")
    assert tr.disconnecting
    (failure,) = failures
    assert failure.check(LoginRejected) and failure.value.code == "auth"
    assert failure.value.reason == "wrong auth"
    assert b"EV" not in tr.value()


def test_err_after_login_is_counted_not_fatal():
    gateway, proto, tr = connected()
    login(proto, tr)
    proto.dataReceived(b"ERR code=bad reason=digits%20too%20long seq=4\n")
    assert gateway.stats.errors == 1 and not tr.disconnecting and proto.ready


def test_ping_at_interval_and_logout_bye():
    clock = clock_at()
    gateway, proto, tr = connected(clock=clock, ping_interval=30.0)
    login(proto, tr)
    clock.advance(29.9)
    assert written(tr) == []
    clock.advance(0.1)
    assert written(tr) == [b"PING"]
    proto.dataReceived(b"PONG\n")
    assert proto.pongs == 1
    closed = proto.logout()
    assert written(tr) == [b"LOGOUT"]
    proto.dataReceived(b"BYE\n")
    assert tr.disconnecting
    proto.connectionLost()
    assert closed.called
    clock.advance(60)
    assert written(tr) == []  # no PING after the connection is gone


def test_garbage_from_server_is_ignored():
    gateway, proto, tr = connected(seq=1)
    login(proto, tr)
    gateway.submit(events(1))
    written(tr)
    proto.dataReceived(b"ACK seq=\xff\nack x\nACK seq=abc\n\n")
    assert gateway.outstanding == 1 and not tr.disconnecting


def test_start_reconnects_after_loss_and_resends():
    clock = clock_at()
    server = FakeServer(clock, secret="s3cret", auto_ack=False)
    gateway = SimGateway(GW, clock, window=4)
    online = gateway.start(server, reconnect_delay=2.0)
    server.run(lambda: online.called)
    gateway.submit(events(6))
    clock.advance(0)
    assert seqs(server.links[0].lines) == [1, 2, 3, 4]
    server.links[0].close()  # the server drops the connection: nothing acked ...
    del server.stored[3], server.stored[4]  # ... and only 1 and 2 were durable
    server.last = 2
    clock.advance(0)
    assert len(server.links) == 1  # waits reconnect_delay
    server.auto_ack = True
    clock.advance(2.0)
    server.run(lambda: gateway.outstanding == 0)
    assert len(server.links) == 2
    assert server.last == 6 and sorted(server.stored) == [1, 2, 3, 4, 5, 6]
    assert seqs(server.links[1].lines) == [3, 4, 5, 6]  # above the new last only
    assert server.stored[3] == server.links[0].lines[3]  # (lines[0] is the LOGIN)  # the same bytes again
    assert gateway.stats.resent == 2 and gateway.stats.logins == 2 and gateway.stats.acked == 6


def test_start_retries_refused_connections_and_finish_logs_out():
    clock = clock_at()
    server = FakeServer(clock)
    server.refuse = True
    gateway = SimGateway(GW, clock)
    online = gateway.start(server, reconnect_delay=1.0)
    clock.advance(3.0)
    assert not online.called and not server.links and len(server.connects) >= 2
    server.refuse = False
    server.run(lambda: online.called, step=0.5)
    gateway.submit(events(2))
    done = gateway.finish()
    server.run(lambda: done.called)
    assert server.links[0].lines[-1] == b"LOGOUT" and server.links[0].closed
    assert seqs(server.links[0].lines) == [1, 2]
    clock.advance(10)
    assert len(server.links) == 1  # no reconnect after finish


def steps_between(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


@given(st.integers(1, 40), st.integers(0, 2**32))
def test_backoff_doubles_from_one_second_to_a_minute_with_jitter(retry, seed):
    import random

    step = min(60.0, 2.0 ** (retry - 1))
    delay = backoff_delay(retry, random.Random(seed))
    assert step / 2 <= delay <= step


@pytest.mark.parametrize("cut_off", ["refuse", "unavailable"])
def test_a_server_that_cannot_take_the_gateway_is_retried_for_ever_with_backoff(cut_off):
    clock = clock_at()
    server = FakeServer(clock)
    server.refuse = cut_off == "refuse"
    server.login_error = "unavailable" if cut_off == "unavailable" else None
    gateway = SimGateway(GW, clock, callref=74)
    online = gateway.start(server)
    gateway.submit(events(3))  # queued while the server cannot take it
    server.run(lambda: len(server.connects) == 16, step=0.25)
    gaps = steps_between(server.connects)
    for retry, gap in enumerate(gaps, start=1):
        step = min(60.0, 2.0 ** (retry - 1))
        assert step / 2 <= gap <= step + 0.25, (retry, gaps)  # the clock moves in 0.25 s steps
    assert max(gaps) > 30  # it reached the cap ...
    assert not online.called and gateway.rejected is None  # ... and never gave up
    assert gateway.stats.connect_failures == 16 and gateway.stats.errors == 0
    assert gateway.stats.unavailable == (16 if cut_off == "unavailable" else 0)
    server.refuse, server.login_error = False, None
    server.run(lambda: gateway.outstanding == 0, step=0.25)
    assert online.called and sorted(server.stored) == [1, 2, 3]
    assert len(server.connects) == 17  # the first attempt after it could took it
    (outage,) = gateway.stats.outages
    assert outage.failed_attempts == 16 and outage.last_failed_attempt == server.connects[15]
    assert outage.began == server.connects[0] and outage.resumed == server.connects[16]
    assert outage.retry_delay == pytest.approx(server.connects[16] - server.connects[15], abs=0.25)
    assert {m.fields["callref"] for m in server.logins} == {"74"}  # nothing sent yet


def test_unavailable_after_login_keeps_the_events_and_resends_them():
    clock = clock_at()
    server = FakeServer(clock, auto_ack=False)
    gateway = SimGateway(GW, clock, window=8)
    online = gateway.start(server)
    server.run(lambda: online.called)
    gateway.submit(events(4))
    clock.advance(0)
    first = server.links[0]
    assert seqs(first.lines) == [1, 2, 3, 4]
    # the store refused the write: nothing stored, ERR unavailable, closed
    server.stored.clear()
    server.last = 0
    first.to_client(b"ERR code=unavailable reason=store%20write%20failed\n")
    first.close()
    server.auto_ack = True
    server.run(lambda: gateway.outstanding == 0, step=0.1)
    assert len(server.links) == 2
    assert seqs(server.links[1].lines) == [1, 2, 3, 4]
    assert [server.stored[s] for s in (1, 2, 3, 4)] == first.lines[1:]  # the same bytes
    assert gateway.stats.unavailable == 1 and gateway.stats.errors == 0
    assert gateway.stats.resent == 4 and gateway.stats.acked == 4
    (outage,) = gateway.stats.outages
    assert outage.failed_attempts == 0 and 0.5 <= outage.retry_delay <= 1.0


@pytest.mark.parametrize("code", sorted(REJECTIONS))
def test_a_rejection_ends_it(code):
    clock = clock_at()
    server = FakeServer(clock)
    server.login_error = code
    gateway = SimGateway(GW, clock)
    failures = []
    gateway.start(server).addErrback(failures.append)
    server.run(lambda: failures)
    assert failures[0].check(LoginRejected) and failures[0].value.code == code
    clock.advance(600)
    assert len(server.connects) == 1 and gateway.stats.unavailable == 0


def test_an_unknown_err_code_at_login_means_retry_later():
    clock = clock_at()
    server = FakeServer(clock)
    server.login_error = "draining"
    gateway = SimGateway(GW, clock)
    online = gateway.start(server)
    server.run(lambda: len(server.connects) == 3, step=0.5)
    assert gateway.rejected is None and not online.called
    server.login_error = None
    server.run(lambda: online.called, step=0.5)


def test_a_reconnect_keeps_boot_and_a_callref_not_below_the_open_call():
    """After cdrd restarts mid-call, a LOGIN with callref below the open call would split it."""
    clock = clock_at()
    server = FakeServer(clock)
    gateway = SimGateway(GW, clock, callref=74)
    online = gateway.start(server)
    server.run(lambda: online.called)
    gateway.submit(events(2, ref=75))  # call 75 is open: HOOK_OFF, DIAL, ...
    server.run(lambda: gateway.outstanding == 0)
    server.links[-1].close()  # cdrd restarts
    server.run(lambda: gateway.stats.logins == 2, step=0.25)
    gateway.submit(events(1, ref=76))
    server.run(lambda: gateway.outstanding == 0)
    server.links[-1].close()
    server.run(lambda: gateway.stats.logins == 3, step=0.25)
    assert [(m.fields["callref"], m.fields["boot"]) for m in server.logins] == [
        ("74", "b7"), ("75", "b7"), ("76", "b7")]


def test_start_with_wrong_secret_fails():
    clock = clock_at()
    server = FakeServer(clock, secret="right")
    gateway = SimGateway(GatewayIdentity(gw="1", mac="000000000001", secret="wrong"), clock)
    online = gateway.start(server)
    failures = []
    online.addErrback(failures.append)
    server.run(lambda: failures)
    assert failures[0].check(LoginRejected)
    clock.advance(10)
    assert len(server.links) == 1  # a rejected login is not retried


def test_window_must_be_positive():
    with pytest.raises(ValueError):
        SimGateway(GW, Clock(), window=0)


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0 and percentile([], 50) == 0.0
    assert percentile([7.0], 99) == 7.0


@given(st.lists(st.one_of(
    st.tuples(st.just("submit"), st.integers(1, 9)),
    st.tuples(st.just("step"), st.just(0)),
    st.tuples(st.just("drop"), st.just(0)),
    st.tuples(st.just("crash"), st.integers(0, 60)),
), max_size=30), st.integers(1, 5))
@settings(max_examples=150, deadline=None)
def test_any_drops_and_acks_store_every_event_once_in_order(ops, window):
    clock = clock_at()
    server = FakeServer(clock)
    gateway = SimGateway(GW, clock, window=window)
    gateway.start(server, reconnect_delay=0.5)
    submitted = []
    for op, n in ops:
        if op == "submit":
            batch = events(n, ref=len(submitted))
            submitted += batch
            gateway.submit(batch)
        elif op == "step":
            clock.advance(0)
        elif op == "crash":
            server.crash(keep=n)  # unacknowledged events lost by the server
        elif server.links and not server.links[-1].closing:
            server.links[-1].close()  # ACKs not yet delivered are lost with it
    server.run(lambda: gateway.outstanding == 0 and gateway.connection is not None, step=0.1)
    assert sorted(server.stored) == list(range(1, len(submitted) + 1))
    stored = [parse_line(server.stored[s]) for s in sorted(server.stored)]
    assert [(int(m.fields["ref"]), parse_gateway_time(m.fields["t"])) for m in stored] == [
        (e.ref, e.t) for e in submitted]
    copies = {}
    for line in server.received:  # a resend is the same bytes as the first send
        seq = int(parse_line(line).fields["seq"])
        assert copies.setdefault(seq, line) == line
    assert gateway.stats.acked == len(submitted)
